"""core.memory: with the heap policy, large blocks come from the heap and stay mapped once freed."""

import ctypes
import subprocess
import sys

import pytest

# In a fresh process: allocate and touch 64 MiB, then free it; print malloc's own account at both moments
# (glibc's mallinfo2: hblkhd = bytes in separately mmapped blocks, fordblks = free bytes kept in the heap).
PROBE = """
import ctypes, sys
import numpy as np
if sys.argv[1] == "keep":
    from compalign.core.memory import keep_freed_memory
    assert keep_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
info = ctypes.CDLL("libc.so.6").mallinfo2
info.restype = Info
a = np.empty(64 << 20, np.uint8)
a.fill(1)
live = info()
del a
freed = info()
print(live.hblkhd >> 20, freed.fordblks >> 20)
"""


def _account(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    mapped, kept = out.stdout.split()
    return int(mapped), int(kept)


def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33: no mallinfo2 to read malloc's account (the policy does nothing off glibc)")
    mapped, kept = _account("default")
    assert mapped >= 64 and kept < 64  # glibc's default: a 64 MiB block is its own mmap, unmapped on free
    mapped, kept = _account("keep")
    assert mapped == 0 and kept >= 64  # the policy: from the heap, and still mapped for the next allocation


@pytest.mark.parametrize("module, args", [("compalign.cli.main", ["cache", "info", "--help"]),
                                          ("compalign.cli.heads", ["list"])])
def test_every_command_runs_under_the_policy(monkeypatch, module, args):
    import importlib

    from typer.testing import CliRunner

    import compalign.core.memory as memory

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    result = CliRunner().invoke(importlib.import_module(module).app, args)
    assert result.exit_code == 0, result.output
    assert calls == [1]
