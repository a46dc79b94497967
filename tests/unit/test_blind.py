"""The blind control: folds that never split a caption, cross-validated scores, and the benchmarks it cannot solve."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from compalign.cache.reader import CacheReader
from compalign.cli.heads import app
from compalign.evaluate.benchmarks import create_benchmark
from compalign.evaluate.benchmarks.base import columns
from compalign.evaluate.benchmarks.winoground import winoground_outcomes
from compalign.evaluate.blind import assign_folds, caption_groups, cross_validate_blind
from compalign.evaluate.metrics import bivlc_outcomes
from compalign.heads import create_head


def test_items_sharing_a_caption_are_one_group_and_folds_take_whole_groups():
    items = {"caption": np.array(["a", "b", "a", "c", "d", "e"]),
             "negative_caption": np.array(["x", "y", "z", "x", "", "f"])}
    # 0 and 2 share "a"; 0 and 3 share "x"; so {0, 2, 3}; 1, 4 and 5 alone ("" is no caption)
    g = caption_groups(items, ["caption", "negative_caption"])
    assert g.tolist() == [0, 1, 0, 0, 4, 5]
    folds = assign_folds(g, 2, seed=0)
    assert folds[0] == folds[2] == folds[3]
    assert sorted(np.bincount(folds).tolist()) == [3, 3]  # the big group fills one fold, the three singles the other
    np.testing.assert_array_equal(assign_folds(g, 2, seed=0), folds)  # seeded


@pytest.mark.parametrize("seed", range(5))
def test_a_text_only_score_can_never_win_a_two_by_two_comparison(seed):
    # s(caption c, image i) = f(c): every image comparison is a tie (wrong), every text comparison contradicts itself.
    f0, f1 = np.random.default_rng(seed).normal(size=(2, 100))
    wino = winoground_outcomes(c0i0=f0, c1i0=f1, c0i1=f0, c1i1=f1)
    assert not any(v.any() for v in wino.values())
    bivlc = bivlc_outcomes(f0, f1, f0, f1)
    assert not any(bivlc[k].any() for k in ("I2T", "T2I", "Group", "Tpos2I", "Tneg2I"))
    assert (bivlc["Ipos2T"] == (f0 > f1)).all() and (bivlc["Ineg2T"] == (f1 > f0)).all()  # one side each, never both


def test_cross_validated_blind_learns_the_negatives_tell_and_never_scores_a_caption_it_saw(mini_sc_cache):
    reader = CacheReader(mini_sc_cache)
    bench = create_benchmark("sugarcrepe")
    # The fixture's negatives all read "a blue circle number i in <subset>", its positives "a red square number i".
    untrained = create_head("blind")
    untrained.attach(reader)
    before = bench.evaluate(reader, untrained)
    assert before.metrics["micro"] < 100.0  # precondition: the unfitted head does not already tell them apart
    result = cross_validate_blind(bench, reader, folds=3, steps=100)
    assert result.head == "blind (3-fold)" and result.metrics["micro"] == 100.0
    assert [(r["subset"], r["id"]) for r in result.items] == [(r["subset"], r["id"]) for r in before.items]
    assert result.metrics == bench.metrics(columns(result.items)) and result.counts == before.counts
    assert "3-fold cross-validated" in result.notes[-1]
    # No caption in two folds: each item's positive (shared by its swap_att and replace_obj items) stays in one.
    it = reader.items
    folds = assign_folds(caption_groups(it, ["caption", "negative_caption"]), 3, seed=0)
    for key in set(it["caption"].tolist()) | set(it["negative_caption"].tolist()):
        assert len({int(f) for f, a, b in zip(folds, it["caption"], it["negative_caption"]) if key in (a, b)}) == 1


def test_score_cli_folds_and_its_messages(mini_sc_cache, tmp_path):
    run = CliRunner().invoke
    res = run(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--head", "global", "--folds", "3"])
    assert res.exit_code == 2 and "--folds cross-validates the blind control" in res.output
    res = run(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--head", "blind"])
    assert res.exit_code == 2 and "`--folds 5` fits it on sugarcrepe's own items" in res.output
    res = run(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--head", "blind", "--folds", "1"])
    assert res.exit_code == 2 and "--folds must be at least 2 (got 1)" in res.output
    res = run(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--head", "blind", "--folds", "3",
                    "--bootstrap", "0", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "b.json").read_text())
    assert d["head"] == "blind (3-fold)" and d["metrics"]["micro"] == 100.0 and "3-fold cross-validated" in d["notes"][-1]
