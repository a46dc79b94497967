#!/usr/bin/env bash
# The wheels a bare GPU host (Python 3.12, torch, no internet) lacks for compalign's extraction benchmarks,
# downloaded here into .whl/ (ignored by git: /.whl/ in .git/info/exclude), for run.sh to install there.
#
#   bash benchmarks/gpu/wheels.sh        # then run benchmarks/gpu/run.sh there with carry [".whl"]
#
# A GPU box with compalign installed (pip install -e .) needs none of this: run.sh finds the packages.
# Versions are the ones the project's venv runs; torch, torchvision, numpy and what the host image already
# has (pillow, fsspec, filelock, rich, typer, pyarrow, h5py, timm, safetensors, matplotlib, huggingface_hub,
# regex, and their dependencies tqdm, pyyaml, packaging, typing_extensions) stay out: one version of each.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

PY=${PIP_PYTHON:-python3}  # any Python with pip: it downloads for 3.12 whatever it runs itself
WHEELS=(
    open_clip_torch==3.3.0  # needs ftfy (needs wcwidth); regex, tqdm, huggingface_hub, safetensors, timm are there
    ftfy==6.3.1
    wcwidth==0.9.4
    zarr==3.1.6             # needs donfig (needs pyyaml), google-crc32c, numcodecs; numpy, packaging, typing_extensions
    donfig==0.8.1.post1
    google-crc32c==1.9.0
    numcodecs==0.16.6
)
# What the host has (or brings with what it has): a Requires-Dist outside the set must be one of these.
HOST="torch torchvision numpy pillow fsspec filelock rich typer pyarrow h5py timm safetensors matplotlib
huggingface_hub regex tqdm pyyaml packaging typing_extensions"

grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

# Every wheel installable on CPython 3.12 x86-64, every dependency in the set or on the host.
HOST="$HOST" "$PY" - "${WHEELS[@]}" <<'EOF'
import os, re, sys, zipfile
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()

wanted = {norm(w.split("==")[0]): w.split("==")[1] for w in sys.argv[1:]}
host = {norm(h) for h in os.environ["HOST"].split()}
bad = []
have = {}
for whl in sorted(Path(".whl").glob("*.whl")):
    name, version, *_, py, abi, plat = whl.stem.split("-")
    have[norm(name)] = version
    ok_tag = (py, abi, plat) == ("py3", "none", "any") or (
        "x86_64" in plat and (abi == "cp312" or (abi == "abi3" and int(py.removeprefix("cp3")) <= 12)))
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    deps = [norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in reqs]
    missing = [d for d in deps if d not in wanted and d not in host]
    print(f"{whl.name}  {whl.stat().st_size / 2**20:.2f} MiB  tags {py}-{abi}-{plat}  needs {', '.join(deps) or '-'}")
    if not ok_tag:
        bad.append(f"{whl.name}: not a CPython 3.12 x86-64 wheel")
    if missing:
        bad.append(f"{whl.name}: needs {', '.join(missing)}, neither in the set nor on the host")
if have != wanted:
    bad.append(f"downloaded {have}, asked for {wanted}")
if bad:
    sys.exit("wheels.sh: " + "; ".join(bad))
EOF

# What a device call copies: tracked files, untracked ones git does not ignore, and the carried .whl/.
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2> /dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
echo "wheels: $((whl / 1048576)) MiB in .whl/ ($(ls .whl | wc -l) files); working tree (tracked and untracked," \
     "not ignored): $((tree / 1048576)) MiB; the device copies both: 64 MiB at most"
if ((tree + whl > 64 * 1048576)); then
    echo "wheels.sh: the working tree and .whl/ come to more than 64 MiB; move untracked outputs out of the" \
         "checkout (git status --short lists them) before the device call" >&2
    exit 1
fi
