"""Encoding causal text only up to the longest caption gives the full-context embedding; non-causal towers keep it all."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from compalign.extract.backbones import is_causal_text, load_backbone

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


def test_non_causal_tower_would_change_if_cut():
    """Why the rule exists: without a causal mask, padding positions move the pooled embedding."""
    m = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    ids = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS[:1])
    L = int((ids != 0).sum())
    with torch.no_grad():
        x_full = m.token_embedding(ids) + m.positional_embedding
        x_cut = m.token_embedding(ids[:, :L]) + m.positional_embedding[:L]
        full = m.transformer(x_full, attn_mask=None)[0, L - 1]
        cut = m.transformer(x_cut, attn_mask=None)[0, L - 1]
    assert (full - cut).abs().max() > 1e-3
