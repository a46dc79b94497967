"""What this process may use of its machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (a Slurm job's, a `taskset`'s), not the machine's
    count, where the OS has one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes_here() -> int:
    """The processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE (its ranks here), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cores_each() -> int:
    """This process's share of the cores it may use: torchrun's ranks on one machine see the same cores (it binds
    none by default), so K ranks each starting a worker per core would run K times as many as there are."""
    return max(1, usable_cores() // processes_here())
