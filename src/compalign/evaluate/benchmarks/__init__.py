"""Benchmarks: each turns a cache's items + a head into metrics and per-item outcomes."""

from . import aro, bivlc, retrieval, sugarcrepe, sugarcrepe_pp, winoground  # noqa: F401  (registers them)
from .base import Benchmark, BenchResult, create_benchmark, list_benchmarks

__all__ = ["BenchResult", "Benchmark", "create_benchmark", "list_benchmarks"]
