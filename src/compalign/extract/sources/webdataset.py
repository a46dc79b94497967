"""Web-scale image-caption data: webdataset tar shards, and img2dataset's output folders.

webdataset   --root is a brace pattern (`shards/{00000..00009}.tar`), a glob (`shards/*.tar`), one .tar, a folder
             of .tar files, or any of those as a URL (`s3://bucket/{00000..00009}.tar`, https://; read through
             fsspec, each folder listed once).
             A sample is the members sharing a key (the member's path up to the first dot of its file name):
             KEY.jpg / .jpeg / .png / .webp the image, KEY.txt the caption, KEY.json metadata (img2dataset's
             `--output_format webdataset`). Tars are read uncompressed and by offset: the plan keeps
             (shard, offset, size) per image, never the bytes, and the DataLoader workers read those ranges.
             The planning cache keeps each shard's part of the plan by the shard's size and mtime or ETag, so an
             unchanged shard is replayed without being opened.
img2dataset  --root is img2dataset's output folder, either format: its *.tar shards (read as above), or the `files`
             layout, folders 00000/ holding 000000000.jpg + .txt + .json. The NNNNN.parquet and NNNNN_stats.json
             files beside them are not read (each sample's .json carries the same metadata).
Items: id (`shard/KEY`), image, caption, url (the metadata's, "" if none), shard. A sample without an image or a
caption is skipped and named in the problems; a corrupt image is planned and fails at decoding, recorded in its
image row's status, as with every source. An unreadable or truncated shard is a problem, not the end of the run.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...cache.location import location
from .base import Plan, PlanBuilder, SourceError, is_url, open_binary, read_bytes, register_source, url_fs
from .plan_cache import settled
from .remote import Remote, UrlPath, object_stamp

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has two
NUMERIC_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """`a/{00000..00002}.tar` -> a/00000.tar, a/00001.tar, a/00002.tar; `{x,y}` alternatives, nested and repeated.
    A range keeps the zero padding of its first bound (webdataset's and bash's convention)."""
    group = _first_group(pattern)
    if group is None:
        return [pattern]
    lo_at, hi_at, commas = group
    head, body, tail = pattern[:lo_at], pattern[lo_at + 1:hi_at], pattern[hi_at + 1:]
    rng = NUMERIC_RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        parts = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    elif commas:
        cuts = [lo_at, *commas, hi_at]
        parts = [pattern[a + 1:b] for a, b in zip(cuts, cuts[1:])]
    else:  # `{}` or `{x}`: not a pattern, kept literally (a file may have braces in its name)
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [out for p in parts for out in expand_braces(head + p + tail)]


def _first_group(pattern: str) -> tuple[int, int, list[int]] | None:
    """(position of the first `{`, of its matching `}`, of the commas at its own depth), or None."""
    depth, start, commas = 0, -1, []
    for i, c in enumerate(pattern):
        if c == "{":
            depth += 1
            start = i if depth == 1 else start
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                return start, i, commas
        elif c == "," and depth == 1:
            commas.append(i)
    return None


def _shards(root: str, options: dict[str, Any] | None = None
            ) -> tuple[list[str], list[str], dict[str, tuple[int, int | str, bool]]]:
    """(the shards to read, in order; the ones a pattern names that do not exist; each shard's planning-cache stamp,
    (size, mtime_ns or "etag:...", settled), for those that have one)."""
    if is_url(root):
        found, missing, stamps = _url_shards(root, options)
    else:
        found, missing = _local_shards(root)
        stamps = {p: (st.st_size, st.st_mtime_ns, settled(st.st_mtime_ns)) for p in found if (st := os.stat(p))}
    if not found:
        why = f"{len(missing)} shard(s) the pattern names do not exist (e.g. {missing[0]})" if missing else "no .tar shard there"
        raise SourceError(f"{root}: {why}. Pass --root as shards/{{00000..00009}}.tar, shards/*.tar, a .tar or a folder "
                          "of .tar files (img2dataset's `files` layout: --data img2dataset)")
    return found, missing, stamps


def _local_shards(root: str) -> tuple[list[str], list[str]]:
    found: list[str] = []
    missing: list[str] = []
    for name in expand_braces(root):
        path = Path(name)
        if any(c in name for c in "*?["):
            found += sorted(glob.glob(name))
        elif path.is_dir():
            found += sorted(str(p) for p in path.glob("*.tar"))
        elif path.is_file():
            found.append(name)
        else:
            missing.append(name)
    return [os.path.abspath(p) for p in found], missing


def _url_shards(root: str, options: dict[str, Any] | None
                ) -> tuple[list[str], list[str], dict[str, tuple[int, int | str, bool]]]:
    """_shards for a URL pattern: each folder the pattern names is listed once (a LIST per 1,000 shards), which
    says which shards exist and gives their ETags, so an unchanged shard is replayed from the planning cache
    without a byte of it read. An http(s) server has no listing: each shard is asked for its headers (HEAD)."""
    fs, _ = url_fs(expand_braces(root)[0], options)
    if not _http(fs):
        location(root, options).check()  # a missing bucket, bad credentials or endpoint: one error naming the fix
    remote = Remote(fs, options)
    missing: list[str] = []
    infos: dict[str, dict[str, Any]] = {}
    for name in expand_braces(root):
        key = fs._strip_protocol(name)
        if any(c in key for c in "*?["):
            infos.update(sorted(fs.glob(key, detail=True).items()))
            continue
        info = _url_info(remote, key)
        if info is not None and info.get("type") == "directory":
            infos.update((f"{key}/{n}", e) for n, e in sorted(remote.listing(key).items()) if n.endswith(".tar"))
        elif info is not None:
            infos[key] = info
        else:
            missing.append(name)
    found = [fs.unstrip_protocol(key) for key in infos]
    stamps = {fs.unstrip_protocol(k): stamp for k, i in infos.items() if (stamp := object_stamp(i))}
    return found, missing, stamps


def _url_info(remote: Remote, key: str) -> dict[str, Any] | None:
    """The listing entry of `key` (a HEAD where the filesystem cannot list: http), or None if nothing is there."""
    if _http(remote.fs):
        try:
            return remote.fs.info(key)
        except FileNotFoundError:
            return None
    return UrlPath(remote, key).info()


def _http(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in ("http", "https") for p in protocols)


def _split(member: str) -> tuple[str, str]:
    """(key, extension): webdataset's convention, the extension is everything after the first dot of the file name."""
    folder, _, name = member.rpartition("/")
    stem, dot, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _caption(data: bytes, where: str, b: PlanBuilder | _Shard) -> str | None:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        b.problem(f"{where}.txt: not UTF-8 (byte 0x{data[e.start]:02x} at {e.start}); sample skipped")
        return None
    if not text:
        b.problem(f"{where}.txt: empty caption; sample skipped")
        return None
    return text


def _url(data: bytes | None, where: str, b: PlanBuilder | _Shard) -> str:
    """The sample's source URL from its .json metadata ("" without one); malformed metadata is a problem, not a skip."""
    if data is None:
        return ""
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        b.problem(f"{where}.json: malformed metadata ({e}); metadata ignored")
        return ""
    url = meta.get("url") if isinstance(meta, dict) else None
    return url if isinstance(url, str) else ""


def _image_ext(b: PlanBuilder | _Shard, where: str, exts: dict[str, Any]) -> str | None:
    """The extension of a sample's image if it has an image and a caption, else None after naming what it lacks."""
    image = next((e for e in IMAGE_EXTS if e in exts), None)
    if image is None:
        b.problem(f"{where}: no image ({' / '.join('.' + e for e in IMAGE_EXTS)}; has {sorted(exts)}); sample skipped")
        return None
    if "txt" not in exts:
        b.problem(f"{where}: no .txt caption; sample skipped")
        return None
    return image


class _Shard:
    """One tar shard's part of the plan: the builder calls it makes, recorded as JSON-able entries so that the
    planning cache can replay an unchanged shard without opening it (plan_cache.py)."""

    def __init__(self, b: PlanBuilder, shard: str, options: dict[str, Any] | None):
        self.b, self.shard, self.options = b, shard, options
        self.name = shard.rsplit("/", 1)[-1]
        self.entries: list[list[Any]] = []

    def problem(self, msg: str) -> None:
        self.b.problem(msg)
        self.entries.append(["problem", msg])

    def sample(self, where: str, origin: str, offset: int, size: int, name: str, caption: str, url: str,
               read: Callable[[], bytes] | None = None, key: str | None = None) -> None:
        """A planned sample: its image, the member shard[offset : offset + size], hashed by `read` unless `key`."""
        key = self.b.image_member(origin, self.shard, offset, size, read, name=name, options=self.options, key=key)  # type: ignore[arg-type]
        self.b.item(id=where, image=key, caption=self.b.text(caption), url=url, shard=self.name)
        self.entries.append(["sample", where, origin, offset, size, name, key, caption, url])

    def replay(self, entries: list[list[Any]]) -> None:
        for kind, *args in entries:
            if kind == "problem":
                self.problem(*args)
            else:
                where, origin, offset, size, name, key, caption, url = args
                self.sample(where, origin, offset, size, name, caption, url, key=key)


def _read_tar(b: PlanBuilder, shard: str, stamp: tuple[int, int | str, bool] | None,
              options: dict[str, Any] | None = None) -> None:
    """Plan every sample of one tar shard, or replay what planning found in it while its `stamp` (size, mtime_ns or
    "etag:...", settled) is unchanged; `options`: the storage options of a URL shard."""
    log, cache = _Shard(b, shard, options), b.hashes if stamp is not None else None
    if cache is not None and (entries := cache.shard(shard, stamp[0], stamp[1])) is not None:  # type: ignore[index]
        log.replay(entries)
    elif _scan_tar(log) and cache is not None:
        cache.remember_shard(shard, stamp[0], stamp[1], log.entries, settled=stamp[2])  # type: ignore[index]


def _scan_tar(log: _Shard) -> bool:
    """Plan a shard from its bytes; False when a read failed (the network, the disk: maybe not next time), not when
    the bytes are bad (a truncated or corrupt tar reads the same next time: its problems are cached with it)."""
    name, shard = log.name, log.shard
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}  # key -> extension -> member, in order of first member
    complete = True
    try:
        with open_binary(shard, log.options) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            tf = tarfile.open(fileobj=f, mode="r:")  # reads through `f`, which the with closes
            try:
                for m in tf:  # headers only: tarfile seeks past each member's data
                    if m.isfile():
                        key, ext = _split(m.name)
                        samples.setdefault(key, {})[ext] = m
            except (tarfile.TarError, OSError) as e:
                log.problem(f"{name}: unreadable after {sum(map(len, samples.values()))} members ({e}); the rest skipped")
                complete = isinstance(e, tarfile.TarError)  # the bytes are bad (next time too); not the network
            # tarfile ends quietly at a header cut short, and plans a member whose data runs past the end.
            cut = [k for k, exts in samples.items() if any(m.offset_data + m.size > size for m in exts.values())]
            if cut:  # webdataset writes a sample's members together: one sample is cut, the rest are gone
                log.problem(f"{name}: truncated ({size} bytes; member {cut[0]!r} runs past the end): samples after "
                            "the cut are missing, and the one it cuts is skipped. Download the shard again")
            for key, exts in samples.items():
                where = f"{name}/{key}"
                ext = _image_ext(log, where, exts) if key not in cut else None
                if ext is None:
                    continue
                try:
                    caption = _caption(tf.extractfile(exts["txt"]).read(), where, log)  # type: ignore[union-attr]
                    if caption is None:
                        continue
                    url = _url(tf.extractfile(exts["json"]).read() if "json" in exts else None, where, log)  # type: ignore[union-attr]
                    m = exts[ext]
                    log.sample(where, f"{name}/{m.name}", m.offset_data, m.size, Path(m.name).name, caption, url,
                               read=lambda m=m: tf.extractfile(m).read())  # type: ignore[union-attr]
                except (tarfile.TarError, OSError) as e:  # a member cut short by a truncated shard
                    log.problem(f"{where}: unreadable ({e}); sample skipped")
                    complete = complete and isinstance(e, tarfile.TarError)
    except tarfile.ReadError as e:
        log.problem(f"{name}: not an uncompressed tar ({e}); shard skipped. Shards are read by offset: "
                    "decompress .tar.gz shards first (`gunzip -c x.tar.gz > x.tar`)")
    except OSError as e:
        log.problem(f"{name}: cannot be opened ({e}); shard skipped")
        complete = False
    return complete


def _plan_tars(kind: str, root: str, shards: list[str], missing: list[str],
               stamps: dict[str, tuple[int, int | str, bool]], options: dict[str, Any] | None = None) -> Plan:
    base = Path(os.path.commonpath([os.path.dirname(s) for s in shards])) if not is_url(root) else Path(".")
    b = PlanBuilder(kind, base)
    for name in missing:
        b.problem(f"{name}: shard not found; skipped")
    for shard in shards:
        _read_tar(b, shard, stamps.get(shard), options)
    b.info = {"dataset": kind, "layout": "webdataset", "shards": str(len(shards))}
    plan = b.build(Path(root))
    plan.root = root if is_url(root) else os.path.abspath(root)  # the pattern itself: what a resume reads again
    return plan


@register_source("webdataset", patterns=True)
def plan_webdataset(root: str, options: dict[str, Any] | None = None) -> Plan:
    root = root.removeprefix("file://")  # a local path in URL form
    return _plan_tars("webdataset", root, *_shards(root, options), options)


def _files_layout(root: Path | UrlPath) -> Plan:
    """img2dataset `--output_format files`: root/00000/000000000.jpg + .txt + .json, one folder per shard."""
    b = PlanBuilder("img2dataset", root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    for folder in folders:
        samples: dict[str, dict[str, Path | UrlPath]] = {}
        for p in sorted(folder.iterdir()):
            if p.is_file():
                key, ext = _split(p.name)
                samples.setdefault(key, {})[ext] = p
        texts = _read_all([p for exts in samples.values() for e, p in exts.items() if e in ("txt", "json")])
        for key, exts in samples.items():
            where = f"{folder.name}/{key}"
            ext = _image_ext(b, where, exts)
            if ext is None:
                continue
            failed = next((texts[exts[e]] for e in ("txt", "json") if isinstance(texts.get(exts.get(e)), OSError)), None)
            if failed is not None:
                b.problem(f"{where}: unreadable ({failed}); sample skipped")
                continue
            caption = _caption(texts[exts["txt"]], where, b)  # type: ignore[arg-type]
            url = _url(texts[exts["json"]] if "json" in exts else None, where, b)  # type: ignore[arg-type]
            if caption is None:
                continue
            image = b.image_file(f"{folder.name}/{exts[ext].name}")
            b.item(id=where, image=image, caption=b.text(caption), url=url, shard=folder.name)
    b.info = {"dataset": "img2dataset", "layout": "files", "shards": str(len(folders))}
    return b.build(root)


def _read_all(paths: list[Path | UrlPath]) -> dict[Path | UrlPath, bytes | OSError]:
    """The bytes of each small file (captions, metadata), or the OSError that stopped it. In a bucket a shard
    folder's files are read many requests at once (Remote.read_many): one round trip each would take hours
    over a million samples."""
    if paths and isinstance(paths[0], UrlPath):
        got = paths[0].remote.read_many([p.key for p in paths])  # type: ignore[union-attr]
        return {p: g if isinstance(g, bytes) else OSError(f"{p}: {g}") for p, (_, g) in zip(paths, got)}
    out: dict[Path | UrlPath, bytes | OSError] = {}
    for p in paths:
        try:
            out[p] = read_bytes(p)
        except OSError as e:
            out[p] = e
    return out


@register_source("img2dataset")
def plan_img2dataset(root: Path | UrlPath) -> Plan:
    if isinstance(root, UrlPath) and (tars := list(root.glob("*.tar"))):  # listed once, not globbed
        stamps = {str(t): stamp for t in tars if (stamp := object_stamp(t.info()))}
        return _plan_tars("img2dataset", str(root), [str(t) for t in tars], [], stamps, root.options)
    if isinstance(root, Path) and root.is_dir() and any(root.glob("*.tar")):
        return _plan_tars("img2dataset", str(root), *_shards(str(root)))
    if root.is_dir() and any(p.is_dir() and p.name.isdigit() for p in root.iterdir()):
        return _files_layout(root)
    raise SourceError(f"{root}: neither *.tar shards nor numbered folders (00000/) of an img2dataset output; pass "
                      "--root the --output_folder img2dataset wrote (formats webdataset or files)")
