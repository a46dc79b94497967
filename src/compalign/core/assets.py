"""Files the package ships, named once: the tiny backbone's open_clip config and its trained checkpoint.

They live beside the code that makes them (`extract/model_configs/`, `shapes/backbone/`); extraction and
the world's pretraining both need them, so the paths are here rather than one part reaching into the other.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
MODEL_CONFIG_DIR = PACKAGE / "extract" / "model_configs"  # open_clip JSON configs (compalign-tiny)
TINY_CHECKPOINT = PACKAGE / "shapes" / "backbone"  # `make backbone` writes it; the `tiny` preset reads it
