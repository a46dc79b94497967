"""Bootstrap intervals, paired comparisons, `score --bootstrap` and `compalign-heads compare`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compalign.cli.heads import app
from compalign.core import InputError
from compalign.evaluate.benchmarks.base import columns, create_benchmark
from compalign.evaluate.uncertainty import bootstrap_intervals, paired_comparison

SUBSETS = ("swap_att", "replace_obj")
WIDE = {"COLUMNS": "220"}  # rich wraps a table to 80 columns under CliRunner: keep every row on one line


def sc_items(correct_by_subset: dict[str, list[bool]]) -> list[dict]:
    """SugarCrepe-shaped per-item records (what `score --json` writes) with the given outcomes."""
    return [{"id": f"{s}/{i}", "subset": s, "pos": 1.0 if c else 0.0, "neg": 0.5, "correct": bool(c), "valid": True}
            for s, outcomes in correct_by_subset.items() for i, c in enumerate(outcomes)]


def random_items(per_subset: int, rate: float = 0.7, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return sc_items({s: list(rng.random(per_subset) < rate) for s in SUBSETS})


def _said(res) -> str:
    return " ".join(res.output.split())  # rich wraps long messages; compare the words


# ---- bootstrap intervals ----------------------------------------------------------------------------------------

def test_all_correct_gives_100_100():
    iv = bootstrap_intervals("sugarcrepe", sc_items({s: [True] * 20 for s in SUBSETS}), n=200)
    assert set(iv) == {*SUBSETS, "swap", "replace", "macro", "micro"}
    assert all(v == [100.0, 100.0] for v in iv.values())


def test_intervals_contain_the_estimate_and_follow_the_seed():
    items = random_items(200)
    point = create_benchmark("sugarcrepe").metrics(columns(items))
    iv = bootstrap_intervals("sugarcrepe", items, n=500, seed=3)
    assert set(iv) == set(point)
    for k, (lo, hi) in iv.items():
        assert lo < point[k] < hi, k
    assert bootstrap_intervals("sugarcrepe", items, n=500, seed=3) == iv  # reproducible
    assert bootstrap_intervals("sugarcrepe", items, n=500, seed=4) != iv  # and the seed is used


def test_intervals_narrow_with_more_items_at_the_binomial_width():
    def width(per_subset: int) -> float:
        lo, hi = bootstrap_intervals("sugarcrepe", random_items(per_subset), n=1000)["micro"]
        return hi - lo

    small, large = width(50), width(2000)
    assert small > 4 * large  # sqrt(40) = 6.3 in theory
    # the micro mean of 4,000 Bernoulli(0.7) items: 2 * 1.96 * sqrt(p (1 - p) / N) percent, give or take
    assert large == pytest.approx(2 * 1.96 * 100 * math.sqrt(0.7 * 0.3 / 4000), rel=0.15)


def test_intervals_of_a_retrieval_result_with_misses():
    """The object `rank` column (None = target not ranked at all) resamples like any other."""
    items = [{"id": str(i), "subset": "t2i", "rank": 1} for i in range(30)]
    items += [{"id": f"img{i}", "subset": "i2t", "rank": None if i % 2 else 3} for i in range(30)]
    iv = bootstrap_intervals("retrieval", items, n=300)
    assert iv["t2i_R@1"] == iv["t2i_R@10"] == [100.0, 100.0]
    assert iv["i2t_R@1"] == [0.0, 0.0]
    lo, hi = iv["i2t_R@5"]
    assert lo < 50 < hi


def test_bad_bootstrap_arguments():
    with pytest.raises(InputError, match="at least 1 replicate"):
        bootstrap_intervals("sugarcrepe", random_items(5), n=0)
    with pytest.raises(InputError, match="between 0 and 1"):
        bootstrap_intervals("sugarcrepe", random_items(5), level=95)


# ---- paired comparison ------------------------------------------------------------------------------------------

def fixed_pair(k: int) -> tuple[list[dict], list[dict]]:
    """A: 64 items (2 subsets of 32), 24 wrong; B: A with exactly k of A's wrong items fixed.

    32 items a subset and 64 in all: every percent (100·c/32, 100·c/64) is exact in binary floating point,
    so the deltas can be compared with ==.
    """
    rng = np.random.default_rng(7)
    a = {s: [True] * 20 + [False] * 12 for s in SUBSETS}
    for s in SUBSETS:
        rng.shuffle(a[s])
    b = {s: list(v) for s, v in a.items()}
    wrong = [(s, i) for s in SUBSETS for i, c in enumerate(a[s]) if not c]
    fixed = [wrong[j] for j in rng.choice(len(wrong), k, replace=False)]
    for s, i in fixed:
        b[s][i] = True
    return sc_items(a), sc_items(b)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_b_fixing_k_items_moves_micro_by_exactly_100k_over_n(k):
    a, b = fixed_pair(k)
    res = paired_comparison("sugarcrepe", a, b, n=1000)
    m = res["micro"]
    assert m["a"] == 100 * 40 / 64 and m["b"] == 100 * (40 + k) / 64
    assert m["delta"] == 100 * k / 64
    fixed_in = {s: sum(x["correct"] != y["correct"] for x, y in zip(a, b) if x["subset"] == s) for s in SUBSETS}
    for s in SUBSETS:
        assert res[s]["delta"] == 100 * fixed_in[s] / 32
    assert res["macro"]["delta"] == 100 * k / 64  # equal-sized subsets: the macro mean moves as the micro one
    lo, hi = m["ci"]
    assert 0 <= lo <= m["delta"] <= hi  # B is never worse on a resample: the delta cannot go below 0
    if k == 20:
        assert m["p"] < 0.01 and lo > 0
    if k == 1:
        # the fixed item is left out of about (31/32)^32 = 36% of the stratum's resamples: p near 0.72, not small
        assert m["p"] > 0.3


def test_identical_runs_have_p_1_and_a_zero_interval():
    a, _ = fixed_pair(0)
    res = paired_comparison("sugarcrepe", a, [dict(it) for it in a], n=300)
    for k, m in res.items():
        assert m["delta"] == 0 and m["ci"] == [0.0, 0.0] and m["p"] == 1.0, k


def test_swapping_the_runs_mirrors_the_comparison():
    """The same resampled rows for both runs: B vs A is exactly A vs B with the sign flipped."""
    a, b = fixed_pair(4)
    ab, ba = paired_comparison("sugarcrepe", a, b, n=400), paired_comparison("sugarcrepe", b, a, n=400)
    for k in ab:
        assert ba[k]["delta"] == -ab[k]["delta"]
        assert ba[k]["ci"] == [-ab[k]["ci"][1], -ab[k]["ci"][0]]
        assert ba[k]["p"] == ab[k]["p"]


def test_each_runs_interval_from_the_pairs_is_its_own_bootstrap_interval():
    a, b = fixed_pair(6)
    res = paired_comparison("sugarcrepe", a, b, n=300, seed=5)
    ia, ib = (bootstrap_intervals("sugarcrepe", x, n=300, seed=5) for x in (a, b))
    assert {k: m["a_ci"] for k, m in res.items()} == ia and {k: m["b_ci"] for k, m in res.items()} == ib


def test_paired_comparison_refuses_different_items():
    a, b = fixed_pair(2)
    b[5] = {**b[5], "id": "somewhere/else"}
    with pytest.raises(InputError, match=r"item 5 is 'swap_att/5' in run A and 'somewhere/else' in run B.*same cache/items"):
        paired_comparison("sugarcrepe", a, b)
    with pytest.raises(InputError, match="run A has 64 items, run B 63"):
        paired_comparison("sugarcrepe", a, a[:-1])


# ---- the CLI ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored(mini_sc_cache, tmp_path_factory) -> dict[str, Path]:
    """`score --json` files of the global and maxsim heads on the mini SugarCrepe cache."""
    out = tmp_path_factory.mktemp("scores")
    files = {}
    for head in ("global", "maxsim"):
        files[head] = out / f"{head}.json"
        res = CliRunner().invoke(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--head", head,
                                       "--json", str(files[head])], env=WIDE)
        assert res.exit_code == 0, res.output
        assert "95% CI" in res.output
    return files


def test_score_json_has_intervals_and_precision(scored):
    data = json.loads(scored["global"].read_text())
    assert data["precision"] == "fp32"
    assert data["bootstrap"] == {"n": 1000, "seed": 0, "level": 0.95}
    assert set(data["intervals"]) == set(data["metrics"])
    for k, (lo, hi) in data["intervals"].items():
        assert lo <= data["metrics"][k] <= hi, k
    # the intervals are those of the file's own items: recomputable from the file alone
    assert data["intervals"] == bootstrap_intervals("sugarcrepe", data["items"], n=1000, seed=0)
    assert list(data)[-1] == "items" and len(data["items"]) == data["counts"]["items"]


def test_score_bootstrap_0_writes_no_intervals(mini_sc_cache, tmp_path):
    out = tmp_path / "g.json"
    res = CliRunner().invoke(app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--bootstrap", "0",
                                   "--json", str(out)], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "95% CI" not in res.output
    data = json.loads(out.read_text())
    assert "intervals" not in data and data["precision"] == "fp32"


def _read_csv(path: Path) -> dict[str, dict[str, float]]:
    with path.open() as f:
        return {row["metric"]: {k: float(v) for k, v in row.items() if k != "metric"} for row in csv.DictReader(f)}


def test_compare_writes_md_csv_png_with_the_jsons_values(scored, tmp_path):
    g, m = (json.loads(scored[h].read_text()) for h in ("global", "maxsim"))
    prefix = tmp_path / "out" / "cmp"
    res = CliRunner().invoke(app, ["compare", str(scored["global"]), str(scored["maxsim"]), "--out", str(prefix)], env=WIDE)
    assert res.exit_code == 0, res.output

    table = _read_csv(prefix.with_suffix(".csv"))
    assert list(table) == list(g["metrics"])
    for k, row in table.items():
        assert row["global"] == g["metrics"][k] and row["maxsim"] == m["metrics"][k]
        assert row["Δ maxsim"] == m["metrics"][k] - g["metrics"][k]
        # same replicates and seed as `score`: compare's intervals are the ones in the score files
        assert [row["global ci_low"], row["global ci_high"]] == g["intervals"][k]
        assert [row["maxsim ci_low"], row["maxsim ci_high"]] == m["intervals"][k]
        assert row["Δ maxsim ci_low"] <= row["Δ maxsim"] <= row["Δ maxsim ci_high"]
        assert 0 <= row["Δ maxsim p"] <= 1

    printed = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 2}
    md = {line.split("|")[1].strip(): line for line in prefix.with_suffix(".md").read_text().splitlines()[4:]}
    for k in g["metrics"]:
        for shown in (printed[k], md[k]):
            cells = [c.strip() for c in shown.replace("│", "|").split("|")[1:-1]]
            lo, hi = g["intervals"][k]
            assert cells[1] == f"{g['metrics'][k]:.1f} [{lo:.1f}, {hi:.1f}]"
            assert cells[2].startswith(f"{m['metrics'][k]:.1f} [")
            assert cells[3].startswith(f"{m['metrics'][k] - g['metrics'][k]:+.1f} [")

    png = prefix.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _score_file(path: Path, head: str, items: list[dict]) -> Path:
    """A hand-made `score --json` file: the fields compare reads, metrics recomputed from the items."""
    metrics = create_benchmark("sugarcrepe").metrics(columns(items))
    path.write_text(json.dumps({"bench": "sugarcrepe", "head": head, "metrics": metrics, "items": items}))
    return path


def test_compare_table_carries_the_paired_delta_ci_and_p(tmp_path):
    """Runs that differ (the mini cache's heads both get everything right): each cell is the library's number."""
    a, b = fixed_pair(20)
    fa, fb = _score_file(tmp_path / "a.json", "global", a), _score_file(tmp_path / "b.json", "global", b)
    res = CliRunner().invoke(app, ["compare", str(fa), str(fb), str(fa), "--out", str(tmp_path / "t"),
                                   "--bootstrap", "500", "--seed", "2"], env=WIDE)
    assert res.exit_code == 0, res.output
    labels = ["global (a) #1", "global (b)", "global (a) #3"]  # one head twice, then one file twice: all distinct
    assert f"Δ {labels[1]} vs {labels[0]}" in res.output
    pc = paired_comparison("sugarcrepe", a, b, n=500, seed=2)
    iv = bootstrap_intervals("sugarcrepe", b, n=500, seed=2)
    table = _read_csv(tmp_path / "t.csv")
    md = {line.split("|")[1].strip(): line for line in (tmp_path / "t.md").read_text().splitlines()[4:]}
    for k, row in table.items():
        d = f"Δ {labels[1]}"
        assert row[d] == pc[k]["delta"] and [row[f"{d} ci_low"], row[f"{d} ci_high"]] == pc[k]["ci"]
        assert row[f"{d} p"] == pc[k]["p"]
        assert [row[f"{labels[1]} ci_low"], row[f"{labels[1]} ci_high"]] == iv[k]
        assert row[f"Δ {labels[2]}"] == 0 and row[f"Δ {labels[2]} p"] == 1  # the first file against itself
        cells = [c.strip() for c in md[k].split("|")[1:-1]]
        lo, hi = pc[k]["ci"]
        assert cells[4] == f"{pc[k]['delta']:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    assert table["micro"][f"Δ {labels[1]}"] == 100 * 20 / 64
    assert md["micro"].split("|")[6].strip() == "<0.002"  # no replicate with delta <= 0 out of 500: p < 1/500


def test_compare_without_bootstrap_shows_values_and_deltas_only(tmp_path):
    a, b = fixed_pair(4)
    fa, fb = _score_file(tmp_path / "a.json", "global", a), _score_file(tmp_path / "b.json", "maxsim", b)
    res = CliRunner().invoke(app, ["compare", str(fa), str(fb), "--bootstrap", "0", "--out", str(tmp_path / "t")],
                             env=WIDE)
    assert res.exit_code == 0, res.output
    micro = [c.strip() for c in (tmp_path / "t.md").read_text().splitlines()[4:][-1].split("|")[1:-1]]
    assert micro == ["micro", "62.5", "68.8", "+6.2", "—"]
    assert (tmp_path / "t.png").stat().st_size > 0


def _copy(src: Path, dst: Path, change) -> Path:
    data = json.loads(src.read_text())
    change(data)
    dst.write_text(json.dumps(data))
    return dst


def test_compare_refuses_another_benchmark(scored, tmp_path):
    other = _copy(scored["maxsim"], tmp_path / "bivlc.json", lambda d: d.update(bench="bivlc"))
    res = CliRunner().invoke(app, ["compare", str(scored["global"]), str(other)], env=WIDE)
    assert res.exit_code == 2
    assert f"{other} is a bivlc result and {scored['global']} a sugarcrepe one" in _said(res)


def test_compare_refuses_other_items(scored, tmp_path):
    def drop_one(d):
        d["items"] = d["items"][1:]

    fewer = _copy(scored["maxsim"], tmp_path / "fewer.json", drop_one)
    res = CliRunner().invoke(app, ["compare", str(scored["global"]), str(scored["maxsim"]), str(fewer)], env=WIDE)
    assert res.exit_code == 2
    said = _said(res)
    first = json.loads(scored["global"].read_text())["items"][0]["id"]
    assert f"{scored['global']} and {fewer} were not scored on the same items (item 0 is {first!r}" in said
    assert "same cache/items" in said


def test_compare_refuses_what_is_not_a_score_file(scored, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    res = CliRunner().invoke(app, ["compare", str(scored["global"]), str(junk)], env=WIDE)
    assert res.exit_code == 2 and f"{junk} is not a score file" in _said(res)
    res = CliRunner().invoke(app, ["compare", str(scored["global"])], env=WIDE)
    assert res.exit_code == 2 and "two or more score files (got 1)" in _said(res)
