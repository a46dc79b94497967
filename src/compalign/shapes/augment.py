"""Pretraining augmentations that try to take colour out of shape without ever drawing a held-out pair.

Trained on familiar (colour, shape) pairs only, the tiny ViT codes the pair, and no probe fitted on
familiar pairs reads the shape of an unseen one (README, "Unseen pairs"). Three augmentations, each
applied per image with its own probability, in this order:

- recolour: every named colour in the image becomes a random RGB, and the caption loses its colour
  words. A draw whose nearest named colour would make a held-out pair with a shape painted in that
  colour (or that sits near the background grey) is redrawn, so no image ever shows a held-out
  pair, not even approximately; shapes are seen across the rest of colour space.
- background: the background is repainted one random grey (a colour's edge contrast then varies).
- grey: the image is shown in greyscale and its caption loses its colour words.

All draws come from the caller's generator, the same number per batch whatever the outcome, so
the random stream never depends on the probabilities.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compalign.core import InputError

if TYPE_CHECKING:
    from compalign.shapes.pretrain import PretrainConfig, TrainData

# candidate colours drawn per (image, named colour); the first allowed one is used
_TRIES = 16
# a recolour draw closer than this (RGB Euclidean, 0..1 scale) to the background is redrawn
_MIN_BACKGROUND_DISTANCE = 48 / 255


def augment_data(data: TrainData, world: Path, preprocess: Any, tokenizer: Any, captions: list[str]) -> TrainData:
    """``data`` plus what the augmentations need: background and colour maps, colour-less captions, rules."""
    from compalign.shapes import load_scenes
    from compalign.shapes.load import load_held_out, load_world_config

    wcfg = load_world_config(world)
    if wcfg.noise_std > 0:  # the masks below find pixels by their exact flat colour
        raise InputError(f"{world}: the pretraining augmentations need flat colours, but this world adds pixel noise "
                         f"(noise_std {wcfg.noise_std}); make the world with noise_std 0 or train without them")
    norm = preprocess.transforms[-1]  # torchvision Normalize, the last step of open_clip's eval transform
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)
    names = sorted(wcfg.colours)
    rgb = torch.tensor([wcfg.colours[n] for n in names], dtype=torch.float32) / 255  # (K, 3)
    bg_rgb = torch.tensor(wcfg.background, dtype=torch.float32) / 255  # (3,)

    def where_is(colour: torch.Tensor) -> torch.Tensor:  # (N, H, W) bool: pixels of this flat colour
        return ((data.pixels - (colour.view(3, 1, 1) - mean) / std).abs() < 1e-3).all(dim=1)

    background = where_is(bg_rgb).unsqueeze(1)  # (N, 1, H, W)
    colour_map = torch.full(data.pixels[:, 0].shape, 255, dtype=torch.uint8)  # (N, H, W), 255 = no named colour
    for k in range(len(names)):
        colour_map[where_is(rgb[k])] = k

    # forbid[i, c, c2]: repainting colour c of image i so that it reads as c2 would show a held-out pair
    held = load_held_out(world)
    scenes = load_scenes(world / "train" / "scenes.jsonl")
    forbid = torch.zeros(len(data.image_names), len(names), len(names), dtype=torch.bool)  # (N, K, K)
    for i, name in enumerate(data.image_names):
        for obj in scenes[name].objects:
            for k2, c2 in enumerate(names):
                if (c2, obj.shape) in held:
                    forbid[i, names.index(obj.colour), k2] = True

    colour = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b ?")
    grey = tokenizer([colour.sub("", c) for c in captions]).long()
    return dataclasses.replace(
        data, background=background, tokens_grey=grey, mean_std=(mean, std), colour_map=colour_map, forbid=forbid,
        colour_rgb=rgb, background_rgb=bg_rgb,
    )  # fmt: skip


def recolour_draw(
    forbid: torch.Tensor, rgb: torch.Tensor, bg_rgb: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """New RGB (B, K, 3) of each image's named colours.

    ``forbid`` (B, K, K) is each image's held-out rule; images not ``chosen`` (B,) keep their colours.
    """
    b, k = forbid.shape[:2]
    cand = torch.randint(0, 256, (b, k, _TRIES, 3), generator=gen).float() / 255  # (B, K, T, 3)
    nearest = torch.cdist(cand.view(-1, 3), rgb).argmin(-1).view(b, k, _TRIES)  # (B, K, T)
    bad = torch.gather(forbid, 2, nearest)  # (B, K, T): reads as a held-out pair
    bad |= (cand - bg_rgb).norm(dim=-1) < _MIN_BACKGROUND_DISTANCE
    ok = ~bad
    first = ok.to(torch.uint8).argmax(-1, keepdim=True)  # (B, K, 1) first allowed try
    use = ok.any(-1) & chosen.view(b, 1)  # (B, K): no allowed try (vanishingly rare) keeps the colour
    new = torch.gather(cand, 2, first.unsqueeze(-1).expand(b, k, 1, 3)).squeeze(2)  # (B, K, 3)
    return torch.where(use.unsqueeze(-1), new, rgb.expand(b, k, 3))


def augment_batch(
    pixels: torch.Tensor, tokens: torch.Tensor, img: torch.Tensor, cap: torch.Tensor, data: TrainData, cfg: PretrainConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (B, 3, H, W), tokens (B, C)) of a batch with the augmentations applied; draws from ``gen``."""
    assert data.background is not None and data.tokens_grey is not None and data.mean_std is not None
    assert data.colour_map is not None and data.forbid is not None and data.colour_rgb is not None
    dev = pixels.device
    x, t = pixels[img.to(dev)], tokens[cap.to(dev)]
    mean, std = (m.to(dev) for m in data.mean_std)
    b = len(img)
    repaint = torch.rand(b, generator=gen) < cfg.p_background  # (B,)
    level = torch.randint(30, 226, (b,), generator=gen).float() / 255  # one grey per image, mid grey included
    go_grey = torch.rand(b, generator=gen) < cfg.p_grey  # (B,)
    recolour = torch.rand(b, generator=gen) < cfg.p_recolour  # (B,) drawn last: older recipes' streams stay
    new_rgb = recolour_draw(data.forbid[img], data.colour_rgb, data.background_rgb, recolour, gen)
    if recolour.any():
        cmap = data.colour_map[img].long()  # (B, H, W), sliced on the CPU
        named = cmap < len(data.colour_rgb)
        fill = new_rgb[torch.arange(b).view(b, 1, 1), cmap.clamp(max=len(data.colour_rgb) - 1)]  # (B, H, W, 3)
        fill = (fill.permute(0, 3, 1, 2).to(dev) - mean) / std  # (B, 3, H, W)
        x = torch.where(named.unsqueeze(1).to(dev), fill, x)
    if repaint.any():
        fill = (level.to(dev).view(b, 1, 1, 1) - mean) / std  # (B, 3, 1, 1)
        mask = data.background[img].to(dev) & repaint.to(dev).view(b, 1, 1, 1)  # slice on the CPU, then move
        x = torch.where(mask, fill.expand_as(x), x)
    if go_grey.any():
        raw = x * std + mean
        lum = (0.299 * raw[:, 0] + 0.587 * raw[:, 1] + 0.114 * raw[:, 2]).unsqueeze(1)  # (B, 1, H, W), ITU-R 601
        x = torch.where(go_grey.to(dev).view(b, 1, 1, 1), (lum - mean) / std, x)
    drop_colour = recolour | go_grey  # (B,): the caption's colour words no longer match the image
    if drop_colour.any():
        t = torch.where(drop_colour.to(dev).view(b, 1), data.tokens_grey[cap].to(dev), t)
    return x, t
