"""Evaluation: metrics (pure functions), benchmarks (a registry), scoring from the cache alone.

This package never imports `compalign.extract`: scoring needs only the cache.
"""
