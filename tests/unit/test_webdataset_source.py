"""webdataset / img2dataset sources: tar shards by brace pattern, the files layout, per-row problems, byte ranges."""

from __future__ import annotations

import gzip
import os
import pickle
import time

import pytest
from wds_data import CORRUPT, ShardServer, jpeg, samples, write_files_layout, write_tar, write_webdataset

from compalign.extract.image_rows import ImageRows
from compalign.extract.sources import SourceError, content_key, list_sources, plan_source, text_key
from compalign.extract.sources.webdataset import expand_braces


def test_expand_braces():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("x{1,{2..3}}") == ["x1", "x2", "x3"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain/{x}.tar") == ["plain/{x}.tar"]  # not a pattern: kept as written


def test_two_shards_by_brace_pattern(tmp_path):
    root = write_webdataset(tmp_path / "shards")
    assert {"webdataset", "img2dataset"} <= set(list_sources())
    plan = plan_source("webdataset", str(root / "{00000..00001}.tar"))
    # 8 samples; 0/2 has no caption: 7 items. 1/3 reuses 0/0's image: 6 image rows.
    assert plan.items["id"] == ["00000.tar/000000000", "00000.tar/000000001", "00000.tar/000000003",
                                *[f"00001.tar/00001000{i}" for i in range(4)]]
    assert plan.problems == ["00000.tar/000000002: no .txt caption; sample skipped"]
    by_key = {r.key: r for r in plan.images}
    assert len(by_key) == 6
    assert plan.items["image"][0] == plan.items["image"][-1] == content_key(jpeg(0))
    assert plan.items["image"][1] == content_key(CORRUPT)  # planned: it fails at decoding, in its status row
    assert plan.texts[:2] == ["a photo number 0 of shard 0", "a photo number 1 of shard 0"]
    assert plan.items["caption"][-1] == text_key("a photo number 3 of shard 1")
    assert plan.items["url"][0] == "https://example.com/000000000.jpg"
    assert plan.items["shard"][-1] == "00001.tar"
    assert plan.root == str(root / "{00000..00001}.tar") and plan.info["shards"] == "2"
    # Each image is a (shard, offset, size) reference: its bytes are the member's, read again by range.
    want = {content_key(f[e]): f[e] for s in (0, 1) for _, f in samples(s) for e in ("jpg", "png") if e in f}
    for ref in plan.images:
        assert ref.data is None and ref.path.endswith(".tar") and ref.read() == want[ref.key]
    # The refs travel to DataLoader workers by pickling; a worker decodes the row, the corrupt one is an error.
    rows = ImageRows(pickle.loads(pickle.dumps(plan.images)), preprocess=lambda im: im.size)
    got = [rows[i] for i in range(len(rows))]
    assert [g[1] for g in got] == [(32, 24), None, (16, 16), (32, 24), (32, 24), (32, 24)]
    assert got[1][3] == "00000.tar/000000001.jpg: cannot decode image: OSError: Truncated File Read"
    # A folder and a glob name the same shards; so does img2dataset's output folder.
    for other in (plan_source("webdataset", str(root)), plan_source("webdataset", str(root / "*.tar")),
                  plan_source("img2dataset", root)):
        assert other.items["image"] == plan.items["image"] and other.texts == plan.texts
    assert plan_source("img2dataset", root).kind == "img2dataset"


def test_files_layout_matches_the_tars(tmp_path):
    tars = plan_source("webdataset", str(write_webdataset(tmp_path / "wds")))
    files = plan_source("img2dataset", write_files_layout(tmp_path / "files"))
    assert files.info["layout"] == "files"
    assert files.items["image"] == tars.items["image"] and files.texts == tars.texts
    assert files.items["id"][:2] == ["00000/000000000", "00000/000000001"]
    assert files.problems == ["00000/000000002: no .txt caption; sample skipped"]
    assert files.images[0].path == str((tmp_path / "files" / "00000" / "000000000.jpg").resolve())


def test_bad_shards_and_samples_are_problems_not_crashes(tmp_path):
    root = tmp_path / "s"
    write_tar(root / "00000.tar", samples(0))
    write_tar(root / "00001.tar", [("a", {"jpg": jpeg(1), "txt": b"caf\xe9"}),  # latin-1 caption
                                   ("b", {"txt": b"no image here"}),
                                   ("c", {"jpg": jpeg(2), "txt": b"   "}),
                                   ("d", {"jpg": jpeg(3), "txt": b"fine", "json": b"{not json"})])
    (root / "00002.tar").write_bytes(gzip.compress((root / "00000.tar").read_bytes()))  # a .tar.gz named .tar
    data = (root / "00000.tar").read_bytes()
    (root / "00003.tar").write_bytes(data[:8000])  # cut inside 000000002.jpg (bytes 7680..9038)
    plan = plan_source("webdataset", str(root / "{00000..00004}.tar"))
    problems = "\n".join(plan.problems)
    assert "00004.tar: shard not found; skipped" in problems
    assert "00001.tar/a.txt: not UTF-8 (byte 0xe9 at 3); sample skipped" in problems
    assert "00001.tar/b: no image (.jpg / .jpeg / .png / .webp; has ['txt']); sample skipped" in problems
    assert "00001.tar/c.txt: empty caption; sample skipped" in problems
    assert "00001.tar/d.json: malformed metadata" in problems
    assert "00002.tar: not an uncompressed tar" in problems and "gunzip" in problems
    assert ("00003.tar: truncated (8000 bytes; member '000000002' runs past the end): samples after the cut are "
            "missing, and the one it cuts is skipped. Download the shard again") in plan.problems
    assert "fine" in plan.texts and plan.items["url"][plan.items["caption"].index(text_key("fine"))] == ""
    assert [i for i, s in zip(plan.items["id"], plan.items["shard"]) if s == "00003.tar"] == \
        ["00003.tar/000000000", "00003.tar/000000001"]  # the samples before the cut are kept
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no .tar shard there"):
        plan_source("webdataset", str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="do not exist"):
        plan_source("webdataset", str(tmp_path / "{0..3}.tar"))
    with pytest.raises(SourceError, match="--split applies"):
        plan_source("webdataset", str(root), split="train")


def test_url_shards_through_fsspec(tmp_path):
    import fsspec  # a dependency of torch
    local = write_webdataset(tmp_path / "shards")
    fs = fsspec.filesystem("memory")
    for s in (0, 1):
        fs.pipe(f"/wds/{s:05d}.tar", (local / f"{s:05d}.tar").read_bytes())
    try:
        remote = plan_source("webdataset", "memory://wds/{00000..00001}.tar")
        here = plan_source("webdataset", str(local / "{00000..00001}.tar"))
        assert remote.items["image"] == here.items["image"] and remote.texts == here.texts
        assert remote.root == "memory://wds/{00000..00001}.tar"
        assert [r.read() for r in remote.images] == [r.read() for r in here.images]
    finally:
        fs.rm("/wds", recursive=True)


@pytest.mark.parametrize("etag", [True, False], ids=["etag", "last-modified-only"])
def test_http_shards_plan_as_local_ones_and_are_replayed_by_their_etag_or_last_modified(tmp_path, etag):
    from compalign.extract.sources import PlanCache

    local = write_webdataset(tmp_path / "shards")
    for tar in local.glob("*.tar"):  # written an hour ago: a Last-Modified of this second is not trusted yet
        os.utime(tar, (time.time() - 3600,) * 2)
    server = ShardServer(local, etag)
    try:
        here = plan_source("webdataset", str(local / "{00000..00001}.tar"))
        pattern, cache = server.url + "/{00000..00002}.tar", PlanCache(tmp_path / "cache.sqlite")
        there = plan_source("webdataset", pattern, hashes=cache)
        assert there.items["image"] == here.items["image"] and there.texts == here.texts
        assert f"{server.url}/00002.tar: shard not found; skipped" in there.problems  # a HEAD answered 404
        assert [r.read() for r in there.images] == [r.read() for r in here.images]  # each a ranged GET
        server.requests.clear()
        again = plan_source("webdataset", pattern, hashes=cache)
        cache.close()
        assert again.items == there.items and again.problems == there.problems
        # fsspec asks for a missing file by HEAD and then by GET; the shards that exist are only HEADed
        read = {(method, name) for method, name, _ in server.requests if name != "00002.tar"}
        assert read == {("HEAD", "00000.tar"), ("HEAD", "00001.tar")}
    finally:
        server.close()


def test_a_batch_of_http_tar_members_is_read_as_one_range_per_shard_and_a_cut_member_fails_alone(tmp_path):
    from compalign.extract.sources.reads import read_refs

    local = write_webdataset(tmp_path / "shards")
    here = plan_source("webdataset", str(local / "{00000..00001}.tar"))
    server = ShardServer(local)
    try:
        there = plan_source("webdataset", server.url + "/{00000..00001}.tar")
        server.requests.clear()
        assert read_refs(there.images) == [r.read() for r in here.images]
        # one GET per shard, whatever the number of images in it (each an HTTP range of that shard)
        assert sorted(name for method, name, ranged in server.requests if method == "GET" and ranged) == [
            "00000.tar", "00001.tar"]
        # A shard cut short after planning: its members past the cut fail, each with the words ImageRef.read uses
        cut = there.images[-1].offset + 10
        (local / "00001.tar").write_bytes((local / "00001.tar").read_bytes()[:cut])
        got = read_refs(there.images)
        last = there.images[-1]
        assert isinstance(got[-1], OSError) and str(got[-1]) == (
            f"{last.path} ends {last.size - 10} bytes into this member: the shard was truncated or rewritten after "
            "planning")
        assert got[:-1] == [r.read() for r in here.images[:-1]]
    finally:
        server.close()


def test_tar_members_from_a_server_that_ignores_ranges_fail_naming_it_not_with_wrong_bytes(tmp_path):
    from compalign.extract.sources.reads import read_refs

    local = write_webdataset(tmp_path / "shards")
    good, bad = ShardServer(local), ShardServer(local, ranges=False)  # bad answers every GET with the whole file
    try:
        plan = plan_source("webdataset", good.url + "/{00000..00001}.tar")
        for ref in plan.images:
            ref.path = ref.path.replace(good.url, bad.url)
        got = read_refs(plan.images)
        shard = plan.images[0].path
        assert isinstance(got[0], OSError) and str(got[0]).startswith(f"{shard}: ") and (
            "the server ignores HTTP range requests, so tar members cannot be read from it. Download the shards and "
            "pass their folder as --root") in str(got[0])
        assert all(isinstance(g, OSError) for g in got)
        with pytest.raises(OSError, match="ignores HTTP range requests"):
            plan.images[0].read()  # one member at a time, the same words
    finally:
        good.close()
        bad.close()
