"""Where a traceback or a misleading line used to be, a message that names the file, the row or the flag, and the fix."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, mini_sugarcrepe
from PIL import Image
from typer.testing import CliRunner

from compalign.cache import CacheReader
from compalign.cli.heads import app as heads_app
from compalign.cli.main import app
from compalign.extract.runner import ExtractConfig, extract


def _said(res) -> str:
    return " ".join(res.output.split())  # rich wraps long lines; compare the words


def _extract(root: Path, out: Path, *extra: str, data: str = "pairs"):
    return CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", data, "--root", str(root), "--out", str(out),
                                    "--workers", "0", *extra])


@pytest.fixture(scope="module")
def run_dir(mini_sc_cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "mlp"
    old = os.umask(0o022)  # a cluster's usual umask: the checkpoint must come out 0644
    try:
        res = CliRunner().invoke(heads_app, ["train", "global_mlp", "--cache", str(mini_sc_cache), "--out", str(run),
                                             "--steps", "2", "--batch-size", "4", "--eval-every", "1"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    return run


def _damaged(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def _score(cache: Path, *extra: str):
    return CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(cache), *extra])


# ---- flags ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, said", [("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
                                               ("--batch-size", "-3", "--batch-size must be at least 1 (got -3)"),
                                               ("--shard-rows", "0", "--shard-rows must be at least 1 (got 0)"),
                                               ("--workers", "-1", "--workers must be at least 0 (got -1)"),
                                               ("--precision", "fp8", "--precision is fp32, bf16 or fp16")])
def test_impossible_extraction_flags_are_messages(pairs_dir, tmp_path, flag, value, said):
    res = _extract(pairs_dir, tmp_path / "x.zarr", flag, value)
    assert res.exit_code == 2 and said in _said(res) and not (tmp_path / "x.zarr").exists()


def test_device_cuda_without_a_gpu_is_a_message(pairs_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    res = _extract(pairs_dir, tmp_path / "x.zarr", "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA device is visible; use --device cpu" in _said(res)
    assert not (tmp_path / "x.zarr").exists()


def test_a_pretrained_file_that_is_not_a_checkpoint_is_a_message(pairs_dir, tmp_path):
    junk = tmp_path / "weights.pt"
    junk.write_bytes(os.urandom(256))
    res = CliRunner().invoke(app, ["extract", "--model", "compalign-tiny", "--pretrained", str(junk), "--data", "pairs",
                                   "--root", str(pairs_dir), "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and f"error: {junk} is not an open_clip checkpoint that can be read" in _said(res)


def test_tiny_with_pretrained_is_refused_not_ignored(pairs_dir, tmp_path):
    res = CliRunner().invoke(app, ["extract", "--model", "tiny", "--pretrained", "none", "--data", "pairs",
                                   "--root", str(pairs_dir), "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and "--model compalign-tiny --pretrained none" in _said(res)
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_names_print_without_stray_quotes(mini_sc_cache):
    res = _score(mini_sc_cache, "--head", "nope")
    assert res.exit_code == 2 and _said(res).startswith("error: unknown head 'nope'; available:")
    res = CliRunner().invoke(heads_app, ["score", "--bench", "nope", "--cache", str(mini_sc_cache)])
    assert res.exit_code == 2 and _said(res).startswith("error: unknown benchmark 'nope'; available:")


# ---- checkpoints ------------------------------------------------------------------------------------------------

def test_checkpoint_files_take_the_umask_mode(run_dir):
    for name in ("head.safetensors", "head.json", "last.safetensors", "last.json"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name


def test_a_truncated_safetensors_names_the_file(run_dir, tmp_path):
    run = _damaged(run_dir, tmp_path)
    weights = run / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    res = _score(Path(json.loads((run / "head.json").read_text())["trained_on"]["cache"]), "--checkpoint", str(run))
    assert res.exit_code == 2 and f"{weights} is not a readable safetensors file" in _said(res)
    assert "truncated or damaged" in _said(res)


@pytest.mark.parametrize("damage, said", [
    (lambda m: m["head_config"].update(hidden="banana"), "option hidden must be int, got 'banana'"),
    (lambda m: m["head_config"].update(colour=3), "unknown option(s) ['colour']"),
])
def test_a_bad_head_config_names_head_json_and_the_field(run_dir, tmp_path, damage, said):
    run = _damaged(run_dir, tmp_path)
    meta = json.loads((run / "head.json").read_text())
    damage(meta)
    (run / "head.json").write_text(json.dumps(meta))
    res = _score(Path(meta["trained_on"]["cache"]), "--checkpoint", str(run))
    assert res.exit_code == 2 and f"{run / 'head.json'}: its head_config does not build a head" in _said(res)
    assert said in _said(res)


def test_head_json_that_is_not_json_names_the_file(run_dir, tmp_path):
    run = _damaged(run_dir, tmp_path)
    (run / "head.json").write_text("")
    res = _score(run_dir, "--checkpoint", str(run))
    assert res.exit_code == 2 and f"{run / 'head.json'} is not valid JSON" in _said(res)


def test_resuming_another_run_names_the_field_that_differs(run_dir, mini_sc_cache, tmp_path):
    run = _damaged(run_dir, tmp_path)
    res = CliRunner().invoke(heads_app, ["train", "global_mlp", "--cache", str(mini_sc_cache), "--out", str(run),
                                         "--steps", "2", "--batch-size", "4", "--eval-every", "1", "--lr", "0.002"])
    assert res.exit_code == 2 and "(train.lr: 0.001 in the stored run, 0.002 now)" in _said(res)


def test_a_trainable_head_without_weights_is_refused_unless_untrained(mini_sc_cache):
    res = _score(mini_sc_cache, "--head", "global_mlp")
    assert res.exit_code == 2 and "--checkpoint RUN_DIR" in _said(res) and "--untrained" in _said(res)
    res = _score(mini_sc_cache, "--head", "global_mlp", "--untrained")
    assert res.exit_code == 0 and "12 items, 0 left out" in res.output


# ---- what extraction says -----------------------------------------------------------------------------------------

def test_the_count_of_failures_not_shown_is_right(tmp_path):
    root = tmp_path / "d"
    make_images(root / "img", ["ok.png"])
    rows = [{"image": "img/ok.png", "caption": "the one good picture"}]
    rows += [{"image": f"img/gone{i}.png", "caption": f"missing number {i}"} for i in range(25)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = _extract(root, tmp_path / "x.zarr")
    assert res.exit_code == 0, res.output
    assert _said(res).count("image failed") == 20 and "… and 5 more" in _said(res)


def test_an_unreadable_image_names_its_file_not_a_buffer(tmp_path):
    root = tmp_path / "d"
    make_images(root / "img", ["ok.png"])
    (root / "img" / "junk.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    rows = [{"image": "img/ok.png", "caption": "good"}, {"image": "img/junk.jpg", "caption": "junk"}]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = _extract(root, tmp_path / "x.zarr")
    assert res.exit_code == 0 and "img/junk.jpg: not an image PIL can identify" in _said(res) and "BytesIO" not in res.output


def test_a_partial_sugarcrepe_says_what_the_macro_covers(mini_sc_cache):
    res = _score(mini_sc_cache)
    assert res.exit_code == 0
    assert ("note: 2 of 7 subsets present (absent: add_att, add_obj, replace_att, replace_rel, swap_obj): the macro "
            "and category means cover only the subsets present") in _said(res)


def test_exif_orientation_is_kept_by_default_and_applied_on_request(tmp_path):
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    arr = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=exif)
    (root / "img" / "tagged.png").write_bytes(buf.getvalue())
    Image.fromarray(arr).save(root / "img" / "plain.png")
    Image.fromarray(np.rot90(arr, k=-1).copy()).save(root / "img" / "upright.png")
    rows = [{"image": f"img/{n}.png", "caption": n} for n in ("tagged", "plain", "upright")]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    g = {}
    for flag in (False, True):
        out = tmp_path / f"x{flag}.zarr"
        extract(ExtractConfig(model="tiny", data="pairs", root=str(root), out=str(out), workers=0, exif_transpose=flag))
        r = CacheReader(out)
        rows_ = {o.split("/")[1][:-4]: i for i, o in enumerate(r.column("images/origin").tolist())}
        g[flag] = {k: r.read("images", "global", [i])[0] for k, i in rows_.items()}
    assert np.array_equal(g[False]["tagged"], g[False]["plain"])  # open_clip parity: the tag is ignored
    assert np.array_equal(g[True]["tagged"], g[True]["upright"]) and not np.array_equal(g[True]["tagged"], g[True]["plain"])
    assert CacheReader(tmp_path / "xTrue.zarr").attrs["extraction"]["exif_transpose"] is True


def test_every_image_missing_through_a_bad_root_exits_non_zero(tmp_path):
    root = mini_sugarcrepe(tmp_path / "sc")
    shutil.rmtree(root / "val2017")
    res = _extract(root, tmp_path / "x.zarr", data="sugarcrepe")
    assert res.exit_code == 1 and "every one of the 6 images failed" in _said(res) and "file not found" in _said(res)


# ---- a bug is not bad input ---------------------------------------------------------------------------------------

def test_a_bug_in_the_library_keeps_its_traceback_while_bad_input_stays_a_message(mini_sc_cache, pairs_dir, tmp_path,
                                                                                  monkeypatch):
    import compalign.evaluate.metrics as metrics
    import compalign.extract.runner as runner

    def broken(*args, **kwargs):
        raise ZeroDivisionError("an injected bug")

    monkeypatch.setattr(metrics, "sugarcrepe_metrics", broken)
    monkeypatch.setattr("compalign.evaluate.benchmarks.sugarcrepe.sugarcrepe_metrics", broken)
    res = _score(mini_sc_cache)
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError) and "error:" not in res.output
    res = _score(mini_sc_cache, "--head", "nope")  # bad input beside it: still one line, exit 2
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit) and res.output.startswith("error: unknown head")

    monkeypatch.setattr(runner, "_extract_texts", broken)
    res = _extract(pairs_dir, tmp_path / "x.zarr")
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError)
    res = _extract(pairs_dir, tmp_path / "y.zarr", "--batch-size", "0")
    assert res.exit_code == 2 and "--batch-size must be at least 1" in res.output


UNRETRIEVED = """
import asyncio, gc, sys
from compalign.cli.common import setup_logging
setup_logging(verbose=sys.argv[1] == "-v")
async def write():  # a request cut short by a lost connection, whose task nobody awaits (s3fs's loop)
    raise ConnectionResetError("Cannot write to closing transport")
async def main():
    asyncio.ensure_future(write())
    await asyncio.sleep(0.01)
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
gc.collect()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_asyncios_tracebacks_of_requests_a_lost_connection_cut_short_show_only_with_verbose(verbose):
    """The run's own error says in one line that the connection was lost (test_s3.py); asyncio's log of each
    request cut off mid-write, with its traceback, is noise then, and was printed under it."""
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    got = subprocess.run([sys.executable, "-c", UNRETRIEVED, "-v" if verbose else "-q"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": src, "COLUMNS": "200"})
    assert got.returncode == 0, got.stderr
    assert ("Task exception was never retrieved" in got.stdout + got.stderr) == verbose
