"""Text-side binding probe: does each shape word's cached token carry its *own* colour and size?

The image-side probe (probe.py) asks whether patches carry colour and shape at the same place.
A head can only bind if the text side does too: in "a small red circle and a large blue square"
the token of "square" must say blue and large, not merely that blue and large occur somewhere in
the caption. For every caption in the cache that parses in the world's grammar, this fits ridge
probes (probe.linear_probe) on the token at each shape word for that mention's colour and size,
split by *caption* into train and test parts, per cached text layer. The subset that decides
binding is the mentions whose caption names another object with a different value: a bag of
words there reads both values and is right at most half of the time.

Token positions come from open_clip's CLIP tokenizer (the `tiny` backbone's and OpenAI CLIP's);
a cache whose stored token counts disagree with it is refused rather than probed at wrong places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compalign.cache.reader import CacheReader
from compalign.core import InputError
from compalign.shapes.captions import parse_caption
from compalign.shapes.load import load_world_config
from compalign.shapes.probe import ProbeConfig, linear_probe

ATTRS: tuple[str, ...] = ("colour", "size")


class TextProbeUnavailableError(InputError):
    """The cache's texts cannot be probed: another tokenizer than CLIP's, or no caption of the world's grammar.

    The CLI treats it as a soft case (the image probe stands alone); anything else stays an error.
    """


@dataclass
class TextProbeResult:
    # (layer, attribute, subset) -> (held-out accuracy, chance, number of mentions); subset is "all" or "contrast"
    accuracy: dict[tuple[int, str, str], tuple[float, float, int]]
    n_captions: int


@dataclass
class _Mention:
    row: int  # text row in the cache
    pos: int  # token position of the shape word
    values: dict[str, str | None]  # attribute -> this mention's value (None: not said)
    contrast: dict[str, bool]  # attribute -> another mention of the caption says a different value


def _mentions(reader: CacheReader, world: Path) -> tuple[list[_Mention], int]:
    import open_clip

    wcfg = load_world_config(world)
    tok = open_clip.SimpleTokenizer()
    shape_ids = {tok.encoder[f"{s}</w>"]: s for s in wcfg.shapes}
    strings = reader.root["texts/strings"][:]
    lengths = reader.root["texts/lengths"][:]
    out: list[_Mention] = []
    n_parsed = 0
    for row, text in enumerate(strings.tolist()):
        try:
            cap = parse_caption(str(text), wcfg)
        except InputError:
            continue  # not the world's grammar (a real caption): nothing to probe
        ids = [tok.sot_token_id, *tok.encode(str(text)), tok.eot_token_id]
        if len(ids) != int(lengths[row]):
            raise TextProbeUnavailableError(
                f"{reader.path}: text row {row} ({text!r}) has {int(lengths[row])} stored tokens but the CLIP "
                f"tokenizer gives {len(ids)}; the text probe needs a backbone with open_clip's CLIP tokenizer"
            )
        positions = [p for p, i in enumerate(ids) if i in shape_ids]
        if len(positions) != len(cap.mentions):
            continue
        n_parsed += 1
        for k, (pos, m) in enumerate(zip(positions, cap.mentions)):
            values = {"colour": m.colour, "size": m.size}
            others = [o for j, o in enumerate(cap.mentions) if j != k]
            contrast = {a: any(getattr(o, a) not in (None, values[a]) for o in others) for a in ATTRS}
            out.append(_Mention(row, pos, values, contrast))
    return out, n_parsed


def probe_text_binding(reader: CacheReader, world: str | Path, cfg: ProbeConfig = ProbeConfig()) -> TextProbeResult:
    """Ridge probes of each mention's colour and size from its shape word's token, per cached text layer."""
    mentions, n_captions = _mentions(reader, Path(world))
    if not mentions:
        raise TextProbeUnavailableError(
            f"{reader.path}: no caption in the shapes world's grammar; extract a split of a shapes world"
        )
    rows = np.array(sorted({m.row for m in mentions}))
    rng = np.random.default_rng(cfg.seed)
    train_rows = set(rng.permutation(rows)[: int(round(len(rows) * cfg.train_fraction))].tolist())
    index = {r: i for i, r in enumerate(rows.tolist())}
    result: dict[tuple[int, str, str], tuple[float, float, int]] = {}
    for layer in reader.layout.text_layers:
        tokens = reader.read("texts", "tokens", rows, layer)  # (R, L, W) float16
        for attr in ATTRS:
            for subset in ("all", "contrast"):
                keep = [m for m in mentions if m.values[attr] is not None and (subset == "all" or m.contrast[attr])]
                if len(keep) < 10:
                    continue
                x = np.stack([tokens[index[m.row], m.pos] for m in keep]).astype(np.float32)
                y = np.array([m.values[attr] for m in keep])
                train = np.array([m.row in train_rows for m in keep])
                acc, chance, _ = linear_probe(x[train], y[train], x[~train], y[~train], cfg)
                result[layer, attr, subset] = (acc, chance, len(keep))
    return TextProbeResult(result, n_captions)


__all__ = ["ATTRS", "TextProbeResult", "TextProbeUnavailableError", "probe_text_binding"]
