"""`compalign demo` end to end on a small world: world -> extract -> score -> table, JSON, chart."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from recompute import unit
from typer.testing import CliRunner

from compalign.cache import CacheReader
from compalign.cli.main import app

HEADS = ("global", "maxsim", "global_mlp", "tflocal_coloc")  # the demo's table columns, in order
CONTROL = "blind"  # the text-only control: its own table, SugarCrepe and BiVLC only
SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj")
BIVLC = ("Ipos2T", "Ineg2T", "Tpos2I", "Tneg2I", "I2T", "T2I", "Group")
NOISE = 1e-6  # float32 noise: verdicts this close to a tie may differ from a float64 recomputation



def _check_sugarcrepe(d, folder):
    """The metrics are the accuracies of the file's own items, as many per subset as the world's JSON holds."""
    want_n = {s: len(json.loads((folder / f"{s}.json").read_text())) for s in SUBSETS}
    subset = np.array([i["subset"] for i in d["items"]])
    correct = np.array([i["correct"] for i in d["items"]])
    assert {s: int((subset == s).sum()) for s in SUBSETS} == want_n and all(i["valid"] for i in d["items"])
    # the world's swaps reorder the positive's own words; its replacements and additions never do
    bow = np.array([i["bow_proof"] for i in d["items"]])
    np.testing.assert_array_equal(bow, np.char.startswith(subset, "swap_"))
    assert d["counts"] == {"items": sum(want_n.values()), "invalid": 0, "bow_proof": int(bow.sum())}
    np.testing.assert_array_equal(correct, [i["pos"] > i["neg"] for i in d["items"]])  # strict: a tie is wrong
    m = d["metrics"]
    assert set(m) == {*SUBSETS, "replace", "swap", "add", "macro", "micro",
                      *(f"bow_proof/{k}" for k in ("swap_att", "swap_obj", "swap", "macro", "micro"))}
    assert m["bow_proof/swap_att"] == m["swap_att"] and m["bow_proof/micro"] == m["swap"]  # the same items
    for s in SUBSETS:
        assert m[s] == pytest.approx(100 * correct[subset == s].mean(), abs=1e-9), s
    for cat in ("replace", "swap", "add"):
        assert m[cat] == pytest.approx(100 * correct[np.char.startswith(subset, cat + "_")].mean(), abs=1e-9), cat
    assert m["macro"] == pytest.approx(np.mean([m[s] for s in SUBSETS]), abs=1e-9)  # the mean of the subsets
    assert m["micro"] == pytest.approx(sum(m[s] * n for s, n in want_n.items()) / sum(want_n.values()), abs=1e-9)


def _check_bivlc(d, folder):
    """Per-item outcomes combine as BiVLC defines them; the metrics are their accuracies, overall and per type."""
    n = sum(pq.read_metadata(f).num_rows for f in folder.glob("*.parquet"))
    bow = np.array([i["bow_proof"] for i in d["items"]])
    np.testing.assert_array_equal(bow, [i["subset"].startswith("swap/") for i in d["items"]])  # as in SugarCrepe
    assert len(d["items"]) == n and d["counts"] == {"items": n, "invalid": 0, "bow_proof": int(bow.sum())}
    assert all(i["valid"] for i in d["items"])
    o = {k: np.array([i[k] for i in d["items"]]) for k in BIVLC}
    np.testing.assert_array_equal(o["I2T"], o["Ipos2T"] & o["Ineg2T"])
    np.testing.assert_array_equal(o["T2I"], o["Tpos2I"] & o["Tneg2I"])
    np.testing.assert_array_equal(o["Group"], o["I2T"] & o["T2I"])
    kind = np.array([i["subset"].split("/")[0] for i in d["items"]])
    m = d["metrics"]
    assert set(m) == {*BIVLC, *(f"{t}/{k}" for t in set(kind.tolist()) for k in BIVLC),
                      *(f"bow_proof/{p}{k}" for p in ("", "swap/") for k in BIVLC)}
    assert all(m[f"bow_proof/{k}"] == m[f"swap/{k}"] for k in BIVLC)  # the bag-of-words-proof items are the swaps
    for k in BIVLC:
        assert m[k] == pytest.approx(100 * o[k].mean(), abs=1e-9), k
        for t in set(kind.tolist()):
            assert m[f"{t}/{k}"] == pytest.approx(100 * o[k][kind == t].mean(), abs=1e-9), (t, k)


def _check_global_from_cache(bench, d, store):
    """The `global` head's verdicts are numpy's cosine of the cached global embeddings compared strictly."""
    r = CacheReader(store)
    it = r.items
    assert [i["id"] for i in d["items"]] == it["id"].tolist()
    img = {c: unit(r.read("images", "global", r.rows("images", it[c]))) for c in ("image", "negative_image") if c in it}
    txt = {c: unit(r.read("texts", "global", r.rows("texts", it[c]))) for c in ("caption", "negative_caption")}
    if bench == "sugarcrepe":
        pos, neg = (img["image"] * txt["caption"]).sum(1), (img["image"] * txt["negative_caption"]).sum(1)
        np.testing.assert_allclose([i["pos"] for i in d["items"]], pos, atol=NOISE, rtol=0)
        np.testing.assert_allclose([i["neg"] for i in d["items"]], neg, atol=NOISE, rtol=0)
        pairs = {"correct": (pos, neg)}
    else:
        (c0i0, c1i0), (c0i1, c1i1) = [[(img[i] * txt[c]).sum(1) for c in ("caption", "negative_caption")]
                                      for i in ("image", "negative_image")]
        pairs = {"Ipos2T": (c0i0, c1i0), "Ineg2T": (c1i1, c0i1), "Tpos2I": (c0i0, c0i1), "Tneg2I": (c1i1, c1i0)}
    for k, (a, b) in pairs.items():
        clear = np.abs(a - b) > NOISE
        assert clear.mean() > 0.95, k
        np.testing.assert_array_equal(np.array([i[k] for i in d["items"]])[clear], (a > b)[clear], err_msg=k)


def _tables(output):
    """The printed tables, each as row label -> one "test_id / test_ood" cell per head."""
    tables, rows = [], {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells[1:]
        elif line.startswith("└"):
            tables.append(rows)
            rows = {}
    return tables


def test_demo_runs_the_whole_pipeline_and_writes_its_figures(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-train", "30", "--n-test", "20", "--train-steps", "6"])
    assert res.exit_code == 0, res.output
    assert "swap_att" in res.output and "Group" in res.output
    metrics = {}
    for bench in ("sugarcrepe", "bivlc"):
        for split in ("test_id", "test_ood"):
            for head in (*HEADS, CONTROL):
                d = json.loads((out / "scores" / f"{bench}-{split}-{head}.json").read_text())
                assert d["bench"] == bench and d["head"].split("@")[0] == head and d["items"]  # trained: NAME@RUN
                folder = out / "world" / split / bench
                (_check_sugarcrepe if bench == "sugarcrepe" else _check_bivlc)(d, folder)
                if head == "global":
                    _check_global_from_cache(bench, d, out / "caches" / f"tiny-{split}-{bench}.zarr")
                metrics[bench, split, head] = d["metrics"]
    # the tables show the numbers of the score files, to one decimal
    table, control = _tables(res.output)
    shown = [("sugarcrepe", m, m) for m in (*SUBSETS, "macro")] + [("bivlc", f"BiVLC {m}", m) for m in ("I2T", "T2I", "Group")]
    shown += [("retrieval", m, m) for m in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5")]
    for split in ("test_id", "test_ood"):  # retrieval: every head scored the world's Karpathy split
        for head in HEADS:
            d = json.loads((out / "scores" / f"retrieval-{split}-{head}.json").read_text())
            world = json.loads((out / "world" / split / "retrieval" / "dataset_shapes.json").read_text())
            assert d["counts"]["images"] == len(world["images"]) == 20
            assert d["counts"]["items"] == sum(len(im["sentences"]) for im in world["images"])
            assert any(n.startswith("re-ranked by") for n in d["notes"]) == (head != "global")  # trained heads re-rank
            metrics["retrieval", split, head] = d["metrics"]
    assert list(table) == [label for _, label, _ in shown]
    for bench, label, m in shown:
        want = [" / ".join(f"{metrics[bench, split, head][m]:.1f}" for split in ("test_id", "test_ood")) for head in HEADS]
        assert table[label] == want, label
    assert list(control) == [label for bench, label, _ in shown if bench != "retrieval"]
    for bench, label, m in shown[:-4]:
        assert control[label] == [" / ".join(f"{metrics[bench, split, CONTROL][m]:.1f}" for split in ("test_id", "test_ood"))]
    for split in ("test_id", "test_ood"):  # a text-only score cannot win a two-images comparison (tests/unit/test_blind)
        assert metrics["bivlc", split, CONTROL]["T2I"] == metrics["bivlc", split, CONTROL]["I2T"] == 0.0
    assert not (out / "scores" / "retrieval-test_id-blind.json").exists()  # the control never re-ranks retrieval
    # the trained heads were written as loadable runs
    for head in ("global_mlp", "tflocal_coloc", CONTROL):
        assert (out / "runs" / head / "head.safetensors").is_file()
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses the world and every cache (resume finds all shards done)
    res2 = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-train", "30", "--n-test", "20", "--train-steps", "6"])
    assert res2.exit_code == 0 and "cached" in res2.output and "0 shards already done" not in res2.output
    assert _tables(res2.output) == [table, control]  # the same caches and kept heads score the same
