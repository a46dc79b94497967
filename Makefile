# compalign: `make demo` and `make test` are all a fresh clone needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

MODEL   ?= tiny
DATA    ?= sugarcrepe
ROOT    ?=
OUT     ?= caches/$(MODEL)-$(DATA).zarr
ARGS    ?=

.PHONY: install test demo study extract backbone lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/compalign demo --out demo

# The study's whole comparison on the synthetic world (ARGS=--quick for a small version); the table goes to docs/.
study: $(STAMP)
	$(BIN)/compalign study --out study $(ARGS)
	cp study/results.md docs/study.md
	cp study/results.png docs/study.png

# make extract MODEL=siglip2 DATA=sugarcrepe ROOT=/data/sugarcrepe [OUT=...] [ARGS="--batch-size 128"]
extract: $(STAMP)
	@test -n "$(ROOT)" || (echo "ROOT is required: make extract MODEL=$(MODEL) DATA=$(DATA) ROOT=/path/to/data" && exit 2)
	$(BIN)/compalign extract --model $(MODEL) --data $(DATA) --root $(ROOT) --out $(OUT) $(ARGS)

# Pretrain the tiny backbone on the synthetic world (plain CLIP loss, CPU, seeded) and ship it. Half the images
# are recoloured (never into a held-out pair) so that the patches code shape apart from colour (README, "Unseen pairs").
# Deterministic for a given THREADS; the shipped file was made with THREADS=2 (the default). THREADS=1 takes
# longer and gives slightly different weights (another summation order); use it on a busy machine.
THREADS ?= 2
backbone: $(STAMP)
	$(BIN)/compalign shapes make --out caches/shapes-world --n-train 20000 --workers $(THREADS)
	$(BIN)/compalign shapes backbone --world caches/shapes-world --out src/compalign/shapes/backbone --threads $(THREADS) --p-recolour 0.5

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_overhead.py

clean:
	rm -rf $(VENV) demo caches
