"""Oracle caption segments: the exact objects, attribute phrases and relation of a world caption.

A world caption is data (``Caption``: the mentioned objects of the scene graph and their relation), so
its segments need no parsing: each mention is an object ("circle") and, if it names a size or colour,
an attribute phrase ("large red circle"); a relation is "circle to the left of square". Phrases are
worded exactly as ``caption_text`` words them (the "{b} is {inv} {a}" template states the inverse
relation with the other object first, and so does its segment), and spans index the same
``compalign.text.tokenize`` tokens, so the rule-based ``segment`` can be checked against this.
"""

from __future__ import annotations

from compalign.shapes.captions import INVERSE, REL_PHRASES, Caption, _np, caption_text
from compalign.text import Segment, Segmentation, tokenize

_INVERTED_TEMPLATE = 2  # REL_TEMPLATES[2] is "{b} is {inv} {a}"


def oracle_segments(c: Caption) -> Segmentation:
    """The segments of ``caption_text(c)`` read off the caption's structure (always parsed)."""
    text = caption_text(c)
    tokens = tokenize(text)
    order = list(c.mentions)
    inverted = c.relation is not None and c.template == _INVERTED_TEMPLATE
    if inverted:
        order[0], order[1] = order[1], order[0]  # surface order of the text
    segs: list[Segment] = []
    heads: list[int] = []  # token index of each mention's shape word, in surface order
    pos = 0
    for m in order:
        words = [w for w in (m.size, m.colour) if w is not None]
        first, pos = _find(tokens, _np(m).split(), pos)  # the mention's noun phrase, as the caption words it
        head = first + len(words) + 1  # after the article and the attribute words
        heads.append(head)
        segs.append(Segment(m.shape, "object", (head, head + 1)))
        if words:
            segs.append(Segment(" ".join([*words, m.shape]), "attribute", (first + 1, head + 1)))
    if c.relation is not None:
        rel = INVERSE[c.relation] if inverted else c.relation
        a, b = order[0], order[1]
        segs.append(Segment(f"{a.shape} {REL_PHRASES[rel]} {b.shape}", "relation", (heads[0], heads[1] + 1)))
    return Segmentation(text, tokens, tuple(segs), parsed=True)


def _find(tokens: tuple[str, ...], words: list[str], pos: int) -> tuple[int, int]:
    """(start, end) of the first occurrence of ``words`` in ``tokens`` at or after ``pos``."""
    n = len(words)
    for i in range(pos, len(tokens) - n + 1):
        if list(tokens[i:i + n]) == words:
            return i, i + n
    raise AssertionError(f"{' '.join(words)!r} not found in {' '.join(tokens)!r}")  # caption_text guarantees it
