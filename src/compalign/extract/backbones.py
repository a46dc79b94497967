"""Load a frozen open_clip backbone and expose the two calls extraction needs.

`encode_images` / `encode_texts` return, in one forward pass, the backbone's own pooled
embedding (exactly what `encode_image` / `encode_text` give) and the per-layer token
embeddings from `forward_intermediates` with the tower's final norm applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn as nn
from open_clip.transformer import text_global_pool

from .captions import measure
from .hub import BackboneError, fail_fast_offline, looks_offline, offline_error, prefetch_hint, raised_reading_checkpoint
from .presets import find_preset, list_presets, register_model_configs

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ImageOut:
    global_: torch.Tensor  # (B, E) float32, the backbone's own image embedding (unnormalised)
    patches: dict[int, torch.Tensor]  # layer -> (B, P, W) spatial tokens after the final norm
    prefix: dict[int, torch.Tensor]  # layer -> (B, K, W) class/register tokens, kept apart


@dataclass
class TextOut:
    global_: torch.Tensor  # (B, E) float32, the backbone's own text embedding (unnormalised)
    tokens: dict[int, torch.Tensor]  # layer -> (B, L, W) token embeddings after the final norm


@dataclass
class Tokens:
    ids: torch.Tensor  # (M, C) token ids at the full context length C
    lengths: torch.Tensor  # (M,) tokens that carry content (SOT..EOT inclusive)
    truncated: torch.Tensor  # (M,) bool, the caption did not fit the context


@dataclass
class Backbone:
    model: nn.Module
    preprocess: Any  # torchvision transform: PIL image -> (3, H, W) tensor
    tokenizer: Any
    name: str  # what the user asked for (preset or open_clip name)
    model_name: str
    pretrained: str | None
    causal_text: bool  # tokens after EOT cannot change the pooled embedding
    context_length: int
    image_depth: int
    text_depth: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; encode_* move their inputs there."""
        return next(self.model.parameters()).device

    # ---- layers -------------------------------------------------------------------------
    def image_layers(self, layers: list[int]) -> list[int]:
        return [_absolute(i, self.image_depth) for i in layers]

    def text_layers(self, layers: list[int]) -> list[int]:
        return [_absolute(i, self.text_depth) for i in layers]

    # ---- text ---------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tokens:
        lengths, truncated = measure(self.tokenizer, self.context_length, texts)  # the extraction's own rule
        return Tokens(ids=self.tokenizer(texts), lengths=torch.from_numpy(lengths), truncated=torch.from_numpy(truncated))

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        """(M, C) token ids alone: tokenize()'s ids, without the second pass that measures truncation."""
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_texts(self, ids: torch.Tensor, layers: list[int]) -> TextOut:
        """ids (B, L): L may be shorter than the context for causal towers (see DESIGN.md)."""
        take = self.text_layers(layers)
        m = self.model
        ids = ids.to(self.device)  # token ids come from the CPU tokenizer whatever the model's device
        L = ids.shape[1]
        if hasattr(m, "text"):  # CustomTextCLIP (PE, SigLIP2): a TextTransformer
            tower = m.text
            if getattr(tower, "cls_emb", None) is not None:
                raise BackboneError("text towers with an appended class token (CoCa) are not supported")
            x, mask = tower._embeds(ids)  # (B, L, W); its causal mask is not sliced to L
            pool, eos = tower.pool_type, getattr(tower, "eos_id", None)
        else:  # CLIP with the built-in text tower
            tower = m
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding[:L].to(cast)  # (B, L, W)
            mask = m.attn_mask
            pool, eos = m.text_pool_type, getattr(m, "text_eos_id", None)
        if mask is not None and mask.dim() == 2:
            mask = mask[:L, :L]
        x, inter = tower.transformer.forward_intermediates(x, attn_mask=mask, indices=take)
        inter = [tower.ln_final(t) for t in inter]
        pooled = text_global_pool(tower.ln_final(x), ids, pool, eos_token_id=eos)  # (B, W)
        proj = tower.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return TextOut(global_=pooled.float(), tokens=_by_layer(layers, take, inter))

    # ---- images -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, layers: list[int]) -> ImageOut:
        take = self.image_layers(layers)
        out = self.model.visual.forward_intermediates(
            pixels.to(self.device),
            indices=take,
            normalize_intermediates=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"]  # list of (B, P, W)
        prefix = out.get("image_intermediates_prefix") or [p[:, :0] for p in patches]
        return ImageOut(
            global_=out["image_features"].float(),
            patches=_by_layer(layers, take, patches),
            prefix=_by_layer(layers, take, prefix),
        )

    # ---- linear maps to the joint space -------------------------------------------------
    def projections(self) -> dict[str, torch.Tensor]:
        """Token -> joint-space matrices where the tower pools then applies a plain linear map (on the CPU)."""
        out: dict[str, torch.Tensor] = {}
        visual = self.model.visual
        if isinstance(getattr(visual, "proj", None), torch.Tensor) and getattr(visual, "attn_pool", None) is None:
            out["image_proj"] = visual.proj.detach().float().cpu()  # (W, E)
        text = getattr(self.model, "text", self.model)
        proj = getattr(text, "text_projection", None)
        if isinstance(proj, nn.Linear):
            out["text_proj"] = proj.weight.detach().float().T.cpu()  # (W, E)
            if proj.bias is not None:
                out["text_proj_bias"] = proj.bias.detach().float().cpu()
        elif isinstance(proj, torch.Tensor):
            out["text_proj"] = proj.detach().float().cpu()
        return out


def is_causal_text(model: nn.Module) -> bool:
    """True when tokens after end-of-text cannot change the pooled text embedding.

    That needs a causal mask (no later token reaches an earlier one), pooling at the EOT token
    (argmax / eos, not 'last', which reads the final padded position) and no appended class token.
    """
    tower = getattr(model, "text", model)
    masked = getattr(tower, "attn_mask", None) is not None
    pool = getattr(tower, "pool_type", getattr(model, "text_pool_type", "argmax"))
    return masked and pool in ("argmax", "eos") and getattr(tower, "cls_emb", None) is None


def _by_layer(layers: list[int], take: list[int], outs: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """forward_intermediates returns blocks in ascending order, whatever order they were asked in."""
    by_block = dict(zip(sorted(take), outs))
    return {layer: by_block[block] for layer, block in zip(layers, take)}


def _absolute(i: int, depth: int) -> int:
    j = i + depth if i < 0 else i
    if not 0 <= j < depth:
        raise ValueError(f"layer {i} is out of range for a tower with {depth} blocks (use -1..-{depth} or 0..{depth - 1})")
    return j


def _depth(module: nn.Module) -> int:
    for path in ("transformer.resblocks", "trunk.blocks", "resblocks"):
        obj: Any = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return len(obj)
    raise BackboneError(f"cannot find the blocks of {type(module).__name__}; compalign supports ViT towers")


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve(name: str, pretrained: str | None) -> tuple[str, str | None]:
    """Map a preset / open_clip name / checkpoint path to (open_clip model name, pretrained)."""
    register_model_configs()
    preset = find_preset(name)
    if preset is not None:
        model, tag = preset.model, (pretrained if pretrained is not None else preset.pretrained)
    elif name.startswith(("local-dir:", "hf-hub:")):
        model, tag = name, pretrained
    elif Path(name).is_dir():
        model, tag = f"local-dir:{name}", pretrained
    elif name in open_clip.list_models():
        return name, pretrained
    else:
        raise BackboneError(
            f"unknown backbone {name!r}: use a preset ({', '.join(list_presets())}), "
            "an open_clip model name (`python -c 'import open_clip; print(open_clip.list_models())'`), "
            "or a folder with open_clip_config.json + weights (`local-dir:PATH`)"
        )
    # open_clip ignores `pretrained` for a folder or Hub repo; refusing keeps meta["pretrained"] truthful.
    if tag is not None and model.startswith(("local-dir:", "hf-hub:")):
        raise BackboneError(_own_weights_message(name, model, tag))
    return model, tag


def _own_weights_message(name: str, model: str, pretrained: str) -> str:
    kind, _, where = model.partition(":")
    what = f"the folder {where}" if kind == "local-dir" else f"the Hub repo {where}"
    msg = f"--model {name} loads {what}, which brings its own weights, so --pretrained {pretrained} does not apply. "
    arch = _config_name(Path(where)) if kind == "local-dir" else None
    if arch:
        return msg + (f"For a random init of the same architecture use `--model {arch} --pretrained none`; "
                      f"for another checkpoint file use `--model {arch} --pretrained FILE`.")
    return msg + ("Drop --pretrained, or give an open_clip model name with `--pretrained none` (random init) "
                  "or `--pretrained FILE`.")


def _config_name(folder: Path) -> str | None:
    """The registered open_clip config whose architecture equals the folder's (`compalign-tiny` for tiny)."""
    try:
        cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((n for n in open_clip.list_models() if open_clip.get_model_config(n) == cfg), None)


def load_backbone(
    name: str,
    pretrained: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Backbone:
    """Build the frozen backbone in eval mode, fp32 weights (autocast handles lower precision)."""
    model_name, tag = resolve(name, pretrained)
    if tag in ("none", "random"):
        tag = None
    is_file = bool(tag) and os.path.isfile(tag)
    if tag and not is_file and not open_clip.get_pretrained_cfg(model_name, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise BackboneError(f"--pretrained {tag!r} is neither an existing file nor a pretrained tag of {model_name} "
                            f"(its tags: {tags}); 'none' = random init")
    fail_fast_offline(model_name, tag if not is_file else None)
    preset = find_preset(name)
    pre_kwargs = _checkpoint_preprocess(model_name, tag, preset.pretrained if preset else None)
    torch.manual_seed(seed)  # random-init backbones are reproducible
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag, device=device,
                                                                     **pre_kwargs)
        tokenizer = open_clip.get_tokenizer(model_name)
    except ImportError as e:
        raise BackboneError(
            f"{model_name} needs an optional dependency ({e}). Install it with `pip install 'compalign[hf]'`, "
            f"then prefetch its files: {prefetch_hint(model_name, tag)}"
        ) from e
    except Exception as e:  # network / missing files: say how to prefetch
        if is_file and raised_reading_checkpoint(e):
            cause = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]  # torch's advice runs on
            raise BackboneError(
                f"{tag} is not an open_clip checkpoint that can be read ({type(e).__name__}: {cause}). "
                f"--pretrained FILE takes a state dict of {model_name} saved as .safetensors, or with torch.save "
                "as .pt / .bin; otherwise give a pretrained tag, or 'none' for a random init."
            ) from e
        if looks_offline(e):
            raise offline_error(model_name, tag, type(e).__name__) from e
        raise
    model.eval().requires_grad_(False)
    text_tower = getattr(model, "text", model)
    causal = is_causal_text(model)
    ctx = int(getattr(tokenizer, "context_length", None) or model.context_length)
    visual = model.visual
    text_blocks = getattr(text_tower, "transformer", None)
    checkpoint = None
    if model_name.startswith("local-dir:"):  # presets resolve to local-dir too (the shipped tiny)
        folder = Path(model_name.removeprefix("local-dir:"))
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        checkpoint = _file_sha(str(weights[0])) if weights else None
    elif tag and os.path.isfile(tag):
        checkpoint = _file_sha(tag)
    pre = getattr(visual, "preprocess_cfg", {}) or {}
    meta = {
        "name": name,
        "model_name": model_name,
        "pretrained": tag,
        "checkpoint_sha": checkpoint,
        "seed": seed if tag is None and checkpoint is None else None,
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
        "timm": _timm_version(),
        "image_size": list(_pair(getattr(visual, "image_size", 0))),
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(pre).items()},
        "causal_text": causal,
        "context_length": ctx,
    }
    backbone = Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        model_name=model_name,
        pretrained=tag,
        causal_text=causal,
        context_length=ctx,
        image_depth=_depth(visual),
        text_depth=_depth(text_blocks if text_blocks is not None else text_tower),
        meta=meta,
    )
    probe = backbone.encode_texts(backbone.tokenize(["a"]).ids, [-1])
    meta["embed_dim"] = int(probe.global_.shape[-1])
    meta["text_width"] = int(probe.tokens[-1].shape[-1])
    meta["image_depth"], meta["text_depth"] = backbone.image_depth, backbone.text_depth
    return backbone


_PRE_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _checkpoint_preprocess(model_name: str, tag: str | None, preset_tag: str | None) -> dict[str, Any]:
    """A bare checkpoint file loses the pretrained tag's preprocessing (open_clip #1068): restore it.

    The preset's tag decides when there is one; otherwise every tag of the model must agree
    (they do for CLIP ViT-B-32; SigLIP2 and PE have one tag each), else we refuse.
    """
    if not tag or not os.path.isfile(tag) or model_name.startswith(("local-dir:", "hf-hub:")):
        return {}
    tags = [preset_tag] if preset_tag else open_clip.list_pretrained_tags_by_model(model_name)
    cfgs = {tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in
                  ((k, open_clip.get_pretrained_cfg(model_name, t).get(k)) for k in _PRE_KEYS)) for t in tags}
    if not cfgs:
        log.warning("%s has no pretrained tags: %s loads with the model's default preprocessing", model_name, tag)
        return {}
    if len(cfgs) > 1:
        raise BackboneError(
            f"{tag} is a bare checkpoint file, and the pretrained tags of {model_name} preprocess differently, "
            "so its preprocessing is unknown (open_clip #1068). Save it as a folder with open_clip_config.json "
            "holding its preprocess_cfg and pass --model local-dir:FOLDER."
        )
    cfg = dict(next(iter(cfgs)))
    return {f"image_{k}": v for k, v in cfg.items() if v is not None}


def _pair(x: Any) -> tuple[int, int]:
    return tuple(x) if isinstance(x, (tuple, list)) else (int(x), int(x))


def _timm_version() -> str | None:
    try:
        import timm

        return timm.__version__
    except ImportError:
        return None


