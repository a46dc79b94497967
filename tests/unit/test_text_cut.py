"""Encoding causal text only up to the longest caption gives the full-context embedding, in the backbone and in what
extraction stores; non-causal towers keep it all."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from conftest import make_images

from compalign.cache import open_cache
from compalign.extract.backbones import is_causal_text, load_backbone
from compalign.extract.runner import ExtractConfig, extract

CAPTIONS = ["a dog", "two cats sitting on a red sofa next to a window", "a man riding a horse on the beach at sunset"]


@pytest.mark.parametrize("model", ["ViT-B-32", "PE-Core-B-16"])
def test_cut_at_longest_caption_equals_full_context(model):
    bb = load_backbone(model, "none")
    assert bb.causal_text
    tok = bb.tokenize(CAPTIONS)
    L = int(tok.lengths.max())
    assert L < bb.context_length
    full = bb.encode_texts(tok.ids, [-1]).global_.numpy()
    cut = bb.encode_texts(tok.ids[:, :L], [-1]).global_.numpy()
    rel = np.abs(cut - full).max() / np.abs(full).max()
    assert rel < 1e-5, rel
    with torch.no_grad():  # and both equal the model's own encode_text
        own = bb.model.encode_text(tok.ids).numpy()
    np.testing.assert_allclose(cut, own, atol=1e-5, rtol=0)


def test_non_causal_and_last_pooled_towers_are_not_cut():
    siglip2 = open_clip.create_model("ViT-B-16-SigLIP2", pretrained=None)  # attends to padding
    assert not is_causal_text(siglip2)
    assert is_causal_text(open_clip.create_model("ViT-B-32", pretrained=None))


def test_extraction_stores_the_full_context_encoding_in_tokens_cut_at_the_longest_caption(tmp_path):
    """`_extract_texts` encodes each batch of length-sorted captions only up to its longest caption (batches of 3,
    two shards, captions of 3 to 13 tokens): what it stores must equal the backbone's full-context encoding."""
    captions = ["a dog", "a red cube", "two cats sitting on a red sofa next to a window", "three", "a cat",
                "a man riding a horse on the beach at sunset", "a small green sphere left of a large blue cube",
                "the big yellow cylinder is behind the small red cube"]
    root = tmp_path / "pairs"
    names = [f"{i:03d}.png" for i in range(len(captions))]
    make_images(root / "img", names)
    (root / "pairs.jsonl").write_text("".join(json.dumps({"image": f"img/{n}", "caption": c}) + "\n"
                                              for n, c in zip(names, captions)))
    out = tmp_path / "t.zarr"
    extract(ExtractConfig(model="tiny", data="pairs", root=str(root), out=str(out), workers=0, batch_size=3,
                          shard_rows=4, layers=[-1, -2]))

    bb = load_backbone("tiny")
    assert bb.causal_text
    r = open_cache(out)
    strings = r.root["texts/strings"][:].tolist()
    assert sorted(strings) == sorted(captions)
    tok = bb.tokenize(strings)  # at the full context length
    longest = int(tok.lengths.max())
    assert longest == 13 < bb.context_length == 32
    rows = np.arange(len(strings))
    lengths = r.read("texts", "lengths", rows)
    np.testing.assert_array_equal(lengths, tok.lengths.numpy())
    # the stored token arrays are as long as the longest caption, not the context
    assert r.layout.text_len == r.attrs["extraction"]["text_len"] == longest
    assert r.root["texts/tokens"].shape == (len(strings), longest, bb.meta["text_width"])
    assert r.root["texts/layers/-2/tokens"].shape == (len(strings), longest, bb.meta["text_width"])

    full = bb.encode_texts(tok.ids, [-1, -2])
    assert full.tokens[-1].shape[1] == bb.context_length
    with torch.no_grad():
        own = bb.model.encode_text(tok.ids).numpy()
    stored = r.read("texts", "global", rows)
    np.testing.assert_allclose(stored, full.global_.numpy(), atol=1e-5 * np.abs(own).max(), rtol=0)
    np.testing.assert_allclose(stored, own, atol=1e-5 * np.abs(own).max(), rtol=0)
    for layer in (-1, -2):
        got = r.read("texts", "tokens", rows, layer=layer).astype(np.float32)
        want = full.tokens[layer][:, :longest].numpy()
        for j, n in enumerate(lengths):  # up to each caption's EOT: float16 storage of the full-context tokens
            np.testing.assert_allclose(got[j, :n], want[j, :n], rtol=2**-10, atol=1e-4, err_msg=f"{strings[j]!r} {layer}")
            assert not got[j, n:].any()  # past its EOT: zeros
