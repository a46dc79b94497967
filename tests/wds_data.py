"""Small img2dataset outputs written with `tarfile`: both layouts (webdataset tars, `files` folders) of the same samples."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg"


def jpeg(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def samples(shard: int, n: int = 4) -> list[tuple[str, dict[str, bytes]]]:
    """img2dataset's samples of one shard: key SSSSSIIII, KEY.jpg + KEY.txt + KEY.json.

    Shard 0: sample 1 is a corrupt JPEG, sample 2 has no caption, sample 3 is a PNG. Shard 1's last sample
    reuses shard 0's first image (same bytes, another caption): one image row, two items."""
    out = []
    for i in range(n):
        key = f"{shard:05d}{i:04d}"
        image = ("png", png(100 + i)) if (shard, i) == (0, 3) else ("jpg", jpeg(10 * shard + i))
        if (shard, i) == (0, 1):
            image = ("jpg", CORRUPT)
        if (shard, i) == (1, n - 1):
            image = ("jpg", jpeg(0))
        files = {image[0]: image[1], "txt": f"a photo number {i} of shard {shard}".encode(),
                 "json": json.dumps({"key": key, "url": f"https://example.com/{key}.jpg", "status": "success"}).encode()}
        if (shard, i) == (0, 2):
            del files["txt"]
        out.append((key, files))
    return out


def write_tar(path: Path, items: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, files in items:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def write_webdataset(root: Path, shards: int = 2) -> Path:
    """root/00000.tar ... plus the .parquet / _stats.json files img2dataset writes beside them (not read)."""
    for s in range(shards):
        write_tar(root / f"{s:05d}.tar", samples(s))
        (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": 4, "successes": 4}))
        (root / f"{s:05d}.parquet").write_bytes(b"PAR1 not read")
    return root


def write_files_layout(root: Path, shards: int = 2) -> Path:
    """img2dataset `--output_format files`: root/00000/000000000.jpg + .txt + .json."""
    for s in range(shards):
        for key, files in samples(s):
            for ext, data in files.items():
                (root / f"{s:05d}").mkdir(parents=True, exist_ok=True)
                (root / f"{s:05d}" / f"{key}.{ext}").write_bytes(data)
        (root / f"{s:05d}_stats.json").write_text("{}")
    return root


class ShardServer:
    """An http server on 127.0.0.1 for the files of a folder, answering as nginx or a bucket's https endpoint does:
    HEAD, GET, GET with `Range: bytes=a-b` (unless `ranges` is off), a Last-Modified and (with `etag`) an ETag per
    file; it counts the
    requests it answers: (method, file name, its Range header or None)."""

    def __init__(self, folder, etag=True, ranges=True):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                path = folder / self.path.lstrip("/")
                ranged = self.headers.get("Range") if ranges else None  # ranges=False: a server that ignores them
                seen.append((self.command, self.path.rsplit("/", 1)[-1], ranged))  # ranged: "bytes=a-b" or None
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                status, part = 200, data
                if ranged:
                    lo, _, hi = ranged.removeprefix("bytes=").partition("-")
                    part = data[int(lo):int(hi) + 1 if hi else len(data)]
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
                if etag:
                    self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
                if ranged:
                    self.send_header("Content-Range", f"bytes {lo}-{int(lo) + len(part) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(part)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
