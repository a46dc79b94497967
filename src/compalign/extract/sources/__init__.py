"""Data sources: each reads one on-disk format into a Plan (unique images, unique texts, items)."""

from . import aro, bivlc, karpathy, pairs, sugarcrepe, webdataset, winoground  # noqa: F401  (registers the sources)
from .base import ImageRef, Plan, SourceError, content_key, list_sources, plan_source, text_key
from .plan_cache import PlanCache, cache_path

__all__ = ["ImageRef", "Plan", "PlanCache", "SourceError", "cache_path", "content_key", "list_sources", "plan_source",
           "text_key"]
