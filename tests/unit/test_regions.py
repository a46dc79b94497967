"""Region boxes, caption segments in the cache, and the training-free `regions_roi` head against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mini_sugarcrepe
from recompute import expected_region_scores, unit

from compalign.cache.reader import CacheReader
from compalign.cache.store import resume_command
from compalign.core.regions import patch_pooling, region_boxes
from compalign.evaluate.benchmarks import create_benchmark
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head
from compalign.text import segment


def test_boxes_are_the_grid_tiles_then_the_overlapping_halves():
    b = region_boxes((1, 2), halves=True)
    assert b.tolist() == [[0, 0, 1, 1], [0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1],
                          [0, 0, .6, 1], [.4, 0, 1, 1], [0, 0, 1, .6], [0, .4, 1, 1]]
    assert len(region_boxes((1, 2, 3), halves=False)) == 1 + 4 + 9


def test_pooling_averages_the_patches_whose_centres_lie_in_the_box():
    pool = patch_pooling(region_boxes((1, 2), halves=True), side=4)  # a 4 x 4 patch grid, row-major
    assert np.allclose(pool[0], 1 / 16)
    assert np.flatnonzero(pool[1]).tolist() == [0, 1, 4, 5]  # top-left quarter
    assert np.flatnonzero(pool[4]).tolist() == [10, 11, 14, 15]  # bottom-right quarter
    # the left 60%: patch centres 0.125, 0.375 (in), 0.625 (out): columns 0 and 1
    assert np.flatnonzero(pool[5]).tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    tiny = patch_pooling(np.array([[0.51, 0.51, 0.52, 0.52]]), side=4)  # holds no centre: the patch under it
    assert np.flatnonzero(tiny[0]).tolist() == [2 * 4 + 2] and np.allclose(pool.sum(1), 1)


@pytest.fixture(scope="module")
def seg_cache(tmp_path_factory):
    base = tmp_path_factory.mktemp("seg")
    root = mini_sugarcrepe(base / "sc", n=6)
    out = base / "sc.zarr"
    extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root), out=str(out), workers=0, shard_rows=8,
                          segments="rules"))
    return out


def test_every_caption_segment_is_a_text_row_and_the_table_maps_captions_to_them(seg_cache):
    r = CacheReader(seg_cache)
    strings = r.column("texts/strings")
    it = r.items
    captions = sorted(set(it["caption"].tolist()) | set(it["negative_caption"].tolist()))
    rows = r.rows("texts", np.array(captions))
    seg = r.segment_rows(rows)
    for row, segs in zip(rows, seg):
        want = segment(str(strings[row])).texts()
        assert [str(strings[j]) for j in segs if j >= 0] == want  # in the segmenter's order, every one encoded
    assert r.ok("texts").all() and len(set(strings.tolist())) == len(strings)  # each string once
    assert r.attrs["extraction"]["segments"] == "rules"
    assert resume_command(r.attrs, seg_cache).endswith("--segments rules")
    b = r.gather("texts", ("global", "segments"), rows[:2])
    n = (seg[:2] >= 0).sum(1)
    assert b["segments"].shape == (2, seg.shape[1], r.layout.embed_dim) and b["segment_mask"].sum(1).tolist() == n.tolist()
    np.testing.assert_array_equal(b["segments"][0, :n[0]], r.read("texts", "global", seg[0, :n[0]]))


def test_a_store_without_segments_names_the_flag(mini_sc_cache):
    with pytest.raises(KeyError, match="re-extract with `--segments rules`"):
        CacheReader(mini_sc_cache).segment_rows(np.array([0]))


@pytest.mark.parametrize("name, mix", [("regions_roi", 0.5), ("regions_roi_only", 1.0)])
def test_regions_roi_scores_are_the_mixed_best_region_cosines_of_the_cache(seg_cache, name, mix):
    r = CacheReader(seg_cache)
    result = create_benchmark("sugarcrepe").evaluate(r, create_head(name))
    it = r.items
    # numpy, from the cache: regions = pooled patches @ proj, each segment's best region, averaged, mixed
    patches = r.read("images", "patches", r.rows("images", it["image"])).astype(np.float64)  # (n, P, W)
    pool = patch_pooling(region_boxes(), int(np.sqrt(r.layout.n_patches)))
    regions = unit(np.einsum("rp,npw,we->nre", pool, patches, r.projection("image")))
    strings = r.column("texts/strings")
    for col in ("caption", "negative_caption"):  # every caption's segments are the segmenter's
        for row in r.rows("texts", it[col]):
            seg_rows = r.segment_rows(np.array([row]))[0]
            assert (seg_rows >= 0).sum() == len(segment(str(strings[row])).segments) > 0
    want = expected_region_scores(r, list(regions), mix)
    for field in ("pos", "neg"):
        np.testing.assert_allclose([i[field] for i in result.items], want[field], atol=1e-5)
