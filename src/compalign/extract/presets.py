"""Short backbone names (`clip`, `siglip2`, `pe`, `tiny`) and the registry that resolves them.

A preset is only a pair (open_clip model name, pretrained tag); anything open_clip accepts can be
given directly instead, so presets never hide what is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip

from ..core.assets import MODEL_CONFIG_DIR, TINY_CHECKPOINT
from ..core.registry import Registry

CONFIG_DIR = MODEL_CONFIG_DIR


@dataclass(frozen=True)
class Preset:
    model: str  # open_clip model name, or `local-dir:` path
    pretrained: str | None  # open_clip pretrained tag; None = random init (seeded)
    about: str  # one line for `compalign backbones`


PRESETS: Registry[Preset] = Registry("backbone preset")


def register_preset(name: str, preset: Preset) -> None:
    PRESETS.register(name, preset)


def list_presets() -> list[str]:
    return PRESETS.names()


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


def find_preset(name: str) -> Preset | None:
    """The preset called `name`, or None when `name` is an open_clip name or a path instead."""
    return PRESETS.get(name) if name in PRESETS else None


def register_model_configs() -> None:
    """Make the package's own open_clip configs (the tiny backbone) visible to open_clip."""
    if "compalign-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


register_preset("clip", Preset("ViT-B-32", "openai", "OpenAI CLIP ViT-B/32"))
register_preset("clip-b16", Preset("ViT-B-16", "openai", "OpenAI CLIP ViT-B/16"))
register_preset("siglip2", Preset("ViT-B-16-SigLIP2", "webli", "SigLIP2 ViT-B/16 (needs transformers for its tokenizer)"))
register_preset("pe", Preset("PE-Core-B-16", "meta", "Perception Encoder core B/16"))
# The shipped checkpoint (`make backbone` writes it); a seeded random init only while it is absent.
if (TINY_CHECKPOINT / "open_clip_config.json").is_file():
    _tiny = Preset(f"local-dir:{TINY_CHECKPOINT}", None, "the synthetic world's tiny backbone (shipped checkpoint)")
else:
    _tiny = Preset("compalign-tiny", None, "the synthetic world's tiny backbone (random init: run `make backbone`)")
register_preset("tiny", _tiny)
