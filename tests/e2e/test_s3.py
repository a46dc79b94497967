"""Object storage: extract to s3://, train and score from it, and get what the same run gives on a local folder.

An S3 server runs in this process (moto's server mode on 127.0.0.1, a free port); compalign reaches it the
standard way, through AWS_ENDPOINT_URL and the AWS_* credentials, as it would reach AWS or MinIO.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import BUCKET, free_port, make_images, mini_sugarcrepe, store_files
from safetensors.numpy import load_file
from typer.testing import CliRunner

from compalign.cache.location import Location, location
from compalign.cache.reader import CacheReader
from compalign.cache.store import OK, CacheError
from compalign.cli.heads import app as heads_app
from compalign.cli.main import app
from compalign.extract.sources import PlanCache, cache_path, plan_source


def _ok(res) -> str:
    assert res.exit_code == 0, res.output
    return res.output


EXTRACT = ["extract", "--model", "tiny", "--data", "sugarcrepe", "--workers", "0", "--shard-rows", "4"]


def test_extract_train_score_on_s3_equal_a_local_run(s3, tmp_path, monkeypatch):
    root = mini_sugarcrepe(tmp_path / "sc", n=8)
    local, url = tmp_path / "sc.zarr", f"s3://{BUCKET}/caches/sc.zarr"
    for out in (str(local), url):
        _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", out]))

    # The same store: every object in the bucket is the local file of that name, byte for byte, except the root
    # attrs' creation time.
    keys = sorted(k[len(f"{BUCKET}/caches/sc.zarr/"):] for k in s3.find(f"{BUCKET}/caches/sc.zarr"))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert keys == files and len(keys) > 40
    for k in keys:
        if k != "zarr.json":
            assert s3.cat_file(f"{BUCKET}/caches/sc.zarr/{k}") == (local / k).read_bytes(), k
    remote_attrs = json.loads(s3.cat_file(f"{BUCKET}/caches/sc.zarr/zarr.json"))["attributes"]
    local_attrs = json.loads((local / "zarr.json").read_text())["attributes"]
    assert {**remote_attrs, "created": 0} == {**local_attrs, "created": 0}
    assert not s3.exists(f"{BUCKET}/caches/.sc.zarr.lock")  # the run released its lock

    # Resume rewrites a shard whose object is gone (and only that one); --verify then finds every shard intact.
    lost = f"{BUCKET}/caches/sc.zarr/images/patches/c/1/0/0"
    good = s3.cat_file(lost)
    s3.rm_file(lost)
    said = " ".join(_ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url])).split())
    assert "images shard 1 was damaged (images/patches/c/1/0/0 is missing): rewritten" in said
    assert "1 shards written" in said and s3.cat_file(lost) == good
    said = " ".join(_ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url, "--overwrite"])).split())
    assert f"replaced the store {url} ({len(keys)} files," in said and s3.cat_file(lost) == good
    assert "verified: every done shard" in _ok(CliRunner().invoke(app, ["cache", "info", url, "--verify"]))
    # The endpoint as a storage option instead of the environment
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    with monkeypatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL")
        info = _ok(CliRunner().invoke(app, ["cache", "info", url, "--json", "--storage-option", f"endpoint_url={endpoint}"]))
    assert json.loads(info)["counts"]["image_shards_done"] == 2

    runs, scores = {}, {}
    for name, cache in (("local", str(local)), ("s3", url)):
        runs[name] = tmp_path / f"run-{name}"
        _ok(CliRunner().invoke(heads_app, ["train", "global_mlp_tiny", "--cache", cache, "--out", str(runs[name]),
                                           "--steps", "6", "--batch-size", "4", "--eval-every", "3", "--device", "cpu"]))
        for label, args in (("global", ["--head", "global"]), ("mlp", ["--checkpoint", str(runs[name])])):
            out = tmp_path / f"{name}-{label}.json"
            _ok(CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", cache, *args,
                                               "--bootstrap", "50", "--json", str(out)]))
            scores[name, label] = json.loads(out.read_text())
    a, b = load_file(str(runs["local"] / "head.safetensors")), load_file(str(runs["s3"] / "head.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # the same weights, exactly
    assert (runs["local"] / "log.jsonl").read_text() == (runs["s3"] / "log.jsonl").read_text()
    for label in ("global", "mlp"):
        here, there = scores["local", label], scores["s3", label]
        assert there["cache"] == url and here["items"]
        for k in ("metrics", "intervals", "items", "counts"):
            assert here[k] == there[k], (label, k)


def test_the_reader_lists_each_array_once_and_names_a_lost_chunk(s3, tmp_path, monkeypatch):
    from compalign.cache import CacheError, CacheReader

    root = mini_sugarcrepe(tmp_path / "sc", n=8)
    url = f"s3://{BUCKET}/caches/listed.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url]))
    heads = []
    real = Location.is_file
    monkeypatch.setattr(Location, "is_file", lambda self: heads.append(str(self)) or real(self))
    r = CacheReader(url)
    n = r.layout.n_images
    assert r.layout.shard_rows < n  # several shards
    assert r.read("images", "patches", np.arange(n)).shape[0] == n
    assert heads == []  # every shard's chunk was in the one listing of images/patches/c
    s3.rm_file(f"{BUCKET}/caches/listed.zarr/images/prefix/c/1/0/0")
    with pytest.raises(CacheError, match=r"images shard 1 is marked done but its chunk file is gone "
                                         r"\(images/prefix/c/1/0/0 is missing\)"):
        CacheReader(url).read("images", "prefix", np.arange(n))


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert text.startswith("error:") and "\n" not in text and "Traceback" not in text, text
    return text


def test_a_missing_bucket_or_a_bad_url_is_one_line_naming_the_url_and_the_fix(s3, tmp_path):
    url = "s3://no-such-bucket/sc.zarr"
    said = _one_line_error(CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", url]))
    assert url in said and "the bucket 'no-such-bucket' does not exist" in said and "aws s3 mb s3://no-such-bucket" in said
    root = mini_sugarcrepe(tmp_path / "sc", n=2)
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url]))
    assert url in said and "aws s3 mb s3://no-such-bucket" in said

    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", "s3://"]))
    assert "s3:// names no bucket; pass s3://BUCKET/PATH.zarr" in said
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", f"s3://{BUCKET}"]))
    assert f"--out s3://{BUCKET} is a whole bucket" in said
    said = _one_line_error(CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", "s4://b/x.zarr"]))
    assert "s4://b/x.zarr: Protocol not known: s4" in said
    said = _one_line_error(CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache",
                                                          f"s3://{BUCKET}/absent.zarr"]))
    assert f"s3://{BUCKET}/absent.zarr does not exist. Create one with `compalign extract" in said
    make_images(tmp_path / "p" / "img", ["a.png"])
    (tmp_path / "p" / "pairs.jsonl").write_text(json.dumps({"image": "img/a.png", "caption": "a cat"}))
    url = _upload(s3, tmp_path / "p", "oracle/p")
    said = _one_line_error(CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "pairs", "--root", url,
                                                    "--crops", "oracle", "--out", str(tmp_path / "x")]))
    assert f"--crops oracle reads boxes.jsonl from a local --root (the synthetic world's folder), not {url}" in said


def test_a_second_writer_on_an_s3_store_is_refused_by_its_lock_object(s3, tmp_path):
    root = mini_sugarcrepe(tmp_path / "sc", n=2)
    url = f"s3://{BUCKET}/locked/sc.zarr"
    s3.pipe_file(f"{BUCKET}/locked/.sc.zarr.lock", b"pid 1 on elsewhere since 2026-01-01T00:00:00Z")
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url]))
    assert f"another compalign extract (pid 1 on elsewhere since 2026-01-01T00:00:00Z) is writing {url}" in said
    assert f"delete the lock (`aws s3 rm s3://{BUCKET}/locked/.sc.zarr.lock`)" in said
    assert not s3.exists(f"{BUCKET}/locked/sc.zarr")  # refused before anything was written


def _lock_body(lease_s: float) -> bytes:
    return json.dumps({"holder": "pid 1 on elsewhere since 2026-01-01T00:00:00Z", "lease_s": lease_s}).encode()


def test_a_lock_left_by_a_killed_run_is_taken_over_once_its_lease_has_run_out(s3, tmp_path):
    root = mini_sugarcrepe(tmp_path / "sc", n=2)
    url, lock = f"s3://{BUCKET}/stale/sc.zarr", f"{BUCKET}/stale/.sc.zarr.lock"
    s3.pipe_file(lock, _lock_body(lease_s=2))  # a run with a 2 s lease, killed just now: never renewed again
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url]))
    assert re.search(rf"another compalign extract \(pid 1 on elsewhere since 2026-01-01T00:00:00Z\) is writing {url}: "
                     rf"its lock s3://{lock} was renewed [01] s ago\. Wait for it to finish; if its run was killed, the "
                     r"lock expires [12] s from now and the next extract takes it over", said), said
    assert not s3.exists(f"{BUCKET}/stale/sc.zarr")
    time.sleep(3.2)  # the server's clock has 1 s steps: past the lease whatever the rounding
    said = " ".join(_ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url])).split())
    assert re.search(rf"took over the lock s3://{lock} of a run that is gone \(pid 1 on elsewhere since "
                     r"2026-01-01T00:00:00Z\): not renewed for [3-9] s, its lease is 2 s", said), said
    assert not s3.exists(lock)  # released at the end like any other
    assert "verified: every done shard" in _ok(CliRunner().invoke(app, ["cache", "info", url, "--verify"]))


def test_a_lock_whose_processes_are_known_to_have_exited_is_taken_over_at_once_and_no_other(s3, caplog):
    """A run names its processes in its lock (object_lock.this_process; a torchrun job every rank). On the same
    machine and pid namespace the next run sees whether they still run; anything it cannot see (another machine,
    another container) waits out the lease as before."""
    from compalign.extract.object_lock import ObjectLock, this_process

    out, key = location(f"s3://{BUCKET}/gone/sc.zarr"), f"{BUCKET}/gone/.sc.zarr.lock"
    here = this_process()
    assert here is not None and here["pid"] == os.getpid()
    children = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
                for _ in range(2)]
    alive = [{**here, "pid": c.pid, "start": int(Path(f"/proc/{c.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])}
             for c in children]

    def held_by(processes: list[dict]) -> None:  # a fresh lock with an hour's lease: only its processes free it early
        s3.pipe_file(key, json.dumps({"holder": "a run on this host", "lease_s": 3600, "processes": processes}).encode())

    def refused(processes: list[dict]) -> None:
        held_by(processes)
        with pytest.raises(CacheError, match=r"its lock s3://\S+/gone/\.sc\.zarr\.lock was renewed [01] s ago"):
            ObjectLock(out, processes=[here]).take()

    refused(alive)  # they run
    children[0].kill()
    children[0].wait()  # reaped: its pid is no process now (a zombie before the wait counts as exited too)
    refused(alive)  # one of the job's processes still runs
    children[1].kill()
    children[1].wait()
    refused([{**alive[0], "boot_id": "another-machine"}])  # not known here: the lease decides
    refused([{**alive[0], "pid_ns": alive[0]["pid_ns"] + 1}])  # another container's pid
    refused([*alive, {**alive[0], "boot_id": "another-machine"}])  # a job that spanned machines
    refused([])
    for gone, pids in ((alive, f"processes have exited (pid {alive[0]['pid']}, {alive[1]['pid']}"),
                       ([{**here, "start": here["start"] + 1}], f"process has exited (pid {here['pid']}")):  # pid reused
        held_by(gone)
        mine = ObjectLock(out, processes=[here])
        with caplog.at_level("WARNING", logger="compalign.extract.object_lock"):
            mine.take()
        assert f"took over the lock s3://{key} of a run that is gone (a run on this host): its {pids} on this machine)" \
            in caplog.text, caplog.text
        assert json.loads(s3.cat_file(key))["processes"] == [here]  # now names this run's
        mine.close()
        caplog.clear()


def test_a_held_lock_is_renewed_so_it_never_expires_and_a_lost_one_is_left_to_its_new_holder(s3, monkeypatch):
    from compalign.extract.object_lock import ObjectLock

    monkeypatch.setenv("COMPALIGN_LOCK_LEASE_S", "1.5")  # renewed every 0.25 s
    out = location(f"s3://{BUCKET}/held/sc.zarr")
    lost = threading.Event()
    mine = ObjectLock(out, on_lost=lost.set)
    mine.take()
    first = mine.etag
    time.sleep(2.5)  # longer than the lease: only renewals keep it alive
    assert mine.etag != first and not lost.is_set()
    with pytest.raises(CacheError, match=r"its lock s3://\S+/held/\.sc\.zarr\.lock was renewed [01] s ago"):
        ObjectLock(out).take()
    # A renewal that succeeded but whose reply was lost leaves a version this run never saw: still its own.
    key = f"{BUCKET}/held/.sc.zarr.lock"
    s3.pipe_file(key, json.dumps({**json.loads(s3.cat_file(key)), "renewal": 10**6}).encode())
    time.sleep(1.0)
    assert not lost.is_set() and json.loads(s3.cat_file(key))["renewal"] < 10**6  # renewed on since
    # Another run takes it (as it would after this one stalled past its lease): this one is told, stops
    # renewing, and on close leaves the other's lock where it is.
    s3.pipe_file(f"{BUCKET}/held/.sc.zarr.lock", _lock_body(lease_s=60))
    assert lost.wait(timeout=5) and mine.lost
    mine.close()
    assert s3.cat_file(f"{BUCKET}/held/.sc.zarr.lock") == _lock_body(lease_s=60)
    s3.rm_file(f"{BUCKET}/held/.sc.zarr.lock")
    mine = ObjectLock(out)  # and an ordinary run deletes its own lock when it ends
    mine.take()
    mine.close()
    assert not s3.exists(f"{BUCKET}/held/.sc.zarr.lock")


def test_a_run_whose_lock_is_taken_over_stops_and_says_so(s3, tmp_path):
    """In a subprocess: the lock's renewer stops the run by interrupting its main thread."""
    root = mini_sugarcrepe(tmp_path / "sc", n=32)
    url, lock = f"s3://{BUCKET}/taken/sc.zarr", f"{BUCKET}/taken/.sc.zarr.lock"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "COMPALIGN_LOCK_LEASE_S": "1"}
    p = subprocess.Popen([sys.executable, "-m", "compalign.cli.main", *EXTRACT, "--root", str(root), "--out", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while p.poll() is None and not s3.exists(lock):
        s3.invalidate_cache()
        time.sleep(0.02)
    s3.pipe_file(lock, _lock_body(lease_s=60))  # another run took it over (as after a stall past the lease)
    said = " ".join(p.communicate(timeout=120)[0].split())
    assert p.returncode == 2, said
    assert (f"error: stopped: this run lost its lock s3://{lock} (it could not renew it for 1 s, and another extract "
            "took it over). The shards it finished are done; once the other run ends, run this command again") in said
    assert s3.cat_file(lock) == _lock_body(lease_s=60)  # the new holder's lock is left alone
    s3.rm_file(lock)


def test_a_location_sees_what_another_process_wrote_under_a_folder_it_listed_before(s3):
    # Under torchrun rank 0 lists the done markers, the other ranks then write more, and rank 0 sums the store's
    # bytes: s3fs's listing cache (one per process) must not answer with the folder as it was first listed.
    import s3fs

    out = location(f"s3://{BUCKET}/listed/sc.zarr")
    (out / ".done/images/000000").write_atomic("{}")
    assert (out / ".done/images").names() == ["000000"]  # a listing now cached in this process
    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another process: its own cache, the same bucket
    other.pipe_file(f"{BUCKET}/listed/sc.zarr/.done/images/000001", b'{"rows": [8, 16]}')
    assert out.size() == 2 + 17
    assert (out / ".done/images/000001").read_text() == '{"rows": [8, 16]}'
    with (out / ".done/images/000001").open() as f:
        assert f.read() == b'{"rows": [8, 16]}'
    assert [f.relative_to(out) for f in out.files()] == [".done/images/000000", ".done/images/000001"]


def test_a_store_another_process_overwrote_opens_with_its_new_arrays(s3):
    # A table's arrays are found by listing its group (reader._read_all), and zarr's s3fs object, listing cache
    # and all, lives as long as the process: a notebook rereading a store re-extracted meanwhile must not get
    # the columns it listed before.
    import zarr

    from compalign.cache.store import SCHEMA, open_store

    url = f"s3://{BUCKET}/relisted/t.zarr"
    root = zarr.open_group(location(url).zarr_store("w"), mode="w", zarr_format=3)
    root.create_group("items").create_array("image", shape=(1,), dtype=str)
    root.attrs["schema"] = SCHEMA
    assert [name for name, _ in open_store(location(url))["items"].arrays()] == ["image"]
    add_column = ("import zarr; from compalign.cache.location import location; "
                  f"g = zarr.open_group(location({url!r}).zarr_store('r+'), mode='r+', zarr_format=3); "
                  "g['items'].create_array('caption', shape=(1,), dtype=str)")
    subprocess.run([sys.executable, "-c", add_column], check=True, env=os.environ)
    assert sorted(name for name, _ in open_store(location(url))["items"].arrays()) == ["caption", "image"]


def test_storage_options_parse_as_json_where_they_do():
    from compalign.cache.location import StorageError, storage_options

    assert storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", "max_concurrency=4"]) == {
        "endpoint_url": "http://127.0.0.1:9000", "anon": True, "max_concurrency": 4}
    with pytest.raises(StorageError, match="--storage-option takes KEY=VALUE"):
        storage_options(["anon"])


# ---- --root in a bucket: the folder sources read it with their own code, and write the local folder's store ----

def _tree(store: Path) -> dict[str, bytes]:
    return store_files(store, drop=("created", "source.root"))


def _karpathy(root: Path) -> Path:
    """dataset_coco.json (3 test images with 2 captions each, 1 train image) and its images under val2014/."""
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(4)]
    rows = [{"filepath": "val2014", "filename": n, "split": "train" if i == 3 else "test", "imgid": i, "cocoid": i,
             "sentences": [{"raw": f"a thing {i} seen {k} ways", "sentid": 10 * i + k} for k in range(2)]}
            for i, n in enumerate(names)]
    root.mkdir(parents=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": rows, "dataset": "coco"}))
    make_images(root / "val2014", names)
    return root


def _upload(s3, local: Path, prefix: str) -> str:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            s3.pipe_file(f"{BUCKET}/{prefix}/{f.relative_to(local)}", f.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


@pytest.mark.parametrize("data", ["pairs", "karpathy"])
def test_a_root_in_a_bucket_extracts_the_store_of_the_same_local_folder(s3, tmp_path, pairs_dir, data):
    local = pairs_dir if data == "pairs" else _karpathy(tmp_path / "coco")
    url = _upload(s3, local, f"data/{data}")
    args = ["extract", "--model", "tiny", "--data", data, "--shard-rows", "4"]
    _ok(CliRunner().invoke(app, [*args, "--root", str(local), "--out", str(tmp_path / "here.zarr"), "--workers", "0"]))
    # One decoding worker: a forked process that opens its own s3fs from the URL and the environment
    _ok(CliRunner().invoke(app, [*args, "--root", url, "--out", str(tmp_path / "there.zarr"), "--workers", "1"]))
    here, there = _tree(tmp_path / "here.zarr"), _tree(tmp_path / "there.zarr")
    assert here.keys() == there.keys() and [k for k in here if here[k] != there[k]] == []
    assert CacheReader(tmp_path / "there.zarr").attrs["source"]["root"] == url

    # The planning cache beside the local store knows every object by (URL, size, ETag): a rerun reads none
    hashes = PlanCache(cache_path(tmp_path / "there.zarr"))
    try:
        plan = plan_source(data, url, hashes=hashes)
    finally:
        hashes.close()
    assert (hashes.hits, hashes.misses) == (len(plan.images), 0) and len(plan.images) == (12 if data == "pairs" else 3)
    s3.pipe_file(f"{BUCKET}/data/{data}/{plan.images[0].origin}", (local / plan.images[1].origin).read_bytes())
    hashes = PlanCache(cache_path(tmp_path / "there.zarr"))  # an object rewritten: its new ETag is hashed again
    try:
        again = plan_source(data, url, hashes=hashes)
    finally:
        hashes.close()
    assert (hashes.hits, hashes.misses) == (len(plan.images) - 1, 1) and again.images[0].key == plan.images[1].key


def test_a_missing_image_object_is_a_failed_row_naming_its_url(s3, tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_images(root / "img", ["a.png", "b.png"])
    rows = [{"image": "img/a.png", "caption": "a cat"}, {"image": "img/b.png", "caption": "a dog"},
            {"image": "img/gone.png", "caption": "a bird"}]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    url = _upload(s3, root, "missing/p")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint as a storage option: it must reach the decoding worker too
    out = tmp_path / "p.zarr"
    said = _ok(CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "pairs", "--root", url, "--out", str(out),
                                        "--workers", "1", "--storage-option", f"endpoint_url={endpoint}"]))
    assert f"image failed file not found: {url}/img/gone.png" in " ".join(said.split()), said
    failures = CacheReader(out).failures("images")
    assert [(o, e) for _, o, e in failures] == [("img/gone.png", f"file not found: {url}/img/gone.png")]
    assert (CacheReader(out).status("images") == OK).sum() == 2  # the two objects there were encoded


def test_a_missing_root_or_bucket_is_one_line_naming_the_url(s3, tmp_path):
    args = ["extract", "--model", "tiny", "--data", "pairs", "--out", str(tmp_path / "x.zarr")]
    said = _one_line_error(CliRunner().invoke(app, [*args, "--root", "s3://no-such-bucket/pairs"]))
    assert "s3://no-such-bucket/pairs: the bucket 'no-such-bucket' does not exist" in said and "aws s3 mb" in said
    said = _one_line_error(CliRunner().invoke(app, [*args, "--root", f"s3://{BUCKET}/nothing/here"]))
    assert (f"s3://{BUCKET}/nothing/here does not exist (no object and no prefix of that name); pass --root pointing at "
            f"the pairs data (`aws s3 ls s3://{BUCKET}/nothing/` shows what is there)") in said
    s3.pipe_file(f"{BUCKET}/nopairs/img/a.png", b"x")
    said = _one_line_error(CliRunner().invoke(app, [*args, "--root", f"s3://{BUCKET}/nopairs"]))
    assert f"s3://{BUCKET}/nopairs: no pairs.jsonl / pairs.csv / captions.jsonl / captions.csv" in said
    said = _one_line_error(CliRunner().invoke(app, [*args, "--root", f"s3://{BUCKET}/nopairs",
                                                    "--out", f"s3://{BUCKET}"]))
    assert f"--out s3://{BUCKET} is the data root s3://{BUCKET}/nopairs or holds it" in said


def test_sugarcrepe_aro_order_and_a_pairs_file_plan_from_a_bucket_as_from_their_local_folders(s3, tmp_path, pairs_dir):
    """The other sources with a URL root: the same plan (images, captions, items) as the local folder gives."""
    sc = mini_sugarcrepe(tmp_path / "sc", n=3)
    coco = _karpathy(tmp_path / "coco")
    cases = [("sugarcrepe", sc, _upload(s3, sc, "plans/sc")), ("aro_order", coco, _upload(s3, coco, "plans/coco")),
             ("pairs", pairs_dir / "pairs.jsonl", _upload(s3, pairs_dir, "plans/pairs") + "/pairs.jsonl")]
    for data, local, url in cases:
        here, there = plan_source(data, str(local)), plan_source(data, url)
        assert there.fingerprint == here.fingerprint and there.items == here.items and there.texts == here.texts, data
        assert [r.origin for r in there.images] == [r.origin for r in here.images] and there.problems == here.problems
        assert [r.read() for r in there.images] == [r.read() for r in here.images], data


def test_a_bucket_planned_again_in_one_process_sees_the_shards_added_since(s3, tmp_path):
    # fsspec keeps one s3fs object per process, listing cache and all: a notebook (or a study) planning a folder
    # of shards again after another process uploaded more must see them, not the folder as it first listed it.
    import s3fs
    from wds_data import samples, write_tar, write_webdataset

    url = _upload(s3, write_webdataset(tmp_path / "shards"), "replanned")
    first = plan_source("webdataset", url)
    more = write_tar(tmp_path / "more/00002.tar", samples(2))
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{BUCKET}/replanned/00002.tar", more.read_bytes())
    again = plan_source("webdataset", url)
    assert again.items["image"][:len(first.items["image"])] == first.items["image"]
    assert len(again.items["image"]) - len(first.items["image"]) == len(samples(2)) == 4


def _parquet_sources(root: Path) -> dict[str, Path]:
    """A BiVLC folder (one parquet file, a row without image bytes) and a Winoground one (two shards under data/)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (seed * 40 % 256, 90, 200)).save(buf, format="PNG")
        return buf.getvalue()

    (root / "bivlc").mkdir(parents=True)
    pq.write_table(pa.table({"image": [{"bytes": png(1), "path": "a.png"}, {"bytes": None, "path": "b.png"}],
                             "caption": ["a red thing", "a blue thing"], "negative_caption": ["a blue thing", "a red one"],
                             "negative_image": [{"bytes": png(2), "path": "c.png"}, {"bytes": png(1), "path": "a.png"}],
                             "type": ["swap", "replace"], "subtype": ["att", "obj"]}), root / "bivlc" / "test.parquet")
    (root / "wino" / "data").mkdir(parents=True)
    for part in range(2):
        ids = range(3 * part, 3 * part + 3)
        pq.write_table(pa.table({"id": list(ids), "image_0": [{"bytes": png(i), "path": None} for i in ids],
                                 "image_1": [{"bytes": png(i + 9), "path": None} for i in ids],
                                 "caption_0": [f"a {i} on b" for i in ids], "caption_1": [f"b on a {i}" for i in ids],
                                 "tag": ["Object"] * 3, "secondary_tag": [""] * 3, "num_main_preds": [1] * 3,
                                 "collapsed_tag": ["Object"] * 3}), root / "wino" / "data" / f"test-0000{part}-of-00002.parquet")
    return {"bivlc": root / "bivlc", "winoground": root / "wino"}


def test_parquet_sources_plan_from_a_bucket_as_from_their_local_folders(s3, tmp_path):
    for data, local in _parquet_sources(tmp_path).items():
        url = _upload(s3, local, f"parquet/{data}")
        here, there = plan_source(data, str(local)), plan_source(data, url)
        assert there.fingerprint == here.fingerprint and there.items == here.items and there.texts == here.texts, data
        assert [(r.key, r.origin, r.error, r.read() if not r.error else None) for r in there.images] == \
               [(r.key, r.origin, r.error, r.read() if not r.error else None) for r in here.images], data
        assert len(there.images) == (3 if data == "bivlc" else 12)  # bivlc: a.png twice, b.png without bytes
        one = plan_source(data, f"{url}/test.parquet" if data == "bivlc" else url)  # a file URL as --root too
        assert one.items == here.items


def test_webdataset_shards_in_a_bucket_take_the_endpoint_as_a_storage_option(s3, tmp_path, monkeypatch):
    from wds_data import write_webdataset

    local = write_webdataset(tmp_path / "shards")
    url = _upload(s3, local, "wds") + "/{00000..00001}.tar"
    options = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # planning and each image's range read reach moto through the option only
    there, here = plan_source("webdataset", url, options=options), plan_source("webdataset", str(local / "{00000..00001}.tar"))
    assert there.items["image"] == here.items["image"] and there.texts == here.texts and len(here.images) == 6
    assert all(r.options == options for r in there.images)
    assert [r.read() for r in there.images] == [r.read() for r in here.images]


def test_webdataset_shards_in_a_bucket_are_listed_once_and_replayed_unopened_while_their_etags_hold(s3, tmp_path,
                                                                                                    monkeypatch):
    from wds_data import jpeg, samples, write_tar, write_webdataset

    from compalign.extract.sources import webdataset

    local = write_webdataset(tmp_path / "shards")
    url, here = _upload(s3, local, "wds-cached"), plan_source("webdataset", str(local / "{00000..00001}.tar"))
    opened: list[str] = []
    real = webdataset.open_binary
    monkeypatch.setattr(webdataset, "open_binary", lambda p, o=None: opened.append(p.rsplit("/", 1)[-1]) or real(p, o))

    def plan(root: str):
        hashes = PlanCache(tmp_path / "cache.sqlite")
        try:
            return plan_source("webdataset", root, hashes=hashes), hashes
        finally:
            hashes.close()

    first, c1 = plan(url + "/{00000..00002}.tar")  # 00002.tar is not there: named, not fatal
    assert f"{url}/00002.tar: shard not found; skipped" in first.problems and opened == ["00000.tar", "00001.tar"]
    assert first.items["image"] == here.items["image"] and c1.misses == len(here.items["id"])
    for root in (url + "/{00000..00001}.tar", url + "/*.tar", url):  # a brace pattern, a glob, the folder
        opened.clear()
        again, c = plan(root)
        assert (opened, c.misses, c.hits) == ([], 0, len(here.items["id"])), root  # one listing, no shard read
        assert again.items == first.items and again.texts == first.texts, root
        assert [r.read() for r in again.images] == [r.read() for r in here.images], root
    items = samples(1)
    items[0][1]["jpg"] = jpeg(999)
    s3.pipe_file(f"{BUCKET}/wds-cached/00001.tar", write_tar(tmp_path / "new" / "00001.tar", items).read_bytes())
    opened.clear()
    changed, c = plan(url + "/*.tar")  # a new ETag: that shard is read again, the other is not
    assert opened == ["00001.tar"] and c.hits == 3 and changed.images[3].read() == jpeg(999)


def test_planning_reads_a_buckets_images_in_batches_and_a_vanished_object_is_a_failed_row(s3, tmp_path, pairs_dir,
                                                                                            monkeypatch):
    import compalign.extract.sources.remote as remote

    url = _upload(s3, pairs_dir, "batched/pairs")
    here = plan_source("pairs", str(pairs_dir))
    batches = []
    real = remote.Remote.read_many

    def spy(self, keys):
        batches.append(len(keys))
        s3.rm_file(f"{BUCKET}/batched/pairs/img/003.png")  # listed, then gone before its bytes are read
        return real(self, keys)

    monkeypatch.setattr(remote, "READ_AHEAD", 5)
    monkeypatch.setattr(remote.Remote, "read_many", spy)
    calls = []
    real_cat = s3.cat_ranges  # planning's filesystem is this one (fsspec keeps one instance per set of options)
    monkeypatch.setattr(s3, "cat_ranges", lambda paths, *a, **k: calls.append(len(paths)) or real_cat(paths, *a, **k))
    there = plan_source("pairs", url)
    assert batches == [12] and calls == [5, 5, 2]  # the 12 images in one pass, 5 requests in flight at a time
    assert [r.origin for r in there.images] == [r.origin for r in here.images]  # the rows in the source's order
    gone = [r for r in there.images if r.error]
    assert [(r.origin, r.error.split(" (")[0]) for r in gone] == [("img/003.png", f"file not found: {url}/img/003.png")]
    assert [r.key for r in there.images if not r.error] == [r.key for r in here.images if r.origin != "img/003.png"]
    assert there.items["caption"] == here.items["caption"]


def test_img2dataset_outputs_plan_from_a_bucket_as_from_their_local_folders(s3, tmp_path):
    from wds_data import write_files_layout, write_webdataset

    for layout, local in (("webdataset", write_webdataset(tmp_path / "tars")),
                          ("files", write_files_layout(tmp_path / "files"))):
        url = _upload(s3, local, f"i2d/{layout}")
        here, there = plan_source("img2dataset", str(local)), plan_source("img2dataset", url)
        assert there.info["layout"] == layout and there.items == here.items and there.texts == here.texts, layout
        assert there.problems == here.problems and there.problems, layout  # the fixtures' bad samples, named alike
        assert [(r.key, r.error) for r in there.images] == [(r.key, r.error) for r in here.images], layout
        assert all(r.read() == h.read() for r, h in zip(there.images, here.images) if not r.error), layout


FILES_ARO = ["visual_genome_relation.json", "visual_genome_attribution.json"]


def test_aro_plans_from_a_bucket_as_from_its_local_folder(s3, tmp_path, monkeypatch):
    local = tmp_path / "aro"
    make_images(local / "images", ["0.jpg", "1.jpg"])
    box = {"bbox_x": 2, "bbox_y": 3, "bbox_w": 20, "bbox_h": 10}
    rel = [{"image_path": f"{n}.jpg", **box, "relation_name": "on", "true_caption": f"the cup is on the table {n}",
            "false_caption": f"the table is on the cup {n}"} for n in ("0", "1", "gone")]
    att = [{"image_path": "1.jpg", **box, "attributes": ["red", "white"], "true_caption": "the red dog and the white cat",
            "false_caption": "the white dog and the red cat"}]
    (local / "visual_genome_relation.json").write_text(json.dumps(rel))
    (local / "visual_genome_attribution.json").write_text(json.dumps(att))
    url = _upload(s3, local, "aro/root")
    singles, batches, real_cat, real_ranges = [], [], s3.cat_file, s3.cat_ranges  # planning's filesystem is this one
    monkeypatch.setattr(s3, "cat_file", lambda path, *a, **k: singles.append(path.rsplit("/", 1)[-1]) or real_cat(path, *a, **k))
    monkeypatch.setattr(s3, "cat_ranges", lambda paths, *a, **k: batches.append(len(paths)) or real_ranges(paths, *a, **k))
    here, there = plan_source("aro", str(local)), plan_source("aro", url)
    assert sorted(singles) == sorted(FILES_ARO) and batches == [2]  # the two images in one batch, not a GET each
    assert there.items == here.items and there.texts == here.texts and len(there.items["id"]) == 3
    assert [(r.key, r.read()) for r in there.images] == [(r.key, r.read()) for r in here.images]  # the crops
    assert [p.replace(url, "ROOT") for p in there.problems] == [p.replace(str(local), "ROOT") for p in here.problems]
    assert there.problems == [f"visual_genome_relation.json row 2: image file not found (tried {url}/images/gone.jpg "
                              f"and {url}/gone.jpg); skipped"]
    import compalign.extract.sources.remote as remote

    real_many = remote.Remote.read_many

    def vanishing(self, keys):  # listed, then deleted before its bytes are read: that row's problem, not a crash
        s3.rm_file(f"{BUCKET}/aro/root/images/0.jpg")
        return real_many(self, keys)

    monkeypatch.setattr(remote.Remote, "read_many", vanishing)
    gone = plan_source("aro", url)
    assert gone.items["id"] == ["vg_relation/1", "vg_attribution/0"]
    assert gone.problems[0].startswith(f"visual_genome_relation.json row 0: unreadable image {url}/images/0.jpg "
                                       "(FileNotFoundError")


def test_a_root_takes_its_own_storage_options(s3, tmp_path, pairs_dir, monkeypatch):
    url = _upload(s3, pairs_dir, "own/pairs")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    args = ["extract", "--model", "tiny", "--data", "pairs", "--root", url, "--workers", "1", "--shard-rows", "4",
            "--root-storage-option", f"endpoint_url={endpoint}"]
    # --out's options name a dead endpoint: a store in a bucket there would fail; the root's own reach the data
    dead = ["--storage-option", f"endpoint_url=http://127.0.0.1:{free_port()}"]
    _ok(CliRunner().invoke(app, [*args, *dead, "--out", str(tmp_path / "here.zarr")]))
    assert (CacheReader(tmp_path / "here.zarr").status("images") == OK).sum() == 12  # the worker read them too
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    _ok(CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "pairs", "--root", str(pairs_dir),
                                 "--workers", "0", "--shard-rows", "4", "--out", str(tmp_path / "local.zarr")]))
    here, local = _tree(tmp_path / "here.zarr"), _tree(tmp_path / "local.zarr")
    assert [k for k in here if here[k] != local.get(k)] == []


def test_a_store_in_a_bucket_keeps_its_planning_cache_in_the_users_cache_folder(s3, tmp_path, pairs_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root, out = _upload(s3, pairs_dir, "cached/pairs"), f"s3://{BUCKET}/cached/pairs.zarr"
    _ok(CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "pairs", "--root", root, "--out", out,
                                 "--workers", "0", "--shard-rows", "4"]))
    [made] = (tmp_path / "xdg" / "compalign" / "plan-cache").iterdir()
    assert made == cache_path(out) and made.name.startswith("s3_compalign-test_cached_pairs.zarr-")
    hashes = PlanCache(made)  # what the next run of that extraction plans with: every object known, none read
    try:
        plan = plan_source("pairs", root, hashes=hashes)
    finally:
        hashes.close()
    assert (hashes.hits, hashes.misses) == (len(plan.images), 0) == (12, 0)


@pytest.fixture
def s3_requests(monkeypatch):
    """A function that runs its argument and returns (its result, the S3 methods every s3fs client called)."""
    import s3fs

    calls, real = [], s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls.append(method)
        return await real(self, method, *args, **kwargs)

    def run(fn):
        calls.clear()
        with monkeypatch.context() as mp:
            mp.setattr(s3fs.S3FileSystem, "_call_s3", counted)
            out = fn()
        return out, list(calls)

    return run


def _slow_puts(monkeypatch, delay: float) -> SimpleNamespace:
    """Every S3 request of every s3fs client from now on, as (method, key) in the order they start (`calls`),
    each PUT held `delay` seconds so that what is sent together is seen in flight together (`most`: the most PUTs
    in flight at once; on a loaded CI too)."""
    import asyncio

    import s3fs

    seen, in_flight, real = SimpleNamespace(calls=[], most=0), set(), s3fs.S3FileSystem._call_s3

    async def call(self, method, *args, **kwargs):
        seen.calls.append((method, kwargs.get("Key", "")))
        if method != "put_object":
            return await real(self, method, *args, **kwargs)
        token = object()
        in_flight.add(token)
        seen.most = max(seen.most, len(in_flight))
        try:
            await asyncio.sleep(delay)
            return await real(self, method, *args, **kwargs)
        finally:
            in_flight.discard(token)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call)
    return seen


def test_a_writer_in_a_bucket_sends_a_shards_arrays_together_and_asks_no_sizes(s3, tmp_path, monkeypatch):
    """Each array's shard is one PUT. Sent one after another a text shard waited a round trip per array (six);
    and s3fs asked each metadata object's size (a HEAD) before reading it."""
    from compalign.cache.store import open_store, verify_shard, write_shard

    url = f"s3://{BUCKET}/caches/together.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(mini_sugarcrepe(tmp_path / "sc", n=2)), "--out", url]))
    names = ("global", "tokens", "status", "error", "lengths", "truncated")
    before = open_store(url)
    shard = {name: before[f"texts/{name}"][:4] for name in names}  # text shard 0 (--shard-rows 4)
    seen = _slow_puts(monkeypatch, 0.5)
    write_shard(open_store(url, "r+", digests=True), url, "texts", 0, 0, shard)
    monkeypatch.undo()
    calls = [method for method, _ in seen.calls]
    assert seen.most == len(names) and "head_object" not in calls[1:], calls  # [0]: open_store's existence check
    assert calls.count("put_object") == len(names) + 1  # and the done marker, after them
    after = open_store(url)
    assert verify_shard(url, "texts", 0) == [] and all(np.array_equal(after[f"texts/{n}"][:4], shard[n]) for n in names)


def test_a_resume_checks_a_bucket_stores_shards_from_one_listing_and_finds_a_short_object(s3, tmp_path, s3_requests):
    """Every done shard is checked before a resume: asked object by object (a HEAD and a LIST per file, then its
    marker) that was about a second per shard at 20 ms a request. One listing gives every size; the markers are
    read at once."""
    from compalign.cache.store import damaged_shards, done_shards

    url = f"s3://{BUCKET}/caches/checked.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(mini_sugarcrepe(tmp_path / "sc", n=8)), "--out", url]))
    n_done = len(done_shards(url, "images")) + len(done_shards(url, "texts"))
    damaged, calls = s3_requests(lambda: damaged_shards(url, checksums=False))
    assert damaged == {} and n_done > 6
    # the store's listing and the two marker folders', then each marker
    assert sorted(calls) == ["get_object"] * n_done + ["list_objects_v2"] * 3, calls
    chunk = f"{BUCKET}/caches/checked.zarr/texts/tokens/c/1/0/0"
    good = s3.cat_file(chunk)
    s3.pipe_file(chunk, good[:-1])
    assert damaged_shards(url, checksums=False) == {("texts", 1): [f"texts/tokens/c/1/0/0 has {len(good) - 1} bytes, "
                                                                  f"{len(good)} were written"]}
    # `cache info --verify` downloads every chunk, a shard's at once, and finds a changed byte
    s3.pipe_file(chunk, good[:-1] + bytes([good[-1] ^ 1]))
    damaged, calls = s3_requests(lambda: damaged_shards(url))
    assert damaged == {("texts", 1): ["texts/tokens/c/1/0/0 does not match its checksum"]}
    n_files = sum(len(json.loads(s3.cat_file(m))["files"]) for m in s3.find(f"{BUCKET}/caches/checked.zarr/.done"))
    assert "head_object" not in calls and calls.count("get_object") == n_done + n_files  # each marker, each file


def test_a_reader_reads_the_key_and_status_columns_of_a_bucket_store_at_once(s3, tmp_path, monkeypatch):
    """Training starts by reading both tables' keys and status; each column is three round trips in turn (its
    metadata, its listing, its chunks), so read one after another they waited for each other's."""
    import asyncio

    import s3fs

    url = f"s3://{BUCKET}/caches/columns.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(mini_sugarcrepe(tmp_path / "sc", n=8)), "--out", url]))
    names = ["images/status", "texts/status", "images/keys", "texts/keys"]
    one_by_one = [CacheReader(url).column(name) for name in names]
    in_flight, most, real = set(), 0, s3fs.S3FileSystem._call_s3

    async def slow_metadata(self, method, *args, **kwargs):
        nonlocal most
        if not str(kwargs.get("Key", "")).endswith("/zarr.json"):
            return await real(self, method, *args, **kwargs)
        key = object()
        in_flight.add(key)
        most = max(most, len(in_flight))
        try:
            await asyncio.sleep(0.5)  # long enough for the other threads to start theirs on a loaded machine
            return await real(self, method, *args, **kwargs)
        finally:
            in_flight.discard(key)

    reader = CacheReader(url)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", slow_metadata)
    together = reader.columns(names)
    monkeypatch.undo()
    assert most == len(names)  # the four columns' metadata GETs were in flight together
    assert all(np.array_equal(a, b) for a, b in zip(together, one_by_one))


def test_a_worker_reads_a_batch_of_objects_and_shard_members_with_a_get_each_and_no_head(s3, tmp_path, pairs_dir,
                                                                                        s3_requests):
    """A decoding worker has listed nothing; s3fs would ask each whole object's size first (a HEAD) to split a
    large one into parallel ranges. Images are read with one GET each, a shard's neighbouring members one GET."""
    from wds_data import write_webdataset

    from compalign.extract.sources.reads import read_refs

    pairs = plan_source("pairs", _upload(s3, pairs_dir, "worker/pairs"))
    shards = plan_source("webdataset", _upload(s3, write_webdataset(tmp_path / "wds"), "worker/wds") + "/*.tar")
    s3.invalidate_cache()  # as in a freshly forked worker: no listing known
    got, calls = s3_requests(lambda: read_refs(pairs.images + shards.images))
    assert got == [r.read() for r in pairs.images + shards.images]
    assert calls == ["get_object"] * (len(pairs.images) + 2)  # 12 objects, then 2 shards of members: a GET each


def test_the_reader_gets_each_chunk_with_one_request_and_no_head(s3, tmp_path, s3_requests):
    """s3fs asks an object's size (a HEAD) before a whole GET unless told max_concurrency=1; a reader in a bucket
    tells it, so reading a chunk is one GET; a --storage-option max_concurrency=N still decides."""
    from compalign.cache import CacheReader
    from compalign.cache.location import location

    url = f"s3://{BUCKET}/caches/gets.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(mini_sugarcrepe(tmp_path / "sc", n=8)), "--out", url]))
    local = tmp_path / "here.zarr"
    s3.get(url, str(local), recursive=True)
    gets = {}
    for options, heads in (({}, False), ({"max_concurrency": 10}, True)):
        r = CacheReader(location(url, options))
        n = r.layout.n_images
        got, calls = s3_requests(lambda r=r, n=n: r.read("images", "patches", np.arange(n)))
        np.testing.assert_array_equal(got, CacheReader(local).read("images", "patches", np.arange(n)))
        gets[heads] = calls.count("get_object")
        assert calls.count("head_object") == (gets[heads] if heads else 0), calls  # s3fs's default: a HEAD per GET
    assert gets[False] == gets[True] >= 2  # the same chunks (2 shards and metadata) read either way


def test_opening_a_store_in_a_bucket_probes_no_zarr_v2_files_and_a_table_reads_its_metadata_once(s3, tmp_path, s3_requests):
    """zarr.open_group looks for a Zarr v2 group too (.zgroup, .zattrs, .zmetadata: a HEAD and a LIST each)
    unless told the format; a compalign store is v3, so opening it is the existence check and the root's GET
    (whole: no size asked first, by a writer either)."""
    from compalign.cache.store import open_store

    url = f"s3://{BUCKET}/caches/opens.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(mini_sugarcrepe(tmp_path / "sc", n=2)), "--out", url]))
    for mode in ("r", "r+"):
        root, calls = s3_requests(lambda mode=mode: open_store(url, mode))
        assert root.attrs["schema"] and calls == ["head_object", "get_object"], (mode, calls)  # exists, the root
    # A table's arrays come open from the group's listing: one metadata GET each, then its one chunk, all at once.
    reader = CacheReader(url)
    items, calls = s3_requests(lambda: reader.items)
    assert len(items) >= 4 and calls.count("get_object") == 1 + 2 * len(items), calls



def test_a_new_store_in_a_bucket_is_sent_all_at_once_with_its_root_last(s3, tmp_path, monkeypatch):
    """zarr creating a store in place asked after every new array's parents and reopened each column it filled
    (207 requests one after another for a 1,000-image store); made in memory, a store is sent as one PUT per
    object, at once, and becomes a store only with its root zarr.json, sent last (the first says `creating`)."""
    from compalign.cache.store import Layout, create_store

    lay = Layout(n_images=10, n_texts=21, embed_dim=8, n_patches=4, n_prefix=1, image_width=6, text_len=5,
                 text_width=7, layers=[-1, -2], shard_rows=4, chunk_rows=2, text_layers=[-1])
    args = (lay, {"note": "x"}, {"image": ["k1", "k2"], "caption": ["t0", "t3"]}, [f"k{i}" for i in range(10)],
            [f"o{i}" for i in range(10)], [f"t{i}" for i in range(21)], [f"text {i}" for i in range(21)],
            {"image": np.ones((6, 8))})
    create_store(tmp_path / "local.zarr", *args)
    seen = _slow_puts(monkeypatch, 0.2)
    create_store(f"s3://{BUCKET}/new/s.zarr", *args)
    monkeypatch.undo()
    puts = [key.removeprefix("new/s.zarr/") for method, key in seen.calls if method == "put_object"]
    others = [method for method, _ in seen.calls if method != "put_object"]
    local = store_files(tmp_path / "local.zarr")
    assert store_files(f"{BUCKET}/new/s.zarr", fs=s3) == local  # the same objects, byte for byte
    # each once, between a root that says `creating` and the real one
    assert puts[0] == puts[-1] == "zarr.json" and sorted(puts[1:]) == sorted(local), puts
    assert seen.most == len(local) - 1, seen.most  # everything but the root in flight together
    # Nothing is read but one listing of the prefix (what was there is removed) and, last, the returned group's root.
    assert others[-1] == "get_object" and "get_object" not in others[:-1] and others.count("head_object") <= 1, others


def test_a_store_whose_creation_was_cut_short_in_a_bucket_is_named_and_replaced_by_the_next_run(s3, tmp_path,
                                                                                                monkeypatch):
    """A bucket has no rename: a store is sent in place, its root saying `creating` until the last PUT. A run cut
    short there (a lost connection, Ctrl-C) leaves a prefix that readers name as such and the next run replaces."""
    from zarr.storage import FsspecStore

    from compalign.cache.store import open_store

    root = mini_sugarcrepe(tmp_path / "sc", n=4)
    url, prefix = f"s3://{BUCKET}/cut/sc.zarr", f"{BUCKET}/cut/sc.zarr"
    _ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", str(tmp_path / "ref.zarr")]))
    real, sent = FsspecStore.set, []

    async def cut(self, key, value):
        if len(sent) == 20:
            raise ConnectionResetError("the network went away")
        sent.append(key)
        await real(self, key, value)

    monkeypatch.setattr(FsspecStore, "set", cut)
    res = CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url])
    monkeypatch.undo()
    s3.invalidate_cache()
    assert res.exit_code != 0 and sent[0] == "zarr.json" and len(s3.find(prefix)) > 1, res.output
    assert json.loads(s3.cat_file(f"{prefix}/zarr.json"))["attributes"] == {"creating": "compalign.cache/1"}
    with pytest.raises(CacheError, match=rf"{url} is a store whose creation was cut short\. Run the `compalign "
                                         r"extract` that made it again: it replaces it\."):
        open_store(url)
    said = " ".join(_ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url])).split())
    assert f"replaced {url}: its creation had been cut short" in said, said
    assert store_files(prefix, drop=("created",), fs=s3) == store_files(tmp_path / "ref.zarr", drop=("created",))
    # A prefix holding anything else is still refused untouched (compalign only replaces its own stores).
    s3.pipe_file(f"{BUCKET}/other/x.zarr/zarr.json", json.dumps({"attributes": {"creating": "elsewhere"}}).encode())
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", f"s3://{BUCKET}/other/x.zarr"]))
    assert "is a folder that is not a compalign store (1 entries)" in said


def test_a_bucket_that_goes_out_of_reach_mid_run_is_one_line_and_the_rerun_finishes(s3, tmp_path):
    """The server stops answering mid-run (in a subprocess, through a second server on the same buckets): the run
    ends with one line that says what failed and what to do, not the traceback of its lock's release; what it
    finished is kept, and the next run (its lock taken over: its process is gone) finishes the store."""
    from moto.server import ThreadedMotoServer

    root = mini_sugarcrepe(tmp_path / "sc", n=32)
    url, prefix = f"s3://{BUCKET}/away/sc.zarr", f"{BUCKET}/away/sc.zarr"
    port = free_port()
    second = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # moto's buckets are per process
    second.start()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    p = subprocess.Popen([sys.executable, "-m", "compalign.cli.main", *EXTRACT, "--root", str(root), "--out", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while p.poll() is None and not s3.exists(f"{prefix}/.done/images/000001"):
        s3.invalidate_cache()
        time.sleep(0.02)
    second.stop()
    said = " ".join(p.communicate(timeout=300)[0].split())
    assert p.returncode == 2 and "Traceback" not in said, said
    assert re.search(rf"error: lost the connection to {url} \(\w+: .*\)\. The shards finished before it are done: once "
                     r"it can be reached again, run this command again to finish the rest", said), said
    assert "could not release the lock" in said  # said as a warning, not raised over the run's own error
    s3.invalidate_cache()
    kept = len(s3.ls(f"{prefix}/.done/images")) + len(s3.ls(f"{prefix}/.done/texts"))
    said = " ".join(_ok(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url])).split())
    assert re.search(rf"resumed {url}: .* shards written, {kept} already done", said), said
    assert "verified: every done shard" in _ok(CliRunner().invoke(app, ["cache", "info", url, "--verify"]))


def test_a_renewal_that_cannot_reach_the_server_is_tried_again(s3, monkeypatch):
    """botocore's EndpointConnectionError is no OSError: it used to end the renewer thread, and the lease then ran
    out under a run that went on writing."""
    from botocore.exceptions import EndpointConnectionError

    from compalign.extract.object_lock import ObjectLock

    monkeypatch.setenv("COMPALIGN_LOCK_LEASE_S", "1.2")  # renewed every 0.2 s
    lock = ObjectLock(location(f"s3://{BUCKET}/renew/sc.zarr"))
    real, failed = lock.lock.replace_if, []

    def away_twice(data, etag):
        if len(failed) < 2:
            failed.append(etag)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/renew")
        return real(data, etag)

    monkeypatch.setattr(lock.lock, "replace_if", away_twice)
    lock.take()
    first = lock.etag
    end = time.monotonic() + 20  # two renewals fail, then one gets through (0.6 s; more on a loaded machine)
    while (len(failed) < 2 or lock.etag == first) and time.monotonic() < end:
        time.sleep(0.05)
    assert len(failed) == 2 and lock._renewer.is_alive() and lock.etag != first and not lock.lost
    lock.close()
    assert not s3.exists(f"{BUCKET}/renew/.sc.zarr.lock")
