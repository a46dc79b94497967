"""SugarCrepe from the real annotation files: dedup counts and `global` scoring vs a direct computation."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image
from recompute import unit

from compalign.cache import CacheReader, open_cache
from compalign.evaluate.benchmarks import create_benchmark
from compalign.extract.backbones import load_backbone
from compalign.heads import create_head


def test_all_seven_subsets_encode_unique_content_once(sugarcrepe_tiny_cache):
    r = open_cache(sugarcrepe_tiny_cache)
    assert r.layout.n_images == 1560
    assert r.layout.n_texts == 11844
    assert r.attrs["source"]["n_items"] == 7511
    assert r.ok("images").all() and r.ok("texts").all()
    assert len(set(r.image_keys.tolist())) == 1560


def test_global_scores_equal_a_direct_per_item_computation(sugarcrepe_root, sugarcrepe_tiny_cache):
    r = open_cache(sugarcrepe_tiny_cache)
    result = create_benchmark("sugarcrepe").evaluate(r, create_head("global"))
    bb = load_backbone("tiny")
    rows = {}
    for subset in ("swap_att", "add_obj"):  # two subsets, every item, straight from the JSON
        data = json.loads((sugarcrepe_root / f"{subset}.json").read_text())
        for ident, row in data.items():
            rows[f"{subset}/{ident}"] = row
    ids = sorted(rows)
    pix = torch.stack([bb.preprocess(Image.open(sugarcrepe_root / "val2017" / rows[i]["filename"])) for i in ids])
    with torch.no_grad():
        im = torch.nn.functional.normalize(bb.model.encode_image(pix), dim=-1)
        pos = bb.model.encode_text(bb.tokenizer([rows[i]["caption"] for i in ids]))
        neg = bb.model.encode_text(bb.tokenizer([rows[i]["negative_caption"] for i in ids]))
        pos, neg = torch.nn.functional.normalize(pos, dim=-1), torch.nn.functional.normalize(neg, dim=-1)
    s_pos, s_neg = (im * pos).sum(-1).numpy(), (im * neg).sum(-1).numpy()
    by_id = {it["id"]: it for it in result.items}
    got_pos = np.array([by_id[i]["pos"] for i in ids])
    got_neg = np.array([by_id[i]["neg"] for i in ids])
    np.testing.assert_allclose(got_pos, s_pos, atol=1e-5)
    np.testing.assert_allclose(got_neg, s_neg, atol=1e-5)
    margin = np.abs(s_pos - s_neg) > 1e-4  # outside float noise the verdicts must agree exactly
    assert margin.mean() > 0.95
    np.testing.assert_array_equal(np.array([by_id[i]["correct"] for i in ids])[margin], (s_pos > s_neg)[margin])
    swap = np.array([i.startswith("swap_att/") for i in ids])
    direct = 100 * np.mean((s_pos > s_neg)[swap])
    slack = 100 * np.mean(~margin[swap])  # items within float noise may flip
    assert abs(result.metrics["swap_att"] - direct) <= slack + 1e-9
    assert set(result.metrics) >= {"add_att", "swap_att", "replace", "swap", "add", "macro", "micro"}


def test_score_cli_reads_only_the_cache(sugarcrepe_tiny_cache, tmp_path):
    out = tmp_path / "s.json"
    code = (
        "import sys\n"
        "from compalign.cli.heads import app\n"
        "sys.argv = ['compalign-heads', 'score', '--bench', 'sugarcrepe', "
        f"'--cache', r'{sugarcrepe_tiny_cache}', '--json', r'{out}']\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = [m for m in sys.modules if m.startswith(('open_clip', 'compalign.extract', 'timm'))]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
    d = json.loads(out.read_text())
    assert d["bench"] == "sugarcrepe" and d["head"] == "global" and d["backbone"] == "tiny"
    assert len(d["items"]) == 7511 and {"id", "subset", "correct"} <= set(d["items"][0])
    assert "swap_att" in res.stdout and "macro" in res.stdout
    # Items per subset: as many as the subset's annotation file holds, every one of them valid.
    want_n = {gz.name[:-len(".json.gz")]: len(json.loads(gzip.decompress(gz.read_bytes())))
              for gz in sorted((DATA / "sugarcrepe").glob("*.json.gz"))}
    subset = np.array([i["subset"] for i in d["items"]])
    assert {s: int((subset == s).sum()) for s in want_n} == want_n and sum(want_n.values()) == 7511
    assert d["counts"] == {"items": 7511, "invalid": 0, "bow_proof": 572} and all(i["valid"] for i in d["items"])
    # The JSON's metrics are the accuracies of its own items (strict >: a tie is wrong) ...
    pos, neg = np.array([i["pos"] for i in d["items"]]), np.array([i["neg"] for i in d["items"]])
    correct = np.array([i["correct"] for i in d["items"]])
    np.testing.assert_array_equal(correct, pos > neg)
    m = d["metrics"]
    for s in want_n:
        assert m[s] == pytest.approx(100 * correct[subset == s].mean(), abs=1e-9), s
    for cat, members in {"replace": ("replace_att", "replace_obj", "replace_rel"), "swap": ("swap_att", "swap_obj"),
                         "add": ("add_att", "add_obj")}.items():
        assert m[cat] == pytest.approx(100 * correct[np.isin(subset, members)].mean(), abs=1e-9), cat
    assert m["macro"] == pytest.approx(np.mean([m[s] for s in want_n]), abs=1e-9)  # the mean of the subsets
    assert m["micro"] == pytest.approx(sum(m[s] * n for s, n in want_n.items()) / 7511, abs=1e-9)  # item-weighted
    assert m["micro"] == pytest.approx(100 * correct.mean(), abs=1e-9) and m["macro"] != pytest.approx(m["micro"])
    # The bag-of-words-proof subset: the swaps whose negative reorders the positive's very words, nothing else.
    bow = np.array([i["bow_proof"] for i in d["items"]])
    assert {s: int(bow[subset == s].sum()) for s in want_n} == {
        "add_att": 0, "add_obj": 0, "replace_att": 0, "replace_obj": 0, "replace_rel": 0, "swap_att": 408, "swap_obj": 164}
    for s in ("swap_att", "swap_obj"):
        assert m[f"bow_proof/{s}"] == pytest.approx(100 * correct[bow & (subset == s)].mean(), abs=1e-9), s
    assert m["bow_proof/micro"] == pytest.approx(100 * correct[bow].mean(), abs=1e-9)
    assert not any(k.startswith("bow_proof/replace") or k.startswith("bow_proof/add") for k in m)
    # ... and those items score what numpy's cosine of the cached global embeddings gives.
    r = CacheReader(sugarcrepe_tiny_cache)
    it = r.items
    assert [i["id"] for i in d["items"]] == it["id"].tolist()

    im = unit(r.read("images", "global", r.rows("images", it["image"])))
    s_pos = (im * unit(r.read("texts", "global", r.rows("texts", it["caption"])))).sum(1)
    s_neg = (im * unit(r.read("texts", "global", r.rows("texts", it["negative_caption"])))).sum(1)
    np.testing.assert_allclose(pos, s_pos, atol=1e-6, rtol=0)
    np.testing.assert_allclose(neg, s_neg, atol=1e-6, rtol=0)
    margin = np.abs(s_pos - s_neg) > 1e-6  # outside float32 noise the verdicts must agree exactly
    assert margin.mean() > 0.99
    np.testing.assert_array_equal(correct[margin], (s_pos > s_neg)[margin])
    for s in want_n:
        at = subset == s
        slack = 100 * np.mean(~margin[at])  # items within float noise may flip
        assert abs(m[s] - 100 * np.mean((s_pos > s_neg)[at])) <= slack + 1e-9, s
