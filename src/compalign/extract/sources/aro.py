"""ARO (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words").

`aro`: VG-Relation and VG-Attribution. The root holds `visual_genome_relation.json` and/or
`visual_genome_attribution.json` (JSON lists of {"image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
"true_caption", "false_caption", "relation_name" | "attributes": [a, b]}) and the image folder `images/`
(`image_path` is relative to images/, as in the official code, or to the root).

As the official code does, each image is cropped to its row's box (x, y, x + w, y + h) before the
backbone's transform. The crop is made here, at planning time, and registered as its own in-memory PNG
(the key is the content hash, so identical crops are encoded once). Unlike PIL's `crop`, which pads a box
that overhangs the image with black, the box is clamped to the image; a box with no overlap is a problem
row. A missing or unreadable image is a problem row naming the file and the row, never a crash.

Items: id (`<subset>/<row>`), subset (`vg_relation` | `vg_attribution`), image (the crop), caption (the
true caption), negative_caption (the false one), group (the relation name, or the attribute pair joined
with " "; the groups of the official macro accuracy).

`aro_order`: COCO-Order / Flickr30k-Order, built from a Karpathy test split (see `order_perturbations`).
"""

from __future__ import annotations

import io
import os
import random
import re
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from .base import HASH_THREADS, Plan, PlanBuilder, SourceError, UrlPath, read_bytes, read_json, register_source, text_key
from .remote import READ_AHEAD

FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
CAPTIONS = ("true_caption", "false_caption")


def _load_list(path: Path) -> list[Any]:
    data = read_json(path, "Re-download the file or fix it; compalign reads the official ARO JSON (a list of objects).")
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of {{image_path, bbox_x, bbox_y, bbox_w, bbox_h, "
                          f"true_caption, false_caption}} objects, got {type(data).__name__}; is this the official file?")
    return data


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


class _Images:
    """Decoded images by path (a few kept: consecutive rows often share one), with the containment checks.
    A root in a bucket (a UrlPath) has no links: its checks are on the keys as written."""

    def __init__(self, root: Path | UrlPath, keep: int = 32):
        if isinstance(root, UrlPath):
            self.lexical: Path | UrlPath = root.joined(".")
            self.allowed: list[Path] = []
        else:
            self.lexical = Path(os.path.normpath(os.path.abspath(root)))
            self.allowed = [root.resolve()] + ([(root / "images").resolve()] if (root / "images").is_dir() else [])
        self.cache: OrderedDict[str, Image.Image | str] = OrderedDict()
        self.fetched: dict[str, bytes | BaseException] = {}  # objects read ahead (fetch), dropped once decoded
        self.keep = keep

    def resolve(self, rel: str) -> tuple[Path | UrlPath | None, str | None]:
        """(the file, None), or (None, why not): the first of images/<rel>, <rel> that exists."""
        if Path(rel).is_absolute():
            return None, f"image_path {rel!r} is absolute; use paths relative to images/ or the data root"
        tried = []
        for base in (self.lexical / "images", self.lexical):
            path = base.joined(rel) if isinstance(base, UrlPath) else Path(os.path.normpath(base / rel))
            if not path.is_relative_to(self.lexical):  # type: ignore[arg-type]
                return None, f"image_path {rel!r} escapes the data root {self.lexical}"
            tried.append(str(path))
            if path.is_file():
                if isinstance(path, Path) and not any(path.resolve().is_relative_to(a) for a in self.allowed):
                    return None, (f"{path} is a symlink pointing outside the data root ({path.resolve()}); copy "
                                  "the file into the dataset instead")
                return path, None
        return None, f"image file not found (tried {' and '.join(tried)})"

    def fetch(self, files: list[Path | UrlPath | None]) -> None:
        """Read the objects among `files` not decoded yet, READ_AHEAD requests at once (Remote.read_many): one GET
        at a time, a bucket's round trips would dominate planning. Local files are read by `open` itself."""
        keys = {str(f): f for f in files if isinstance(f, UrlPath) and str(f) not in self.cache}
        if keys:
            remote = next(iter(keys.values())).remote  # type: ignore[union-attr]
            got = remote.read_many([f.key for f in keys.values()])  # type: ignore[union-attr]
            self.fetched.update((str(f), data) for f, (_, data) in zip(keys.values(), got))

    def open_all(self, files: list[Path | UrlPath], pool: ThreadPoolExecutor) -> dict[str, Image.Image | str]:
        """Each distinct file decoded (or why it cannot be), by the pool's threads (PIL releases the GIL); the
        last `keep` stay decoded for the rows after these."""
        todo = list({str(f): f for f in files if str(f) not in self.cache}.values())
        out = {key: self.cache[key] for f in files if (key := str(f)) in self.cache}
        out.update(zip(map(str, todo), pool.map(self._decode, todo)))
        for key, got in out.items():
            self.cache[key] = got
            self.cache.move_to_end(key)
        while len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return out

    def _decode(self, path: Path | UrlPath) -> Image.Image | str:
        try:
            data = self.fetched.pop(str(path), None) if isinstance(path, UrlPath) else None
            if isinstance(data, BaseException):
                raise data
            with Image.open(io.BytesIO(data if data is not None else read_bytes(path))) as im:
                return im.convert("RGB")  # as the official code: no EXIF transpose
        except Exception as e:  # truncated, not an image, unsupported format, an object gone since the listing
            return f"unreadable image {path} ({type(e).__name__}: {e})"


def crop_box(size: tuple[int, int], x: float, y: float, w: float, h: float) -> tuple[int, int, int, int] | None:
    """The official box (x, y, x + w, y + h), rounded and clamped to an image of `size` (W, H); None if empty."""
    width, height = size
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _group(subset: str, row: dict[str, Any]) -> str | None:
    if subset == "vg_relation":
        return row["relation_name"] if isinstance(row.get("relation_name"), str) else None
    attrs = row.get("attributes")
    if isinstance(attrs, (list, tuple)) and len(attrs) == 2 and all(isinstance(a, str) for a in attrs):
        return " ".join(attrs)
    return None


@register_source("aro")
def plan_aro(root: Path | UrlPath) -> Plan:
    present = {s: root / f for s, f in FILES.items() if (root / f).is_file()}
    if not present:
        raise SourceError(f"{root}: neither {' nor '.join(FILES.values())} is there; point --root at the ARO folder "
                          "holding them and images/")
    b = PlanBuilder("aro", root)
    for s in FILES.keys() - present.keys():
        b.note(f"aro: {FILES[s]} absent: only {', '.join(present)} is read")
    images = _Images(root)
    rows = list(_rows(present, images))  # in file order: a row to crop, or why one is skipped
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for lo in range(0, len(rows), READ_AHEAD):  # a window of rows at a time: a bucket's images read at once
            part = rows[lo:lo + READ_AHEAD]
            images.fetch([r[-1] for r in part if not isinstance(r, str)])
            decoded = images.open_all([r[-1] for r in part if not isinstance(r, str)], pool)
            crops = pool.map(lambda r, d=decoded: r if isinstance(r, str) else _crop(d[str(r[-1])], *r), part)
            for r, crop in zip(part, crops):  # the rows' problems and items in file order, whatever the threads did
                if isinstance(crop, str):
                    b.problem(crop)
                    continue
                name, subset, n, row, group, _ = r  # type: ignore[misc]
                b.item(id=f"{subset}/{n}", subset=subset, image=b.image_bytes(crop, origin=f"{name}#{n}"),
                       caption=b.text(row["true_caption"]), negative_caption=b.text(row["false_caption"]), group=group)
    b.info = {"dataset": "aro", "subsets": ",".join(present)}
    return b.build(root)


NEED_GROUP = {"vg_relation": "relation_name (a string)", "vg_attribution": "attributes (a pair of strings)"}
_Row = tuple[str, str, int, dict[str, Any], str, "Path | UrlPath"]  # file name, subset, row number, row, group, image


def _rows(present: dict[str, Path | UrlPath], images: _Images) -> Iterator[_Row | str]:
    """Each row whose fields and image path are usable, or in its place the problem that skips it."""
    for subset, path in present.items():
        for n, row in enumerate(_load_list(path)):
            where = f"{path.name} row {n}"
            if not isinstance(row, dict):
                yield f"{where}: not an object; skipped"
                continue
            missing = ([k for k in ("image_path", *CAPTIONS) if not isinstance(row.get(k), str)]
                       + [k for k in BOX if not _number(row.get(k))])
            group = _group(subset, row)
            if group is None:
                missing.append(NEED_GROUP[subset])
            if missing:
                yield f"{where}: missing or ill-typed field(s) {', '.join(missing)}; skipped"
                continue
            file, why = images.resolve(row["image_path"])
            yield (path.name, subset, n, row, group, file) if file is not None else f"{where}: {why}; skipped"  # type: ignore[misc]


def _crop(im: Image.Image | str, name: str, subset: str, n: int, row: dict[str, Any], group: str,
          file: Path | UrlPath) -> bytes | str:
    """The row's image cropped to its box as PNG bytes, or the problem that skips the row."""
    where = f"{name} row {n}"
    if isinstance(im, str):
        return f"{where}: {im}; skipped"
    x, y, w, h = (row[k] for k in BOX)
    box = crop_box(im.size, x, y, w, h) if w > 0 and h > 0 else None
    if box is None:
        return (f"{where}: box (x={x}, y={y}, w={w}, h={h}) does not overlap the {im.size[0]}x{im.size[1]} image "
                f"{file}; skipped")
    return png_bytes(im.crop(box))


# --- COCO-Order / Flickr30k-Order -------------------------------------------------------------------------
#
# `aro_order` reads a Karpathy split with the `karpathy` source (same layouts, same --split, default test) and
# makes, for every caption, the official four perturbations, in the official order:
#   nouns_adj          shuffle the nouns among themselves and the adjectives among themselves
#   allbut_nouns_adj   shuffle every token that is neither a noun nor an adjective
#   within_trigrams    cut the tokens into consecutive trigrams, shuffle inside each
#   trigrams           shuffle the order of the trigrams
# Every caption (true and perturbed) then goes through the official `pre_caption` (lower case, .!"()*#:;~ to
# spaces, whitespace collapsed, cut to 30 words); perturbation works on the raw caption, as the official code.
#
# DIFFERENCES from the official code, which needs spaCy (en_core_web_sm) and nltk, absent here:
#  * tokens: words (with an inner apostrophe kept) and single punctuation marks, a stand-in for nltk's
#    word_tokenize / spaCy's tokenizer (they split "don't" into "do" "n't"; this keeps "don't" whole);
#  * nouns and adjectives: a fixed rule instead of spaCy's tagger: a word-token is a noun-or-adjective unless it is
#    in a closed list of function words, frequent caption verbs and numbers, or ends in -ing / -ed (verb forms);
#    punctuation is never one. The rule cannot split nouns from adjectives, so `nouns_adj` shuffles all the
#    noun-or-adjective words together (the official one shuffles nouns and adjectives separately);
#  * randomness: each caption's perturbations come from its own generator, seeded by (ORDER_SEED, item id), so a
#    plan is the same on every run and machine (the official code uses the global numpy/random state).
# Numbers are therefore close to, not identical with, the paper's.

PERTURBATIONS = ("nouns_adj", "allbut_nouns_adj", "within_trigrams", "trigrams")
ORDER_SEED = 0
MAX_WORDS = 30
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_FUNCTION = frozenset("""
a an the this that these those some any each every no another other such all both either neither
of in on at by for with without from to into onto over under above below across along around behind beside
besides between beyond near through toward towards upon within against among amid off out up down about
after before during since until past via inside outside underneath atop while as than like
and or but nor so yet if then because though although whether
i me my mine we us our you your he him his she her hers it its they them their theirs who whom whose which what
where when why how there here someone something somebody anyone anything nothing one ones
is are was were be been being am isn't aren't wasn't weren't has have had having do does did doing done
can could will would shall should may might must
sits sit sat stands stand stood holds hold held lays lay lies lie looks look rides ride walks walk eats eat
plays play shows show carries carry waits wait flies fly parked filled made covered topped seen
not very just also too together next full
two three four five six seven eight nine ten several many few
""".split())


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """The official caption clean-up (ARO's dataset_zoo/retrieval.py)."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def tokens(caption: str) -> list[str]:
    return _TOKEN.findall(caption)


def is_noun_or_adj(token: str) -> bool:
    t = token.lower()
    if not re.fullmatch(r"[^\W\d_]+(?:'\w+)*", t):  # punctuation, numbers
        return False
    return t not in _FUNCTION and not (len(t) > 4 and t.endswith(("ing", "ed")))


def _shuffle_at(toks: list[str], idx: list[int], rng: random.Random) -> list[str]:
    out = list(toks)
    picked = [toks[i] for i in idx]
    rng.shuffle(picked)
    for i, t in zip(idx, picked):
        out[i] = t
    return out


def _trigrams(toks: list[str]) -> list[list[str]]:
    return [toks[i:i + 3] for i in range(0, len(toks), 3)]


def order_perturbations(caption: str, rng: random.Random) -> list[str]:
    """The four perturbed captions of a raw caption (before pre_caption), in PERTURBATIONS order."""
    toks = tokens(caption)
    na = [i for i, t in enumerate(toks) if is_noun_or_adj(t)]
    other = sorted(set(range(len(toks))) - set(na))
    within = []
    for tri in _trigrams(toks):
        tri = list(tri)
        rng.shuffle(tri)
        within += tri
    tris = _trigrams(toks)
    rng.shuffle(tris)
    return [" ".join(_shuffle_at(toks, na, rng)), " ".join(_shuffle_at(toks, other, rng)),
            " ".join(within), " ".join(t for tri in tris for t in tri)]


@register_source("aro_order", splits=True)  # karpathy's reading
def plan_aro_order(root: Path, split: str = "test") -> Plan:
    from .karpathy import plan_karpathy

    base = plan_karpathy(root, split=split or "test")
    by_key = {text_key(t): t for t in base.texts}
    dataset = base.info.get("dataset", "karpathy")
    subset = f"{dataset}_order"
    texts: dict[str, str] = {}

    def add(s: str) -> str:
        k = text_key(s)
        texts.setdefault(k, s)
        return k

    items: dict[str, list[str]] = {c: [] for c in ("id", "subset", "image", "image_id", "caption", *PERTURBATIONS)}
    for ident, image, image_id, cap_key in zip(base.items["id"], base.items["image"], base.items["image_id"],
                                               base.items["caption"]):
        raw = by_key[cap_key]
        rng = random.Random(f"{ORDER_SEED}:{ident}")
        for name, col in (("id", ident), ("subset", subset), ("image", image), ("image_id", image_id)):
            items[name].append(col)
        items["caption"].append(add(pre_caption(raw)))
        for name, p in zip(PERTURBATIONS, order_perturbations(raw, rng)):
            items[name].append(add(pre_caption(p)))
    notes = base.notes + [f"aro_order: perturbations by a rule-based noun/adjective stand-in for spaCy, seed {ORDER_SEED} "
                          "(see compalign.extract.sources.aro): close to, not identical with, the paper's captions"]
    return Plan("aro_order", base.root, base.images, list(texts.values()), items, base.problems, notes,
                {**base.info, "subset": subset})
