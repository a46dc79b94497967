"""The one device resolver: `auto` picks CUDA when it is there; asking for a GPU that is not there is refused."""

from __future__ import annotations

import os

import torch

from .errors import CompalignError


class DeviceError(CompalignError, RuntimeError):
    """The device asked for is not on this machine."""


def resolve_device(name: str) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N`; a bare `cuda` under torchrun is this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} was asked for but no CUDA device is visible; use --device cpu (or auto)")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    elif name != "cpu":
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)
