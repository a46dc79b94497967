"""Extraction: backbones, data sources and the runner that fills a cache."""
