"""The karpathy retrieval source: Karpathy split JSON, COCO captions JSON and Flickr txt, all to one item table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_images

from compalign.extract.sources import SourceError, plan_source, text_key

SPLITS = {1: "test", 2: "test", 3: "restval", 4: "train", 5: "val"}  # cocoid -> split
CAPTIONS = {1: [f"a cat on a mat number {k}" for k in range(6)],  # 6 captions on one image
            2: ["a dog, running on grass", "two dogs"], 3: ["a restval bus"], 4: ["a train bus"], 5: ["a val bus"]}


def coco_name(cocoid: int) -> str:
    return f"COCO_val2014_{cocoid:012d}.jpg"


def karpathy_coco(root: Path, captions: dict[int, list[str]] = CAPTIONS, images: bool = True) -> Path:
    """dataset_coco.json in Karpathy's schema, and (optionally) its images under val2014/."""
    rows, sentid = [], 100
    for imgid, (cocoid, caps) in enumerate(captions.items()):
        sents = [{"raw": c, "sentid": sentid + k, "tokens": c.split(), "imgid": imgid} for k, c in enumerate(caps)]
        sentid += len(caps)
        rows.append({"filepath": "val2014", "filename": coco_name(cocoid), "split": SPLITS[cocoid], "imgid": imgid,
                     "cocoid": cocoid, "sentids": [s["sentid"] for s in sents], "sentences": sents})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": rows, "dataset": "coco"}))
    if images:
        make_images(root / "val2014", [coco_name(i) for i in captions])
    return root


def pairs(plan) -> list[tuple[str, str, str]]:
    """(image key, caption text, image_id) per item: what must agree across layouts."""
    texts = {text_key(t): t for t in plan.texts}
    return [(i, texts[c], g) for i, c, g in zip(plan.items["image"], plan.items["caption"], plan.items["image_id"])]


def test_coco_test_split_reads_only_test_images(tmp_path):
    plan = plan_source("karpathy", karpathy_coco(tmp_path), split="test")
    assert plan.items["image_id"] == ["1"] * 6 + ["2"] * 2  # restval / train / val images are not read
    assert len(plan.images) == 2 and all(im.error is None for im in plan.images)
    assert plan.items["id"][:2] == ["0/100", "0/101"] and plan.items["id"][6] == "1/106"  # imgid/sentid
    assert pairs(plan)[6][1] == "a dog, running on grass"
    assert plan.info == {"dataset": "coco", "split": "test", "layout": "karpathy"}
    assert plan_source("karpathy", tmp_path).items == plan.items  # no --split: test
    assert plan_source("karpathy", tmp_path / "dataset_coco.json").items == plan.items  # the file itself
    assert plan_source("karpathy", tmp_path, split="restval").items["image_id"] == ["3"]


def test_shared_caption_is_one_text_two_items(tmp_path):
    plan = plan_source("karpathy", karpathy_coco(tmp_path, {1: ["the same words"], 2: ["the same words", "other"]}))
    assert plan.items["caption"][:2] == [text_key("the same words")] * 2
    assert plan.items["image_id"] == ["1", "2", "2"] and plan.texts == ["the same words", "other"]


def test_identical_image_files_keep_their_image_ids(tmp_path):
    karpathy_coco(tmp_path, {1: ["a"], 2: ["b"]})
    (tmp_path / "val2014" / coco_name(2)).write_bytes((tmp_path / "val2014" / coco_name(1)).read_bytes())
    plan = plan_source("karpathy", tmp_path)
    assert len(plan.images) == 1 and plan.items["image_id"] == ["1", "2"]  # one encoding, two retrieval targets


def test_missing_image_is_a_recorded_failure(tmp_path):
    karpathy_coco(tmp_path, {1: ["a"], 2: ["b"]})
    (tmp_path / "val2014" / coco_name(2)).unlink()
    plan = plan_source("karpathy", tmp_path)
    assert len(plan.items["id"]) == 2
    bad = [im for im in plan.images if im.error]
    assert len(bad) == 1 and bad[0].error.startswith("file not found") and "val2014" in bad[0].error


def test_images_without_or_with_empty_captions_are_problems(tmp_path):
    karpathy_coco(tmp_path, {1: ["a", "  "], 2: []})
    plan = plan_source("karpathy", tmp_path)
    assert plan.items["id"] == ["0/100"] and len(plan.images) == 1  # image 2 (no captions) is not encoded
    assert any("dataset_coco.json image '1'" in p and "empty" in p for p in plan.problems)
    assert any("image '2'" in p and "no captions" in p for p in plan.problems)


@pytest.mark.parametrize("body, says", [
    ('{"images": [{"filename": "a.jpg",}]}', "line 1, column"),  # malformed JSON
    ('{"dataset": "coco"}', "'images'"),  # missing field
    ('{"images": {"a": 1}}', "'images'"),  # wrong type
    ('[1, 2]', "JSON object"),
    ('{"images": [], "annotations": 3}', "'annotations'"),
])
def test_broken_files_name_the_file(tmp_path, body, says):
    (tmp_path / "dataset_coco.json").write_text(body)
    with pytest.raises(SourceError, match="dataset_coco.json") as e:
        plan_source("karpathy", tmp_path)
    assert says in str(e.value)


def test_unknown_split_lists_the_splits_there_are(tmp_path):
    with pytest.raises(SourceError, match=r"dataset_coco.json.*'tset'.*restval, test, train, val"):
        plan_source("karpathy", karpathy_coco(tmp_path, images=False), split="tset")


def test_latin1_file_is_a_source_error(tmp_path):
    (tmp_path / "dataset_flickr30k.json").write_bytes('{"images": [{"sentences": [{"raw": "café"}]}]}'.encode("latin-1"))
    with pytest.raises(SourceError, match="dataset_flickr30k.json: not UTF-8"):
        plan_source("karpathy", tmp_path)


def test_coco_captions_layout_matches_karpathy(tmp_path):
    test = {k: v for k, v in CAPTIONS.items() if SPLITS[k] == "test"}
    want = plan_source("karpathy", karpathy_coco(tmp_path / "k", test))
    root = tmp_path / "c"
    make_images(root / "val2014", [coco_name(i) for i in test])  # same seed: the same image bytes
    anns = [{"image_id": i, "caption": c + "\n", "id": 900 + n}  # COCO captions carry stray newlines
            for n, (i, c) in enumerate((i, c) for i, caps in test.items() for c in caps)]
    anns = anns[::-1]  # annotation order is not image order
    coco = {"info": {}, "images": [{"id": i, "file_name": coco_name(i)} for i in test], "annotations": anns}
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(coco))
    got = plan_source("karpathy", root)
    assert sorted(pairs(got)) == sorted(pairs(want))
    assert got.info == {"dataset": "coco", "split": "test", "layout": "coco-captions"}
    assert any("no split field" in n and "all 2 images" in n for n in got.notes)
    with pytest.raises(SourceError, match="captions_val2014.json.*--split train"):
        plan_source("karpathy", root, split="train")


def test_flickr_txt_matches_karpathy_json(tmp_path):
    caps = {"1000092795.jpg": ["Two young guys, with shaggy hair.", "Two men outside"], "10002456.jpg": ["Workers"]}
    k, t = tmp_path / "k", tmp_path / "t"
    rows = [{"filename": f, "split": "test", "imgid": n, "sentences": [{"raw": c, "sentid": 10 * n + j}
                                                                       for j, c in enumerate(cs)]}
            for n, (f, cs) in enumerate(caps.items())]
    rows.append({"filename": "999.jpg", "split": "train", "imgid": 2, "sentences": [{"raw": "x", "sentid": 50}]})
    k.mkdir()
    (k / "dataset_flickr30k.json").write_text(json.dumps({"images": rows, "dataset": "flickr30k"}))
    for root in (k, t):
        make_images(root / "flickr30k-images", list(caps))
    want = plan_source("karpathy", k, split="test")
    assert want.info == {"dataset": "flickr30k", "split": "test", "layout": "karpathy"}
    assert want.items["image_id"] == ["1000092795", "1000092795", "10002456"]  # Flickr's id: the file stem

    lines = [f"{f},{c}" for f, cs in caps.items() for c in cs]
    lines[0] = '1000092795.jpg,"Two young guys, with shaggy hair."'  # CSV-quoted, comma inside
    (t / "flickr30k_test_karpathy.txt").write_text("image,caption\n" + "\n".join(lines) + "\n")
    got = plan_source("karpathy", t)
    assert pairs(got) == pairs(want) and got.items["id"] == ["1000092795/0", "1000092795/1", "10002456/0"]
    assert got.info == {"dataset": "flickr30k", "split": "test", "layout": "flickr-txt"}

    tab = [f"{f}#{j}\t{c}" for f, cs in caps.items() for j, c in enumerate(cs)] + ["no separator here"]
    (t / "flickr30k_test_karpathy.txt").write_text("\n".join(tab))  # Flickr's results.token style, no header
    got = plan_source("karpathy", t / "flickr30k_test_karpathy.txt")
    assert pairs(got) == pairs(want) and any("line 4" in p for p in got.problems)


def test_extract_end_to_end(tmp_path):
    from compalign.cache import CacheReader
    from compalign.extract.runner import ExtractConfig, extract

    out = tmp_path / "coco.zarr"
    extract(ExtractConfig(model="tiny", data="karpathy", root=str(karpathy_coco(tmp_path / "coco")), out=str(out),
                          workers=0, split="test"))
    r = CacheReader(out)
    assert r.attrs["source"]["info"] == {"dataset": "coco", "split": "test", "layout": "karpathy"}
    assert r.attrs["source"]["n_items"] == 8 and list(r.items["image_id"]) == ["1"] * 6 + ["2"] * 2
