"""Captions are tokenised in chunks and per shard, never as one table; the stored texts are the same bytes."""

from __future__ import annotations

import json

import numpy as np
import zarr
from conftest import make_images

from compalign.extract import runner
from compalign.extract.backbones import Backbone, load_backbone
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

    calls: list[tuple[str, int]] = []
    tokenize, token_ids = Backbone.tokenize, Backbone.token_ids
    monkeypatch.setattr(Backbone, "tokenize", lambda self, t: calls.append(("measure", len(t))) or tokenize(self, t))
    monkeypatch.setattr(Backbone, "token_ids", lambda self, t: calls.append(("ids", len(t))) or token_ids(self, t))
    monkeypatch.setattr(runner, "TOKENIZE_ROWS", 3)
    chunked = tmp_path / "chunked.zarr"
    extract(ExtractConfig(out=str(chunked), **cfg))
    # The load probe tokenises ["a"]; then chunks of 3 to measure the lengths, shards of 4 to encode them.
    assert calls[0] == ("measure", 1) and max(n for _, n in calls) == 4
    assert [n for k, n in calls[1:] if k == "measure"] == [3] * 8 + [1]
    assert [n for k, n in calls if k == "ids"] == [4] * 6 + [1]

    a, b = _arrays(zarr.open_group(whole, mode="r")["texts"]), _arrays(zarr.open_group(chunked, mode="r")["texts"])
    assert sorted(a) == sorted(b) and "layers/-2/tokens" in a
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # And the stored lengths / truncation flags are the whole table's, in stored order.
    bb = load_backbone("tiny", None, device="cpu")
    strings = list(a["strings"])
    ref = tokenize(bb, strings)
    assert np.array_equal(a["lengths"], ref.lengths.numpy()) and np.array_equal(a["truncated"], ref.truncated.numpy())
    assert a["truncated"].sum() == 1 and list(a["error"]).count("empty caption") == 1
