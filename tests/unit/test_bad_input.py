"""Bad input never kills a run and never loses written rows: each case is a recorded failure or a clear error."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from compalign.cache import open_cache
from compalign.core.decode import DecodeError, decode_image
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.sources import SourceError, plan_source


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header claims 1.6 gigapixels (the data is a few bytes): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _rgb(seed: int, size=(24, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    img = root / "img"
    img.mkdir(parents=True)
    good = Image.fromarray(_rgb(0))
    good.save(img / "good.jpg")
    jpeg = (img / "good.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (img / "corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (img / "zero.jpg").write_bytes(b"")
    Image.fromarray(_rgb(1)[..., 0]).save(img / "gray.png")
    Image.fromarray(_rgb(2)).convert("CMYK").save(img / "cmyk.jpg")
    Image.fromarray(np.dstack([_rgb(3), np.full((24, 30), 128, np.uint8)])).save(img / "rgba.png")
    ramp = (np.linspace(0, 65535, 24 * 30).reshape(24, 30)).astype(np.uint16)
    Image.fromarray(ramp).save(img / "sixteen.png")
    (img / "bomb.png").write_bytes(_bomb_png())
    (root.parent / "outside.png").write_bytes(_png_bytes(Image.fromarray(_rgb(4))))
    rows = [
        {"image": "img/good.jpg", "caption": "a good picture"},
        {"image": "img/truncated.jpg", "caption": "truncated jpeg"},
        {"image": "img/corrupt.jpg", "caption": "corrupt jpeg"},
        {"image": "img/zero.jpg", "caption": "zero bytes"},
        {"image": "img/missing.jpg", "caption": "missing file"},
        {"image": "img/gray.png", "caption": "grayscale"},
        {"image": "img/cmyk.jpg", "caption": "cmyk"},
        {"image": "img/rgba.png", "caption": "rgba"},
        {"image": "img/sixteen.png", "caption": "sixteen bit"},
        {"image": "img/bomb.png", "caption": "bomb"},
        {"image": "../outside.png", "caption": "escapes the root"},
        {"image": "img/good.jpg", "caption": ""},
        {"image": "img/good.jpg", "caption": "word " * 200},
        {"caption": "no image field"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"image": "img/good.jpg", "caption": ')  # malformed JSON line 4
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_messy_folder_extracts_with_every_problem_recorded(messy, tmp_path):
    out = tmp_path / "m.zarr"
    s = extract(ExtractConfig(model="tiny", data="pairs", root=str(messy), out=str(out), workers=1,
                              batch_size=4, shard_rows=4))
    r = open_cache(out)
    origin = r.root["images/origin"][:].tolist()
    ok = dict(zip(origin, r.ok("images").tolist()))
    for name in ("good.jpg", "gray.png", "cmyk.jpg", "rgba.png", "sixteen.png"):
        assert ok[f"img/{name}"], name
    reasons = {o: e for _, o, e in r.failures("images")}
    assert set(reasons) == {"img/truncated.jpg", "img/corrupt.jpg", "img/zero.jpg", "img/missing.jpg",
                            "img/bomb.png", "../outside.png"}
    assert "truncated" in reasons["img/truncated.jpg"].lower() or "broken" in reasons["img/truncated.jpg"].lower()
    assert "0 bytes" in reasons["img/zero.jpg"]
    assert "not found" in reasons["img/missing.jpg"]
    assert "bomb" in reasons["img/bomb.png"]
    assert "escapes the data root" in reasons["../outside.png"]
    assert all(reason.startswith(("img/", "file not found", "path ")) for reason in reasons.values())
    # failed rows are zero, good rows are not
    g = r.root["images/global"][:]
    status = r.ok("images")
    assert not g[~status].any() and (np.abs(g[status]).sum(1) > 0).all()
    # captions: the empty one failed, the long one is flagged truncated, both problems named with their line
    strings = r.root["texts/strings"][:].tolist()
    assert r.failures("texts") == [(strings.index(""), "", "empty caption")]
    trunc = r.root["texts/truncated"][:]
    assert trunc[strings.index("word " * 200)] and trunc.sum() == 1
    assert any("line 4" in p and "malformed JSON" in p for p in s.problems)
    assert any("line 15" in p and "'image'" in p for p in s.problems)


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    img = decode_image(_png_bytes(Image.fromarray(ramp)))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.min() == 0 and arr.max() == 255 and 100 < arr.mean() < 155


def test_decode_errors_name_the_problem():
    with pytest.raises(DecodeError, match="0 bytes"):
        decode_image(b"")
    with pytest.raises(DecodeError, match="bomb"):
        decode_image(_bomb_png())


def test_malformed_sugarcrepe_json_names_file_line_and_fix(tmp_path):
    (tmp_path / "swap_att.json").write_text('{"0": {"filename": "a.jpg", "caption": "x",}')
    with pytest.raises(SourceError, match=r"swap_att.json: malformed JSON at line 1.*Re-download"):
        plan_source("sugarcrepe", tmp_path)


def test_sugarcrepe_item_missing_fields_is_skipped_and_named(tmp_path):
    (tmp_path / "val2017").mkdir()
    Image.fromarray(_rgb(0)).save(tmp_path / "val2017" / "a.jpg")
    data = {"0": {"filename": "a.jpg", "caption": "x", "negative_caption": "y"}, "1": {"filename": "a.jpg", "caption": "x"}}
    (tmp_path / "swap_obj.json").write_text(json.dumps(data))
    plan = plan_source("sugarcrepe", tmp_path)
    assert plan.items["id"] == ["swap_obj/0"]
    assert plan.problems == ["swap_obj.json item '1': missing or non-text field(s) negative_caption; skipped"]


def test_malformed_parquet_and_missing_columns_are_clear_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=r"test.parquet: not a readable parquet file"):
        plan_source("bivlc", tmp_path / "bad")
    (tmp_path / "cols").mkdir()
    pq.write_table(pa.table({"caption": ["a"], "image": [{"bytes": b"", "path": "x"}]}), tmp_path / "cols" / "t.parquet")
    with pytest.raises(SourceError, match=r"t.parquet: missing column\(s\) negative_caption, negative_image, type, subtype"):
        plan_source("bivlc", tmp_path / "cols")


def test_bivlc_rows_with_missing_image_bytes_are_recorded_failures(tmp_path):
    good = _png_bytes(Image.fromarray(_rgb(5)))
    other = _png_bytes(Image.fromarray(_rgb(6)))
    table = pa.table({
        "image": [{"bytes": good, "path": "a.png"}, {"bytes": None, "path": "b.png"}],
        "caption": ["a red thing", "a blue thing"],
        "negative_caption": ["a blue thing", "a red thing"],
        "negative_image": [{"bytes": other, "path": "c.png"}, {"bytes": good, "path": "a.png"}],
        "type": ["swap", "replace"], "subtype": ["att", "obj"],
    })
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "test.parquet")
    out = tmp_path / "b.zarr"
    extract(ExtractConfig(model="tiny", data="bivlc", root=str(tmp_path / "data"), out=str(out), workers=0))
    r = open_cache(out)
    assert r.layout.n_images == 3  # `good` is used twice and stored once
    assert [o for _, o, _ in r.failures("images")] == ["test.parquet#1:image"]
