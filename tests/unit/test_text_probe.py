"""Text-side binding probe: bound vs bag-of-words token codes, and the tokenizer check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest

from compalign.shapes import WorldConfig, write_world
from compalign.shapes.captions import parse_caption
from compalign.shapes.probe import ProbeConfig
from compalign.shapes.text_probe import probe_text_binding
from compalign.shapes.writer import load_world_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=8, n_test_id=300, n_test_ood=8, seed=5), out)
    return out


class _FakeTextReader:
    """What probe_text_binding reads from a cache, holding synthetic token embeddings."""

    def __init__(self, strings: list[str], lengths: list[int], tokens: dict[int, np.ndarray]):
        self.path = Path("fake.zarr")
        self.root = {"texts/strings": np.array(strings), "texts/lengths": np.array(lengths)}
        self.layout = SimpleNamespace(text_layers=sorted(tokens, reverse=True))
        self.tokens = tokens

    def read(self, kind: str, field: str, rows: np.ndarray, layer: int = -1) -> np.ndarray:
        return self.tokens[layer][rows]


def _captions(world: Path) -> list[str]:
    caps = set()
    for f in sorted((world / "test_id" / "sugarcrepe").glob("*.json")):
        for v in json.loads(f.read_text()).values():
            caps.update((v["caption"], v["negative_caption"]))
    return sorted(caps)


def test_bound_tokens_read_their_own_colour_and_a_bag_of_words_does_not(world: Path) -> None:
    wcfg = load_world_config(world)
    tok = open_clip.SimpleTokenizer()
    colours = sorted(wcfg.colours)
    strings = _captions(world)
    rng = np.random.default_rng(0)
    code = rng.normal(size=(len(colours), 16))
    L = 32
    bound = rng.normal(scale=0.2, size=(len(strings), L, 16)).astype(np.float32)
    bag = bound.copy()
    lengths = []
    shape_ids = {tok.encoder[f"{s}</w>"] for s in wcfg.shapes}
    for r, text in enumerate(strings):
        ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
        lengths.append(len(ids))
        mentions = parse_caption(text, wcfg).mentions
        said = [colours.index(m.colour) for m in mentions if m.colour]
        for pos, m in zip([p for p, i in enumerate(ids) if i in shape_ids], mentions):
            if m.colour:
                bound[r, pos] += 2 * code[colours.index(m.colour)]  # the noun knows its own colour
            bag[r, pos] += code[said].sum(0)  # the noun knows which colours the caption says, not whose
    reader = _FakeTextReader(strings, lengths, {-1: bound, -2: bag})
    res = probe_text_binding(reader, world, ProbeConfig(seed=0))
    assert res.n_captions == len(strings)
    acc = {k: v[0] for k, v in res.accuracy.items()}
    assert acc[-1, "colour", "all"] > 0.95 and acc[-1, "colour", "contrast"] > 0.95
    # With another colour in the caption, a bag of words cannot tell which is the noun's own.
    assert acc[-2, "colour", "contrast"] < 0.7
    assert res.accuracy[-2, "colour", "contrast"][2] > 50  # enough contrasting mentions to mean something
    assert (-1, "size", "all") in res.accuracy  # size is probed too (noise here: no assertion on its level)


def test_a_cache_from_another_tokenizer_is_refused(world: Path) -> None:
    strings = _captions(world)[:5]
    reader = _FakeTextReader(strings, [3] * len(strings), {-1: np.zeros((len(strings), 32, 4), np.float32)})
    with pytest.raises(ValueError, match="CLIP tokenizer"):
        probe_text_binding(reader, world)
