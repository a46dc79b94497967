"""`compalign study` end to end on a tiny world: every method scored, the tables are the score files, a rerun reuses all."""

from __future__ import annotations

import csv
import json
import math

from safetensors.torch import load_file
from typer.testing import CliRunner

from compalign.cli.main import app
from compalign.cli.study import COLUMNS, FINETUNED, FREE, SPLITS, TRAINED
from compalign.core.assets import TINY_CHECKPOINT

ARGS = ["--n-train", "30", "--n-test", "20", "--head-steps", "4", "--finetune-steps", "2", "--bootstrap", "20"]


def test_study_scores_every_method_and_a_rerun_reuses_everything(tmp_path):
    out = tmp_path / "study"
    res = CliRunner().invoke(app, ["study", "--out", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    methods = [*FREE, *TRAINED, *FINETUNED]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows[::len(SPLITS) * len(COLUMNS)]] == methods
    for r in rows:  # every cell is its score file's metric and interval
        if r["method"] == "blind" and r["bench"] == "retrieval":  # a text-only score cannot rank images: no file
            assert math.isnan(float(r["value"])) and not (out / "scores" / f"blind-{r['split']}-retrieval.json").exists()
            continue
        d = json.loads((out / "scores" / f"{r['method']}-{r['split']}-{r['bench']}.json").read_text())
        assert d["bench"] == r["bench"] and float(r["value"]) == d["metrics"][r["metric"]]
        lo, hi = d["intervals"][r["metric"]]
        assert (float(r["ci_low"]), float(r["ci_high"])) == (lo, hi) or math.isnan(d["metrics"][r["metric"]])
        assert d["head"].split("@")[0] == ("global" if r["method"] in FINETUNED else r["method"])
    # trained heads and fine-tuned backbones report their parameters and train time; the frozen heads none
    params = {r["method"]: int(r["params"]) for r in rows}
    assert all(params[m] == 0 for m in FREE) and all(params[m] > 0 for m in (*TRAINED, *FINETUNED))
    shipped = load_file(str(TINY_CHECKPOINT / "open_clip_model.safetensors"))
    assert all(params[m] == sum(t.numel() for t in shipped.values()) for m in FINETUNED)  # the whole backbone trains
    assert params["tflocal_coloc"] < params["full"]
    for m in FINETUNED:  # each method fine-tuned its own backbone, and its caches were extracted with it
        rec = json.loads((out / "backbones" / m / "open_clip_config.json").read_text())["compalign"]
        assert rec["finetune"]["method"] == m and rec["finetune"]["steps"] == 2
        cache = json.loads((out / "caches" / f"{m}-test_id-sugarcrepe.zarr" / "zarr.json").read_text())
        assert cache["attributes"]["backbone"]["name"] == f"local-dir:{out / 'backbones' / m}"
    for split in SPLITS:  # the region heads ran on caches that carry both region sets
        attrs = json.loads((out / "caches" / f"tiny-{split}-sugarcrepe.zarr" / "zarr.json").read_text())["attributes"]
        assert attrs["extraction"]["crops"]["spec"] == "grid+oracle", attrs["extraction"]
        blind = json.loads((out / "scores" / f"blind-{split}-bivlc.json").read_text())["metrics"]
        assert blind["I2T"] == blind["T2I"] == 0.0  # text-only: both images of a pair get the same score
    md = (out / "results.md").read_text()
    assert "## test_id" in md and "## test_ood" in md and "| regions_roi |" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "results.csv").read_bytes()
    res2 = CliRunner().invoke(app, ["study", "--out", str(out), *ARGS])
    assert res2.exit_code == 0 and "(cached)" in res2.output, res2.output
    assert (out / "results.csv").read_bytes() == before  # nothing recomputed differently
