"""Object storage: extract to s3://, train and score from it, and get what the same run gives on a local folder.

An S3 server runs in this process (moto's server mode on 127.0.0.1, a free port); compalign reaches it the
standard way, through AWS_ENDPOINT_URL and the AWS_* credentials, as it would reach AWS or MinIO.
"""

from __future__ import annotations

import json
import logging
import os
import socket

import numpy as np
import pytest
from conftest import mini_sugarcrepe
from safetensors.numpy import load_file
from typer.testing import CliRunner

from compalign.cli.heads import app as heads_app
from compalign.cli.main import app

BUCKET = "compalign-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint with an empty bucket; yields the s3fs filesystem that sees it."""
    try:
        from moto.server import ThreadedMotoServer

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    except Exception as e:  # moto missing or the port refused: the only reason to skip
        pytest.skip(f"moto's S3 server cannot start on 127.0.0.1 ({type(e).__name__}: {e}); pip install 'moto[server]'")
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would hold another endpoint
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


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
    from compalign.cache.location import Location

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
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", f"s3://{BUCKET}/data", "--out", str(tmp_path / "x")]))
    assert "--data sugarcrepe reads a local folder (only webdataset shards and --out may be URLs)" in said


def test_a_second_writer_on_an_s3_store_is_refused_by_its_lock_object(s3, tmp_path):
    root = mini_sugarcrepe(tmp_path / "sc", n=2)
    url = f"s3://{BUCKET}/locked/sc.zarr"
    s3.pipe_file(f"{BUCKET}/locked/.sc.zarr.lock", b"pid 1 on elsewhere since 2026-01-01T00:00:00Z")
    said = _one_line_error(CliRunner().invoke(app, [*EXTRACT, "--root", str(root), "--out", url]))
    assert f"another compalign extract (pid 1 on elsewhere since 2026-01-01T00:00:00Z) is writing {url}" in said
    assert f"delete the lock (`aws s3 rm s3://{BUCKET}/locked/.sc.zarr.lock`)" in said
    assert not s3.exists(f"{BUCKET}/locked/sc.zarr")  # refused before anything was written


def test_storage_options_parse_as_json_where_they_do():
    from compalign.cache.location import StorageError, storage_options

    assert storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", "max_concurrency=4"]) == {
        "endpoint_url": "http://127.0.0.1:9000", "anon": True, "max_concurrency": 4}
    with pytest.raises(StorageError, match="--storage-option takes KEY=VALUE"):
        storage_options(["anon"])
