"""The planning cache: a rerun hashes no unchanged image; a touched or rewritten one is hashed again; plans are equal."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import make_images
from wds_data import jpeg, write_webdataset

from compalign.extract.sources import PlanCache, cache_path, content_key, plan_source
from compalign.extract.sources import base as source_base

OLD = time.time() - 3600  # older than the settle time: such files are recorded


@pytest.fixture
def hashed(monkeypatch):
    """The list of byte strings hashed for image keys (every image read for planning goes through content_key)."""
    seen: list[bytes] = []

    def counting(data: bytes) -> str:
        seen.append(data)
        return content_key(data)

    monkeypatch.setattr(source_base, "content_key", counting)
    return seen


def _age(*paths, at: float = OLD) -> None:
    for p in paths:
        os.utime(p, (at, at))


def _pairs(root, n: int = 5):
    names = [f"{i}.png" for i in range(n)]
    make_images(root / "img", names)
    (root / "pairs.jsonl").write_text("\n".join(json.dumps({"image": f"img/{m}", "caption": f"c {m}"}) for m in names))
    _age(*(root / "img").iterdir())
    return root


def _plan(kind, root, db):
    cache = PlanCache(db)
    try:
        return plan_source(kind, root, hashes=cache), cache
    finally:
        cache.close()


def _same(a, b) -> None:
    assert a.fingerprint == b.fingerprint and a.items == b.items and a.texts == b.texts
    assert [(r.key, r.path, r.offset, r.size) for r in a.images] == [(r.key, r.path, r.offset, r.size) for r in b.images]


def test_rerun_reads_no_image_and_changed_files_are_hashed_again(tmp_path, hashed):
    root, db = _pairs(tmp_path / "p"), tmp_path / "cache.sqlite"
    first, c1 = _plan("pairs", root, db)
    assert (len(hashed), c1.hits, c1.misses) == (5, 0, 5)
    hashed.clear()
    again, c2 = _plan("pairs", root, db)
    assert (hashed, c2.hits, c2.misses) == ([], 5, 0)  # no image bytes were hashed
    _same(first, again)
    assert again.fingerprint == plan_source("pairs", root).fingerprint  # the same plan as without a cache

    # Rewritten with other pixels (and so another size or the same one: mtime moves either way); merely touched.
    make_images(root / "img", ["2.png"], seed=7)
    _age(root / "img" / "2.png", at=OLD + 10)
    _age(root / "img" / "3.png", at=OLD + 20)
    hashed.clear()
    changed, c3 = _plan("pairs", root, db)
    assert len(hashed) == 2 and (c3.hits, c3.misses) == (3, 2)
    assert changed.images[2].key == content_key((root / "img" / "2.png").read_bytes()) != first.images[2].key
    assert changed.images[3].key == first.images[3].key
    _same(changed, plan_source("pairs", root))
    hashed.clear()
    _plan("pairs", root, db)
    assert hashed == []  # both re-recorded


def test_a_file_younger_than_the_settle_time_is_not_trusted(tmp_path, hashed):
    root, db = _pairs(tmp_path / "p", n=2), tmp_path / "cache.sqlite"
    os.utime(root / "img" / "1.png")  # now: a rewrite within the mtime granularity could keep this mtime
    _plan("pairs", root, db)
    hashed.clear()
    _, c = _plan("pairs", root, db)
    assert (c.hits, c.misses) == (1, 1) and hashed == [(root / "img" / "1.png").read_bytes()]


def test_an_objects_stamp_is_its_etag_else_a_settled_last_modified():
    from email.utils import formatdate

    from compalign.extract.sources.remote import object_stamp

    old, now = formatdate(OLD, usegmt=True), formatdate(time.time(), usegmt=True)
    cases = [  # (listing / HEAD info, stamp)
        ({"size": 7, "ETag": '"a1"', "Last-Modified": old}, (7, 'etag:"a1"', True)),  # http: the ETag wins
        ({"size": 7, "etag": "a1"}, (7, "etag:a1", True)),  # gcsfs / adlfs spell it so
        ({"size": 7, "Content-MD5": "q8=="}, (7, "md5:q8==", True)),
        ({"size": 7, "Last-Modified": old}, (7, f"modified:{old}", True)),
        ({"size": 7, "Last-Modified": now}, (7, f"modified:{now}", False)),  # whole seconds: a rewrite may keep it
        ({"size": 7, "Last-Modified": "yesterday"}, (7, "modified:yesterday", False)),
        ({"size": 7}, None),  # nothing that changes with a write: read on every plan
        (None, None),
    ]
    assert [object_stamp(info) for info, _ in cases] == [stamp for _, stamp in cases]


def test_tar_members_are_cached_by_the_shard(tmp_path, hashed):
    root, db = write_webdataset(tmp_path / "s"), tmp_path / "cache.sqlite"
    _age(*root.glob("*.tar"))
    pattern = str(root / "{00000..00001}.tar")
    first, c1 = _plan("webdataset", pattern, db)
    assert c1.misses == 7 and len(hashed) == 7  # one lookup per planned sample (one image is in two samples)
    hashed.clear()
    again, c2 = _plan("webdataset", pattern, db)
    assert (hashed, c2.hits) == ([], 7)
    _same(first, again)
    # A rewritten shard: all of its members are hashed again, the other shard's are not.
    from wds_data import samples, write_tar
    items = samples(1)
    items[0][1]["jpg"] = jpeg(999)
    write_tar(root / "00001.tar", items)
    _age(root / "00001.tar", at=OLD + 5)
    hashed.clear()
    changed, c3 = _plan("webdataset", pattern, db)
    assert (c3.hits, c3.misses) == (3, 4) and content_key(jpeg(999)) in [r.key for r in changed.images]
    _same(changed, plan_source("webdataset", pattern))


@pytest.fixture
def opened(monkeypatch):
    """The tar shards planning opens (webdataset reads a shard's members through open_binary)."""
    from compalign.extract.sources import webdataset

    seen: list[str] = []

    def counting(path, options=None):
        seen.append(os.path.basename(path))
        return real(path, options)

    real = webdataset.open_binary
    monkeypatch.setattr(webdataset, "open_binary", counting)
    return seen


def test_an_unchanged_shard_is_replayed_with_its_problems_and_not_opened(tmp_path, hashed, opened):
    from wds_data import samples, write_tar

    root, db = tmp_path / "s", tmp_path / "cache.sqlite"
    write_tar(root / "00000.tar", samples(0))
    write_tar(root / "00001.tar", [("a", {"jpg": jpeg(1), "txt": b"caf\xe9"}), ("b", {"txt": b"no image here"}),
                                   ("d", {"jpg": jpeg(3), "txt": b"fine", "json": b"{not json"})])
    (root / "00002.tar").write_bytes((root / "00000.tar").read_bytes()[:8000])  # cut inside its third image
    _age(*root.glob("*.tar"))
    pattern = str(root / "{00000..00003}.tar")
    first, c1 = _plan("webdataset", pattern, db)
    assert opened == ["00000.tar", "00001.tar", "00002.tar"] and len(first.problems) == 7
    opened.clear(), hashed.clear()
    again, c2 = _plan("webdataset", pattern, db)
    assert (opened, hashed, c2.hits, c2.misses) == ([], [], c1.misses, 0) and c1.misses == len(first.items["id"]) == 6
    _same(first, again)
    assert again.problems == first.problems  # the missing 00003.tar, the bad samples, the cut, in the same order
    assert "00002.tar: unreadable after 7 members (unexpected end of data); the rest skipped" in again.problems
    assert [(r.origin, r.name) for r in again.images] == [(r.origin, r.name) for r in first.images]


def test_a_shard_that_failed_midway_is_read_again_next_time(tmp_path, opened, monkeypatch):
    from compalign.extract.sources import webdataset

    root, db = write_webdataset(tmp_path / "s"), tmp_path / "cache.sqlite"
    _age(*root.glob("*.tar"))
    pattern, counting = str(root / "{00000..00001}.tar"), webdataset.open_binary

    def flaky(path, options=None):  # the network drops while 00001.tar is read
        if path.endswith("00001.tar"):
            raise ConnectionResetError("connection reset by peer")
        return counting(path, options)

    monkeypatch.setattr(webdataset, "open_binary", flaky)
    cut, _ = _plan("webdataset", pattern, db)
    assert any("00001.tar: cannot be opened (connection reset by peer)" in p for p in cut.problems)
    monkeypatch.setattr(webdataset, "open_binary", counting)
    opened.clear()
    whole, c = _plan("webdataset", pattern, db)
    assert opened == ["00001.tar"] and c.hits == 3  # 00000.tar replayed, 00001.tar read now that it can be
    _same(whole, plan_source("webdataset", pattern))


def test_an_unreadable_cache_is_started_afresh(tmp_path, hashed):
    root, db = _pairs(tmp_path / "p", n=3), tmp_path / "cache.sqlite"
    db.write_bytes(b"not a sqlite file at all" * 100)
    plan, c = _plan("pairs", root, db)
    assert c.misses == 3
    _same(plan, plan_source("pairs", root))
    hashed.clear()
    _plan("pairs", root, db)
    assert hashed == []


def test_extract_keeps_the_cache_beside_the_store(tmp_path, hashed):
    from compalign.extract.runner import ExtractConfig, extract

    root, out = _pairs(tmp_path / "p", n=4), tmp_path / "c.zarr"
    cfg = dict(model="tiny", data="pairs", root=str(root), out=str(out), workers=0, shard_rows=8)
    extract(ExtractConfig(**cfg))
    assert cache_path(out) == tmp_path / ".c.zarr.plan-cache.sqlite" and cache_path(out).is_file()
    assert len(hashed) == 4
    hashed.clear()
    summary = extract(ExtractConfig(**cfg))  # a resume: every shard is done
    assert hashed == [] and summary.shards_skipped == 2
    extract(ExtractConfig(**cfg, overwrite=True))  # --overwrite replaces the store, not what is known of the inputs
    assert hashed == []
    extract(ExtractConfig(**cfg, plan_cache=False))
    assert len(hashed) == 4


@pytest.mark.parametrize("local, here, first", [(True, 2, True), (True, 1, True), (False, 2, True), (False, 1, False)])
def test_torchrun_ranks_replay_rank_0s_plan_where_they_read_its_cache(tmp_path, hashed, monkeypatch, local, here,
                                                                      first):
    """Under torchrun rank 0 plans first and the others replay its planning cache: each image is read once, not
    once per rank. Not for a store in a bucket whose ranks span machines (its cache is a file per machine): there
    they plan at once, as before. Each rank here is a call with its own Job, the barrier recorded."""
    from compalign.cache.location import location
    from compalign.extract import runner
    from compalign.extract.ranks import Job

    root = _pairs(tmp_path / "p", n=4)
    out = location(str(tmp_path / "s.zarr") if local else "s3://bucket/s.zarr")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a bucket store's cache file
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(here))
    events: list[str] = []
    monkeypatch.setattr(Job, "barrier", lambda self: events.append(f"barrier {self.rank}"))
    plan_source = runner.plan_source

    def planning(*a, **k):
        before = len(hashed)
        plan = plan_source(*a, **k)
        events.append(f"planned, {len(hashed) - before} hashed")
        return plan

    monkeypatch.setattr(runner, "plan_source", planning)
    cfg = runner.ExtractConfig(model="tiny", data="pairs", root=str(root), out=str(out))
    _same(*(runner._plan(cfg, out, Job(rank, 2)) for rank in (0, 1)))  # rank 1 after rank 0: as the barrier orders
    if first:
        assert events == ["planned, 4 hashed", "barrier 0", "barrier 1", "planned, 0 hashed"]
    else:  # no barrier: in a real job both plan at once, and each hashes what earlier runs left unknown
        assert events == ["planned, 4 hashed", "planned, 0 hashed"]
