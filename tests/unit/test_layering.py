"""Imports run one way (DESIGN.md): core <- cache <- heads <- evaluate; extract and shapes use core and cache; cli on top.

`text` (caption segments) sits on core beside cache: every part but cache and core may use it.

Every import in the package is read from the source (module-level and function-local alike), so an arrow
that runs back up fails here instead of waiting for review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "compalign"
ALLOWED = {  # part -> the parts it may import (besides itself and the package root's __version__)
    "core": set(),
    "text": {"core"},  # caption segments: plain text rules, usable by every part above core but cache
    "cache": {"core"},
    "heads": {"core", "cache", "text"},
    "evaluate": {"core", "cache", "heads", "text"},
    "extract": {"core", "cache", "text"},
    "shapes": {"core", "cache", "text"},
    "cli": {"core", "cache", "heads", "evaluate", "extract", "shapes", "text"},
}


def _imports(source: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, absolute module) of every compalign import in `source`, a module of `package` ('compalign', 'heads')."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("compalign")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            if mod.startswith("compalign"):
                out.append((node.lineno, mod))
    return out


def test_every_import_runs_down_the_layers():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if len(rel.parts) == 1:
            continue  # the package root holds only __version__
        part = rel.parts[0]
        package = path.relative_to(PKG.parent).parts[:-1]  # ('compalign', 'heads') for heads/base.py
        for line, mod in _imports(path.read_text(encoding="utf-8"), package):
            target = mod.split(".")[1] if "." in mod else None
            if target is None or target == part:
                continue
            if target not in ALLOWED[part]:
                wrong.append(f"{rel}:{line} imports {mod} ({part} may use {sorted(ALLOWED[part]) or 'nothing'})")
    assert wrong == []


def test_the_check_sees_relative_and_local_imports():
    # `from ..evaluate.scoring import x` inside a function of heads/ must read as compalign.evaluate.scoring.
    src = "import os\ndef f():\n    from ..evaluate.scoring import score_pairs\n    from . import base\nimport compalign.cli\n"
    got = sorted(_imports(src, ("compalign", "heads")))
    assert got == [(3, "compalign.evaluate.scoring"), (4, "compalign.heads"), (5, "compalign.cli")]
