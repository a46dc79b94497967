"""Structured captions: templates to text and back, the truth evaluator, and the negatives.

A caption is *data* (which objects are mentioned, with which attributes, and an optional
relation), never just a string: truth is decided by ``find_witness`` over the scene graph, and
every negative is built by editing the structure and then verified false by that evaluator.
``parse_caption`` inverts ``caption_text`` so files on disk can be re-checked from text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from compalign.core import InputError
from compalign.shapes.config import WorldConfig
from compalign.shapes.scene import (
    RELATIONS,
    Pair,
    Relation,
    Scene,
    SceneObject,
    all_pairs,
    clear_relation,
    relation_holds,
)

Attribute = Literal["colour", "size"]
NegativeKind = Literal["add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"]
NEGATIVE_KINDS: tuple[NegativeKind, ...] = get_args(NegativeKind)
MAX_MENTIONS = 4  # 3 sampled at most, plus one added by add_obj


@dataclass(frozen=True)
class Mention:
    shape: str
    colour: str | None = None  # None: the caption does not say the colour
    size: str | None = None  # None: the caption does not say the size


@dataclass(frozen=True)
class Caption:
    mentions: tuple[Mention, ...]  # in surface order
    relation: Relation | None = None  # if set: mentions[0] <relation> mentions[1]
    template: int = 0  # index into LIST_TEMPLATES or REL_TEMPLATES


# -- templates ---------------------------------------------------------------------------------

LIST_TEMPLATES: tuple[str, ...] = ("{list}", "there is {list}", "an image of {list}", "a picture of {list}")
# {b} {inv} {a} states the same fact with the other object first: word order varies, meaning not.
REL_TEMPLATES: tuple[str, ...] = ("{a} is {rel} {b}", "there is {a} {rel} {b}", "{b} is {inv} {a}", "{a} {rel} {b}")
EXTRAS = ", and also {list}"  # mentions beyond the related two
REL_PHRASES: dict[Relation, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE: dict[Relation, Relation] = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("there", "is"), ("an", "image", "of"), ("a", "picture", "of"))


def _np(m: Mention) -> str:
    words = [w for w in (m.size, m.colour, m.shape) if w is not None]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _list(ms: tuple[Mention, ...] | list[Mention]) -> str:
    nps = [_np(m) for m in ms]
    return nps[0] if len(nps) == 1 else ", ".join(nps[:-1]) + " and " + nps[-1]


def caption_text(c: Caption) -> str:
    """Surface string of a structured caption."""
    if c.relation is None:
        return LIST_TEMPLATES[c.template].format(list=_list(c.mentions))
    text = REL_TEMPLATES[c.template].format(
        a=_np(c.mentions[0]), b=_np(c.mentions[1]), rel=REL_PHRASES[c.relation], inv=REL_PHRASES[INVERSE[c.relation]]
    )
    if len(c.mentions) > 2:
        text += EXTRAS.format(list=_list(c.mentions[2:]))
    return text


def parse_caption(text: str, cfg: WorldConfig) -> Caption:
    """Inverse of ``caption_text`` (up to the two equivalent relation orders); InputError (a ValueError) if off-grammar."""
    toks = re.findall(r"[a-z]+|,", text.lower())
    pos = 0

    def peek(n: int = 1) -> tuple[str, ...]:
        return tuple(toks[pos : pos + n])

    def expect(*words: str) -> None:
        nonlocal pos
        if peek(len(words)) != words:
            raise InputError(f"cannot parse caption {text!r}: expected {' '.join(words)!r} at token {pos}")
        pos += len(words)

    def noun_phrase() -> Mention:
        nonlocal pos
        if peek() not in (("a",), ("an",)):
            raise InputError(f"cannot parse caption {text!r}: expected an article at token {pos}")
        pos += 1
        size = colour = None
        if peek() and peek()[0] in cfg.size_words:
            size, pos = toks[pos], pos + 1
        if peek() and peek()[0] in cfg.colours:
            colour, pos = toks[pos], pos + 1
        if not peek() or peek()[0] not in cfg.shapes:
            raise InputError(f"cannot parse caption {text!r}: expected a shape at token {pos}")
        shape, pos = toks[pos], pos + 1
        return Mention(shape, colour, size)

    def relation() -> Relation | None:
        nonlocal pos
        for rel, phrase in REL_PHRASES.items():
            words = tuple(phrase.split())
            if peek(len(words)) == words:
                pos += len(words)
                return rel
        return None

    def np_list(ms: list[Mention]) -> list[Mention]:
        """Continue a list "A, B and C" after its first noun phrase(s) ``ms``."""
        while peek() in ((",",), ("and",)):
            expect(peek()[0])
            ms.append(noun_phrase())
        return ms

    # Longest prefix first: "a picture of" must win over the article "a".
    prefix = max((i for i, p in enumerate(_PREFIXES) if peek(len(p)) == p), key=lambda i: len(_PREFIXES[i]))
    pos += len(_PREFIXES[prefix])
    first = noun_phrase()
    has_is = peek() == ("is",)
    if has_is:
        expect("is")
    rel = relation()
    if rel is None:
        if has_is:
            raise InputError(f"cannot parse caption {text!r}: 'is' without a relation")
        caption = Caption(tuple(np_list([first])), None, prefix)
    else:
        second = noun_phrase()
        extras: list[Mention] = []
        if peek():
            expect(",", "and", "also")
            extras = np_list([noun_phrase()])
        template = {(0, True): 0, (1, False): 1, (0, False): 3}.get((prefix, has_is))
        if template is None:
            raise InputError(f"cannot parse caption {text!r}: no relation template matches")
        caption = Caption((first, second, *extras), rel, template)
    if pos != len(toks):
        raise InputError(f"cannot parse caption {text!r}: trailing tokens {toks[pos:]}")
    return caption


def canonical(c: Caption) -> tuple:
    """Hashable meaning of a caption: equal for captions that say the same thing in other words."""
    ms = list(c.mentions)
    rel = c.relation
    if rel in ("right_of", "below"):  # "b right of a" == "a left of b"
        ms[0], ms[1], rel = ms[1], ms[0], INVERSE[rel]
    key = lambda m: (m.shape, m.colour or "", m.size or "")  # noqa: E731
    if rel is None:
        return (None, tuple(sorted(ms, key=key)))
    return (rel, ms[0], ms[1], tuple(sorted(ms[2:], key=key)))


# -- the evaluator -----------------------------------------------------------------------------


def _matches(m: Mention, o: SceneObject) -> bool:
    return m.shape == o.shape and (m.colour is None or m.colour == o.colour) and (m.size is None or m.size == o.size)


def find_witness(
    c: Caption, scene: Scene, cfg: WorldConfig, mode: Literal["strict", "lax"] = "strict"
) -> tuple[int, ...] | None:
    """First assignment of *distinct* scene objects to the mentions satisfying everything, or None.

    ``mode`` is the relation reading (see ``relation_holds``): positives must hold under strict,
    negatives must fail under lax.
    """
    objs = scene.objects
    chosen: list[int] = []

    def search(k: int) -> bool:
        if k == len(c.mentions):
            return True
        for i, o in enumerate(objs):
            if i in chosen or not _matches(c.mentions[k], o):
                continue
            if k == 1 and c.relation is not None and not relation_holds(c.relation, objs[chosen[0]], o, cfg, mode):
                continue
            chosen.append(i)
            if search(k + 1):
                return True
            chosen.pop()
        return False

    return tuple(chosen) if search(0) else None


def caption_is_true(c: Caption, scene: Scene, cfg: WorldConfig) -> bool:
    """True iff distinct objects satisfy every mentioned attribute and the (strict) relation."""
    return find_witness(c, scene, cfg, "strict") is not None


def caption_is_false(c: Caption, scene: Scene, cfg: WorldConfig) -> bool:
    """Clearly false: no assignment works even reading the relation laxly."""
    return find_witness(c, scene, cfg, "lax") is None


def named_pairs(c: Caption) -> set[Pair]:
    """(colour, shape) pairs the caption names; a mention without a colour names none."""
    return {(m.colour, m.shape) for m in c.mentions if m.colour is not None}


# -- sampling positives ------------------------------------------------------------------------


def sample_caption(
    scene: Scene, cfg: WorldConfig, rng: np.random.Generator, must_name: frozenset[Pair] = frozenset()
) -> Caption:
    """A true caption mentioning 1-3 objects; if ``must_name`` is given, it names one of those pairs."""
    objs = scene.objects
    n = len(objs)
    k = min(n, 1 + int(rng.choice(3, p=cfg.mention_probs)))
    required = [i for i, o in enumerate(objs) if o.pair in must_name]
    if must_name and not required:
        raise ValueError("scene has no object with a must_name pair")
    chosen: list[int] = []
    relation: Relation | None = None
    if k >= 2 and rng.random() < cfg.p_relation:
        rel_pairs = [
            (a, b, r) for a in range(n) for b in range(n) if a != b and (r := clear_relation(objs[a], objs[b], cfg))
        ]
        if must_name:
            rel_pairs = [p for p in rel_pairs if p[0] in required or p[1] in required]
        if rel_pairs:
            a, b, relation = rel_pairs[int(rng.integers(len(rel_pairs)))]
            chosen = [a, b]
    if relation is None and must_name:
        chosen = [required[int(rng.integers(len(required)))]]
    forced = next((i for i in chosen if i in required), None)
    rest = [int(i) for i in rng.permutation([i for i in range(n) if i not in chosen])]
    picked = chosen + rest[: k - len(chosen)]
    order = picked if relation is not None else [picked[int(i)] for i in rng.permutation(len(picked))]
    mentions = []
    for i in order:
        o = objs[i]
        omit_colour = i != forced and rng.random() < cfg.p_omit_colour
        with_size = rng.random() < cfg.p_mention_size
        mentions.append(Mention(o.shape, None if omit_colour else o.colour, o.size if with_size else None))
    family = REL_TEMPLATES if relation is not None else LIST_TEMPLATES
    c = Caption(tuple(mentions), relation, int(rng.integers(len(family))))
    if not caption_is_true(c, scene, cfg):  # true by construction; guard the construction
        raise AssertionError(f"sampled caption {caption_text(c)!r} is false for its scene")
    return c


# -- negatives: one candidate generator per SugarCrepe kind ------------------------------------


def _attr_values(attr: Attribute, cfg: WorldConfig) -> list[str]:
    return sorted(cfg.colours) if attr == "colour" else list(cfg.size_words)


def _set(c: Caption, i: int, **changes: str | None) -> Caption:
    ms = list(c.mentions)
    ms[i] = replace(ms[i], **changes)
    return replace(c, mentions=tuple(ms))


def _swap_att(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    out = []
    for i in range(len(c.mentions)):
        for j in range(i + 1, len(c.mentions)):
            for attr in ("colour", "size"):
                vi, vj = getattr(c.mentions[i], attr), getattr(c.mentions[j], attr)
                if vi is not None and vj is not None and vi != vj:
                    out.append(_set(_set(c, i, **{attr: vj}), j, **{attr: vi}))
    return out


def _swap_obj(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    # Shapes move, attributes stay. Without a relation and with colour+shape only this says the
    # same as swap_att in another word order ("a red square and a blue circle" vs "a blue circle
    # and a red square"); with a relation or sizes the two differ. Both are verified false.
    out = []
    for i in range(len(c.mentions)):
        for j in range(i + 1, len(c.mentions)):
            si, sj = c.mentions[i].shape, c.mentions[j].shape
            if si != sj:
                out.append(_set(_set(c, i, shape=sj), j, shape=si))
    return out


def _replace_att(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    out = []
    for i, m in enumerate(c.mentions):
        for attr in ("colour", "size"):
            if getattr(m, attr) is not None:
                out += [_set(c, i, **{attr: v}) for v in _attr_values(attr, cfg) if v != getattr(m, attr)]
    return out


def _replace_obj(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    return [_set(c, i, shape=s) for i, m in enumerate(c.mentions) for s in cfg.shapes if s != m.shape]


def _replace_rel(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    return [replace(c, relation=r) for r in RELATIONS if c.relation is not None and r != c.relation]


def _add_att(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    out = []
    for i, m in enumerate(c.mentions):
        for attr in ("colour", "size"):
            if getattr(m, attr) is None:
                out += [_set(c, i, **{attr: v}) for v in _attr_values(attr, cfg)]
    return out


def _add_obj(c: Caption, cfg: WorldConfig, rng: np.random.Generator) -> list[Caption]:
    if len(c.mentions) >= MAX_MENTIONS:
        return []
    sizes = list(cfg.size_words) if rng.random() < cfg.p_mention_size else [None]
    new = [Mention(s, col, z) for col, s in all_pairs(cfg) for z in sizes]
    return [replace(c, mentions=(*c.mentions, m)) for m in new]


NEGATIVE_GENERATORS: dict[NegativeKind, Callable[[Caption, WorldConfig, np.random.Generator], list[Caption]]] = {
    "add_att": _add_att,
    "add_obj": _add_obj,
    "replace_att": _replace_att,
    "replace_obj": _replace_obj,
    "replace_rel": _replace_rel,
    "swap_att": _swap_att,
    "swap_obj": _swap_obj,
}


def list_negative_kinds() -> list[NegativeKind]:
    return list(NEGATIVE_KINDS)


def make_negative(
    kind: NegativeKind,
    c: Caption,
    scene: Scene,
    cfg: WorldConfig,
    rng: np.random.Generator,
    forbidden: frozenset[Pair] = frozenset(),
) -> Caption | None:
    """A random candidate of ``kind`` that is clearly false for ``scene`` and names no ``forbidden``
    pair (the held-out guarantee), or None if the caption admits none."""
    if kind not in NEGATIVE_GENERATORS:
        raise InputError(f"unknown negative kind {kind!r}; known: {list_negative_kinds()}")
    candidates = NEGATIVE_GENERATORS[kind](c, cfg, rng)
    text = caption_text(c)
    for idx in rng.permutation(len(candidates)):
        neg = candidates[int(idx)]
        if named_pairs(neg) & forbidden or caption_text(neg) == text:
            continue
        if kind == "add_obj" and any(_matches(neg.mentions[-1], o) for o in scene.objects):
            continue  # the added object must be absent from the scene, not merely unassignable
        if caption_is_false(neg, scene, cfg):
            return neg
    return None
