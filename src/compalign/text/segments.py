"""Caption segments by rule: objects, attribute-object phrases and subject-relation-object triples.

The inference-time diagnostic matches each segment of a caption to its best image region, so a
segment is a short phrase the backbone will encode like any caption: "dog", "red shirt", "man
riding bike". No tagger model and no download: a small lexicon (``lexicon.py``) tags each word,
a few context rules settle the ambiguous ones ("stands" after a noun is a verb, after "the" a noun),
noun phrases are chunked, and one left-to-right pass attaches verbs and prepositions to subjects and
objects. A caption the rules cannot read completely becomes ONE segment, the whole caption, with
``parsed=False`` and the reason -- never a silently partial reading.

Conventions (what a segment means):
  object     the head noun of a noun phrase, compounds kept whole ("park bench").
  attribute  a noun phrase with its modifiers, without the article: "two white towels", "group of people"
             (counts are attributes: SugarCrepe's edits change counts the way they change colours);
             a verb with no object describes its subject, in caption order: "man smiling";
             a predicate adjective reads attributively: "the room is clean" -> "clean room".
  relation   subject head + verb/preposition + object head: "man riding bike", "cup on table",
             "circle to the left of square"; auxiliaries and articles are dropped, word order kept.
A preposition after a noun attaches to that noun ("bike down street"); a verb attaches to the
clause subject ("a man in a coat skiing" -> "man skiing"); coordinated nouns share their role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from compalign.text import lexicon as lex

SegmentKind = Literal["object", "attribute", "relation", "caption"]  # "caption": the fallback only
SEGMENT_KINDS: tuple[SegmentKind, ...] = get_args(SegmentKind)


@dataclass(frozen=True)
class Segment:
    text: str  # the phrase to encode
    kind: SegmentKind
    span: tuple[int, int]  # [start, end) in Segmentation.tokens of the words it came from


@dataclass(frozen=True)
class Segmentation:
    caption: str
    tokens: tuple[str, ...]  # the caption as ``tokenize`` splits it
    segments: tuple[Segment, ...]  # kept in reading order: span start, then object < attribute < relation
    parsed: bool  # False: the rules could not read the caption, and segments is the whole caption
    reason: str = ""  # why it fell back; "" when parsed

    def __post_init__(self) -> None:
        order = sorted(self.segments, key=lambda s: (s.span[0], SEGMENT_KINDS.index(s.kind), s.span[1], s.text))
        object.__setattr__(self, "segments", tuple(order))

    def texts(self, kind: SegmentKind | None = None) -> list[str]:
        return [s.text for s in self.segments if kind is None or s.kind == kind]


_TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*|[,;:.!?&]|(?<=\s)-(?=\s)")  # words (any script), punctuation
_PUNCT = {";": ",", ":": ",", "-": ",", "!": ".", "?": ".", "&": "and"}


def tokenize(caption: str) -> tuple[str, ...]:
    """Lower-cased words and punctuation; a possessive is split off ("man's" -> "man", "'s")."""
    out: list[str] = []
    for w in _TOKEN.findall(caption.lower().replace("\u2019", "'")):
        if w.endswith("'s") and len(w) > 2 and w not in lex.PRONOUNS:
            out += [w[:-2], "'s"]
        else:
            out.append(_PUNCT.get(w, w))
    return tuple(out)


# -- tagging -----------------------------------------------------------------------------------

NOMINAL = {"NOUN", "NV", "MAT", "Q", "QN", "LIGHT", "CAN"}  # word classes that can be (part of) a head noun


@dataclass
class _Unit:
    text: str  # one word, or a multi-word expression ("next to", "living room")
    start: int  # token span
    end: int
    lexical: str = ""  # class from the lexicon, possibly ambiguous (NV: noun or verb, ING, ED, ...)


def _units(tokens: tuple[str, ...]) -> list[_Unit]:
    out, i = [], 0
    while i < len(tokens):
        n = next((n for n in (5, 4, 3, 2) if tokens[i:i + n] in lex.MULTI_WORDS), 1)
        key = tokens[i:i + n]
        out.append(_Unit(" ".join(key), i, i + n, lex.MULTI_WORDS[key] if n > 1 else lex.word_class(key[0])))
        i += n
    return out


def _tag(units: list[_Unit]) -> list[str]:
    """One resolved tag per unit: DET NUM QUANT ADJ NOUN VERB PART PREP AUX AND COMMA STOP REL SUB ADV PRON EXIST POSS."""
    tags: list[str] = []
    np_det = None  # the determiner that opened the current noun phrase ("a cat swats": singular, so a verb)
    for i, u in enumerate(units):
        t, w = u.lexical, u.text
        prev = tags[-1] if tags else "START"
        nx = units[i + 1].lexical if i + 1 < len(units) else "END"
        nw = units[i + 1].text if i + 1 < len(units) else ""
        nnx = units[i + 2].lexical if i + 2 < len(units) else "END"
        noun_next = nx in NOMINAL
        np_next = noun_next or nx in ("ADJ", "NUM", "DETP", "ONE", "ING", "ED", "POSS")
        # Inside a noun phrase, before its head: "a sleeping cat", "with decorated cakes", "a newly married couple".
        inside = prev in ("DET", "POSS", "NUM", "ADJ", "START", "PREP") or (
            prev == "ADV" and units[i - 1].text in lex.INTENSIFIERS)
        if t == "NV":
            t = "VERB" if _verbal(units, tags, i) else "NOUN"
        elif t == "ING":  # "a sleeping cat" describes, "the living room" names, "a man sitting" acts
            t = ("NOUN" if w in lex.ING_COMPOUNDS and noun_next else "ADJ") if inside and (noun_next or nx == "ADJ") \
                else "VERB"
        elif t == "ED":  # "a parked car" describes, "a car parked on" acts
            t = "ADJ" if (inside or prev in ("AND", "COMMA")) and (noun_next or nx in ("ADJ", "ED")) else "VERB"
        elif t == "MAT":
            t = "ADJ" if noun_next else "NOUN"
        elif t == "LIGHT":  # "light blue" describes, "traffic light" names
            t = "ADJ" if nw in lex.COLOURS else "NOUN"
        elif t == "DETP":  # "her dog" / "hugging her"
            t = "DET" if np_next else "PRON"
        elif t == "ONE":
            t = "NUM" if np_next and nx != "DETP" else "PRON"
        elif t == "THAT":
            t = "REL" if prev in ("NOUN", "PRON") else "DET" if np_next else "PRON"
        elif t == "HAVE":
            t = "AUX" if nw == "been" or nx == "ED" else "VERB"
        elif t == "THERE":
            t = "EXIST" if nx == "AUX" or nw == "'s" else "ADV"
        elif t == "AS":
            t = "PREP" if prev == "VERB" else "SUB"
        elif t in ("Q", "QN"):  # "a group of people"
            t = "QUANT" if nw == "of" else "NUM" if t == "QN" and (noun_next or nx == "ADJ") else "NOUN"  # "a couple sat"
        elif t in ("PP", "PA") and prev in ("DET", "POSS", "ADJ", "NUM"):
            t = "ADJ" if noun_next else "NOUN"  # "the back door", "the inside"
        elif t == "PP":  # "looking up at" / "walking up the hill"
            t = "PART" if prev in ("VERB", "PART") and not np_next else "PREP"
        elif t == "PA":
            t = "PREP" if np_next else "ADV"
        elif t == "CAN":  # "a watering can" / "a dog can jump"
            t = "NOUN" if prev in ("DET", "POSS", "ADJ", "NUM") else "AUX"
        elif t == "POSS":
            t = "AUX" if prev in ("PRON", "EXIST") else "POSS"
        described = noun_next or nx == "ADJ" or (nx in ("ED", "ING") and nnx in NOMINAL) or (
            nx in ("AND", "COMMA") and nnx in ("ADJ", "ED"))  # something after it for the adjective to describe
        if t == "ADJ" and inside and not described:
            t = "NOUN"  # an adjective ending a noun phrase is its head: "a toy", "at the top", "in white"
        if t == "NOUN" and prev == "NOUN" and np_det in ("a", "an", "one", "each", "every", "this") and lex.is_plural(w) \
                and not lex.is_plural(units[i - 1].text) and nx in ("PREP", "PP", "PA", "DETP", "POSS", "STOP", "END"):
            t = "VERB"  # "a cat swats at": a singular subject, then an -s word, is a verb the lexicon lacks
        np_det = w if t == "DET" else None if t not in ("NUM", "ADJ", "NOUN") else np_det
        tags.append(t)
    return tags


def _verbal(units: list[_Unit], tags: list[str], i: int) -> bool:
    """Is the noun-or-verb word at ``i`` a verb?  "a cat sits" / "two dogs play" yes, "a cake stand" no."""
    prev = tags[i - 1] if i else "START"
    if prev == "NOUN":
        return lex.VERB_FORMS[units[i].text] == "3sg" or lex.is_plural(units[i - 1].text)
    if prev in ("PRON", "REL", "AUX"):
        return True
    if prev == "PREP" and units[i - 1].text == "to" and i >= 2 and tags[i - 2] in ("VERB", "PART", "ADJ"):
        return True  # "trying to catch"
    return prev in ("AND", "COMMA") and lex.VERB_FORMS[units[i].text] == "3sg" and "VERB" in tags  # "sits and swats"


# -- chunks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NP:
    mod: int  # first modifier unit (after the determiners)
    head: int  # first head unit
    end: int  # one past the last head unit


@dataclass
class _Item:
    kind: str  # np vg prep adjp aux and comma stop rel sub adv pron exist
    units: list[int]  # the units it holds (for np: all, determiners included)
    np: _NP | None = None


def _noun_phrase(units: list[_Unit], tags: list[str], i: int) -> tuple[_Item | None, int]:
    """DET* (ADJ | NUM | QUANT of | ADJ and ADJ)* NOUN+ from ``i``; modifiers without a noun are an adjp."""
    n, j = len(tags), i

    def at(k: int) -> str:
        return tags[k] if k < n else "END"

    while at(j) in ("DET", "POSS"):
        j += 1
    mod = j
    while True:
        intensifier = at(j) == "ADV" and units[j].text in lex.INTENSIFIERS and at(j + 1) in ("ADJ", "NUM")
        if at(j) in ("ADJ", "NUM") or (at(j) == "DET" and units[j].text == "other") or intensifier:
            j += 1
        elif at(j) in ("AND", "COMMA") and j > mod and at(j - 1) == "ADJ" and at(j + 1) == "ADJ":
            j += 1  # "black and white", "big, brown"
        elif at(j) == "QUANT" and j + 1 < n and units[j + 1].text == "of":
            j += 2  # "a group of people"
            while at(j) in ("DET", "POSS"):
                j += 1
        else:
            break
    head = j
    while at(j) == "NOUN":
        j += 1
    if j > head:
        return _Item("np", list(range(i, j)), _NP(mod, head, j)), j
    if head > mod:
        return _Item("adjp", list(range(mod, head))), head
    return None, max(j, i + 1)  # a lone determiner


_KINDS = {"PREP": "prep", "AUX": "aux", "AND": "and", "COMMA": "comma", "STOP": "stop", "REL": "rel", "SUB": "sub",
          "ADV": "adv", "PART": "adv", "PRON": "pron", "EXIST": "exist"}


def _chunk(units: list[_Unit], tags: list[str]) -> list[_Item]:
    items: list[_Item] = []
    i, n = 0, len(tags)
    while i < n:
        t = tags[i]
        if t in ("DET", "POSS", "NUM", "ADJ", "NOUN", "QUANT") or (
            t == "ADV" and units[i].text in lex.INTENSIFIERS and i + 1 < n and tags[i + 1] in ("ADJ", "NUM")
        ):
            item, i = _noun_phrase(units, tags, i)
            if item:
                items.append(item)
        elif t == "VERB":  # verb, particles, and an infinitive: "looking up", "trying to catch"
            j = i + 1
            while j < n and tags[j] == "PART":
                j += 1
            if j + 1 < n and units[j].text == "to" and tags[j + 1] == "VERB":
                j += 2
                while j < n and tags[j] == "PART":
                    j += 1
            items.append(_Item("vg", list(range(i, j))))
            i = j
        else:
            items.append(_Item(_KINDS[t], [i]))
            i += 1
    return items


# -- attaching verbs and prepositions -----------------------------------------------------------


@dataclass
class _Pending:
    subjects: list[_NP]  # who the relation is about
    verb: list[int]  # verb (or predicate adjective) units; empty for a bare preposition
    preps: list[int] = field(default_factory=list)


def _animate(units: list[_Unit], np: _NP) -> bool:
    return units[np.end - 1].text.split()[-1] in lex.ANIMATE


def _relate(units: list[_Unit], items: list[_Item]) -> tuple[list[Segment], set[int]]:
    """One left-to-right pass: (segments, units placed in some segment)."""
    segs: list[Segment] = []
    used: set[int] = set()
    subjects: list[_NP] = []  # the clause subject(s): a verb with no nearer subject attaches here
    last: list[_NP] = []  # the latest noun phrase and those coordinated with it
    last_rel: _Pending | None = None  # the relation `last` is the object of, shared by a coordinated noun
    pending: _Pending | None = None  # a relation waiting for its object
    predicate = False  # has the clause a verb or copula yet ("X and Y sit" vs "X sits and Y sits")
    prev = "start"

    def words(idx: list[int]) -> str:
        return " ".join(units[k].text for k in idx).replace(" ,", ",")

    def head(np: _NP) -> str:
        return words(list(range(np.head, np.end)))

    def add(text: str, kind: SegmentKind, idx: list[int]) -> None:
        segs.append(Segment(text, kind, (units[min(idx)].start, units[max(idx)].end)))
        used.update(idx)

    def relate(p: _Pending, s: _NP, o: _NP) -> None:
        rel = p.verb + p.preps
        add(f"{head(s)} {words(rel)} {head(o)}", "relation", [s.head, o.end - 1, *rel])

    def flush() -> None:  # a verb that got no object describes its subject: "man smiling"
        nonlocal pending
        if pending is not None and pending.verb and pending.subjects:
            for s in pending.subjects:
                add(f"{head(s)} {words(pending.verb)}", "attribute", [s.head, *pending.verb])
        pending = None

    for k, it in enumerate(items):
        kind = it.kind
        nxt = next((x.kind for x in items[k + 1:] if x.kind != "adv"), "end")
        if kind == "adv" and prev in ("and", "comma") and units[it.units[0]].text in ("also", "then"):
            kind = "sub"  # ", and also a star": a new list, not more objects of the last relation
        if kind == "np":
            np = it.np
            assert np is not None
            add(head(np), "object", list(range(np.head, np.end)))
            if np.mod < np.head:
                add(words(list(range(np.mod, np.end))), "attribute", list(range(np.mod, np.end)))
            coordinated = last and (
                (prev == "and" and not (predicate and nxt in ("vg", "aux")))
                or (prev == "comma" and nxt in ("and", "comma", "stop", "end"))
            )
            if pending is not None and pending.subjects:  # the object of a verb or preposition
                for s in pending.subjects:
                    relate(pending, s, np)
                last, last_rel, pending = [np], pending, None
            elif coordinated:  # shares the role of the noun phrase before it
                last.append(np)
                for s in last_rel.subjects if last_rel else []:
                    relate(last_rel, s, np)
            else:  # a new clause starts with its subject
                subjects = [np]
                last, last_rel, predicate = subjects, None, False
        elif kind == "prep":
            if pending is not None and pending.verb and prev in ("vg", "prep", "adjp"):
                pending.preps += it.units  # "sitting on", "full of"
            elif prev == "np" and last:
                pending = _Pending(list(last), [], list(it.units))  # "cup on table", "bite of doughnut"
            else:
                pending = _Pending(list(subjects), [], list(it.units))  # "is on", ", on the grass"
        elif kind == "vg":
            flush()
            predicate = True
            # A participle right after a noun describes that noun ("a freeway surrounded by cars"), and so does
            # an -ing verb when that noun can act or the subject cannot ("a bathroom with towels hanging");
            # other verbs belong to the clause subject ("a man in a coat skiing"). No subject: words stay unplaced.
            lexical = units[it.units[0]].lexical
            reduced = prev == "np" and last_rel is not None and (lexical == "ED" or lexical == "ING" and (
                _animate(units, last[0]) or not subjects or not _animate(units, subjects[0])))
            pending = _Pending(list(last if reduced else subjects), list(it.units))
        elif kind == "adjp":
            targets = subjects if prev == "aux" or (prev == "and" and predicate) else last
            flush()
            if nxt == "prep":
                pending = _Pending(list(targets), list(it.units))  # "a plate full of food"
            else:
                for s in targets:  # "the room is clean" -> "clean room"
                    add(f"{words(it.units)} {head(s)}", "attribute", [s.head, s.end - 1, *it.units])
            predicate = predicate or prev == "aux"
        elif kind == "pron":
            if pending is not None and len(pending.subjects) > 1 and units[it.units[0]].text in ("each other", "one another"):
                relate(pending, pending.subjects[0], pending.subjects[1])  # "a bear and a fish next to each other"
                pending = None
            flush()  # "looking at it": no referent to relate to
            last, last_rel = [], None
        elif kind in ("and", "comma"):
            flush()
        elif kind == "aux":
            predicate = True
        elif kind == "sub":  # "while ...": a new clause that may keep the subject ("while wearing glasses")
            flush()
            last, last_rel = [], None
        elif kind == "rel":  # "women that are laughing": the last noun phrase is the new subject
            flush()
            subjects = list(last) or subjects
            last, last_rel, predicate = subjects, None, False
        elif kind in ("stop", "exist"):
            flush()
            subjects, last, last_rel, predicate = [], [], None, False
        if kind != "adv":
            prev = kind
    flush()
    return segs, used


# -- the entry point ---------------------------------------------------------------------------

_CONTENT = ("NOUN", "ADJ", "NUM", "VERB", "QUANT")


def segment(caption: str) -> Segmentation:
    """Split a caption into object, attribute and relation segments, or fall back to the whole caption."""
    tokens = tokenize(caption)
    units = _units(tokens)
    tags = _tag(units)
    items = _chunk(units, tags)
    frame: list[int] = []
    first = next((k for k, it in enumerate(items) if it.kind not in ("pron", "aux", "exist")), None)
    if first is not None and first + 1 < len(items) and items[first].kind == "np" and items[first + 1].kind == "prep":
        np = items[first].np
        if np and units[items[first + 1].units[0]].text == "of" and units[np.end - 1].text in lex.FRAMES:
            frame = items[first].units  # "a picture of ...": what the image is, not what is in it
            items = items[first + 2:]
    segs, used = _relate(units, items)
    unplaced = [units[k].text for k, t in enumerate(tags) if t in _CONTENT and k not in used and k not in frame]
    reason = ""
    if not any(s.kind == "object" for s in segs):
        reason = "no noun phrase found"
    elif unplaced:
        reason = f"could not place {', '.join(repr(w) for w in unplaced)}"
    if reason:
        whole = Segment(" ".join(caption.split()), "caption", (0, len(tokens)))
        return Segmentation(caption, tokens, (whole,), parsed=False, reason=reason)
    return Segmentation(caption, tokens, tuple(segs), parsed=True)
