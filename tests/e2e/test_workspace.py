"""The user's own commands, as written: `make extract MODEL=... DATA=... ROOT=...`, then `compalign-heads train
tflocal` and `compalign-heads score --bench bivlc` with no --cache / --out / --checkpoint: they find what
`make extract` and `train` wrote in the workspace, and say so; an ambiguous workspace is a message."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compalign.cli.heads import app as heads_app
from compalign.cli.main import app

REPO = Path(__file__).resolve().parents[2]


def make_extract(model: str, data: str, root: Path, args: str = "") -> list[str]:
    """The `compalign extract ...` command `make extract` runs (read from the Makefile with make -n), as argv."""
    out = subprocess.run(["make", "-n", "-s", "-C", str(REPO), "extract", f"MODEL={model}", f"DATA={data}", f"ROOT={root}",
                          f"ARGS={args}"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "compalign extract" in x)
    return shlex.split(line)[1:]  # drop .venv/bin/compalign


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from compalign.shapes import WorldConfig, write_world

    ws = tmp_path_factory.mktemp("ws")
    write_world(WorldConfig(n_train=60, n_test_id=10, n_test_ood=10), ws / "world")
    return ws


def test_the_three_user_commands_run_as_written(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    for data, root in (("pairs", "world/train"), ("bivlc", "world/test_ood/bivlc")):
        argv = make_extract("tiny", data, Path(root), "--workers 0")
        assert argv[argv.index("--out") + 1] == f"caches/tiny-{data}.zarr"
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output

    res = CliRunner().invoke(heads_app, ["train", "tflocal", "--steps", "2", "--batch-size", "8", "--eval-every", "1"])
    assert res.exit_code == 0, res.output
    assert "cache: caches/tiny-pairs.zarr" in res.output and (workspace / "runs/tflocal/head.json").is_file()
    assert json.loads((workspace / "runs/tflocal/head.json").read_text())["trained_on"]["cache"] == "caches/tiny-pairs.zarr"

    res = CliRunner().invoke(heads_app, ["score", "--bench", "bivlc", "--json", "global.json"])
    assert res.exit_code == 0 and "cache: caches/tiny-bivlc.zarr" in res.output, res.output
    # the 10-scene test_ood world has 48 BiVLC items
    d = json.loads((workspace / "global.json").read_text())
    swaps = sum(i["subset"].startswith("swap/") for i in d["items"])  # bag-of-words-proof: the swaps, no others
    assert d["counts"] == {"items": 48, "invalid": 0, "bow_proof": swaps} and 0 < swaps < 48

    res = CliRunner().invoke(heads_app, ["score", "--bench", "bivlc", "--head", "tflocal", "--json", "tflocal.json"])
    assert res.exit_code == 0 and "checkpoint: runs/tflocal" in res.output, res.output
    assert json.loads((workspace / "tflocal.json").read_text())["head"] == "tflocal@tflocal"


def test_an_ambiguous_or_empty_workspace_names_what_is_there_and_the_flag(mini_sc_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe"])
    assert res.exit_code == 2 and "no sugarcrepe cache under caches/" in res.output and "--cache" in res.output
    (tmp_path / "caches").mkdir()
    for name in ("a", "b"):  # two sugarcrepe stores: which one is the user's choice
        (tmp_path / "caches" / f"{name}.zarr").symlink_to(mini_sc_cache)
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "2 sugarcrepe caches under caches/ (caches/a.zarr (sugarcrepe), caches/b.zarr" in said
    assert "with --cache" in said
    res = CliRunner().invoke(heads_app, ["score", "--bench", "bivlc"])  # stores of another kind are listed, not taken
    assert res.exit_code == 2 and "caches there: caches/a.zarr (sugarcrepe), caches/b.zarr (sugarcrepe)" in res.output
