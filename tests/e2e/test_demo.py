"""`compalign demo` end to end on a small world: world -> extract -> score -> table, JSON, chart."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from compalign.cli.main import app


def test_demo_runs_the_whole_pipeline_and_writes_its_figures(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-train", "30", "--n-test", "20", "--train-steps", "6"])
    assert res.exit_code == 0, res.output
    assert "swap_att" in res.output and "Group" in res.output
    for bench in ("sugarcrepe", "bivlc"):
        for split in ("test_id", "test_ood"):
            for head in ("global", "maxsim", "global_mlp", "tflocal_coloc"):
                d = json.loads((out / "scores" / f"{bench}-{split}-{head}.json").read_text())
                assert d["bench"] == bench and d["head"].split("@")[0] == head and d["items"]  # trained: NAME@RUN
                assert all(0 <= v <= 100 for v in d["metrics"].values())
    # the trained heads were written as loadable runs
    for head in ("global_mlp", "tflocal_coloc"):
        assert (out / "runs" / head / "head.safetensors").is_file()
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses the world and every cache (resume finds all shards done)
    res2 = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-train", "30", "--n-test", "20", "--train-steps", "6"])
    assert res2.exit_code == 0 and "cached" in res2.output and "0 shards already done" not in res2.output
