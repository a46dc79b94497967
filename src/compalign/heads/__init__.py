"""Alignment heads: registry names are stable; every head scores aligned pairs and full matrices."""

from . import global_head  # noqa: F401  (registers `global`)
from .base import Head, create_head, list_heads, register_head

__all__ = ["Head", "create_head", "list_heads", "register_head"]
