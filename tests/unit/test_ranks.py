"""The torchrun plan (extract/ranks.py) and the lock its ranks share (extract/target.py), in one process."""

from __future__ import annotations

import os

import pytest

from compalign.cache.location import location
from compalign.cache.store import CacheError
from compalign.core import host
from compalign.extract.config import ExtractConfig
from compalign.extract.ranks import Job, job_progress, join_job, rank_zero_warns
from compalign.extract.target import writer_lock


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_every_pending_shard_has_exactly_one_rank_whatever_is_done(world):
    todo = [0, 2, 3, 7, 8, 9, 13]  # pending after some earlier run
    shares = [Job(r, world).mine(todo) for r in range(world)]
    assert sorted(s for share in shares for s in share) == todo
    # ownership depends on the shard alone: a rank that lists the markers later (fewer pending) keeps a subset
    assert all(set(Job(r, world).mine(todo[3:])) <= set(shares[r]) for r in range(world))
    assert shares[0] == [s for s in todo if s % world == 0]


def test_outside_torchrun_the_job_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    job = join_job()
    assert (job.rank, job.world) == (0, 1) and job.mine([4, 5]) == [4, 5] and job.total(7) == 7
    job.barrier()  # nothing to wait for


def test_rank_zero_progress_counts_every_ranks_done_shards(tmp_path):
    marks = tmp_path / "s.zarr" / ".done" / "images"
    marks.mkdir(parents=True)
    seen = []
    report = job_progress(lambda *a: seen.append(a), location(tmp_path / "s.zarr"), shard_rows=4, every=0)
    report("images", 0, 10)  # shards 0-1 of 4 rows, shard 2 of 2 rows; none done yet
    (marks / "000001").touch()  # rank 1 finished its shard
    report("images", 4, 10)
    (marks / "000002").touch()
    (marks / "000000").touch()
    report("images", 10, 10)
    assert seen == [("images", 0, 10), ("images", 4, 10), ("images", 10, 10)]
    throttled = job_progress(lambda *a: seen.append(a), location(tmp_path / "s.zarr"), shard_rows=4, every=3600)
    seen.clear()
    throttled("images", 0, 10)
    throttled("images", 4, 10)  # within the interval: no listing, no report
    throttled("images", 10, 10)  # rank 0's last report always looks
    assert seen == [("images", 10, 10), ("images", 10, 10)]


def test_the_ranks_of_a_job_share_the_lock_and_keep_every_other_writer_out(tmp_path):
    out = tmp_path / "s.zarr"
    with writer_lock(out) as rank0:  # exclusive while the store is made: not even a rank of the job gets in
        with pytest.raises(CacheError, match=f"another compalign extract \\(pid {os.getpid()}\\)"):
            with writer_lock(out, take=False) as rank1:
                rank1.take(shared=True)
        rank0.take(shared=True)  # the store is ready: shared from now on
        with writer_lock(out, take=False) as rank1:
            rank1.take(shared=True)
            with pytest.raises(CacheError, match="another compalign extract"):
                with writer_lock(out):  # a second extraction
                    pass
            rank0.close()  # rank 0 dies; rank 1 still writes, so the store stays locked
            with pytest.raises(CacheError, match="another compalign extract"):
                with writer_lock(out):
                    pass
        with writer_lock(out):  # every rank gone: the next extraction may start
            pass


def test_only_rank_zero_logs_what_planning_skipped(pairs_dir, caplog):
    import json
    import logging

    from compalign.extract.sources import plan_source

    with (pairs_dir / "pairs.jsonl").open("a") as f:
        f.write(json.dumps({"image": "img/000.png"}) + "\n")  # no caption: a skipped row, a warning
    said = {}
    for rank in (0, 1):
        caplog.clear()
        with caplog.at_level(logging.WARNING), rank_zero_warns(Job(rank, 2)):
            plan = plan_source("pairs", str(pairs_dir))
            for p in plan.problems:
                logging.getLogger("compalign.extract.runner").warning("%s", p)
        said[rank] = [r.getMessage() for r in caplog.records]
    assert plan.problems and all(p in said[0] for p in plan.problems)
    assert said[1] == []
    assert logging.getLogger("compalign.extract").level == logging.NOTSET  # rank 1's silence ends with the block


def test_workers_auto_splits_the_cores_among_the_ranks_on_this_machine(monkeypatch):
    """torchrun binds no cores by default: 8 ranks each starting cores - 1 workers would run 8x the cores."""
    monkeypatch.setattr(host, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)

    def auto() -> int:
        return ExtractConfig(model="tiny", data="pairs", root=".", out=".").workers  # type: ignore[return-value]

    assert auto() == 15
    for ranks, want in (("1", 15), ("2", 7), ("4", 3), ("8", 1), ("16", 1), ("32", 1), ("", 15), ("two", 15)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert auto() == want, ranks
    assert ExtractConfig(model="tiny", data="pairs", root=".", out=".", workers=6).workers == 6  # a number is kept
