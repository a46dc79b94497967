"""ARO VG-Relation / VG-Attribution: official-schema fixtures, real crops, the strict truth table, the macro."""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image

import compalign.evaluate.benchmarks.aro as aro_bench  # noqa: F401  (registers the benchmark)
import compalign.extract.sources.aro as aro_source  # noqa: F401  (registers the source)
from compalign.cache import open_cache
from compalign.evaluate.benchmarks.aro import aro_metrics, order_outcomes
from compalign.evaluate.benchmarks.base import BENCHMARKS, columns, contrast_outcomes
from compalign.extract.sources import SourceError, plan_source, text_key
from compalign.extract.sources.aro import PERTURBATIONS, is_noun_or_adj, order_perturbations, pre_caption, tokens

NAMES = [f"{i}.jpg" for i in range(4)]  # 40 x 56 (H x W) each


def rel_row(image: str, box: tuple[float, float, float, float], rel: str, k: int) -> dict:
    x, y, w, h = box
    return {"image_id": k, "image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "relation_name": rel, "true_caption": f"the cup is {rel} the table {k}",
            "false_caption": f"the table is {rel} the cup {k}"}


def att_row(image: str, box: tuple[float, float, float, float], pair: list[str], k: int) -> dict:
    x, y, w, h = box
    return {"image_id": k, "image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "attributes": pair, "true_caption": f"the {pair[0]} dog and the {pair[1]} cat {k}",
            "false_caption": f"the {pair[1]} dog and the {pair[0]} cat {k}"}


RELATIONS = [rel_row(NAMES[0], (2, 3, 20, 10), "on", 0), rel_row(NAMES[1], (0, 0, 56, 40), "on", 1),
             rel_row(NAMES[2], (10, 5, 7, 30), "on", 2), rel_row(NAMES[3], (40, 30, 30, 30), "under", 3),  # overhangs
             rel_row(NAMES[0], (5, 5, 10, 10), "under", 4), rel_row(NAMES[1], (20, 1, 9, 9), "near", 5)]
# 26 rows of one pair (enough for the official 25-item threshold of the macro), 2 of another (below it)
ATTRIBUTES = ([att_row(NAMES[k % 4], (k, k % 7, 12 + k % 5, 9), ["red", "white"], k) for k in range(26)]
              + [att_row(NAMES[k % 4], (3, 2, 30, 20 + k), ["large", "small"], 26 + k) for k in range(2)])


def aro_root(root: Path, relations: list | None = None, attributes: list | None = None) -> Path:
    make_images(root / "images", NAMES)
    if relations is not None:
        (root / "visual_genome_relation.json").write_text(json.dumps(relations))
    if attributes is not None:
        (root / "visual_genome_attribution.json").write_text(json.dumps(attributes))
    return root


def own_crop(root: Path, row: dict) -> np.ndarray:
    im = np.asarray(Image.open(root / "images" / row["image_path"]).convert("RGB"))
    x, y, w, h = row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]
    return im[max(0, y):min(im.shape[0], y + h), max(0, x):min(im.shape[1], x + w)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return aro_root(tmp_path_factory.mktemp("aro"), RELATIONS, ATTRIBUTES)


@pytest.fixture(scope="module")
def cache(root, tmp_path_factory) -> Path:
    from compalign.extract.runner import ExtractConfig, extract

    out = tmp_path_factory.mktemp("aro_cache") / "aro.zarr"
    extract(ExtractConfig(model="tiny", data="aro", root=str(root), out=str(out), workers=0, shard_rows=8))
    return out


def test_plan_items_and_crops_are_the_boxes(root):
    plan = plan_source("aro", root)
    assert not plan.problems and not plan.notes
    it = plan.items
    n = len(RELATIONS) + len(ATTRIBUTES)
    assert len(it["id"]) == n
    assert it["id"][:2] == ["vg_relation/0", "vg_relation/1"] and it["id"][len(RELATIONS)] == "vg_attribution/0"
    assert it["subset"] == ["vg_relation"] * len(RELATIONS) + ["vg_attribution"] * len(ATTRIBUTES)
    assert it["group"][:6] == ["on", "on", "on", "under", "under", "near"]
    assert it["group"][6] == "red white" and it["group"][-1] == "large small"
    texts = {text_key(t): t for t in plan.texts}
    assert texts[it["caption"][0]] == RELATIONS[0]["true_caption"]
    assert texts[it["negative_caption"][0]] == RELATIONS[0]["false_caption"]
    refs = {r.key: r for r in plan.images}
    assert all(r.data is not None and r.path is None for r in plan.images)  # only crops, never the whole files
    for k, row in enumerate(RELATIONS + ATTRIBUTES):
        ref = refs[it["image"][k]]
        got = np.asarray(Image.open(io.BytesIO(ref.data)))
        want = own_crop(root, row)
        assert got.shape == want.shape, k  # the box size (clamped: row 3 overhangs to 16 x 10)
        np.testing.assert_array_equal(got, want)  # PNG is lossless: the very pixels of the box
    assert np.asarray(Image.open(io.BytesIO(refs[it["image"][3]].data))).shape == (10, 16, 3)
    assert np.asarray(Image.open(io.BytesIO(refs[it["image"][1]].data))).shape == (40, 56, 3)  # whole image


def test_identical_crops_dedupe(tmp_path):
    rows = [rel_row(NAMES[0], (1, 1, 10, 10), "on", 0), rel_row(NAMES[0], (1, 1, 10, 10), "near", 1),
            rel_row(NAMES[0], (2, 1, 10, 10), "on", 2)]
    plan = plan_source("aro", aro_root(tmp_path, rows))
    assert plan.items["image"][0] == plan.items["image"][1] != plan.items["image"][2]
    assert len(plan.images) == 2
    assert plan.notes and "visual_genome_attribution.json absent" in plan.notes[0]


def test_truth_table_strict_ties_wrong_nan_invalid():
    pos = np.array([0.5, 0.4, 0.3, np.nan, 0.2])
    neg = np.array([0.4, 0.5, 0.3, 0.1, np.nan])
    correct, valid = contrast_outcomes(pos, neg)
    assert correct.tolist() == [True, False, False, False, False]
    assert valid.tolist() == [True, True, True, False, False]


def test_macro_over_groups_by_hand():
    # vg_relation: on 2/3, under 0/1, near 1/1 -> micro 3/5, macro (66.67 + 0 + 100) / 3
    # vg_attribution: "a b" 25 items 20 correct (kept), "c d" 3 items all correct (fewer than 25: dropped)
    cols = {"subset": np.array(["vg_relation"] * 5 + ["vg_attribution"] * 28),
            "group": np.array(["on", "on", "on", "under", "near"] + ["a b"] * 25 + ["c d"] * 3),
            "correct": np.array([True, True, False, False, True] + [True] * 20 + [False] * 5 + [True] * 3),
            "valid": np.ones(33, bool)}
    m = aro_metrics(cols["correct"], cols["subset"], cols["group"])
    assert m["vg_relation"] == pytest.approx(60.0)
    assert m["vg_relation/macro"] == pytest.approx((200 / 3 + 0 + 100) / 3)
    assert m["vg_attribution"] == pytest.approx(100 * 23 / 28)
    assert m["vg_attribution/macro"] == pytest.approx(80.0)
    # invalid items are out of every mean
    cols["valid"][3] = False  # the only "under" item
    m2 = BENCHMARKS.get("aro").metrics(cols)
    assert m2["vg_relation"] == pytest.approx(75.0) and m2["vg_relation/macro"] == pytest.approx((200 / 3 + 100) / 2)
    # no pair with 25 items: the attribution macro is undefined, not a mean over nothing
    few = aro_metrics(np.array([True, False]), np.array(["vg_attribution"] * 2), np.array(["x y", "x y"]))
    assert few["vg_attribution"] == 50.0 and math.isnan(few["vg_attribution/macro"])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_end_to_end_extract_and_score_equals_direct_crop_encoding(root, cache):
    from compalign.extract.backbones import load_backbone
    from compalign.heads import create_head

    bench = BENCHMARKS.create("aro")
    r = open_cache(cache)
    result = bench.evaluate(r, create_head("global"))
    rows = RELATIONS + ATTRIBUTES
    assert len(result.items) == len(rows) and result.counts == {"items": len(rows), "invalid": 0, "bow_proof": len(rows)}
    assert {"id", "subset", "group", "pos", "neg", "correct", "valid", "bow_proof"} == set(result.items[0])
    names = {"vg_relation", "vg_relation/macro", "vg_attribution", "vg_attribution/macro"}
    # every false caption swaps the true one's own words: the bag-of-words-proof subset is the whole benchmark
    assert set(result.metrics) == names | {f"bow_proof/{k}" for k in names}
    assert all(result.metrics[f"bow_proof/{k}"] == result.metrics[k] for k in names)
    assert _same(bench.metrics(columns(result.items)), result.metrics)
    # Every score equals encoding my own crop of the box with the same backbone.
    bb = load_backbone("tiny")
    pix = torch.stack([bb.preprocess(Image.fromarray(own_crop(root, row))) for row in rows])
    with torch.no_grad():
        im = torch.nn.functional.normalize(bb.model.encode_image(pix), dim=-1)
        t = torch.nn.functional.normalize(bb.model.encode_text(bb.tokenizer([x["true_caption"] for x in rows])), dim=-1)
        f = torch.nn.functional.normalize(bb.model.encode_text(bb.tokenizer([x["false_caption"] for x in rows])), dim=-1)
    s_pos, s_neg = (im * t).sum(-1).numpy(), (im * f).sum(-1).numpy()
    np.testing.assert_allclose([x["pos"] for x in result.items], s_pos, atol=1e-5)
    np.testing.assert_allclose([x["neg"] for x in result.items], s_neg, atol=1e-5)
    got = np.array([x["correct"] for x in result.items])
    margin = np.abs(s_pos - s_neg) > 1e-4
    np.testing.assert_array_equal(got[margin], (s_pos > s_neg)[margin])
    # the macro from the per-item verdicts by hand
    g = np.array([x["group"] for x in result.items[:len(RELATIONS)]])
    c = got[:len(RELATIONS)]
    assert result.metrics["vg_relation/macro"] == pytest.approx(np.mean([100 * c[g == k].mean() for k in set(g)]))
    ca = got[len(RELATIONS):len(RELATIONS) + 26]
    assert result.metrics["vg_attribution/macro"] == pytest.approx(100 * ca.mean())  # "large small" has 2 < 25


def test_wrong_source_is_refused(mini_sc_cache):
    from compalign.core import InputError
    from compalign.heads import create_head

    with pytest.raises(InputError, match="--data aro"):
        BENCHMARKS.create("aro").evaluate(open_cache(mini_sc_cache), create_head("global"))


def test_bad_rows_are_problems_naming_file_and_row(tmp_path):
    root = aro_root(tmp_path, None)
    (root / "images" / "junk.jpg").write_bytes(b"not a jpeg")
    good = rel_row(NAMES[0], (1, 1, 10, 10), "on", 0)
    no_caption = {k: v for k, v in good.items() if k != "false_caption"}
    rows = [good, no_caption, {**good, "bbox_w": "10"}, {**good, "relation_name": None},
            {**good, "image_path": "missing.jpg"}, {**good, "image_path": "junk.jpg"},
            {**good, "bbox_x": 100, "bbox_y": 100}, {**good, "bbox_w": 0}, "not an object",
            {**good, "image_path": "../../etc/passwd"}, {**good, "image_path": "/etc/passwd"},
            {**good, "bbox_x": True}]
    (root / "visual_genome_relation.json").write_text(json.dumps(rows))
    plan = plan_source("aro", root)
    assert plan.items["id"] == ["vg_relation/0"]
    probs = plan.problems
    assert len(probs) == len(rows) - 1
    assert all(p.startswith(f"visual_genome_relation.json row {k}:") for p, k in zip(probs, range(1, len(rows))))
    assert "false_caption" in probs[0] and "bbox_w" in probs[1] and "relation_name" in probs[2]
    assert "not found" in probs[3] and "missing.jpg" in probs[3]
    assert "unreadable" in probs[4] and "junk.jpg" in probs[4]
    assert "does not overlap" in probs[5] and "does not overlap" in probs[6]
    assert "not an object" in probs[7] and "escapes" in probs[8] and "absolute" in probs[9] and "bbox_x" in probs[10]


def test_image_path_relative_to_root_also_found(tmp_path):
    root = aro_root(tmp_path, [rel_row(f"images/{NAMES[2]}", (0, 0, 5, 6), "on", 0)])
    plan = plan_source("aro", root)
    assert not plan.problems
    assert np.asarray(Image.open(io.BytesIO(plan.images[0].data))).shape == (6, 5, 3)


def test_attribution_needs_a_pair(tmp_path):
    good = att_row(NAMES[0], (1, 1, 10, 10), ["red", "white"], 0)
    rows = [good, {**good, "attributes": ["red"]}, {**good, "attributes": "red white"}]
    plan = plan_source("aro", aro_root(tmp_path, None, rows))
    assert plan.items["group"] == ["red white"]
    assert len(plan.problems) == 2 and all("attributes" in p for p in plan.problems)


def test_whole_file_errors_name_the_file(tmp_path):
    with pytest.raises(SourceError, match="visual_genome_relation.json"):
        plan_source("aro", tmp_path)  # neither file
    (tmp_path / "visual_genome_relation.json").write_text('[{"image_path": "0.jpg",')
    with pytest.raises(SourceError, match=r"visual_genome_relation\.json: malformed JSON at line 1"):
        plan_source("aro", tmp_path)
    (tmp_path / "visual_genome_relation.json").write_text('{"a": 1}')
    with pytest.raises(SourceError, match="expected a JSON list"):
        plan_source("aro", tmp_path)
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps([rel_row("gone.jpg", (0, 0, 5, 5), "on", 0)]))
    with pytest.raises(SourceError, match="no usable aro items.*row 0.*not found"):
        plan_source("aro", tmp_path)


# --- COCO-Order / Flickr30k-Order ---------------------------------------------------------------------------

CAPTIONS = ["A man riding a wave on top of a surfboard.", "Two dogs are playing with a red frisbee in the park",
            "A large white cake sitting on a wooden table!", "Cat."]


def karpathy_root(root: Path) -> Path:
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(3)]
    make_images(root / "val2014", names, size=(32, 32), seed=3)
    images = [{"filepath": "val2014", "filename": n, "split": "test", "imgid": i, "cocoid": 100 + i,
               "sentences": [{"raw": CAPTIONS[(i + k) % 4], "sentid": 10 * i + k} for k in range(2)]}
              for i, n in enumerate(names)]
    images.append({"filepath": "val2014", "filename": "train.jpg", "split": "train", "imgid": 9, "cocoid": 9,
                   "sentences": [{"raw": "not read", "sentid": 99}]})
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    return root


def test_pre_caption_is_the_official_cleanup():
    assert pre_caption("A Man, riding (a) wave!  on: top.") == "a man, riding a wave on top"
    assert pre_caption(" ".join(["w"] * 40)) == " ".join(["w"] * 30)


def test_rule_tagger_and_perturbations_are_the_official_shapes():
    toks = tokens("A man riding a wave on top of a surfboard.")
    assert [t for t in toks if is_noun_or_adj(t)] == ["man", "wave", "top", "surfboard"]
    for cap in CAPTIONS:
        toks = tokens(cap)
        na = [is_noun_or_adj(t) for t in toks]
        out = order_perturbations(cap, random.Random(1))
        assert len(out) == len(PERTURBATIONS) == 4
        for p in out:
            assert Counter(p.split(" ")) == Counter(toks)  # a permutation of the tokens
        nouns, allbut, within, tris = (p.split(" ") for p in out)
        assert all(a == b for a, b, m in zip(nouns, toks, na) if not m)  # only noun/adj slots move
        assert all(a == b for a, b, m in zip(allbut, toks, na) if m)  # noun/adj slots stay
        assert [Counter(within[i:i + 3]) for i in range(0, len(toks), 3)] == \
               [Counter(toks[i:i + 3]) for i in range(0, len(toks), 3)]
        got = Counter(tuple(tris[i:i + len(t)]) for i, t in zip(_offsets(tris, toks), _tri(toks)))
        assert got == Counter(tuple(t) for t in _tri(toks))
        assert out == order_perturbations(cap, random.Random(1))  # seeded


def _tri(toks):
    return [toks[i:i + 3] for i in range(0, len(toks), 3)]


def _offsets(shuffled, toks):
    """Start offsets of the trigrams in a trigram-shuffled sequence (the last, short trigram may be anywhere)."""
    sizes = [len(t) for t in _tri(toks)]
    short = sizes[-1] if sizes[-1] != 3 else None
    # find where the short trigram sits: try each slot, keep the first that reproduces the multiset
    for slot in range(len(sizes)):
        order = [3] * (len(sizes) - 1)
        order.insert(slot, sizes[-1])
        offs = [sum(order[:k]) for k in range(len(order))]
        parts = Counter(tuple(shuffled[o:o + s]) for o, s in zip(offs, order))
        if parts == Counter(tuple(t) for t in _tri(toks)) or short is None:
            return offs
    raise AssertionError("not a trigram shuffle")


def test_order_truth_table_strict_and_identical_texts_vacuous():
    pos = np.array([0.5, 0.5, 0.5, 0.5, np.nan])
    negs = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.5, 0.3, 0.4], [0.1, 0.5, 0.3, 0.4], [0.6, 0.1, 0.1, 0.1],
                     [0.1, 0.1, 0.1, 0.1]])
    same = np.zeros((5, 4), bool)
    same[2, 1] = True  # item 2's tie is the very same text: no negative
    beats, correct, valid = order_outcomes(pos, negs, same)
    assert correct.tolist() == [True, False, True, False, False]
    assert valid.tolist() == [True, True, True, True, False]
    assert beats[1].tolist() == [True, False, True, True] and not beats[4].any()


def test_order_plan_and_end_to_end(tmp_path):
    from compalign.extract.runner import ExtractConfig, extract
    from compalign.heads import create_head

    root = karpathy_root(tmp_path / "coco")
    plan = plan_source("aro_order", root)
    it = plan.items
    assert len(it["id"]) == 6 and set(it["subset"]) == {"coco_order"}
    texts = {text_key(t): t for t in plan.texts}
    assert texts[it["caption"][0]] == "a man riding a wave on top of a surfboard"
    assert all(texts[it[p][0]] != texts[it["caption"][0]] for p in PERTURBATIONS[:3])
    assert it["id"][5] == "2/21" and texts[it["caption"][5]] == "cat"
    assert all(it[p][5] == it["caption"][5] for p in PERTURBATIONS)  # one word: every shuffle is itself
    assert plan_source("aro_order", root).items == it  # deterministic
    out = tmp_path / "o.zarr"
    extract(ExtractConfig(model="tiny", data="aro_order", root=str(root), out=str(out), workers=0))
    bench = BENCHMARKS.create("aro_order")
    result = bench.evaluate(open_cache(out), create_head("global"))
    names = {"coco_order", *(f"coco_order/{p}" for p in PERTURBATIONS)}
    assert set(result.metrics) == names | {f"bow_proof/{k}" for k in names}  # shuffles keep the caption's words
    assert result.counts["bow_proof"] == len(result.items) and all(x["bow_proof"] for x in result.items)
    assert result.metrics == bench.metrics(columns(result.items))
    for x in result.items:
        assert x["correct"] == all(x[f"beats_{p}"] for p in PERTURBATIONS)
        assert x["correct"] == all(x["pos"] > x[f"neg_{p}"] or x["id"] == "2/21" for p in PERTURBATIONS)
    cat = result.items[5]
    assert all(cat["pos"] == cat[f"neg_{p}"] for p in PERTURBATIONS) and cat["correct"]  # vacuous, as official argmax
    from compalign.core import InputError

    with pytest.raises(InputError, match="--data aro`"):
        BENCHMARKS.create("aro").evaluate(open_cache(out), create_head("global"))
