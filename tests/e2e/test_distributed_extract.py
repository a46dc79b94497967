"""`torchrun` extraction (gloo, 2 CPU ranks): the same store as one process, and a killed rank costs only its
unfinished shards.

Stores are compared file by file, byte for byte: every chunk, every done marker (rows, file sizes, sha256), every
array's metadata. The one exception is the root `zarr.json`, whose `created` attr is the creation time (two
single-process runs differ there too); the rest of its attributes are compared as JSON.
Both sides run with OMP_NUM_THREADS=1 (torchrun's own default for several ranks): the claim is that splitting
the shards over ranks changes nothing, not that CPU kernels give the same bits at every thread count.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BUCKET, make_images, store_files

SRC = str(Path(__file__).resolve().parents[2] / "src")
LEASE_S = 3600  # the writer lock's lease in a bucket (object_lock.py): a killed job's lock is taken over because its
# processes are gone, never because it expired
N, SHARD = 128, 8
TOTAL = 2 * N // SHARD  # text + image shards
EXTRACT = ["-m", "compalign.cli.main", "extract", "--model", "tiny", "--data", "pairs", "--device", "cpu",
           "--workers", "0", "--batch-size", "4", "--shard-rows", str(SHARD)]


def _env() -> dict[str, str]:  # when the command starts: the s3 fixture sets the endpoint in os.environ
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "COMPALIGN_LOCK_LEASE_S": str(LEASE_S)}


def _cmd(root: Path, out: Path | str, ranks: int) -> list[str]:
    args = [*EXTRACT, "--root", str(root), "--out", str(out)]
    if ranks == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *args]


def _extract(root: Path, out: Path | str, ranks: int, rc: int = 0) -> str:
    """What the run printed (rank 0's summary, or with `rc` 2 its error), one space between words."""
    proc = subprocess.run(_cmd(root, out, ranks), capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode == rc, proc.stderr[-3000:]
    return " ".join((proc.stdout + proc.stderr).split())


def _start(root: Path, out: Path | str, ranks: int) -> subprocess.Popen:
    return subprocess.Popen(_cmd(root, out, ranks), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)


def _n_done(path: Path | str, fs=None) -> int:
    return len(_done(path, "texts", fs)) + len(_done(path, "images", fs))


def _done(path: Path | str, kind: str, fs=None) -> set[int]:
    """The done shards of a local store, or of the store under the prefix `path` of the fsspec filesystem `fs`."""
    if fs is not None:
        fs.invalidate_cache()
        names = [k.rsplit("/", 1)[-1] for k in fs.find(f"{path}/.done/{kind}")]
    else:
        folder = Path(path) / ".done" / kind
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
    return {int(n) for n in names if n.isdigit()}


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun worker `rank` (a child of the launcher process whose environment says RANK=rank)."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                if f"RANK={rank}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    return int(d.name)
        except OSError:  # a process that ended while we looked
            continue
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """(data root, the store one process extracts from it)."""
    tmp = tmp_path_factory.mktemp("dist")
    root = tmp / "data"
    names = [f"{i:03d}.png" for i in range(N)]
    make_images(root / "img", names, size=(48, 48))
    rows = [{"image": f"img/{n}", "caption": f"caption number {i} " + "word " * (i % 9)} for i, n in enumerate(names)]
    rows[13]["image"] = "img/missing.png"  # a failed row, in image shard 1: rank 1 writes it, rank 0 reports it
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _extract(root, tmp / "ref.zarr", ranks=1)
    return root, store_files(tmp / "ref.zarr", drop=("created",))


def test_two_ranks_write_the_store_of_one_process(world, tmp_path):
    root, ref = world
    out = tmp_path / "two.zarr"
    said = _extract(root, out, ranks=2)
    assert store_files(out, drop=("created",)) == ref
    # rank 0 alone prints, once, for the whole job, after every rank finished (the failure is rank 1's row)
    assert said.count("wrote ") == 1 and f"{TOTAL} shards written, 0 already done" in said, said
    assert said.count("image failed") == 1 and "missing.png" in said, said


def test_two_nodes_of_one_rank_each_write_the_store_of_one_process(world, tmp_path):
    """`torchrun --nnodes 2 --node_rank K` as the README runs it on two machines, here both on this one: each node's
    rank is its LOCAL_RANK 0, and only RANK tells them apart (a rank that took its shards or its share of the lock
    by LOCAL_RANK would write node 0's shards twice and node 1's never)."""
    root, ref = world
    out = tmp_path / "nodes.zarr"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(k),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *EXTRACT, "--root", str(root), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
             for k in (0, 1)]
    said = [" ".join(n.communicate(timeout=240)[0].split()) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], said
    assert store_files(out, drop=("created",)) == ref
    assert f"{TOTAL} shards written, 0 already done" in said[0] and "wrote " not in said[1], said


def test_a_killed_rank_loses_only_its_unfinished_shards(world, tmp_path):
    root, ref = world
    out = tmp_path / "killed.zarr"
    p = _start(root, out, ranks=2)
    try:
        # Rank 1 dies (SIGKILL) once each rank has finished an image shard: what rank 1 finished stays done.
        while p.poll() is None and {s % 2 for s in _done(out, "images")} != {0, 1}:
            time.sleep(0.005)
        victim = _rank_pid(p.pid, 1)
        assert p.poll() is None and victim is not None, "the run finished before it could be killed"
        os.kill(victim, signal.SIGKILL)
        assert p.wait(timeout=60) != 0  # torchrun stops rank 0 too, and says the job failed
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    texts, images = _done(out, "texts"), _done(out, "images")
    assert {s % 2 for s in images} == {0, 1} and 0 < _n_done(out) < TOTAL, (texts, images)
    # Any world size resumes: one process goes on (and is killed after a shard more), then two ranks finish,
    # writing exactly the shards that were left; the store is the one-process reference.
    before = _n_done(out)
    p = _start(root, out, ranks=1)
    while p.poll() is None and _n_done(out) <= before:
        time.sleep(0.005)
    assert p.poll() is None, "the resumed run finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    left = TOTAL - _n_done(out)
    assert left > 0 and texts <= _done(out, "texts") and images <= _done(out, "images")
    said = _extract(root, out, ranks=2)
    assert re.search(rf"\b{left} shards written, {TOTAL - left} already done", said), said
    assert store_files(out, drop=("created",)) == ref


def test_two_ranks_write_to_a_bucket_the_store_of_one_process_and_a_killed_jobs_lock_is_taken_over(world, s3):
    root, ref = world
    prefix = f"{BUCKET}/dist/two.zarr"
    _extract(root, f"s3://{prefix}", ranks=2)
    assert store_files(prefix, drop=("created",), fs=s3) == ref
    assert not s3.exists(f"{BUCKET}/dist/.two.zarr.lock")

    # Rank 0, which holds the job's lock object, dies (SIGKILL) with no chance to delete it; torchrun stops rank 1.
    prefix, key = f"{BUCKET}/dist/killed.zarr", f"{BUCKET}/dist/.killed.zarr.lock"
    p = _start(root, f"s3://{prefix}", ranks=2)
    try:
        # Once each rank has finished a text shard: the image stage, all of it still to come, outlasts the kill
        # (writes to the bucket are quick enough that a whole job can end between two looks at its markers).
        while p.poll() is None and {s % 2 for s in _done(prefix, "texts", s3)} != {0, 1}:
            time.sleep(0.02)
        ranks = [_rank_pid(p.pid, r) for r in (0, 1)]
        assert p.poll() is None and None not in ranks, "the run finished before it could be killed"
        os.kill(ranks[0], signal.SIGKILL)
        assert p.wait(timeout=60) != 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    before = _n_done(prefix, s3)
    assert 0 < before < TOTAL and s3.exists(key)
    # Nobody renews the lock now (rank 0 alone did), and it names both ranks: the next run on this machine takes it
    # over as soon as both are gone (rank 1 may still be writing when rank 0 dies), not an hour's lease later.
    assert [q["pid"] for q in json.loads(s3.cat_file(key))["processes"]] == ranks
    _wait_gone(ranks)
    said = _extract(root, f"s3://{prefix}", ranks=2)
    assert (f"took over the lock s3://{key} of a run that is gone" in said
            and f"its processes have exited (pid {ranks[0]}, {ranks[1]} on this machine)" in said), said
    assert re.search(rf"\b{TOTAL - before} shards written, {before} already done", said), said
    assert store_files(prefix, drop=("created",), fs=s3) == ref


def _wait_gone(pids: list[int], within: float = 30.0) -> None:
    """Until no pid is a live process (gone, or a zombie): torchrun's agent stops its ranks as it exits."""
    end = time.monotonic() + within
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < end, f"processes {pids} still run {within:.0f} s after their job ended"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_killed_run_of_one_process_in_a_bucket_is_resumed_at_once_on_its_machine(world, s3):
    """One process names itself in its lock object (object_lock.py): killed (SIGKILL, the OOM killer), its lock
    is taken over by the next run on the same machine at once, though its lease has most of an hour to run."""
    root, ref = world
    prefix, key = f"{BUCKET}/dist/one.zarr", f"{BUCKET}/dist/.one.zarr.lock"
    p = _start(root, f"s3://{prefix}", ranks=1)
    try:
        while p.poll() is None and len(_done(prefix, "texts", s3)) < 2:
            time.sleep(0.02)
        assert p.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    held = json.loads(s3.cat_file(key))
    assert [q["pid"] for q in held["processes"]] == [p.pid] and held["lease_s"] == LEASE_S
    before = _n_done(prefix, s3)
    assert 0 < before < TOTAL
    said = _extract(root, f"s3://{prefix}", ranks=1)
    assert (f"took over the lock s3://{key} of a run that is gone (pid {p.pid} on " in said
            and f"its process has exited (pid {p.pid} on this machine)" in said), said
    assert re.search(rf"\b{TOTAL - before} shards written, {before} already done", said), said
    assert store_files(prefix, drop=("created",), fs=s3) == ref
    assert not s3.exists(key)
