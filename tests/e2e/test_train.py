"""End to end: world -> extract (train pairs, test-ID / test-OOD benchmarks) -> train heads -> score checkpoints.

Also runs the trainer under `torchrun` with two CPU processes (gloo): data-parallel steps must agree with
what the ranks write, and a single process must keep working after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compalign.cli.heads import app


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from compalign.extract.runner import ExtractConfig, extract
    from compalign.shapes import WorldConfig, write_world

    root = tmp_path_factory.mktemp("e2e-train")
    w = write_world(WorldConfig(n_train=80, n_test_id=12, n_test_ood=12), root / "world").path
    caches = {"train": root / "train.zarr"}
    extract(ExtractConfig(model="tiny", data="pairs", root=str(w / "train"), out=str(caches["train"]), workers=0,
                          shard_rows=64, layers=[-1, -2]))
    for split in ("test_id", "test_ood"):
        for bench in ("sugarcrepe", "bivlc"):
            caches[split, bench] = root / f"{split}-{bench}.zarr"
            extract(ExtractConfig(model="tiny", data=bench, root=str(w / split / bench), out=str(caches[split, bench]),
                                  workers=0, shard_rows=64, layers=[-1, -2]))
    return root, caches


def test_train_then_score_every_head_on_id_and_ood(world):
    root, caches = world
    runs = {}
    for head in ("tflocal_tiny", "global_mlp_tiny"):
        runs[head] = root / "runs" / head
        res = CliRunner().invoke(app, ["train", head, "--cache", str(caches["train"]), "--out", str(runs[head]),
                                       "--steps", "8", "--batch-size", "16", "--eval-every", "4",
                                       "--loss", "infonce=1,hardneg=1,igc=0.5", "--train-set", "warmup=2"])
        assert res.exit_code == 0, res.output
    for split in ("test_id", "test_ood"):
        for bench in ("sugarcrepe", "bivlc"):
            for label, args in [("global", ["--head", "global"]), ("maxsim", ["--head", "maxsim"]),
                                *[(f"{h}@{h}", ["--checkpoint", str(r)]) for h, r in runs.items()]]:
                out = root / "scores" / f"{bench}-{split}-{label}.json"
                res = CliRunner().invoke(app, ["score", "--bench", bench, "--cache", str(caches[split, bench]),
                                               *args, "--json", str(out)])
                assert res.exit_code == 0, res.output
                d = json.loads(out.read_text())
                assert d["head"] == label and d["items"]
                assert all(0 <= v <= 100 for v in d["metrics"].values() if v == v)


RANK_RUN = """
import sys
from compalign.heads.train import TrainConfig, train_head
train_head("tflocal_tiny", sys.argv[1], sys.argv[2], TrainConfig(steps=4, batch_size=16, eval_every=2, warmup=1,
           prefetch=1, val_fraction=0.2))
"""


def test_data_parallel_under_torchrun_with_two_processes(world, tmp_path):
    _, caches = world
    torchrun = Path(sys.executable).with_name("torchrun")
    script = tmp_path / "run.py"
    script.write_text(RANK_RUN)
    run = tmp_path / "ddp"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(caches["train"]),
                           str(run)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads((run / "last.json").read_text())
    assert last["step"] == 4 and (run / "head.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]  # rank 0 alone writes
