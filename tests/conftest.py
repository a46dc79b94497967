"""Shared fixtures: small generated datasets in every format the sources read."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from standin import DATA as DATA  # re-exported: test modules import DATA from here
from standin import sugarcrepe_standin

logging.getLogger().setLevel(logging.ERROR)  # open_clip logs config resolution on the root logger


@pytest.fixture(autouse=True, scope="session")
def _user_cache_folder(tmp_path_factory: pytest.TempPathFactory):
    """The user's cache folder (a bucket store's planning cache goes there) inside the tests' tmp, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def store_files(store: Path | str, drop: tuple[str, ...] = (), fs=None) -> dict[str, bytes]:
    """Every file of a local store (or every object under the prefix `store` of the fsspec filesystem `fs`) by
    its path, to compare two stores byte for byte; `drop`: the root attributes that may differ between equal
    stores ("created": when; "source.root": where the data was read from)."""
    if fs is None:
        out = {str(f.relative_to(store)): f.read_bytes() for f in sorted(Path(store).rglob("*")) if f.is_file()}
    else:
        fs.invalidate_cache()  # a listing cached earlier would not show what was written since
        out = {k[len(str(store)) + 1:]: fs.cat_file(k) for k in sorted(fs.find(store))}
    if drop:
        root = json.loads(out.pop("zarr.json"))
        for name in drop:
            *parents, last = name.split(".")
            at = root["attributes"]
            for part in parents:
                at = at[part]
            at.pop(last)  # KeyError if it is not there: a test that drops a name expects it
        out["zarr.json"] = json.dumps(root, sort_keys=True).encode()
    return out


def make_images(folder: Path, names: list[str], size: tuple[int, int] = (40, 56), seed: int = 0) -> None:
    """Distinct random RGB images (distinct content, so content-hash dedup keeps them all)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / name)


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """12 images, 16 captions (some images have two), as pairs.jsonl."""
    root = tmp_path / "pairs"
    names = [f"{i:03d}.png" for i in range(12)]
    make_images(root / "img", names)
    rows = [{"image": f"img/{n}", "caption": f"a picture of thing number {i}"} for i, n in enumerate(names)]
    rows += [{"image": f"img/{names[i]}", "caption": "another caption that is a little longer " * (i + 1)} for i in range(4)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="session")
def sugarcrepe_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sugarcrepe_standin(tmp_path_factory.mktemp("sugarcrepe"))


@pytest.fixture(scope="session")
def sugarcrepe_tiny_cache(sugarcrepe_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 7 subsets extracted once with the tiny backbone (shared by the scoring tests)."""
    from compalign.extract.runner import ExtractConfig, extract

    out = tmp_path_factory.mktemp("caches") / "sc.zarr"
    extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(sugarcrepe_root), out=str(out),
                          batch_size=256, workers=0, shard_rows=1024))
    return out


def mini_sugarcrepe(root: Path, n: int = 6, subsets: tuple[str, ...] = ("swap_att", "replace_obj"),
                    corrupt: bool = False) -> Path:
    """A SugarCrepe root with `n` items in each of `subsets` and one generated image per item (or junk bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{i:012d}.jpg" for i in range(n)]
    if corrupt:
        (root / "val2017").mkdir(exist_ok=True)
        for name in names:
            (root / "val2017" / name).write_bytes(b"not a jpeg " + name.encode())
    else:
        make_images(root / "val2017", names, size=(32, 32))
    for s in subsets:
        items = {str(i): {"filename": name, "caption": f"a red square number {i}",
                          "negative_caption": f"a blue circle number {i} in {s}"} for i, name in enumerate(names)}
        (root / f"{s}.json").write_text(json.dumps(items))
    return root


@pytest.fixture(scope="session")
def mini_sc_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny-backbone store of mini_sugarcrepe, several shards per array; copy it before damaging it."""
    from compalign.extract.runner import ExtractConfig, extract

    base = tmp_path_factory.mktemp("mini")
    root = mini_sugarcrepe(base / "sc")
    out = base / "sc.zarr"
    extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root), out=str(out), workers=0, shard_rows=4))
    return out


BUCKET = "compalign-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint with an empty bucket BUCKET; yields the s3fs filesystem that sees it. The server runs in this
    process (moto's server mode on 127.0.0.1, a free port); compalign and its subprocesses reach it the standard
    way, through AWS_ENDPOINT_URL and the AWS_* credentials, as they would reach AWS or MinIO."""
    try:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        # moto keeps its buckets in this process, not in the server: an earlier module's would still be there
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
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
