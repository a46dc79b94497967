"""Winoground: text / image / group on every ordering of the four scores, the Hugging Face parquet layout
(and its malformed variants), and `global` scoring of a tiny extract against numpy cosines of the cache."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from recompute import unit

import compalign.evaluate.benchmarks.winoground  # noqa: F401  (registers the benchmark)
import compalign.extract.sources.winoground  # noqa: F401  (registers the data source)
from compalign.cache import CacheReader, open_cache
from compalign.core import InputError
from compalign.evaluate.benchmarks.base import BENCHMARKS, columns
from compalign.evaluate.benchmarks.winoground import winoground_outcomes
from compalign.evaluate.metrics import bivlc_outcomes
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.sources import SourceError, plan_source
from compalign.heads import create_head

DOWNLOAD = "huggingface-cli download facebook/winoground --repo-type dataset"


def test_text_image_group_on_every_ordering_of_four_scores():
    """All 3**4 assignments of (c0i0, c1i0, c0i1, c1i1) from {0, 1, 2}, ties included, at once."""
    grid = np.array(list(itertools.product([0.0, 1.0, 2.0], repeat=4)))  # (81, 4)
    out = winoground_outcomes(*grid.T)
    seen = set()
    for j, (c0i0, c1i0, c0i1, c1i1) in enumerate(grid):
        text = c0i0 > c1i0 and c1i1 > c0i1  # each image prefers its own caption
        image = c0i0 > c0i1 and c1i1 > c1i0  # each caption prefers its own image
        assert (bool(out["text"][j]), bool(out["image"][j]), bool(out["group"][j])) == (text, image, text and image)
        seen.add((text, image))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}
    # group <=> both matched scores strictly above both mismatched ones: min(c0i0, c1i1) > max(c1i0, c0i1),
    # which {0, 1, 2} allows 7 ways (4 with min 2, 3 with min 1); a tie counted as right would raise the count
    diag, off = np.minimum(grid[:, 0], grid[:, 3]), np.maximum(grid[:, 1], grid[:, 2])
    np.testing.assert_array_equal(out["group"], diag > off)
    assert out["group"].sum() == 7
    # The same definitions as BiVLC's I2T / T2I (caption 1, image 1 there being the negatives).
    b = bivlc_outcomes(*grid.T)
    np.testing.assert_array_equal(out["text"], b["I2T"])
    np.testing.assert_array_equal(out["image"], b["T2I"])


def test_metrics_from_columns_overall_and_per_tag():
    rows = [("Noun", "", "Object", True, True), ("Noun", "Symbolic", "Object", True, False),
            ("Verb", "Symbolic", "Relation", False, False), ("Verb", "", "Both", True, True),
            ("Verb", "Pragmatics", "Relation", False, False)]
    items = [{"id": str(k), "subset": c, "valid": k != 4, "tag": t, "secondary_tag": s, "collapsed_tag": c,
              "text": x, "image": y, "group": x and y} for k, (t, s, c, x, y) in enumerate(rows)]  # item 4 invalid
    m = BENCHMARKS.get("winoground").metrics(columns(items))
    assert (m["text"], m["image"], m["group"]) == (75.0, 50.0, 50.0)
    assert m["tag/Noun/group"] == 50.0 and m["tag/Verb/text"] == 50.0 and m["tag/Verb/image"] == 50.0
    assert m["collapsed_tag/Object/text"] == 100.0 and m["collapsed_tag/Relation/group"] == 0.0
    assert m["secondary_tag/Symbolic/text"] == 50.0
    assert not any(k.startswith("secondary_tag//") for k in m)  # no secondary tag is no group
    assert "secondary_tag/Pragmatics/text" not in m  # its only item is invalid


def _png(seed: int) -> bytes:
    """A distinct PNG: noise, a flat colour or a ramp (unlike pictures, so their embeddings differ more)."""
    rng = np.random.default_rng(seed)
    arr = [rng.integers(0, 256, (28, 36, 3)), np.broadcast_to(rng.integers(0, 256, 3), (28, 36, 3)),
           np.linspace(0, 255, 36)[None, :, None] * rng.random(3) + np.zeros((28, 1, 1))][seed % 3]
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


TAGS = [("Noun", "", "Object"), ("Adjective-Color", "Symbolic", "Object"), ("Verb", "", "Relation"),
        ("Preposition", "Pragmatics", "Relation"), ("Noun-Verb", "Series", "Both")]
WORDS = "a dog bites man the red cup on blue table person pushes car".split()


def _table(ids: range, missing_image: int | None = None) -> pa.Table:
    """Rows in the official schema: two captions with the same words in a different order, struct images.

    Items 2j and 2j+1 share example j's images with the captions swapped. That negates all four comparisons
    (text, image turn on exactly when both of theirs were wrong), so under the random-weight tiny backbone,
    whose scores mostly follow one caption or one image, text and image still occur both ways; group needs
    an example whose four comparisons agree, and the 32 here hold one (j = 30, items 60 and 61).
    """
    rows = []
    for k in ids:
        j, rng = k // 2, np.random.default_rng(k // 2)
        caps = [" ".join(rng.choice(WORDS, 6))]
        caps.append(" ".join(rng.permutation(caps[0].split())))
        if k % 2:
            caps.reverse()
        rows.append({"id": k, "caption_0": caps[0], "caption_1": caps[1],
                     **{f"image_{side}": {"bytes": None if (k, side) == (missing_image, 1) else _png(2 * j + side),
                                          "path": f"ex_{j}_img_{side}.png"} for side in (0, 1)},
                     "tag": TAGS[j % 5][0], "secondary_tag": TAGS[j % 5][1], "num_main_preds": 1 + j % 2,
                     "collapsed_tag": TAGS[j % 5][2]})
    return pa.Table.from_pylist(rows).select(["id", "image_0", "image_1", "caption_0", "caption_1", "tag",
                                              "secondary_tag", "num_main_preds", "collapsed_tag"])


@pytest.fixture(scope="module")
def wino(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two parquet shards like the Hub's, 64 items; item 37's image_1 has no bytes (a recorded failure)."""
    root = tmp_path_factory.mktemp("wino") / "winoground"
    (root / "data").mkdir(parents=True)
    pq.write_table(_table(range(0, 32)), root / "data" / "test-00000-of-00002.parquet")
    pq.write_table(_table(range(32, 64), missing_image=37), root / "data" / "test-00001-of-00002.parquet")
    out = root.parent / "wino.zarr"
    extract(ExtractConfig(model="tiny", data="winoground", root=str(root), out=str(out), workers=0, shard_rows=8))
    return root, out



def test_global_outcomes_and_metrics_equal_numpy_cosines_of_the_cache(wino):
    _, out = wino
    r = CacheReader(out)
    assert [o for _, o, _ in r.failures("images")] == ["test-00001-of-00002.parquet#5:image_1"]
    bench = BENCHMARKS.create("winoground")
    result = bench.evaluate(open_cache(out), create_head("global"))
    it = r.items
    assert [i["id"] for i in result.items] == [str(k) for k in range(64)] == it["id"].tolist()
    valid = np.array([k != 37 for k in range(64)])
    np.testing.assert_array_equal([i["valid"] for i in result.items], valid)
    assert result.counts == {"items": 64, "invalid": 1, "bow_proof": 64} and "1 of 64 items left out" in result.notes[0]
    # Independently: the four cosines of each valid item from the cached global embeddings, in float64.
    im = {c: unit(r.read("images", "global", r.rows("images", it[c][valid]))) for c in ("image_0", "image_1")}
    tx = {c: unit(r.read("texts", "global", r.rows("texts", it[c][valid]))) for c in ("caption_0", "caption_1")}
    s = {(c, i): (tx[f"caption_{c}"] * im[f"image_{i}"]).sum(1) for c in (0, 1) for i in (0, 1)}
    comparisons = [s[0, 0] - s[1, 0], s[1, 1] - s[0, 1], s[0, 0] - s[0, 1], s[1, 1] - s[1, 0]]
    assert min(np.abs(d).min() for d in comparisons) > 1e-5  # no verdict within float32 noise (fixture precondition)
    text = (s[0, 0] > s[1, 0]) & (s[1, 1] > s[0, 1])
    image = (s[0, 0] > s[0, 1]) & (s[1, 1] > s[1, 0])
    group = text & image
    for want in (text, image, group):  # each verdict occurs both ways, so a swapped score block would show
        assert 0 < want.sum() < len(want)
    got = [i for i in result.items if i["valid"]]
    for name, want in (("text", text), ("image", image), ("group", group)):
        np.testing.assert_array_equal([i[name] for i in got], want)
        assert result.metrics[name] == pytest.approx(100 * want.mean(), abs=1e-9)
        for col in ("tag", "secondary_tag", "collapsed_tag"):
            values = it[col][valid]
            for t in set(values.tolist()) - {""}:
                assert result.metrics[f"{col}/{t}/{name}"] == pytest.approx(100 * want[values == t].mean(), abs=1e-9)
    assert "collapsed_tag/Both/group" in result.metrics and "secondary_tag/Series/text" in result.metrics
    assert bench.metrics(columns(result.items)) == result.metrics  # recomputable from its own records


def test_the_bench_refuses_a_cache_of_another_source(mini_sc_cache):
    with pytest.raises(InputError, match=r"--bench winoground needs `compalign extract --data winoground`"):
        BENCHMARKS.create("winoground").evaluate(open_cache(mini_sc_cache), create_head("global"))


def test_bad_rows_are_skipped_and_named_with_file_and_row(tmp_path):
    t = _table(range(0, 4)).to_pylist()
    t[1]["caption_1"] = None
    t[3]["id"] = 0  # the same example twice
    pq.write_table(pa.Table.from_pylist(t, schema=_table(range(0, 4)).schema), tmp_path / "test.parquet")
    plan = plan_source("winoground", tmp_path)
    assert plan.items["id"] == ["0", "2"]
    assert plan.problems == ["test.parquet#1: caption_1 missing or empty; skipped",
                             "test.parquet#3: duplicate of test.parquet#0 (same id '0'); skipped"]


def test_malformed_or_missing_files_name_the_file_the_columns_and_the_download(tmp_path):
    with pytest.raises(SourceError, match=rf"no \.parquet files; download it with `{DOWNLOAD}"):
        plan_source("winoground", tmp_path)
    (tmp_path / "test.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=rf"test.parquet: not a readable parquet file .*re-download it with `{DOWNLOAD}"):
        plan_source("winoground", tmp_path)
    pq.write_table(_table(range(2)).drop_columns(["caption_1", "collapsed_tag"]), tmp_path / "test.parquet")
    with pytest.raises(SourceError, match=r"test.parquet: missing column\(s\) caption_1, collapsed_tag; "
                                          rf"Winoground parquet has id, .*re-download it with `{DOWNLOAD}"):
        plan_source("winoground", tmp_path)
