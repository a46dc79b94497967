"""What one extraction run is asked to do (`compalign extract`'s options, checked once).

Its own file because two parts read it: the runner (batch size, device, workers) and the store setup,
which records the settings that change stored values and refuses a resume that does not match them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..cache.store import CacheError, token_codec_level
from ..core import InputError
from ..core.host import cores_each
from .crops import canonical_spec


@dataclass
class ExtractConfig:
    model: str  # preset, open_clip name, `local-dir:` folder
    data: str  # data source kind: pairs | sugarcrepe | bivlc | karpathy | webdataset | img2dataset | ...
    root: str  # where the source lives
    out: str  # the store to create or resume: a folder, or an object-storage URL (s3://bucket/path.zarr)
    pretrained: str | None = None  # open_clip pretrained tag (presets bring their own)
    batch_size: int = 64  # images / captions per forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | Literal["auto"] = "auto"  # decoding processes (0 = in this process; auto = cores - 1 per rank, >= 1)
    decode: Literal["exact", "fast", "gpu"] = "exact"  # exact: the checkpoint's preprocess; fast: JPEG draft first;
    #   gpu: nvjpeg decode + resize/crop/normalise on the CUDA device (both change pixels slightly: stored in attrs)
    writers: int = 2  # shard writer threads, each writing whole shards
    token_codec: str = "none"  # codec of the float16 token arrays: none | zstd:LEVEL (benchmarks/patch_codec.py)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype for the forward pass
    layers: list[int] = field(default_factory=lambda: [-1])  # token layers kept; -1 = final
    shard_rows: int = 256  # rows per shard (the unit of writing and of resume)
    chunk_rows: int = 16  # rows per inner chunk of token arrays (the unit of a random read)
    overwrite: bool = False  # start again instead of resuming
    seed: int = 0  # for random-init backbones
    exif_transpose: bool = False  # rotate by the EXIF orientation tag (off: open_clip's own pipeline ignores it too)
    split: str | None = None  # the split to read, for sources that have splits (karpathy: test by default)
    segments: Literal["none", "rules"] = "none"  # caption segments encoded beside the captions (extract.segments)
    crops: str = "none"  # boxes cropped and encoded beside each image: none | grid | 1,2+halves | oracle | grid+oracle
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for --out / --root URLs (endpoint_url=...)
    plan_cache: bool = True  # remember image hashes by (path, size, mtime) beside the store (sources/plan_cache.py)
    root_storage_options: dict[str, Any] | None = None  # for a --root URL alone (None: storage_options, as --out's)

    @property
    def root_options(self) -> dict[str, Any]:
        """The fsspec options a --root URL is read with: its own, else those of --out."""
        return self.storage_options if self.root_storage_options is None else self.root_storage_options

    def __post_init__(self) -> None:
        if -1 not in self.layers:
            self.layers = [-1, *self.layers]
        self.layers = sorted(set(self.layers), key=lambda x: (x != -1, -x))
        if self.workers == "auto":
            self.workers = max(1, cores_each() - 1)  # this rank's share of the cores, one left to its own process
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--shard-rows", self.shard_rows, 1),
                                   ("--workers", self.workers, 0), ("--writers", self.writers, 1),
                                   ("chunk_rows", self.chunk_rows, 1)):
            if value < least:
                raise InputError(f"{flag} must be at least {least} (got {value})")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"--precision is fp32, bf16 or fp16 (got {self.precision!r})")
        if self.decode not in ("exact", "fast", "gpu"):
            raise InputError(f"--decode is exact, fast or gpu (got {self.decode!r})")
        if self.decode == "gpu" and self.crops != "none":
            raise InputError("--decode gpu does not cut --crops (crops are cut from the CPU-decoded image); "
                             "use --decode exact or fast with --crops")
        try:
            token_codec_level(self.token_codec)  # refuses a malformed codec now
        except CacheError as e:
            raise InputError(str(e)) from None
        if self.segments not in ("none", "rules"):
            raise InputError(f"--segments is none or rules (got {self.segments!r})")
        if self.crops != "none":
            self.crops = canonical_spec(self.crops)  # refuses a malformed SPEC before anything is loaded

