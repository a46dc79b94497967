"""A batch of images read together: what a decoding worker asks for, in as few requests as the storage needs.

A worker that reads a bucket's objects one at a time waits a round trip (tens of milliseconds) per image, so
15 workers stall near 500 img/s whatever the GPU does. So a batch's URL reads go out at once: one fsspec
`cat_ranges` per filesystem, which the async ones (s3fs, gcsfs, http) run concurrently. And the members of a tar
shard that lie close together are fetched as one range (fsspec's merge_offset_ranges): webdataset writes a
sample's files side by side and a batch takes consecutive samples, so a batch from one shard is one ranged
GET instead of one per image, as webdataset's own readers stream a shard. Local files are read one by one:
the page cache and the kernel's readahead already serve them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from ...cache.location import whole_reads
from .base import ImageRef, is_url, range_ignored, url_fs

MERGE_GAP = 1 << 20  # bytes between two wanted members that are read through rather than split into two requests
MERGE_MAX = 64 << 20  # the most one merged request fetches: a batch's share of a shard, not the shard


def read_refs(refs: Sequence[ImageRef]) -> list[bytes | Exception]:
    """Each ref's bytes (what ImageRef.read gives), or the exception reading it raised: a row's failure."""
    out: list[bytes | Exception | None] = [None] * len(refs)
    by_fs: dict[int, tuple[object, list[tuple[int, str]]]] = {}  # id(fs) -> (fs, [(index, key)])
    for i, ref in enumerate(refs):
        if ref.data is None and ref.path is not None and is_url(ref.path):
            fs, key = url_fs(ref.path, ref.options)  # fsspec keeps one instance per protocol and options
            by_fs.setdefault(id(fs), (fs, []))[1].append((i, key))
        else:
            out[i] = _read_one(ref)
    for fs, wanted in by_fs.values():
        for i, got in _read_remote(fs, [(i, key, refs[i]) for i, key in wanted]):
            out[i] = got
    return out  # type: ignore[return-value]


def _read_one(ref: ImageRef) -> bytes | Exception:
    try:
        return ref.read()
    except Exception as e:  # an unreadable file is a failed row, as in ImageRows
        return e


def _read_remote(fs, wanted: list[tuple[int, str, ImageRef]]) -> list[tuple[int, bytes | Exception]]:
    """(index, bytes or exception) of refs on one filesystem: whole objects one request each, tar members merged
    into ranges; every request of the batch in one cat_ranges."""
    from fsspec.utils import merge_offset_ranges  # fsspec is there: a URL ref got this far (the `web` extra)

    whole = [(i, key) for i, key, ref in wanted if ref.offset is None]
    members = sorted((key, ref.offset, ref.offset + (ref.size or 0), i) for i, key, ref in wanted
                     if ref.offset is not None)
    spans = merge_offset_ranges([m[0] for m in members], [m[1] for m in members], [m[2] for m in members],
                                max_gap=MERGE_GAP, max_block=MERGE_MAX, sort=False)
    paths, starts, ends = [k for _, k in whole] + spans[0], [None] * len(whole) + spans[1], [None] * len(whole) + spans[2]
    got = fs.cat_ranges(paths, starts, ends, on_error="return", **whole_reads(fs)) if paths else []
    out: list[tuple[int, bytes | Exception]] = [(i, data) for (i, _), data in zip(whole, got)]
    span_of = list(zip(spans[0], spans[1]))  # (key, start) of each span, sorted as the members are
    refs = {i: ref for i, _, ref in wanted}
    for key, lo, hi, i in members:
        s = bisect_right(span_of, (key, lo)) - 1  # the span that starts at or before the member
        data, asked = got[len(whole) + s], spans[2][s] - spans[1][s]
        if not isinstance(data, Exception) and len(data) > asked:
            data = range_ignored(refs[i].path or key, asked, len(data))
        elif not isinstance(data, Exception):
            try:
                data = refs[i].member(data[lo - spans[1][s]:hi - spans[1][s]])
            except OSError as e:  # the shard ends early: this member's failure, not the batch's
                data = e
        out.append((i, data))
    return out
