"""Retrieval end to end on a hand-made Karpathy split: recall by its definition, aliases, and re-ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from compalign.cache import CacheReader
from compalign.cli.heads import app as heads_app
from compalign.evaluate.metrics import first_hit
from compalign.evaluate.search import normalise
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head

CAPTIONS = {  # test images; image 0 has six captions, images 1 and 2 share one caption string
    0: ["a red square", "a square that is red", "red square on grey", "one red square", "the red square", "square, red"],
    1: ["a blue circle", "two shapes side by side"],
    2: ["a green triangle", "two shapes side by side"],
    3: ["a small yellow star"],
    4: ["a large purple square"],
    5: ["an orange circle next to a square"],
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(9)]
    make_images(root / "val2014", names, size=(32, 32))
    images = [{"filepath": "val2014", "filename": names[i], "split": "test", "imgid": i, "cocoid": 100 + i,
               "sentences": [{"raw": c, "sentid": 10 * i + j} for j, c in enumerate(caps)]} for i, caps in CAPTIONS.items()]
    images += [{"filepath": "val2014", "filename": names[6 + j], "split": split, "imgid": 6 + j, "cocoid": 106 + j,
                "sentences": [{"raw": f"training caption {j}", "sentid": 90 + j}]}
               for j, split in enumerate(("train", "restval", "val"))]
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    out = root / "coco.zarr"
    extract(ExtractConfig(model="tiny", data="karpathy", root=str(root), out=str(out), workers=0, split="test"))
    return out


def _score(cache, *extra):
    out = cache.parent / f"r{len(extra)}{hash(extra)}.json"
    res = CliRunner().invoke(heads_app, ["score", "--bench", "coco", "--cache", str(cache), "--json", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def _reference_ranks(S: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t2i and i2t first-hit ranks from a full (images, annotations) score matrix, by the stated tie rule."""
    t2i = first_hit(np.argsort(-S.T, axis=1, kind="stable"), owner)
    i2t = first_hit(owner[np.argsort(-S, axis=1, kind="stable")], np.arange(S.shape[0]))
    return t2i, i2t


def _gallery(cache):
    r = CacheReader(cache)
    it = r.items
    ids = it["image_id"]
    uniq = list(dict.fromkeys(ids.tolist()))  # images in the order the annotations first name them
    owner = np.array([uniq.index(i) for i in ids])
    first = [ids.tolist().index(u) for u in uniq]
    return r, it["image"][first], it["caption"], owner


def test_recall_follows_its_definition_on_annotations(coco):
    r, image_keys, caption_keys, owner = _gallery(coco)
    assert len(caption_keys) == 13 and len(image_keys) == 6  # train / restval / val images are not in the test split
    assert len(set(caption_keys.tolist())) == 12  # the shared string is one text, two annotations
    gi = r.read("images", "global", r.rows("images", image_keys))
    gt = r.read("texts", "global", r.rows("texts", caption_keys))
    gi, gt = normalise(gi), normalise(gt)
    S = (gi[:, None, :] * gt[None]).sum(-1)  # elementwise, as the benchmark rescores: equal captions tie exactly
    t2i, i2t = _reference_ranks(S, owner)
    result, output = _score(coco)
    want = {f"t2i_R@{k}": 100 * np.mean(t2i < k) for k in (1, 5, 10)} | {f"i2t_R@{k}": 100 * np.mean(i2t < k) for k in (1, 5, 10)}
    assert result["metrics"] == pytest.approx(want)
    assert result["counts"] == {"items": 13, "images": 6, "invalid": 0}
    assert [x["rank"] for x in result["items"] if x["subset"] == "t2i"] == [int(x) + 1 for x in t2i]
    assert "t2i first stage: flat: exact" in output
    assert result["metrics"]["t2i_R@10"] == 100.0  # 6 images: every one is in the top 10


def test_rerank_over_the_whole_gallery_equals_the_heads_full_matrix(coco):
    r, image_keys, caption_keys, owner = _gallery(coco)
    head = create_head("maxsim")
    head.attach(r)
    im = head.embed_images(r.gather("images", head.needs_images, r.rows("images", image_keys), head.layer))
    tx = head.embed_texts(r.gather("texts", head.needs_texts, r.rows("texts", caption_keys), head.layer))
    t2i, i2t = _reference_ranks(np.asarray(head.score_matrix(im, tx)), owner)
    result, output = _score(coco, "--head", "maxsim", "--rerank", "100")
    ranks = {d: [x["rank"] for x in result["items"] if x["subset"] == d] for d in ("t2i", "i2t")}
    assert ranks == {"t2i": [int(x) + 1 for x in t2i], "i2t": [int(x) + 1 for x in i2t]}
    assert "re-ranked by maxsim: top 100 of each query" in output
    glob, _ = _score(coco)
    assert ranks["t2i"] != [x["rank"] for x in glob["items"] if x["subset"] == "t2i"]  # the head changed the order


def test_every_index_gives_the_same_ranks_on_a_small_gallery_and_says_which_ran(coco):
    flat, _ = _score(coco)
    for kind in ("ivf", "hnsw", "auto"):
        result, output = _score(coco, "--index", kind)
        assert result["items"] == flat["items"], kind
        assert ("recall@k 1.0000 against exact" in output) if kind != "auto" else ("flat: exact" in output)


def test_aliases_check_the_dataset_and_options_are_refused_elsewhere(coco, mini_sc_cache):
    res = CliRunner().invoke(heads_app, ["score", "--bench", "flickr30k", "--cache", str(coco)])
    assert res.exit_code == 2 and "holds 'coco' captions; --bench flickr30k needs 'flickr30k'" in res.output
    res = CliRunner().invoke(heads_app, ["score", "--bench", "retrieval", "--cache", str(coco), "--head", "maxsim"])
    assert res.exit_code == 2 and "pass --rerank K" in res.output
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(mini_sc_cache), "--rerank", "5"])
    assert res.exit_code == 2 and "--bench sugarcrepe takes no --rerank" in res.output
