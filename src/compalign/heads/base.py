"""The head contract and its registry.

A head reads what it needs from the cache (`needs_images`, `needs_texts`, from token layer `layer`),
turns image rows and text rows into its own representations once (`embed_images`, `embed_texts`),
and scores them: aligned pairs -> (B,), all against all -> (Bi, Bt). `score_pairs(i, t)` must equal
the diagonal of `score_matrix(i, t)`; contract tests check it for every registered head.

Before a head reads a cache, `attach(reader)` lets it build itself for that cache's widths (a
trainable head's modules), pick up what the cache carries (linear projections for `maxsim`) and
refuse a cache it cannot score (another backbone than the one it was trained on, a layer not
extracted). Trainable heads are `TorchHead`s: an `nn.Module` whose numpy-facing calls wrap torch
code that the trainer calls with gradients (`encode_images`, `encode_texts`, `pair_logits`,
`matrix_logits`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..cache.reader import TOKEN_FIELDS
from ..core import InputError, config
from ..core.registry import Registry

if TYPE_CHECKING:
    import torch

    from ..cache.reader import CacheReader

Batch = dict[str, np.ndarray]  # cache field -> rows, e.g. {"global": (B, E)}


@dataclass(frozen=True)
class CacheSpec:
    """What a head needs to know about a cache to build itself: widths, projections, identity."""

    embed_dim: int  # E, joint space
    image_width: int  # W of patch tokens
    text_width: int  # W of caption tokens
    n_patches: int  # P
    n_prefix: int  # K class/register tokens
    text_len: int  # L stored token positions
    layers: tuple[int, ...]  # extracted token layers
    backbone: str  # preset / model name, for messages
    backbone_id: str  # same weights => same id (CacheReader.backbone_id)
    projections: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, compare=False)  # "image", "text", "text_bias"

    @classmethod
    def from_reader(cls, reader: CacheReader) -> CacheSpec:
        lay = reader.layout
        proj = {k: v for k in ("image", "text", "text_bias") if (v := reader.projection(k)) is not None}  # type: ignore[arg-type]
        return cls(embed_dim=lay.embed_dim, image_width=lay.image_width, text_width=lay.text_width,
                   n_patches=lay.n_patches, n_prefix=lay.n_prefix, text_len=lay.text_len, layers=tuple(lay.layers),
                   backbone=str(reader.backbone.get("name", reader.backbone.get("model_name"))),
                   backbone_id=reader.backbone_id, projections=proj)

    def dims(self) -> dict[str, Any]:
        """The JSON-able part that fixes a head's tensor shapes (stored in checkpoints)."""
        d = dataclasses.asdict(self)
        d.pop("projections")
        d["layers"] = list(self.layers)
        return d


class Head:
    name: ClassVar[str]
    needs_images: ClassVar[tuple[str, ...]] = ("global",)  # cache fields read per image row
    needs_texts: ClassVar[tuple[str, ...]] = ("global",)
    text_text: ClassVar[bool] = False  # can score caption against caption (SugarCrepe++ TOT)
    trainable: ClassVar[bool] = False  # has parameters that `compalign-heads train` fits
    layer: int = -1  # which extracted token layer the token fields are read from

    # ---- lifecycle ---------------------------------------------------------------------------
    def attach(self, reader: CacheReader) -> None:
        """Called before reading `reader`: build for it, or refuse it with a message naming the fix."""
        trained_on = getattr(self, "trained_on", None)  # set by checkpoint loading
        if trained_on and trained_on.get("backbone_id") != reader.backbone_id:
            raise InputError(
                f"head {self.label!r} was trained on caches of backbone {trained_on.get('backbone')!r} "
                f"(id {trained_on.get('backbone_id')}); {reader.path} was extracted with backbone "
                f"{reader.backbone.get('name')!r} (id {reader.backbone_id}). Score it on a cache of the same "
                f"backbone, or train the head on this one (`compalign-heads train`).")
        if any(f in TOKEN_FIELDS for f in (*self.needs_images, *self.needs_texts)):
            have = reader.attrs["extraction"]["layers"]
            if self.layer not in have:
                raise InputError(f"head {self.label!r} reads token layer {self.layer}, but {reader.path} has layers "
                                 f"{have}; re-extract with `--layers {','.join(map(str, sorted({*have, self.layer})))}`")

    @property
    def label(self) -> str:
        return getattr(self, "_label", None) or self.name

    # ---- representations and scores ----------------------------------------------------------
    def embed_images(self, batch: Batch) -> Any:
        raise NotImplementedError

    def embed_texts(self, batch: Batch) -> Any:
        raise NotImplementedError

    def score_pairs(self, images: Any, texts: Any) -> np.ndarray:
        """(B,) scores of image b with text b."""
        raise NotImplementedError

    def score_matrix(self, images: Any, texts: Any) -> np.ndarray:
        """(Bi, Bt) scores of every image with every text."""
        raise NotImplementedError

    def score_text_pairs(self, a: Any, b: Any) -> np.ndarray:
        raise NotImplementedError(f"head {self.name!r} has no text-text score")

    # ---- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): `create_head(name, **config)` rebuilds the head."""
        return {}

    def state_tensors(self) -> dict[str, Any]:
        """Tensors a checkpoint stores (name -> torch.Tensor); none for a parameter-free head."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Any]) -> None:
        if tensors:
            raise InputError(f"head {self.name!r} has no tensors, got {sorted(tensors)[:5]}")


class TorchHead(Head):
    """Base of heads with torch modules. Subclasses are also `torch.nn.Module`s (see `torch_head`).

    Subclasses implement, in torch and differentiably:
      `encode_images(batch) -> rep`, `encode_texts(batch) -> rep`  (rep: dict of tensors, rows first)
      `pair_logits(img, txt) -> (B,)`, `matrix_logits(img, txt) -> (Bi, Bt)`,
      optionally `text_logits(a, b) -> (B,)`.
    The numpy calls of the contract run them without gradients, in eval mode, on the head's device.
    """

    spec: CacheSpec | None = None

    def build(self, spec: CacheSpec) -> None:
        """Create the modules for a cache of this shape (seeded: the same config gives the same init)."""
        raise NotImplementedError

    @property
    def built(self) -> bool:
        return self.spec is not None

    def attach(self, reader: CacheReader) -> None:
        super().attach(reader)
        spec = CacheSpec.from_reader(reader)
        if not self.built:
            self.build(spec)
            return
        for k in ("image_width", "text_width", "embed_dim", "n_patches"):
            if getattr(spec, k) != getattr(self.spec, k):
                raise InputError(f"head {self.label!r} was built for {k}={getattr(self.spec, k)}, but {reader.path} has "
                                 f"{getattr(spec, k)} (backbone {spec.backbone!r}); train it on this cache")

    def _device(self) -> torch.device:
        import torch

        for p in self.parameters():  # type: ignore[attr-defined]
            return p.device
        for b in self.buffers():  # type: ignore[attr-defined]
            return b.device
        return torch.device("cpu")

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        import torch

        dev = self._device()
        out = {}
        for k, v in batch.items():
            t = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = t.to(dev, torch.float32 if t.is_floating_point() else torch.long)
        return out

    def _no_grad(self, fn: Callable[..., Any], *args: Any) -> Any:
        import torch

        if not self.built:
            raise RuntimeError(f"head {self.name!r} is not built: call head.attach(reader) (or build(spec)) first")
        was = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            with torch.no_grad():
                return fn(*args)
        finally:
            self.train(was)  # type: ignore[attr-defined]

    def embed_images(self, batch: Batch) -> Any:
        return self._no_grad(self.encode_images, self._tensors(batch))

    def embed_texts(self, batch: Batch) -> Any:
        return self._no_grad(self.encode_texts, self._tensors(batch))

    def score_pairs(self, images: Any, texts: Any) -> np.ndarray:
        return self._no_grad(self.pair_logits, images, texts).float().cpu().numpy()

    def score_matrix(self, images: Any, texts: Any) -> np.ndarray:
        return self._no_grad(self.matrix_logits, images, texts).float().cpu().numpy()

    def score_text_pairs(self, a: Any, b: Any) -> np.ndarray:
        if not self.text_text:
            return super().score_text_pairs(a, b)
        return self._no_grad(self.text_logits, a, b).float().cpu().numpy()

    # torch-side API, implemented by subclasses
    def encode_images(self, batch: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def pair_logits(self, images: Any, texts: Any) -> torch.Tensor:
        raise NotImplementedError

    def matrix_logits(self, images: Any, texts: Any) -> torch.Tensor:
        raise NotImplementedError

    def text_logits(self, a: Any, b: Any) -> torch.Tensor:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Any]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]

    def load_state_tensors(self, tensors: dict[str, Any]) -> None:
        missing, unexpected = self.load_state_dict(tensors, strict=False)  # type: ignore[attr-defined]
        if missing or unexpected:
            raise InputError(f"checkpoint does not fit head {self.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def config_of(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON-able constructor arguments (tuples -> lists)."""
    return config.to_dict(cfg)


def make_config(cls: type, name: str, kwargs: dict[str, Any]) -> Any:
    """Build a head's config dataclass; unknown keys and mistyped scalars are an error listing the known ones."""
    return config.from_dict(cls, kwargs, f"head {name!r}")


def seed_from(name: str, cfg: dict[str, Any]) -> int:
    """A stable init seed from the head's name and config (same config => same initial weights)."""
    blob = json.dumps({"name": name, **cfg}, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


# ---- registry ------------------------------------------------------------------------------------
HEADS: Registry[Callable[..., Head]] = Registry("head")


def register_head(name: str, about: str = "", **defaults: Any) -> Callable[[type[Head]], type[Head]]:
    """Register a head class under `name` (its first name becomes the class's `name`)."""
    def wrap(cls: type[Head]) -> type[Head]:
        if "name" not in cls.__dict__:
            cls.name = name
        register_variant(name, cls, about or (cls.__doc__ or "").strip().split("\n")[0], **defaults)
        return cls
    return wrap


def register_variant(name: str, cls: type[Head], about: str, **defaults: Any) -> None:
    """A registry entry that is `cls` with other defaults (e.g. another token layer, a smaller width)."""
    def factory(**kwargs: Any) -> Head:
        head = cls(**{**defaults, **kwargs})
        head.name = name  # the variant's own stable name (instance attribute shadows the class's)
        return head

    HEADS.register(name, factory, about=about, trainable=bool(cls.trainable), module=cls.__module__)


def list_heads(**where: Any) -> list[str]:
    """Registered heads; `list_heads(trainable=True)` without building any."""
    return HEADS.names(**where)


def describe_head(name: str) -> str:
    return HEADS.meta(name)["about"]


def create_head(name: str, **kwargs: Any) -> Head:
    return HEADS.create(name, **kwargs)
