"""Contract tests over the whole head registry: shapes, no NaN, gradients, pairs == matrix diagonal, save -> load.

Heads are built for a small made-up cache shape (no backbone, no store), so every registered head,
variants included, is checked in seconds.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from compalign.cache.reader import REGIONS
from compalign.heads import CacheSpec, TorchHead, create_head, list_heads, load_head, save_head
from compalign.heads.base import TOKEN_FIELDS

SPEC = CacheSpec(embed_dim=12, image_width=10, text_width=8, n_patches=9, n_prefix=1, text_len=7, layers=(-1, -2),
                 backbone="fake", backbone_id="fake-id",
                 projections={"image": np.random.default_rng(1).normal(size=(10, 12)).astype(np.float32),
                              "text": np.random.default_rng(2).normal(size=(8, 12)).astype(np.float32)})


def image_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    oracle_mask = np.arange(4)[None, :] < rng.integers(0, 5, n)[:, None]  # 0 to 4 object boxes per image
    oracle_mask[0] = [True, True, True, False]
    if n > 2:
        oracle_mask[2] = False  # an image without boxes
    return {"global": rng.normal(size=(n, SPEC.embed_dim)).astype(np.float32),
            "patches": rng.normal(size=(n, SPEC.n_patches, SPEC.image_width)).astype(np.float16),
            "prefix": rng.normal(size=(n, SPEC.n_prefix, SPEC.image_width)).astype(np.float16),
            "status": np.ones(n, dtype=np.int8),  # extraction status (1 = ok): what `blind` reads instead of features
            "regions_crops": rng.normal(size=(n, 5, SPEC.embed_dim)).astype(np.float32),  # `extract --crops grid`
            "regions_oracle": rng.normal(size=(n, 4, SPEC.embed_dim)).astype(np.float32) * oracle_mask[..., None],
            "regions_oracle_mask": oracle_mask}


def text_batch(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SPEC.text_len + 1, n).astype(np.int16)
    tokens = rng.normal(size=(n, SPEC.text_len, SPEC.text_width)).astype(np.float16)
    tokens[np.arange(SPEC.text_len)[None, :] >= lengths[:, None]] = 0  # the cache stores zeros after `lengths`
    segment_mask = np.arange(3)[None, :] < rng.integers(0, 4, n)[:, None]  # 0 to 3 segments per caption
    segment_mask[0] = [True, True, False]
    segment_mask[1] = False  # a caption without segments
    segments = rng.normal(size=(n, 3, SPEC.embed_dim)).astype(np.float32) * segment_mask[..., None]  # zero-padded
    return {"global": rng.normal(size=(n, SPEC.embed_dim)).astype(np.float32), "tokens": tokens, "lengths": lengths,
            "segments": segments, "segment_mask": segment_mask}


def fields(batch: dict[str, np.ndarray], need: tuple[str, ...], texts: bool) -> dict[str, np.ndarray]:
    out = {k: batch[k] for k in need}
    if texts and "tokens" in need:
        out["lengths"] = batch["lengths"]
    if texts and "segments" in need:
        out["segment_mask"] = batch["segment_mask"]
    if not texts and "regions_oracle" in need:
        out["regions_oracle_mask"] = batch["regions_oracle_mask"]
    return out


def build(name: str):
    head = create_head(name)
    if isinstance(head, TorchHead):
        head.build(SPEC)
    return head


def embed(head, images, texts):
    return (head.embed_images(fields(images, head.needs_images, False)),
            head.embed_texts(fields(texts, head.needs_texts, True)))


def take(rep, idx):
    return {k: v[idx] for k, v in rep.items()} if isinstance(rep, dict) else rep[idx]


HEADS = list_heads()


def test_registry_has_the_design_heads_and_a_tiny_test_variant():
    assert {"blind", "global", "global_mlp", "maxsim", "tflocal", "tflocal_tiny"} <= set(HEADS)
    with pytest.raises(KeyError, match="available"):
        create_head("no-such-head")
    with pytest.raises(ValueError, match="unknown option"):
        create_head("tflocal", widht=8)


@pytest.mark.parametrize("name", HEADS)
def test_shapes_no_nan_and_pairs_equal_the_matrix_diagonal(name):
    head = build(name)
    assert all(f in ("global", "segments", *TOKEN_FIELDS) for f in head.needs_texts)
    assert all(f in ("global", "status", *TOKEN_FIELDS, *REGIONS) for f in head.needs_images)
    images, texts = image_batch(5), text_batch(5)
    im, tx = embed(head, images, texts)
    pairs, matrix = head.score_pairs(im, tx), head.score_matrix(im, tx)
    assert pairs.shape == (5,) and matrix.shape == (5, 5)
    assert np.isfinite(pairs).all() and np.isfinite(matrix).all()
    np.testing.assert_allclose(pairs, np.diag(matrix), rtol=1e-5, atol=1e-5)
    # non-square matrices, and a pair's score does not depend on the rest of its batch
    im3, tx7 = embed(head, image_batch(3, seed=4), text_batch(7, seed=5))
    m = head.score_matrix(im3, tx7)
    assert m.shape == (3, 7) and np.isfinite(m).all()
    sub_t = fields({k: v[[2, 4]] for k, v in texts.items()}, head.needs_texts, True)
    sub_i = fields({k: v[[2, 4]] for k, v in images.items()}, head.needs_images, False)
    alone = head.score_pairs(head.embed_images(sub_i), head.embed_texts(sub_t))
    np.testing.assert_allclose(alone, pairs[[2, 4]], rtol=1e-5, atol=1e-5)
    # gathered representations (what scoring does with repeated rows) score like the originals
    idx = np.array([1, 1, 0, 4])
    np.testing.assert_allclose(head.score_pairs(take(im, idx), take(tx, idx)), pairs[idx], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_text_text_scores_where_the_head_has_them(name):
    head = build(name)
    _, a = embed(head, image_batch(4), text_batch(4, seed=7))
    _, b = embed(head, image_batch(4), text_batch(4, seed=8))
    if head.text_text:
        s = head.score_text_pairs(a, b)
        assert s.shape == (4,) and np.isfinite(s).all()
    else:
        with pytest.raises(NotImplementedError):
            head.score_text_pairs(a, b)


@pytest.mark.parametrize("name", [n for n in HEADS if create_head(n).trainable])
def test_every_trainable_parameter_gets_a_gradient(name):
    head = build(name)
    head.train()
    im = head.encode_images(head._tensors(fields(image_batch(4), head.needs_images, False)))
    tx = head.encode_texts(head._tensors(fields(text_batch(4), head.needs_texts, True)))
    loss = head.matrix_logits(im, tx).logsumexp(1).mean() - head.pair_logits(im, tx).mean()
    if head.text_text:
        loss = loss + head.text_logits(tx, tx).mean()
    loss.backward()
    params = dict(head.named_parameters())
    assert params, name
    for pname, p in params.items():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname} has a zero or non-finite gradient"


@pytest.mark.parametrize("name", HEADS)
def test_save_then_load_gives_identical_scores(name, tmp_path, monkeypatch):
    head = build(name)
    if isinstance(head, TorchHead):  # move off the initial weights, so loading must really restore them
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.01 * torch.randn_like(p))
    images, texts = image_batch(4), text_batch(4)
    want = head.score_matrix(*embed(head, images, texts))
    save_head(head, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["head.json", "head.safetensors"]

    def no_unpickling(*a, **k):
        raise AssertionError("checkpoint loading must never unpickle")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = load_head(tmp_path / "run")
    assert loaded.name == name and loaded.config() == head.config()
    got = loaded.score_matrix(*embed(loaded, images, texts))
    np.testing.assert_array_equal(got, want)


def test_maxsim_refuses_a_tower_without_a_linear_projection():
    spec = CacheSpec(**{**SPEC.dims(), "layers": (-1,), "backbone": "siglip2"}, projections={})
    with pytest.raises(ValueError, match="siglip2.*attention head"):
        create_head("maxsim").build(spec)
    with pytest.raises(ValueError, match="projected"):
        create_head("tflocal", tokens="projected").build(spec)
    create_head("tflocal").build(spec)  # raw tokens need no projection


def test_an_unbuilt_head_says_how_to_build_it():
    with pytest.raises(RuntimeError, match="attach"):
        create_head("tflocal_tiny").embed_images(fields(image_batch(2), ("patches", "global"), False))


def test_same_config_same_initial_weights():
    a, b = build("tflocal_tiny"), build("tflocal_tiny")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_blind_never_reads_an_image_and_fit_learns_which_caption_is_positive():
    head = build("blind")
    assert head.needs_images == ("status",)
    texts = text_batch(6)
    tx = head.embed_texts(fields(texts, head.needs_texts, True))
    a = head.score_matrix(head.embed_images({"status": np.ones(4, np.int8)}), tx)
    assert a.shape == (4, 6) and (a == a[0]).all()  # every image row the same: the score is the caption's alone
    # Positives differ from negatives along one direction, the one the initial weights get wrong: the fit must learn it.
    rng = np.random.default_rng(0)
    direction = np.zeros(SPEC.embed_dim, np.float32)
    direction[3] = 1.0
    base = rng.normal(size=(200, SPEC.embed_dim)).astype(np.float32)

    def wins(pos, neg):
        none = np.zeros((len(pos), 0), np.float32)
        s = [head.score_pairs(none, head.embed_texts({"global": x})) for x in (pos, neg)]
        return s[0] > s[1]

    if wins(base + 2 * direction, base - 2 * direction).mean() > 0.5:
        direction = -direction
    pos, neg = base + 2 * direction, base - 2 * direction
    assert wins(pos[150:], neg[150:]).mean() < 0.5
    loss = head.fit(pos[:150], neg[:150], steps=200)
    assert loss < 0.1 and wins(pos[150:], neg[150:]).all()  # the 50 held-out pairs: all right after fitting
