"""End-to-end fine-tuning baselines for the tiny backbone: full, NegCLIP, CLIC, DeGLA; each saved as a `local-dir:`.

The study compares a light head on frozen features with methods that fine-tune the whole dual encoder.
This file fine-tunes the shipped tiny backbone (or any `local-dir:` folder pretrain.py wrote) on a world's
train split, one loss per method (each a pure function below, its formula in its docstring):

- `full`     the plain CLIP loss, symmetric InfoNCE over the in-batch pairs: what pretraining did, continued.
- `negclip`  NegCLIP (Yuksekgonul et al. 2023): hard-negative captions join the image->text denominator.
- `clic`     CLIC (Peleg et al. 2025): two images side by side, their joined captions as positives (both
             orders, plus other captions of the same two images), one hard negative per composite in a separate
             2-way loss, a text-text loss pulling the two orders together; every other step the plain CLIP loss
             on single images, as the paper's recipe alternates.
- `degla`    DeGLA (Hu et al. 2025): the global CLIP loss plus self-distillation to a frozen EMA copy of the
             model, and its image-grounded (IGC) and text-grounded (TGC) contrasts over hard negatives.

Negatives guarantee. Every text and image a step encodes comes from the world's train split: its images, its
captions and the negatives the world generated for them (`train/pairs.jsonl`, `negatives: {kind: text}`), which
never name a held-out (colour, shape) pair (the world's writer guarantees it; `load_finetune_data` checks it
again, and refuses a world that breaks it unless the world was built with `--leak-negatives` on purpose).
CLIC's paper makes its negative by swapping words *across* the two captions; here that could name a held-out
pair, so a composite's negative is one of the world's own negatives of either caption, joined to the other
caption, and kept only if it is clearly false of the composite scene (checked on the scene graph, relations
read laxly across both halves, as the world checks its own negatives).

Seeded and deterministic on CPU: the same world, backbone, config and seed give identical weights.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from compalign.core import InputError, MissingFileError, config
from compalign.core.assets import TINY_CHECKPOINT
from compalign.core.device import resolve_device
from compalign.core.registry import Registry
from compalign.core.training import (
    deterministic_cpu,
)
from compalign.shapes.captions import Caption, caption_is_false, named_pairs, parse_caption
from compalign.shapes.config import WorldConfig
from compalign.shapes.load import load_held_out, load_scenes, load_world_config, read_jsonl
from compalign.shapes.losses import clic_loss, clip_loss, degla_loss, negclip_loss
from compalign.shapes.pretrain import (
    CONFIG_NAME,
    SCHEMA,
    WEIGHTS_NAME,
    TrainData,
    build_model,
    encode_text_trimmed,
    load_train_data,
    preprocess_cfg_for,
    save_checkpoint,
    world_fingerprint,
)
from compalign.shapes.recipe import CompactVocab, ProgressFn, Recipe, TrainResult, run_steps, sample_batches
from compalign.shapes.scene import Scene, SceneObject

logger = logging.getLogger(__name__)

SeenFn = Callable[[list[str], list[str]], None]  # (texts, image names) a step encodes: the audit trail of the tests


@dataclass(frozen=True)
class FinetuneConfig(Recipe):
    """How a backbone is fine-tuned (travels inside the checkpoint it writes); the optimisation fields are Recipe's.

    Recipe's defaults are fine-tuning's: 200 steps (5 epochs of the default world's 5,000 images; on 2 shared CPU
    cores full ~1 minute, negclip ~1.3, clic ~1.8, degla ~2.5-4), a peak lr of 1e-4 (pretraining's was 2e-3:
    fine-tuning moves a trained model, gently) after 20 warmup steps."""

    # full | negclip | clic | degla (list_methods())
    method: str = "full"
    # hard negatives drawn per caption, among the world's (up to 7 kinds); None: the method's own
    # (negclip 1, as NegCLIP's one swap per caption; degla 4, as DeGLA's neg_text=4)
    n_hard: int | None = None
    # CLIC: weights of its contrastive, hard-negative and uni-modal terms (the paper's eq. 7: 0.5, 0.5, 1)
    clic_w_cont: float = 0.5
    clic_w_neg: float = 0.5
    clic_w_uni: float = 1.0
    # CLIC: joined positives beyond the two orders of the drawn captions, from other captions of the same two
    # images (the paper's p3, p4)
    clic_extra_positives: int = 2
    # CLIC: every other step is the plain CLIP loss on single images (the paper's --clip_loss_iterate)
    clic_alternate: bool = True
    # DeGLA: weights of the distillation (sum of squared feature distances), IGC and TGC terms (the paper's 0.005,
    # 0.1, 0.1), TGC's fixed logit scale (10), and the EMA decay of the teacher (the paper's 0.9996 is for ~40k
    # steps; 0.99 gives this short run a teacher that trails it by ~100 steps)
    degla_w_distill: float = 0.005
    degla_w_igc: float = 0.1
    degla_w_tgc: float = 0.1
    degla_tgc_scale: float = 10.0
    degla_ema: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise InputError(f"FinetuneConfig: unknown method {self.method!r}; known: {', '.join(list_methods())}")
        if self.n_hard is not None and self.n_hard < 1:
            raise InputError("FinetuneConfig: n_hard must be >= 1 (or None: the method's own)")
        if not 0.0 <= self.degla_ema < 1.0:
            raise InputError("FinetuneConfig: degla_ema is a decay in [0, 1)")
        if self.clic_extra_positives < 0:
            raise InputError("FinetuneConfig: clic_extra_positives must be >= 0")

    @property
    def hard_per_caption(self) -> int:
        return self.n_hard if self.n_hard is not None else METHODS.meta(self.method)["n_hard"]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return config.from_dict(cls, data, "FinetuneConfig")


# -- data ------------------------------------------------------------------------------------------


@dataclass
class FinetuneData:
    train: TrainData  # images (preprocessed), captions (tokenized) and which image each caption belongs to
    texts: list[str]  # (T,) every training string: the M captions first (pairs.jsonl order), then each negative once
    tokens: torch.Tensor  # (T, C) int64, tokenized texts
    negatives: torch.Tensor  # (M, K) int64: row in `texts` of caption m's negative of kind k, -1 where it has none
    kinds: tuple[str, ...]  # (K,) the negative kinds, sorted
    scenes: list[Scene]  # (N,) scene of each image (image order), for CLIC's composite scenes
    world: WorldConfig
    leak_negatives: bool  # the world was built with --leak-negatives (its negatives may name held-out pairs)
    parsed: dict[int, Caption] = field(default_factory=dict)  # text row -> parsed caption, filled as needed

    def caption(self, row: int) -> Caption:
        if row not in self.parsed:
            self.parsed[row] = parse_caption(self.texts[row], self.world)
        return self.parsed[row]


def load_finetune_data(world: str | Path, preprocess: Any, tokenizer: Any) -> FinetuneData:
    """Every training image, caption and generated negative of ``world``'s train split; refuses held-out pairs."""
    world = Path(world)
    train = load_train_data(world, preprocess, tokenizer)  # images, captions; names the fix for a damaged split
    wcfg, held = load_world_config(world), load_held_out(world)
    rows = [r for _, r in read_jsonl(world / "train" / "pairs.jsonl", world)]
    kinds = tuple(sorted({k for r in rows for k in (r.get("negatives") or {})}))
    texts = [r["caption"] for r in rows]
    index: dict[str, int] = {}
    negatives = torch.full((len(rows), len(kinds)), -1, dtype=torch.long)
    for m, r in enumerate(rows):
        for k, kind in enumerate(kinds):
            text = (r.get("negatives") or {}).get(kind)
            if isinstance(text, str) and text:
                if text not in index:
                    index[text] = len(texts)
                    texts.append(text)
                negatives[m, k] = index[text]
    bad = [t for t in dict.fromkeys(texts) if named_pairs(parse_caption(t, wcfg)) & held]
    if bad and not wcfg.leak_negatives:
        raise InputError(f"{world}/train/pairs.jsonl names held-out pairs ({len(bad)} texts, e.g. {bad[0]!r}), yet "
                         "the world was not built with --leak-negatives; rebuild it with "
                         f"`compalign shapes make --out {world} --force`")
    if wcfg.leak_negatives:
        logger.warning("%s was built with --leak-negatives: %d training negatives name held-out pairs", world, len(bad))
    neg_tokens = tokenizer(texts[len(rows):]).long() if len(texts) > len(rows) else train.tokens[:0]
    by_name = load_scenes(world / "train" / "scenes.jsonl")
    missing = [n for n in train.image_names if n not in by_name]
    if missing:
        raise InputError(f"{world}/train/scenes.jsonl has no scene for {missing[0]}; rebuild the world with "
                         f"`compalign shapes make --out {world} --force`")
    return FinetuneData(train=train, texts=texts, tokens=torch.cat([train.tokens, neg_tokens]), negatives=negatives,
                        kinds=kinds, scenes=[by_name[n] for n in train.image_names], world=wcfg,
                        leak_negatives=wcfg.leak_negatives)


def draw_negatives(negatives: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k of each caption's negatives, drawn uniformly without replacement: (rows (B, k), mask (B, k)).

    negatives (B, K) text rows, -1 where absent; a caption with fewer than k gets them all, the rest masked."""
    k = min(k, negatives.shape[1])
    score = torch.rand(negatives.shape, generator=gen).masked_fill(negatives < 0, -1.0)  # absent ones sort last
    top, pick = score.topk(k, dim=1)  # (B, k)
    mask = top >= 0
    return negatives.gather(1, pick).masked_fill(~mask, 0), mask


def composite_scene(left: Scene, right: Scene) -> Scene:
    """The scene of two images squeezed to half width and set side by side (what `_Run.composites` draws)."""
    half = left.canvas // 2

    def squeeze(s: Scene, off: int) -> list[SceneObject]:
        return [dataclasses.replace(o, box=(o.box[0] // 2 + off, o.box[1], o.box[2] // 2 + off, o.box[3]))
                for o in s.objects]

    return Scene(canvas=left.canvas, objects=tuple(squeeze(left, 0) + squeeze(right, half)), noise_seed=0)


def join(*captions: str) -> str:
    """CLIC's joined caption: each sentence closed by a period, separated by a space."""
    return " ".join(f"{c}." for c in captions)


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Composites:
    left: torch.Tensor  # (B',) image rows drawn on the left half
    right: torch.Tensor  # (B',) image rows drawn on the right half
    positives: list[list[str]]  # (P, B') joined captions: both orders of the drawn two, then extra pairs
    negative: list[str]  # (B',) a joined caption false of the composite (a positive as filler where mask is False)
    negative_mask: torch.Tensor  # (B',) bool


class _Run:
    """The model (student), its EMA teacher if the method has one, the data on the device, the seeded streams."""

    def __init__(self, model: torch.nn.Module, data: FinetuneData, tokenizer: Any, cfg: FinetuneConfig,
                 dev: torch.device, seen: SeenFn | None) -> None:
        self.model, self.data, self.tokenizer, self.cfg, self.dev, self.seen = model, data, tokenizer, cfg, dev, seen
        self.vocab = CompactVocab(model, torch.cat([data.tokens, tokenizer(["."]).long()]))
        self.pixels = data.train.pixels.to(dev)
        self.tokens = self.vocab.remap(data.tokens).to(dev)
        self.teacher = None
        if METHODS.meta(cfg.method)["teacher"]:  # a frozen copy, moved only by the EMA of the student
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batch order and negatives, on the CPU whatever the device
        self.rng = np.random.default_rng(cfg.seed)  # CLIC's pairing, halves and joined captions
        ctx = data.tokens.shape[1]
        self.room = ctx - 2  # content tokens a caption may have (start and end tokens aside)
        self.n_tokens = (data.tokens.argmax(-1) - 1).tolist()  # content tokens of each text (EOT is the highest id)
        self.captions_of = [c.tolist() for c in data.train.captions_of()]

    @property
    def scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def restore(self) -> None:
        self.vocab.restore()

    # encoders: what they are handed is what `seen` hears of
    def images(self, rows: torch.Tensor, net: torch.nn.Module | None = None) -> torch.Tensor:
        self._saw([], [self.data.train.image_names[i] for i in rows.tolist()])
        return (net or self.model).encode_image(self.pixels[rows.to(self.dev)], normalize=True)  # (B, E)

    def composites(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        names = self.data.train.image_names
        self._saw([], [names[i] for i in left.tolist()] + [names[i] for i in right.tolist()])
        h, w = self.pixels.shape[-2:]
        halves = [F.interpolate(self.pixels[r.to(self.dev)], size=(h, w // 2), mode="bilinear", antialias=True,
                                align_corners=False) for r in (left, right)]  # each (B, 3, H, W/2)
        return self.model.encode_image(torch.cat(halves, dim=3), normalize=True)  # (B, 3, H, W) in, (B, E) out

    def texts(self, rows: torch.Tensor, net: torch.nn.Module | None = None) -> torch.Tensor:
        self._saw([self.data.texts[i] for i in rows.tolist()], [])
        return encode_text_trimmed(net or self.model, self.tokens[rows.to(self.dev)])  # (n, E)

    def strings(self, texts: list[str]) -> torch.Tensor:
        self._saw(texts, [])
        tokens = self.tokenizer(texts).long()
        if self.vocab.active and not bool(torch.isin(tokens, self.vocab.used).all()):
            raise RuntimeError("a joined caption holds a token no training text has")  # a bug: the vocabulary is fixed
        return encode_text_trimmed(self.model, self.vocab.remap(tokens).to(self.dev))  # (n, E)

    def _saw(self, texts: list[str], images: list[str]) -> None:
        if self.seen is not None:
            self.seen(texts, images)

    def ema(self) -> None:
        if self.teacher is None:
            return
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters(), strict=True):
                t.mul_(self.cfg.degla_ema).add_(s, alpha=1 - self.cfg.degla_ema)

    # CLIC's composites
    def compose(self, img: torch.Tensor, cap: torch.Tensor) -> Composites:
        """Image b beside image b+1 of the batch (a derangement: the batch order is already random); composites
        whose joined captions would not fit the context are dropped (~4% at the default world)."""
        d, rng, n = self.data, self.rng, len(img)
        left, right, pos, neg, has_neg = [], [], [[] for _ in range(2 + self.cfg.clic_extra_positives)], [], []
        for i in range(n):
            a, b, ca, cb = int(img[i]), int(img[(i + 1) % n]), int(cap[i]), int(cap[(i + 1) % n])
            if not self._fits(ca, cb):
                continue
            a_left = bool(rng.random() < 0.5)
            scene = composite_scene(*((d.scenes[a], d.scenes[b]) if a_left else (d.scenes[b], d.scenes[a])))
            left.append(a if a_left else b)
            right.append(b if a_left else a)
            pos[0].append(join(d.texts[ca], d.texts[cb]))
            pos[1].append(join(d.texts[cb], d.texts[ca]))
            for p in pos[2:]:
                xa, xb = int(rng.choice(self.captions_of[a])), int(rng.choice(self.captions_of[b]))
                xa, xb = (xa, xb) if self._fits(xa, xb) else (ca, cb)
                p.append(join(*((d.texts[xa], d.texts[xb]) if rng.random() < 0.5 else (d.texts[xb], d.texts[xa]))))
            text = self._negative(ca, cb, scene)
            has_neg.append(text is not None)
            neg.append(text if text is not None else pos[0][-1])
        return Composites(torch.tensor(left, dtype=torch.long), torch.tensor(right, dtype=torch.long), pos, neg,
                          torch.tensor(has_neg, dtype=torch.bool))

    def _fits(self, x: int, y: int) -> bool:
        return self.n_tokens[x] + self.n_tokens[y] + 2 <= self.room  # + the two periods

    def _negative(self, ca: int, cb: int, scene: Scene) -> str | None:
        """One of the world's negatives of either caption, joined to the other, clearly false of the composite."""
        d = self.data
        options = [(int(n), cb) for n in d.negatives[ca] if n >= 0] + [(int(n), ca) for n in d.negatives[cb] if n >= 0]
        for j in self.rng.permutation(len(options)):
            n, other = options[j]
            if self._fits(n, other) and caption_is_false(d.caption(n), scene, d.world):
                pair = (d.texts[n], d.texts[other])
                return join(*(pair if self.rng.random() < 0.5 else pair[::-1]))
        return None


# -- the methods: one step's loss each, through a registry -------------------------------------------

StepFn = Callable[[_Run, torch.Tensor, torch.Tensor, int], torch.Tensor]  # (run, image rows, caption rows, step)
METHODS: Registry[StepFn] = Registry("fine-tuning method")


def list_methods() -> list[str]:
    return METHODS.names()


@METHODS.decorator("full", about="plain CLIP loss (symmetric InfoNCE), in-batch pairs only", n_hard=0, teacher=False)
def _full_step(run: _Run, img: torch.Tensor, cap: torch.Tensor, step: int) -> torch.Tensor:
    return clip_loss(run.images(img), run.texts(cap), run.scale)


@METHODS.decorator("negclip", about="hard-negative captions in the image->text denominator (NegCLIP)", n_hard=1,
                   teacher=False)
def _negclip_step(run: _Run, img: torch.Tensor, cap: torch.Tensor, step: int) -> torch.Tensor:
    rows, mask = draw_negatives(run.data.negatives[cap], run.cfg.hard_per_caption, run.gen)  # (B, k)
    return negclip_loss(run.images(img), run.texts(cap), run.texts(rows[mask]), run.scale)


@METHODS.decorator("clic", about="concatenated image pairs, joined captions, hard negatives, uni-modal loss (CLIC)",
                   n_hard=1, teacher=False)
def _clic_step(run: _Run, img: torch.Tensor, cap: torch.Tensor, step: int) -> torch.Tensor:
    if run.cfg.clic_alternate and step % 2 == 1:
        return _full_step(run, img, cap, step)
    c = run.compose(img, cap)
    if len(c.left) < 2:  # no contrast without two composites (captions too long to join): a plain CLIP step
        return _full_step(run, img, cap, step)
    positives = torch.stack([run.strings(p) for p in c.positives])  # (P, B', E)
    cfg = run.cfg
    return clic_loss(run.composites(c.left, c.right), positives, run.strings(c.negative), c.negative_mask.to(run.dev),
                     run.scale, cfg.clic_w_cont, cfg.clic_w_neg, cfg.clic_w_uni)


@METHODS.decorator("degla", about="EMA self-distillation + image- and text-grounded contrasts (DeGLA)", n_hard=4,
                   teacher=True)
def _degla_step(run: _Run, img: torch.Tensor, cap: torch.Tensor, step: int) -> torch.Tensor:
    rows, mask = draw_negatives(run.data.negatives[cap], run.cfg.hard_per_caption, run.gen)  # (B, k)
    mask = mask.to(run.dev)

    def features(net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        neg = run.texts(rows[mask.cpu()], net)  # (n valid, E)
        grid = neg.new_zeros(*rows.shape, neg.shape[-1])  # (B, k, E); rows without a k-th negative stay 0
        grid[mask] = neg
        return run.images(img, net), run.texts(cap, net), grid

    with torch.no_grad():
        teacher = features(run.teacher)
    cfg = run.cfg
    return degla_loss(*features(run.model), mask, *teacher, run.scale, cfg.degla_w_distill, cfg.degla_w_igc,
                      cfg.degla_w_tgc, cfg.degla_tgc_scale)


# -- training --------------------------------------------------------------------------------------


def train(model: torch.nn.Module, data: FinetuneData, tokenizer: Any, cfg: FinetuneConfig,
          progress: ProgressFn | None = None, seen: SeenFn | None = None) -> list[float]:
    """Fine-tune ``model`` in place with ``cfg.method``'s loss; returns the loss of every step."""
    dev = resolve_device(cfg.device)
    step_loss = METHODS.get(cfg.method)
    torch.manual_seed(cfg.seed)
    model.to(dev).train()
    with deterministic_cpu(dev, cfg.threads):
        run = _Run(model, data, tokenizer, cfg, dev, seen)
        try:
            losses = run_steps(model, cfg, sample_batches(data.train, cfg.batch_size, cfg.steps, run.gen),
                               lambda step, img, cap: step_loss(run, img, cap, step), progress, run.ema, f"{cfg.method} ")
        finally:
            run.restore()
    model.cpu().eval()
    return losses


# -- the backbone in, the backbone out -------------------------------------------------------------


def load_local_dir(folder: str | Path, seed: int = 0) -> tuple[torch.nn.Module, Any, Any, dict[str, Any]]:
    """(model in train mode, preprocess, tokenizer, its open_clip_config.json) of a folder pretrain.py wrote."""
    folder = Path(folder)
    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (cfg_path, weights):
        if not path.is_file():
            raise MissingFileError(f"{path} is missing: --backbone takes a folder written by `compalign shapes backbone` "
                                   "or `compalign shapes finetune` (open_clip_config.json + open_clip_model.safetensors)")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = meta["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_path} is not an open_clip local-dir config with a model_cfg ({e})") from None
    if meta.get("preprocess_cfg") != preprocess_cfg_for(model_cfg):
        raise InputError(f"{cfg_path}: its preprocess_cfg is not the plain resize pretrain.py writes; fine-tuning "
                         "keeps the backbone's preprocessing, so only folders written by compalign are accepted")
    model, preprocess, tokenizer = build_model(model_cfg, seed)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or set(missing) - {"attn_mask"}:
        raise InputError(f"{weights} does not match its config (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    return model.float().train(), preprocess, tokenizer, meta


def finetune_backbone(
    world: str | Path,
    out: str | Path,
    cfg: FinetuneConfig | None = None,
    backbone: str | Path = TINY_CHECKPOINT,
    progress: ProgressFn | None = None,
    seen: SeenFn | None = None,
) -> TrainResult:
    """Fine-tune ``backbone`` on ``world``'s train split with ``cfg.method``; save it to ``out`` (local-dir layout)."""
    cfg = cfg if cfg is not None else FinetuneConfig()
    resolve_device(cfg.device)  # refuse a missing GPU before loading anything
    model, preprocess, tokenizer, base = load_local_dir(backbone, cfg.seed)
    data = load_finetune_data(world, preprocess, tokenizer)
    t0 = time.perf_counter()
    losses = train(model, data, tokenizer, cfg, progress, seen)
    seconds = time.perf_counter() - t0
    weights = Path(backbone) / WEIGHTS_NAME
    record = {
        "schema": SCHEMA,
        "finetune": config.to_dict(cfg),
        "base": {"path": str(Path(backbone)), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16],
                 "record": base.get("compalign")},
        "world": {"path": str(Path(world)), "fingerprint": world_fingerprint(world),
                  "leak_negatives": data.leak_negatives},
        "n_images": len(data.train.image_names),
        "n_pairs": int(len(data.negatives)),
        "final_loss": float(np.mean(losses[-min(len(losses), cfg.log_every):])),
        "train_seconds": round(seconds, 1),
        "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
    }
    path = save_checkpoint(model, base["model_cfg"], out, record)
    size = (path / WEIGHTS_NAME).stat().st_size
    logger.info("saved %s-fine-tuned backbone to %s after %.0f s", cfg.method, path, seconds)
    return TrainResult(path, losses, seconds, len(data.train.image_names), int(len(data.negatives)), size)


__all__ = [
    "METHODS",
    "FinetuneConfig",
    "FinetuneData",
    "composite_scene",
    "draw_negatives",
    "finetune_backbone",
    "join",
    "list_methods",
    "load_finetune_data",
    "load_local_dir",
    "train",
]
