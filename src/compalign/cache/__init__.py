"""The feature cache: one Zarr v3 store per (backbone, data source). See DESIGN.md, "The cache contract"."""

from .reader import CacheReader, open_cache
from .store import SCHEMA, CacheError

__all__ = ["SCHEMA", "CacheError", "CacheReader", "open_cache"]
