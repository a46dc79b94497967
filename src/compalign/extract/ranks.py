"""Several processes on one store (`torchrun`): which rank writes which shard, and when the ranks wait.

The plan is static and decided before any work: shard `s` of each table belongs to rank `s % world`. Ownership
is a function of the shard number alone, so the ranks never need to agree on which shards are already done:
each one lists the done markers whenever it likes (another rank may be adding markers meanwhile) and keeps the
pending shards it owns. No shard can have two writers in one job, and a shard with no marker is always owned
by someone. Every rank loads the backbone and writes its own whole shards with the usual done-marker contract,
so a rank that dies loses only its unfinished shards, and a rerun with any world size (1 included) finishes
exactly those: a resumed store is the store of one process, byte for byte.

The order of a job:
1. rank 0 checks `--out` and takes the store's writer lock, exclusive, as a single process would;
2. rank 0 plans the source first; the others wait, then replay its planning cache (runner._plan), so a first run
   reads each image once, not once per rank (not where the ranks span machines and the store is in a bucket:
   that cache is a file per machine, and they plan at once);
3. rank 0 opens or creates the store (resume checks, `--overwrite`, damaged shards, stale `*.partial` files),
   then turns its lock shared; the others wait at a barrier meanwhile, then take the shared lock too;
4. every rank encodes its own shards; a final barrier; rank 0 alone reads the store for the summary.

Why a shared lock, and why it is safe: the lock is what refuses a second extraction on the same store, and an
exclusive lock would refuse this job's own ranks. While rank 0 creates or repairs the store it holds the lock
exclusively, so no other writer (a single process, or another job's rank 0) can be inside the store, and no
rank of this job writes yet (they are at the barrier). From then on every rank holds it shared until it exits:
a shared lock is granted only to a process that asks for a *shared* one, and only rank k > 0 of a job does,
after its own rank 0 got the exclusive lock first; everyone else asks for the exclusive lock and is refused
while any rank of the job is alive, even after rank 0 itself died. The one instant rank 0 turns its lock shared
(flock drops the exclusive lock first) can let a starting writer win the lock: then rank 0 is refused, exits
before any rank wrote, and torchrun stops the job. Across machines the store must be on a filesystem all nodes
share with working flock(2) (NFS does; Lustre with `-o flock`); otherwise only the ranks of one node see each
other's lock. A store in a bucket has a lock object instead, taken and renewed by rank 0 for the whole job
(object_lock.py): it is one for all nodes and names every rank's process, so a killed job's lock is taken over
at once by the next run on its machine once all its ranks are gone; a job that spanned machines leaves it to expire.

Without the torchrun environment (or with one process) the job is rank 0 of 1 and nothing here does anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..cache.location import Location
from ..cache.store import done_shards
from ..core.training import init_distributed
from .object_lock import this_process

# A barrier waits for the slowest rank (rank 0 verifying every done shard of a large store, a rank with more
# shards left): a short timeout would kill a healthy job. A dead rank is torchrun's to notice (it stops the
# others at once), not the barrier's.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Job:
    rank: int = 0
    world: int = 1
    group: Any = None  # a gloo process group for the barriers (extraction sends no tensors, so never nccl)
    processes: list[dict[str, Any]] | None = None  # this_process() of every rank (None: one of them has none)

    def mine(self, todo: list[int]) -> list[int]:
        """The pending shards of `todo` this rank writes."""
        return [s for s in todo if s % self.world == self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def total(self, n: int) -> int:
        """`n` summed over the ranks (every rank calls it)."""
        if self.world == 1:
            return n
        import torch
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, group=self.group)
        return int(t.item())


def join_job() -> Job:
    """This process's rank in a torchrun job (init_process_group from RANK, WORLD_SIZE, MASTER_ADDR, ...:
    nccl where CUDA is there, gloo otherwise; the device is cuda:LOCAL_RANK, see core.device); rank 0 of 1
    without one."""
    rank, world = init_distributed()
    me = this_process()
    if world == 1:
        return Job(processes=None if me is None else [me])
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    every: list[Any] = [None] * world  # rank 0's lock names them all: any rank may still be writing when it dies
    dist.all_gather_object(every, me, group=group)
    return Job(rank, world, group, None if None in every else every)


@contextmanager
def rank_zero_warns(job: Job) -> Iterator[None]:
    """Planning's warnings (skipped rows, a damaged planning cache) from rank 0 alone: every rank plans the same
    source, and K copies of each warning would bury the one that matters. Errors still come from every rank."""
    if job.rank == 0:
        yield
        return
    logger = logging.getLogger("compalign.extract")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def job_progress(progress: Callable[[str, int, int], None], out: Location, shard_rows: int,
                 every: float = 2.0) -> Callable[[str, int, int], None]:
    """Rank 0's progress bars count the whole job: a table's rows done are the rows of its shards with a done
    marker, whichever rank wrote them. Rank 0's own reports (one per batch) only say when to look; the markers
    are listed at most once per `every` seconds (a listing per batch would be a LIST request per batch on
    object storage). So the bars move a shard at a time, and reach the end when the last rank's last shard is
    durable, not when rank 0's is."""
    last: dict[str, tuple[float, int]] = {}

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage in last and now - last[stage][0] < every and done < total:
            return
        marked = done_shards(out, stage)  # type: ignore[arg-type]
        rows = sum(min(shard_rows, total - s * shard_rows) for s in marked)
        rows = max(rows, last.get(stage, (0.0, 0))[1])  # a listing never takes the bar back
        last[stage] = (now, rows)
        progress(stage, rows, total)

    return report
