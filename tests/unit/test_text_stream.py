"""Captions are tokenised in chunks and per shard, never as one table; the stored texts are the same bytes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import zarr
from conftest import make_images

from compalign.extract import runner
from compalign.extract.backbones import load_backbone
from compalign.extract.captions import Chunks, content_lengths, measure, measurer
from compalign.extract.runner import ExtractConfig, extract


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for name, v in group.members():
        out.update({prefix + name: v[...]} if isinstance(v, zarr.Array) else _arrays(v, prefix + name + "/"))
    return out


def test_chunked_tokenisation_stores_the_same_texts(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_images(root / "img", ["a.png", "b.png"])
    caps = [f"caption number {i} " + "word " * (i % 7) for i in range(23)] + ["", "long " * 120]  # empty, truncated
    (root / "pairs.jsonl").write_text("\n".join(json.dumps({"image": f"img/{'ab'[i % 2]}.png", "caption": c})
                                                for i, c in enumerate(caps)))
    cfg = dict(model="tiny", data="pairs", root=str(root), workers=0, shard_rows=4, batch_size=3, layers=[-1, -2])
    whole = tmp_path / "whole.zarr"
    extract(ExtractConfig(out=str(whole), **cfg))  # 25 captions < TOKENIZE_ROWS: one call, as before chunking

    calls: list[tuple[int | None, int]] = []  # (context_length asked for, captions)
    load = runner.load_backbone

    def counted(*args, **kwargs):  # the backbone, its tokeniser's calls recorded (after the load's own probe)
        bb = load(*args, **kwargs)
        tok = bb.tokenizer
        bb.tokenizer = lambda t, context_length=None: calls.append((context_length, len(t))) or tok(t, context_length)
        return bb

    monkeypatch.setattr(runner, "load_backbone", counted)
    monkeypatch.setattr(runner, "TOKENIZE_ROWS", 3)
    chunked = tmp_path / "chunked.zarr"
    extract(ExtractConfig(out=str(chunked), **cfg))
    C = load_backbone("tiny", None, device="cpu").context_length
    # Lengths: one pass at C + 1 in chunks of 3, the one caption near the limit again at C; then shards of 4.
    assert [n for c, n in calls if c == C + 1] == [3] * 8 + [1]
    assert [(c, n) for c, n in calls if c == C] == [(C, 1)]
    assert [n for c, n in calls if c is None] == [4] * 6 + [1]
    assert len(calls) == 9 + 1 + 7

    a, b = _arrays(zarr.open_group(whole, mode="r")["texts"]), _arrays(zarr.open_group(chunked, mode="r")["texts"])
    assert sorted(a) == sorted(b) and "layers/-2/tokens" in a
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # And the stored lengths / truncation flags are the whole table's, in stored order.
    bb = load_backbone("tiny", None, device="cpu")
    strings = list(a["strings"])
    ref = bb.tokenize(strings)
    assert np.array_equal(a["lengths"], ref.lengths.numpy()) and np.array_equal(a["truncated"], ref.truncated.numpy())
    assert a["truncated"].sum() == 1 and list(a["error"]).count("empty caption") == 1
    monkeypatch.undo()
    # The same store when worker processes tokenise (the lengths in chunks of 3, then each shard's ids).
    monkeypatch.setattr(runner, "TOKENIZE_ROWS", 3)
    workers = tmp_path / "workers.zarr"
    extract(ExtractConfig(out=str(workers), **{**cfg, "workers": 2}))
    c = _arrays(zarr.open_group(workers, mode="r")["texts"])
    for name in a:
        assert np.array_equal(a[name], c[name]), name


def _tokenizer(sep: bool):
    """A truncating tokeniser over words: [1] + ids + [2] padded with 0 to the context; truncated, it keeps its
    end token last. `sep`: the end token is then replaced by padding (as HF tokenisers that strip [SEP] do)."""
    def tok(texts, context_length=8):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1] + [3 + len(w) for w in t.split()] + [2]
            if len(ids) > context_length:
                ids = ids[:context_length - 1] + [2]
            out[i, :len(ids)] = torch.tensor([0 if sep and x == 2 else x for x in ids])
        return out
    return tok


@pytest.mark.parametrize("sep", [False, True])
def test_one_pass_measures_what_the_two_passes_measured(sep):
    """`measure` (one pass at C + 1, the rows near the limit again at C): lengths from the ids at C, truncation
    whenever the caption was cut, a separator-stripping tokeniser's too. Captions of 0 to 10 words, context 8."""
    tok = _tokenizer(sep)
    texts = [" ".join(["ab"] * n) for n in range(11)]
    lengths, truncated = measure(tok, 8, texts)
    assert lengths.tolist() == content_lengths(tok(texts, 8)).numpy().tolist()
    # by hand: 2 specials + n words, at most 8 (one fewer with the separator stripped), cut from 7 words on
    assert lengths.tolist() == [min(n + 2, 8) - sep for n in range(11)]
    assert truncated.tolist() == [n + 2 > 8 for n in range(11)]
    # The two passes' rule (content at 9 longer than 8) saw it only when the end token is kept.
    assert (content_lengths(tok(texts, 9)) > 8).tolist() == [not sep and n + 2 > 8 for n in range(11)]


def test_the_chunks_a_spawned_worker_gets_pickle_without_the_model():
    """Where workers spawn (macOS, Windows) each gets the dataset pickled: the tokeniser and the captions, not the
    backbone. Unpickled, it tokenises the same."""
    bb = load_backbone("tiny", None, device="cpu")
    texts = ["a red circle", "two blue squares above a green triangle", "long " * 120]
    for fn in (measurer(bb.tokenizer, bb.context_length), bb.tokenizer):
        chunks = Chunks(fn, texts, [range(0, 2), np.array([2, 0])])
        blob = pickle.dumps(chunks)
        assert b"torch.nn" not in blob and len(blob) < 5 * 2**20
        again = pickle.loads(blob)
        for i in range(2):
            want, got = chunks[i], again[i]
            assert all(np.array_equal(np.asarray(w), np.asarray(g)) for w, g in zip(want, got, strict=True))
