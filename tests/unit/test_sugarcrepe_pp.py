"""SugarCrepe++: ITT / TOT on every ordering of their scores, and `global` scoring of a tiny extract of the
official list-form files against numpy cosines of the cached embeddings."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images
from recompute import unit

import compalign.evaluate.benchmarks.sugarcrepe_pp  # noqa: F401  (registers sugarcrepe_pp)
from compalign.cache import CacheReader, open_cache
from compalign.core import InputError
from compalign.evaluate.benchmarks.base import BENCHMARKS, columns
from compalign.evaluate.metrics import sugarcrepe_pp_outcomes
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.sources import SourceError, plan_source
from compalign.heads import create_head
from compalign.heads.global_head import GlobalHead

SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def test_itt_and_tot_on_every_ordering_of_their_scores():
    """All 3**6 assignments of (ip1, ip2, ineg, tp1p2, tp1n, tp2n) from {0, 1, 2}, ties included, at once."""
    grid = np.array(list(itertools.product([0.0, 1.0, 2.0], repeat=6)))  # (729, 6)
    out = sugarcrepe_pp_outcomes(*grid.T)
    seen = set()
    for j, (ip1, ip2, ineg, tp1p2, tp1n, tp2n) in enumerate(grid):
        itt = ip1 > ineg and ip2 > ineg  # both positives above the negative; a tie is wrong
        tot = tp1p2 > tp1n and tp1p2 > tp2n  # the paraphrases closer to each other than either is to N
        assert (bool(out["ITT"][j]), bool(out["TOT"][j])) == (itt, tot), grid[j]
        seen.add((ip1 > ineg, ip2 > ineg, tp1p2 > tp1n, tp1p2 > tp2n))
    assert len(seen) == 16  # every combination of the four comparisons occurs (they share no score pair)
    # of the 27 assignments of three scores, 5 put a given one strictly beyond both others (ITT: ineg below
    # both positives; TOT: tp1p2 above both) -- a count that any tie counted as right would raise
    assert out["ITT"].sum() == 5 * 27 and out["TOT"].sum() == 5 * 27


def test_tot_is_absent_without_text_scores():
    s = np.array([0.5, 0.4])
    out = sugarcrepe_pp_outcomes(s, s, s - 0.1, None, None, None)
    assert set(out) == {"ITT"} and out["ITT"].all()


def test_metrics_from_columns_per_subset_category_macro_micro():
    cols = columns([
        {"id": "a", "subset": "swap_att", "valid": True, "ITT": True, "TOT": False},
        {"id": "b", "subset": "swap_att", "valid": True, "ITT": False, "TOT": False},
        {"id": "c", "subset": "swap_obj", "valid": True, "ITT": True, "TOT": True},
        {"id": "d", "subset": "replace_rel", "valid": True, "ITT": True, "TOT": True},
        {"id": "e", "subset": "replace_rel", "valid": False, "ITT": False, "TOT": False},  # left out
    ])
    m = BENCHMARKS.get("sugarcrepe_pp").metrics(cols)
    assert m["swap_att/ITT"] == 50.0 and m["swap_obj/ITT"] == 100.0 and m["replace_rel/ITT"] == 100.0
    assert m["swap/ITT"] == pytest.approx(100 * 2 / 3) and m["replace/ITT"] == 100.0  # categories: item-weighted
    assert m["ITT"] == pytest.approx((50 + 100 + 100) / 3)  # macro: the mean of the subsets present
    assert m["micro/ITT"] == 75.0  # micro: the 4 valid items
    assert m["swap_att/TOT"] == 0.0 and m["TOT"] == pytest.approx(200 / 3) and m["micro/TOT"] == 50.0
    no_tot = {k: v for k, v in cols.items() if k != "TOT"}
    assert not any("TOT" in k for k in BENCHMARKS.get("sugarcrepe_pp").metrics(no_tot))


def _scpp_root(root: Path, n: int = 5) -> Path:
    """The SugarCrepe++ layout: five list-form JSONs {id, filename, caption, caption2, negative_caption}
    over shared COCO-style images, plus a SugarCrepe dict-form add_att.json (no caption2) beside them."""
    rng = np.random.default_rng(1)
    words = "red blue green small large dog cat horse table chair left of under holding beside".split()
    say = lambda: " ".join(rng.choice(words, 6))  # noqa: E731  varied captions, so outcomes vary
    names = [f"{i:012d}.jpg" for i in range(8)]
    make_images(root / "val2017", names, size=(32, 32), seed=3)
    for s in SUBSETS:
        rows = [{"id": 10 * k, "filename": names[(k + len(s)) % len(names)], "caption": say(), "caption2": say(),
                 "negative_caption": say()} for k in range(n)]
        (root / f"{s}.json").write_text(json.dumps(rows))
    (root / "add_att.json").write_text(json.dumps({"0": {"filename": names[0], "caption": say(),
                                                         "negative_caption": say()}}))
    return root


@pytest.fixture(scope="module")
def scpp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = _scpp_root(tmp_path_factory.mktemp("scpp") / "data")
    out = root.parent / "scpp.zarr"
    extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root), out=str(out), workers=0, shard_rows=8))
    return root, out



def test_global_outcomes_and_metrics_equal_numpy_cosines_of_the_cache(scpp):
    _, out = scpp
    bench = BENCHMARKS.create("sugarcrepe_pp")
    result = bench.evaluate(open_cache(out), create_head("global"))
    # Independently: cosines of the cached global embeddings, in float64, item by item.
    r = CacheReader(out)
    it = r.items
    pp = it["caption2"] != ""  # add_att (SugarCrepe, no caption2) is not a SugarCrepe++ item
    assert set(it["subset"][~pp].tolist()) == {"add_att"}
    emb = {c: unit(r.read("texts", "global", r.rows("texts", it[c][pp])))
           for c in ("caption", "caption2", "negative_caption")}
    im = unit(r.read("images", "global", r.rows("images", it["image"][pp])))
    cos = lambda a, b: (a * b).sum(1)  # noqa: E731
    ip1, ip2, ineg = cos(im, emb["caption"]), cos(im, emb["caption2"]), cos(im, emb["negative_caption"])
    tp1p2, tp1n, tp2n = (cos(emb["caption"], emb["caption2"]), cos(emb["caption"], emb["negative_caption"]),
                         cos(emb["caption2"], emb["negative_caption"]))
    # No comparison within float32 noise, so the verdicts must agree exactly (a precondition of this fixture).
    assert min(np.abs(ip1 - ineg).min(), np.abs(ip2 - ineg).min(), np.abs(tp1p2 - tp1n).min(),
               np.abs(tp1p2 - tp2n).min()) > 1e-5
    itt, tot = (ip1 > ineg) & (ip2 > ineg), (tp1p2 > tp1n) & (tp1p2 > tp2n)
    assert 0 < itt.sum() < len(itt) and 0 < tot.sum() < len(tot)  # both outcomes occur: the test can tell
    assert [i["id"] for i in result.items] == it["id"][pp].tolist()
    assert set(result.items[0]) == {"id", "subset", "valid", "ITT", "TOT", "bow_proof"}
    np.testing.assert_array_equal([i["ITT"] for i in result.items], itt)
    np.testing.assert_array_equal([i["TOT"] for i in result.items], tot)
    subset = it["subset"][pp]
    m = result.metrics
    for o, v in (("ITT", itt), ("TOT", tot)):
        per = {s: 100 * v[subset == s].mean() for s in SUBSETS}
        for s in SUBSETS:
            assert m[f"{s}/{o}"] == pytest.approx(per[s], abs=1e-9)
        assert m[f"swap/{o}"] == pytest.approx(100 * v[np.isin(subset, ("swap_att", "swap_obj"))].mean(), abs=1e-9)
        assert m[o] == pytest.approx(np.mean(list(per.values())), abs=1e-9)
        assert m[f"micro/{o}"] == pytest.approx(100 * v.mean(), abs=1e-9)
    assert bench.metrics(columns(result.items)) == result.metrics  # recomputable from its own records
    assert result.counts == {"items": 25, "invalid": 0, "bow_proof": 0}
    assert result.notes == ["1 of 26 items have no caption2 (subsets add_att: SugarCrepe, not SugarCrepe++) and are left out"]


class _NoTextText(GlobalHead):
    """A head like `global` but without a caption-caption score (the contract's default)."""
    text_text = False

    def score_text_pairs(self, a, b):
        raise NotImplementedError("no text-text score")


def test_a_head_without_text_scores_reports_itt_only_and_says_so(scpp):
    _, out = scpp
    full = BENCHMARKS.create("sugarcrepe_pp").evaluate(open_cache(out), create_head("global"))
    part = BENCHMARKS.create("sugarcrepe_pp").evaluate(open_cache(out), _NoTextText())
    assert not any("TOT" in k for k in part.metrics) and "TOT" not in part.items[0]
    assert part.metrics == {k: v for k, v in full.metrics.items() if "TOT" not in k}
    assert any("no text-text score: TOT is absent" in n for n in part.notes)


def test_a_sugarcrepe_cache_is_refused_naming_the_right_bench(mini_sc_cache):
    with pytest.raises(InputError, match=r"no second positive caption \(caption2\).*--bench sugarcrepe"):
        BENCHMARKS.create("sugarcrepe_pp").evaluate(open_cache(mini_sc_cache), create_head("global"))


def test_malformed_list_files_name_file_row_and_fix(tmp_path):
    _scpp_root(tmp_path, n=2)
    rows = json.loads((tmp_path / "swap_obj.json").read_text())
    del rows[1]["negative_caption"]
    (tmp_path / "swap_obj.json").write_text(json.dumps(rows))
    plan = plan_source("sugarcrepe", tmp_path)
    assert plan.problems == ["swap_obj.json item 1: missing or non-text field(s) negative_caption; skipped"]
    (tmp_path / "swap_att.json").write_text('[{"id": 0, "filename": "x.jpg",]')
    with pytest.raises(SourceError, match=r"swap_att.json: malformed JSON at line 1, column \d+.*Re-download"):
        plan_source("sugarcrepe", tmp_path)
