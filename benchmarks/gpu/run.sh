#!/usr/bin/env bash
# The GPU measurements in one command, from the repository root (about 5-8 minutes on one H200):
#
#   bash benchmarks/gpu/run.sh          # on a CUDA host: ViT-B-16 (random init) extraction vs the bare forward
#   bash benchmarks/gpu/run.sh --dry    # the same sequence on CPU with the tiny architecture and 32 images
#                                       #   (or GPU_CHECK_DRY=1): checks the plumbing, measures nothing
#
# Steps (benchmarks/extract_overhead.py): extraction at bf16, batch 256, workers auto, 4 writers on 640x480 JPEGs
# with --decode exact; one short extraction under torch's sync debug mode (--sync-check: the lines that make the
# host wait for the GPU); --decode fast and gpu; pre-resized (short side 224) JPEGs; then --zero-backbone (data
# path per worker count and decode mode, captions tokenised per worker count, writers MB/s). Each step has its own
# timeout inside one time budget (GPU_CHECK_BUDGET seconds, default 450); a failing step is reported and the next
# one runs.
# Output: $OUT (else ./gpu-out): gpu-log.txt (everything) and summary.md (one figure | value table).
# Packages: whatever the Python finds (an installed compalign), else the wheels of benchmarks/gpu/wheels.sh
# in .whl/, installed to /tmp/site. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY=${GPU_CHECK_DRY:-0}
[[ ${1:-} == --dry ]] && DRY=1
BUDGET=${GPU_CHECK_BUDGET:-450}
OUT_DIR=${OUT:-gpu-out}
WORK=${GPU_CHECK_WORK:-/tmp/compalign-gpu-check}  # test JPEGs and stores (a few GB on the GPU run)
mkdir -p "$OUT_DIR" "$WORK"
LOG=$OUT_DIR/gpu-log.txt
STEPS=$(mktemp -d)  # each step's output and status, for the summary (not sent back: $OUT gets 2 files)
: > "$LOG"
T0=$SECONDS
export PYTHONUNBUFFERED=1  # a step killed by its timeout still leaves its lines in the log
export HF_HUB_OFFLINE=1    # random-init models only: never wait on a network that is not there

say() { echo "$*" | tee -a "$LOG"; }

for PY in ${PYTHON:-} .venv/bin/python python3; do
    command -v "$PY" > /dev/null && "$PY" -c "import torch" 2> /dev/null && break
done
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
NEED='import open_clip, zarr, numcodecs, ftfy; assert int(zarr.__version__.split(".")[0]) >= 3, zarr.__version__'
if ! "$PY" -c "$NEED" 2> /dev/null; then
    if ! PYTHONPATH=/tmp/site:$PYTHONPATH "$PY" -c "$NEED" 2> /dev/null; then  # not from an earlier run either
        if compgen -G ".whl/*.whl" > /dev/null; then
            say "installing $(ls .whl | wc -l) wheels from .whl/ to /tmp/site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                .whl/*.whl 2>&1 | grep -v "as the 'root' user" | tee -a "$LOG"
        else
            say "open_clip / zarr 3 missing and no .whl/: run bash benchmarks/gpu/wheels.sh first (or pip install -e .)"
        fi
    fi
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

# The host: what the figures depend on.
{
    command -v nvidia-smi > /dev/null && nvidia-smi -L
    "$PY" - << 'EOF'
import os, platform, sys
import torch
print("python:", sys.version.split()[0], sys.executable)
print("torch:", torch.__version__, "/ CUDA", torch.version.cuda, "/ cuDNN", torch.backends.cudnn.version())
print("gpu:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
print("cores:", len(os.sched_getaffinity(0)), "of", os.cpu_count(), platform.processor() or platform.machine())
import importlib.metadata as md
print("packages:", ", ".join(f"{p} {md.version(p)}" for p in
      ("torchvision", "open_clip_torch", "zarr", "numcodecs", "timm", "pillow", "numpy")))
import compalign.extract.runner  # noqa: F401  (everything extraction imports)
EOF
    df -h "$WORK" /dev/shm | sed 's/^/disk: /'
    free -g | sed -n 2p | sed 's/^/memory (GiB): /'
} 2>&1 | tee -a "$LOG" "$STEPS/env.txt"
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2> /dev/null || echo 0)

step() {  # step NAME CAP ARGS...: extract_overhead.py ARGS under min(CAP, time left) seconds
    local name=$1 cap=$2 left t s0 rc
    shift 2
    left=$((BUDGET - (SECONDS - T0)))
    if ((left < 30)); then
        say "=== $name: skipped, out of time (budget ${BUDGET} s)"
        echo "$name skip 0 0" >> "$STEPS/status"
        return
    fi
    t=$((cap < left ? cap : left))
    say "=== $name (timeout ${t} s): benchmarks/extract_overhead.py $*"
    s0=$SECONDS
    timeout -k 10 "$t" "$PY" benchmarks/extract_overhead.py "$@" 2>&1 | tee -a "$LOG" "$STEPS/$name.txt"
    rc=${PIPESTATUS[0]}
    say "=== $name: exit $rc after $((SECONDS - s0)) s"
    echo "$name $rc $((SECONDS - s0)) $t" >> "$STEPS/status"
}

if ((DRY)); then  # CPU, the tiny architecture (random init), a few images: every step and the summary run
    A=(--model compalign-tiny --device cpu --precision bf16 --batch-size 16 --workers auto --n 32 --work "$WORK")
    Z=(--zero-backbone --model compalign-tiny --device cpu --batch-size 16 --workers auto --n 32 --shard-rows 16 --pool 16)
    S=()
else  # ViT-B-16 bf16 forwards ~6,500 img/s on an H100; a CPU worker decodes 150-300 img/s: seconds per run.
    # Its patches then come to ~2 GB/s: 4 writers (712 MB/s on the 2-core dev box, 2 gave 516), not the default 2.
    A=(--device cuda --precision bf16 --batch-size 256 --workers auto --writers 4 --n 8192 --work "$WORK")
    Z=(--zero-backbone --device cuda --batch-size 256 --workers auto --n 2048 --shard-rows 256)
    S=(--n 1024)  # 4 image batches, 20 of captions: a site counted once per batch shows as such
fi
step extract-1-exact 120 "${A[@]}"
step sync-check 45 "${A[@]}" "${S[@]}" --sync-check  # which lines, if any, make the host wait for the GPU
step extract-2-fast 100 "${A[@]}" --decode fast
if ((CUDA)); then
    step extract-3-gpu 100 "${A[@]}" --decode gpu
else
    say "=== extract-3-gpu: skipped, --decode gpu needs CUDA"
    echo "extract-3-gpu nocuda 0 0" >> "$STEPS/status"
fi
step extract-4-resized224 100 "${A[@]}" --image-size 224
step zero-backbone 210 "${Z[@]}" --work "$WORK"

say "=== summary ($((SECONDS - T0)) s in all)"
"$PY" benchmarks/gpu/summary.py "$STEPS" | tee "$OUT_DIR/summary.md" | tee -a "$LOG"
rm -rf "$STEPS"
