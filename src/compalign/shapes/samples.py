"""The rows of a shapes world: scenes, their captions and negatives, a chunk of scene indices at a time.

A chunk is a pure function of (config, split, index range): it renders its images into the split
folder and returns its rows, which the per-benchmark writers (benchmark_files.py) merge into files.
Scenes use per-index seeded streams, so chunks can run in any order, in any process; merging their
rows in index order gives the same files as one pass (`workers` changes the speed, never a byte).

Rows of a train chunk: {"pairs": [{image, caption, negatives}], "scenes": [scene json]}.
Rows of a test chunk: {"sugarcrepe": [(kind, item)], "bivlc": [row], "neg_scenes": [{row, kind, image,
negative_scene}] ("row" indexes the chunk's own bivlc rows), "scenes": [...], "retrieval": [Karpathy image]}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compalign.shapes.captions import NEGATIVE_KINDS, canonical, caption_text, make_negative, sample_caption
from compalign.shapes.config import WorldConfig
from compalign.shapes.negative_image import negative_scene
from compalign.shapes.render import render_png
from compalign.shapes.scene import Pair, Scene, Split, all_pairs, derive_rng, sample_scene

RETRIEVAL_CAPTIONS = 5  # captions drawn per test image for the retrieval split (duplicates dropped)
SPLIT_CODES: dict[Split, int] = {"train": 0, "test_id": 1, "test_ood": 2}
ChunkTask = tuple[Split, WorldConfig, Path, frozenset[Pair], int, int]  # (split, config, split folder, held out, start, stop)


@dataclass(frozen=True)
class _SplitRules:
    allowed: list[Pair]  # pairs a scene (and a negative image) may render
    must_name: frozenset[Pair]  # every positive caption names one of these (test_ood only)
    forbidden: frozenset[Pair]  # pairs a negative caption may not name


def _rules(split: Split, cfg: WorldConfig, held: frozenset[Pair]) -> _SplitRules:
    seen = [p for p in all_pairs(cfg) if p not in held]
    if split == "test_ood":
        return _SplitRules(all_pairs(cfg), held, frozenset())
    # test_id stays fully in-distribution; only training negatives may leak, and only on request.
    leak = split == "train" and cfg.leak_negatives
    return _SplitRules(seen, frozenset(), frozenset() if leak else held)


def _scene(split: Split, index: int, cfg: WorldConfig, rules: _SplitRules) -> Scene:
    rng = derive_rng(cfg.seed, SPLIT_CODES[split], index, 0)
    return sample_scene(cfg, rng, rules.allowed, sorted(rules.must_name) or None)


def _train_chunk(cfg: WorldConfig, out: Path, held: frozenset[Pair], start: int, stop: int) -> dict[str, list]:
    rules = _rules("train", cfg, held)
    pairs: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    for i in range(start, stop):
        scene = _scene("train", i, cfg, rules)
        name = f"images/{i:06d}.png"
        (out / name).write_bytes(render_png(scene, cfg))
        scenes.append(scene.to_json(name))
        rng = derive_rng(cfg.seed, SPLIT_CODES["train"], i, 1)
        want = int(rng.integers(cfg.captions_per_train_scene[0], cfg.captions_per_train_scene[1] + 1))
        seen: set[tuple] = set()
        for _ in range(5 * want):  # small scenes admit few distinct captions: stop trying eventually
            if len(seen) == want:
                break
            cap = sample_caption(scene, cfg, rng)
            if canonical(cap) in seen:
                continue
            seen.add(canonical(cap))
            negs = {k: make_negative(k, cap, scene, cfg, rng, rules.forbidden) for k in NEGATIVE_KINDS}
            pairs.append(
                {
                    "image": name,
                    "caption": caption_text(cap),
                    "negatives": {k: caption_text(n) for k, n in negs.items() if n},
                }
            )
    return {"pairs": pairs, "scenes": scenes}


def _test_chunk(split: Split, cfg: WorldConfig, out: Path, held: frozenset[Pair], start: int, stop: int) -> dict[str, list]:
    """Rows of test scenes [start, stop): sugarcrepe (kind, item), bivlc rows, their negative scenes, scenes."""
    rules = _rules(split, cfg, held)
    image_dir = out / "sugarcrepe" / "val2017"
    sugarcrepe: list[tuple[str, dict[str, str]]] = []
    bivlc: list[dict[str, Any]] = []
    neg_scenes: list[dict[str, Any]] = []  # "row" indexes this chunk's bivlc rows; the merge offsets it
    scenes: list[dict[str, Any]] = []
    retrieval: list[dict[str, Any]] = []  # Karpathy-layout image records
    # In-distribution negative images must not render held-out pairs either.
    neg_allowed = None if split == "test_ood" else rules.allowed
    for i in range(start, stop):
        scene = _scene(split, i, cfg, rules)
        name = f"{i:012d}.png"
        png = render_png(scene, cfg)
        (image_dir / name).write_bytes(png)
        scenes.append(scene.to_json(name))
        retrieval.append(_retrieval_record(split, i, name, png, scene, cfg, rules, out))
        for kind_index, kind in enumerate(NEGATIVE_KINDS):
            # One stream per (scene, kind): each SugarCrepe subset is drawn independently.
            rng = derive_rng(cfg.seed, SPLIT_CODES[split], i, 10 + kind_index)
            for _ in range(cfg.test_caption_tries):
                cap = sample_caption(scene, cfg, rng, rules.must_name)
                neg = make_negative(kind, cap, scene, cfg, rng, rules.forbidden)
                if neg is not None:
                    break
            else:
                continue
            pos_text, neg_text = caption_text(cap), caption_text(neg)
            sugarcrepe.append((kind, {"caption": pos_text, "filename": name, "negative_caption": neg_text}))
            if kind.startswith("add_"):
                # An add negative entails its positive, so the positive stays true on the negative
                # image and BiVLC's Ineg2T (s(C1,I1) > s(C0,I1)) would have no right answer.
                continue
            neg_scene = negative_scene(kind, cap, neg, scene, cfg, rng, neg_allowed)
            if neg_scene is None:
                continue
            neg_name = f"{i:012d}_{kind}.png"
            typ, sub = kind.split("_")
            bivlc.append(
                {
                    "image": {"bytes": png, "path": name},
                    "caption": pos_text,
                    "negative_caption": neg_text,
                    "negative_image": {"bytes": render_png(neg_scene, cfg), "path": neg_name},
                    "type": typ,
                    "subtype": sub,
                }
            )
            neg_scenes.append(
                {"row": len(bivlc) - 1, "kind": kind, "image": name, "negative_scene": neg_scene.to_json(neg_name)}
            )
    return {"sugarcrepe": sugarcrepe, "bivlc": bivlc, "neg_scenes": neg_scenes, "scenes": scenes, "retrieval": retrieval}


def _retrieval_record(split: Split, i: int, name: str, png: bytes, scene: Scene, cfg: WorldConfig,
                      rules: _SplitRules, out: Path) -> dict[str, Any]:
    """One image of the retrieval split: its own copy of the PNG and up to RETRIEVAL_CAPTIONS true captions."""
    (out / "retrieval" / "images" / name).write_bytes(png)
    rng = derive_rng(cfg.seed, SPLIT_CODES[split], i, 30)  # a stream of its own: the other benchmarks are unchanged
    texts = list(dict.fromkeys(caption_text(sample_caption(scene, cfg, rng, rules.must_name))
                               for _ in range(RETRIEVAL_CAPTIONS)))
    return {"filepath": "images", "filename": name, "split": "test", "imgid": i,
            "sentences": [{"raw": t, "sentid": RETRIEVAL_CAPTIONS * i + j} for j, t in enumerate(texts)]}


def render_chunk(task: ChunkTask) -> dict[str, list]:
    """The rows of one chunk of scenes, its images written: the unit of work of a pool worker."""
    split, cfg, out, held, start, stop = task
    if split == "train":
        return _train_chunk(cfg, out, held, start, stop)
    return _test_chunk(split, cfg, out, held, start, stop)
