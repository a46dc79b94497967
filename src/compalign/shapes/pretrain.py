"""Pretrain the tiny backbone on a shapes world with the plain CLIP loss; save it as a `local-dir:`.

The loss is the symmetric InfoNCE of CLIP over in-batch pairs only -- no hard negatives -- so
whatever binding the backbone learns comes from the image-caption pairs alone, like a real CLIP.
A batch holds distinct images (one of each image's captions drawn at random), so no caption is
pushed away from its own image. Images go through the backbone's own preprocessing once, up
front (the world is small enough to keep in memory); captions are tokenized once.

Seeded and deterministic on CPU: the same world, config and seed give identical weights.
The checkpoint folder is open_clip's local-dir layout (``open_clip_config.json`` with
``model_cfg`` + ``preprocess_cfg``, and ``open_clip_model.safetensors``) plus a ``compalign``
record of how it was trained, so ``load_backbone("local-dir:FOLDER")`` rebuilds it exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import save_file

from compalign.core import InputError, MissingFileError, config
from compalign.core.assets import MODEL_CONFIG_DIR
from compalign.core.decode import DecodeError, decode_image
from compalign.core.device import resolve_device
from compalign.core.files import atomic_write, atomic_write_with
from compalign.shapes.augment import augment_batch, augment_data
from compalign.shapes.load import read_jsonl
from compalign.shapes.losses import clip_loss
from compalign.shapes.recipe import CompactVocab, ProgressFn, Recipe, TrainResult, run_steps, sample_batches

logger = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
SCHEMA = "compalign.backbone/1"


@dataclass(frozen=True)
class PretrainConfig(Recipe):
    """How the tiny backbone is trained (travels inside the checkpoint); the optimisation fields are Recipe's."""

    steps: int = 4000
    lr: float = 2e-3
    warmup: int = 100
    log_every: int = 100
    # dtype of the saved weights; fp16 halves the file (the model is rebuilt in fp32 on load)
    save_dtype: Literal["fp32", "fp16"] = "fp32"
    # Augmentations that try to take colour out of shape without ever drawing a held-out pair (augment.py):
    # trained on familiar pairs only, the tiny ViT codes the (colour, shape) pair and cannot read the shape
    # of an unseen one. Measured in the README, "Unseen pairs". Probability that an image's background is
    # repainted one random grey (a colour's edge contrast then varies):
    p_background: float = 0.0
    # probability that an image is shown in greyscale, its caption stripped of its colour words
    p_grey: float = 0.0
    # probability that an image's named colours become random RGBs, its caption stripped of its colour
    # words (a draw that would read as a held-out pair is redrawn)
    p_recolour: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(0.0 <= p <= 1.0 for p in (self.p_background, self.p_grey, self.p_recolour)):
            raise InputError("PretrainConfig: p_background, p_grey and p_recolour are probabilities in [0, 1]")
        if self.save_dtype not in ("fp32", "fp16"):
            raise InputError(f"PretrainConfig: save_dtype must be fp32 or fp16, got {self.save_dtype!r}")

    @property
    def augments(self) -> bool:
        return self.p_background > 0 or self.p_grey > 0 or self.p_recolour > 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return config.from_dict(cls, data, "PretrainConfig")


@dataclass
class TrainData:
    pixels: torch.Tensor  # (N, 3, H, W) float32, preprocessed images, one row per distinct image
    tokens: torch.Tensor  # (M, C) int64, tokenized captions
    caption_image: torch.Tensor  # (M,) int64, image row of each caption
    image_names: list[str]  # (N,) file names relative to the train split
    # for the augmentations (None when off; augment.py): which pixels are background / which named colour,
    # each caption without colour words, and which recolourings would show a held-out pair
    background: torch.Tensor | None = None  # (N, 1, H, W) bool
    tokens_grey: torch.Tensor | None = None  # (M, C) int64
    mean_std: tuple[torch.Tensor, torch.Tensor] | None = None  # the preprocessing's (3, 1, 1) mean and std
    colour_map: torch.Tensor | None = None  # (N, H, W) uint8: index of the named colour (sorted names), 255 = none
    forbid: torch.Tensor | None = None  # (N, K, K) bool: colour c of image i must not read as colour c2
    colour_rgb: torch.Tensor | None = None  # (K, 3) float, 0..1
    background_rgb: torch.Tensor | None = None  # (3,) float, 0..1

    def captions_of(self) -> list[torch.Tensor]:
        """Caption rows of each image (image order)."""
        order = torch.argsort(self.caption_image, stable=True)
        counts = torch.bincount(self.caption_image, minlength=len(self.image_names))
        return list(torch.split(order, counts.tolist()))


# -- model -----------------------------------------------------------------------------------


def default_model_cfg() -> dict[str, Any]:
    """The package's tiny open_clip config (model_configs/compalign-tiny.json)."""
    return json.loads((MODEL_CONFIG_DIR / "compalign-tiny.json").read_text(encoding="utf-8"))


def preprocess_cfg_for(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing saved with the checkpoint: a plain resize to the model's input size."""
    size = model_cfg["vision_cfg"]["image_size"]
    cfg = PreprocessCfg(size=size, interpolation="bicubic", resize_mode="shortest")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def build_model(model_cfg: dict[str, Any], seed: int) -> tuple[torch.nn.Module, Any, Any]:
    """(model in train mode, eval preprocess, tokenizer), initialised from ``seed``."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    pre = image_transform_v2(PreprocessCfg(**preprocess_cfg_for(model_cfg)), is_train=False)
    ctx = model_cfg["text_cfg"].get("context_length", 77)
    tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
    return model.train(), pre, tokenizer


# -- data ------------------------------------------------------------------------------------


def _read_pairs(path: Path, world: str | Path) -> list[dict[str, Any]]:
    """The rows of train/pairs.jsonl; a damaged line is named with its number and the command that rewrites it."""
    rows = []
    for n, row in read_jsonl(path, world):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str):
            raise InputError(f"{path} line {n} is not an {{image, caption}} row; rebuild the world with "
                             f"`compalign shapes make --out {world} --force`")
        rows.append(row)
    if not rows:
        raise InputError(f"{path} holds no training pairs; make the world with training scenes "
                         f"(`compalign shapes make --out {world} --n-train N --force`)")
    return rows


def _read_image(path: Path, world: str | Path) -> Any:
    if not path.is_file():
        raise MissingFileError(f"{path} is missing (named in train/pairs.jsonl); rebuild the world with "
                               f"`compalign shapes make --out {world} --force`")
    try:
        return decode_image(path.read_bytes())
    except DecodeError as e:
        raise InputError(f"{path} is not a readable image ({e}); rebuild the world with "
                         f"`compalign shapes make --out {world} --force`") from None


def load_train_data(world: str | Path, preprocess: Any, tokenizer: Any, augment: bool = False) -> TrainData:
    """Every training image (preprocessed) and caption of a world's train split (+ what augmenting needs)."""
    split = Path(world) / "train"
    pairs_path = split / "pairs.jsonl"
    if not pairs_path.is_file():
        raise MissingFileError(f"{pairs_path} is missing: build the world first (`compalign shapes make --out {world}`)")
    rows = _read_pairs(pairs_path, world)
    names = sorted({r["image"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    pixels = torch.stack([preprocess(_read_image(split / n, world)) for n in names])  # (N, 3, H, W)
    tokens = tokenizer([r["caption"] for r in rows]).long()  # (M, C)
    owner = torch.tensor([index[r["image"]] for r in rows], dtype=torch.long)
    logger.info("loaded %d images and %d captions from %s", len(names), len(rows), split)
    data = TrainData(pixels=pixels, tokens=tokens, caption_image=owner, image_names=names)
    if augment:
        data = augment_data(data, Path(world), preprocess, tokenizer, [r["caption"] for r in rows])
    return data


# -- training --------------------------------------------------------------------------------


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)``, computed on the batch's used length only.

    Exact, not an approximation: the text tower is causal and pools at the end-of-text token
    (the highest id, open_clip's ``argmax`` pooling), so the padding after it never reaches the
    pooled feature. Captions here average ~12 of 32 positions; the padding was a third of the text
    tower's time. Mirrors open_clip's ``CLIP.encode_text`` (checked against it in the tests).
    """
    if model.text_pool_type != "argmax":
        return model.encode_text(tokens, normalize=True)
    eot = tokens.argmax(dim=-1)  # (B,) position of each caption's end-of-text token
    n = int(eot.max()) + 1  # positions after the last EOT are padding for every caption
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]  # (B, n, W)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(len(x), device=x.device), eot] @ model.text_projection  # (B, E)
    return F.normalize(x, dim=-1)


def train(model: torch.nn.Module, data: TrainData, cfg: PretrainConfig, progress: ProgressFn | None = None) -> list[float]:
    """Train ``model`` in place; returns the loss of every step."""
    vocab = CompactVocab(model, data.tokens)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        remapped = dataclasses.replace(data, tokens=vocab.remap(data.tokens))
        if data.tokens_grey is not None:  # its words are a subset of the captions': no new rows
            remapped.tokens_grey = vocab.remap(data.tokens_grey)
        return _train(model, remapped, cfg, progress)
    finally:
        vocab.restore()
        torch.set_num_threads(threads)


def _train(model: torch.nn.Module, data: TrainData, cfg: PretrainConfig, progress: ProgressFn | None) -> list[float]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order is drawn on the CPU whatever the device
    dev = resolve_device(cfg.device)
    model.to(dev)
    pixels, tokens = data.pixels.to(dev), data.tokens.to(dev)  # the whole world fits (20k images = 1 GB)
    if cfg.augments and data.tokens_grey is None:
        raise ValueError("p_background / p_grey / p_recolour need the data loaded with load_train_data(..., augment=True)")
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: the batch order stays the same
    model.train()

    def step_loss(step: int, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        if cfg.augments:
            x, t = augment_batch(pixels, tokens, img, cap, data, cfg, aug_gen)
        else:
            x, t = pixels[img.to(dev)], tokens[cap.to(dev)]
        image_features = model.encode_image(x, normalize=True)  # (B, E)
        text_features = encode_text_trimmed(model, t)  # (B, E)
        return clip_loss(image_features, text_features, model.logit_scale.exp())

    losses = run_steps(model, cfg, sample_batches(data, cfg.batch_size, cfg.steps, gen), step_loss, progress)
    model.cpu().eval()
    return losses


# -- checkpoint ------------------------------------------------------------------------------


def world_fingerprint(world: str | Path) -> str:
    """Hash of the world's config record (world.json), enough to tell worlds apart."""
    path = Path(world) / "world.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "unknown"


def save_checkpoint(
    model: torch.nn.Module, model_cfg: dict[str, Any], out: str | Path, record: dict[str, Any], dtype: str = "fp32"
) -> Path:
    """Write the local-dir folder: weights (safetensors) + open_clip_config.json (+ how it was made)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cast = torch.float16 if dtype == "fp16" else torch.float32
    state = {k: v.detach().to(cast).contiguous() for k, v in model.state_dict().items()}
    # attn_mask is a buffer rebuilt from the config; safetensors also rejects shared storage
    state = {k: v.clone() for k, v in state.items() if k != "attn_mask"}
    # One metadata key only: safetensors writes its metadata map in hash order (bytes would vary).
    atomic_write_with(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg_for(model_cfg), "compalign": record}
    atomic_write(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def pretrain_backbone(
    world: str | Path,
    out: str | Path,
    cfg: PretrainConfig = PretrainConfig(),
    model_cfg: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train the tiny backbone on ``world``'s train split and save it to ``out`` (local-dir layout)."""
    resolve_device(cfg.device)  # refuse a missing GPU before loading the world
    model_cfg = model_cfg if model_cfg is not None else default_model_cfg()
    model, preprocess, tokenizer = build_model(model_cfg, cfg.seed)
    data = load_train_data(world, preprocess, tokenizer, augment=cfg.augments)
    t0 = time.perf_counter()
    losses = train(model, data, cfg, progress)
    seconds = time.perf_counter() - t0
    record = {
        "schema": SCHEMA,
        "pretrain": dataclasses.asdict(cfg),
        "world": {"path": str(Path(world)), "fingerprint": world_fingerprint(world)},
        "n_images": len(data.image_names),
        "n_captions": int(len(data.tokens)),
        "final_loss": float(np.mean(losses[-min(len(losses), cfg.log_every) :])),
        "train_seconds": round(seconds, 1),
        "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
    }
    path = save_checkpoint(model, model_cfg, out, record, cfg.save_dtype)
    size = (path / WEIGHTS_NAME).stat().st_size
    logger.info("saved backbone to %s (%.1f MB) after %.0f s", path, size / 1e6, seconds)
    return TrainResult(path, losses, seconds, len(data.image_names), int(len(data.tokens)), size)


__all__ = [
    "PretrainConfig",
    "TrainData",
    "build_model",
    "default_model_cfg",
    "load_train_data",
    "preprocess_cfg_for",
    "pretrain_backbone",
    "save_checkpoint",
    "train",
]
