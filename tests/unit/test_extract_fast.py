"""The fast extraction paths against their slow references: decode modes, several writers, the token codec."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
import zarr
from conftest import store_files
from PIL import Image
from torchvision import transforms as T
from typer.testing import CliRunner

from compalign.cache import CacheError, CacheReader
from compalign.cache.store import resume_command
from compalign.cli.main import app
from compalign.core import InputError
from compalign.core.decode import Draft, decode_draft, decode_image
from compalign.core.regions import region_boxes
from compalign.extract.backbones import load_backbone
from compalign.extract.decode_check import check_decode, sample_rows
from compalign.extract.gpu_decode import GpuPreprocess, check_gpu_decode
from compalign.extract.image_rows import ImageRows, fit_of, resize_of
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.sources import ImageRef


def _photo(seed: int, size: tuple[int, int]) -> bytes:
    """Smooth random content + noise as a quality-90 JPEG (benchmarks/common.py's coco_like_image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)).astype(int)
    img = Image.fromarray(np.clip(img + rng.integers(-12, 13, (*size, 3)), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return _photo(0, (1536, 2048))


def _rows(refs: list[ImageRef], bb, decode: str) -> torch.Tensor:
    ds = ImageRows(refs, bb.preprocess, decode=decode)
    return torch.stack([ds[i][1] for i in range(len(refs))])


def _ref(data: bytes) -> ImageRef:
    return ImageRef(key="k", origin="big.jpg", data=data)


def _global(bb, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.normalize(bb.encode_images(pixels, [-1]).global_, dim=-1)


def test_exact_is_the_checkpoints_preprocess_bit_for_bit(tiny, big_jpeg):
    assert torch.equal(_rows([_ref(big_jpeg)], tiny, "exact")[0], tiny.preprocess(decode_image(big_jpeg)))


def test_fast_decodes_a_large_jpeg_at_a_reduced_scale_and_stays_close(tiny, big_jpeg):
    # Measured (PIL 13, libjpeg-turbo; tiny's 64-px input): the 2048x1536 JPEG drafts to 256x192 (1/8 scale, the
    # shorter side still >= 64); after normalisation max |diff| 0.0600 (4 grey levels), mean 0.01168; cosine of
    # the tiny global embeddings 0.999983. Tolerances: one grey level (0.015) on the max, 10% on the mean, 5e-5
    # on the cosine (the spread of three seeds: mean 0.0116-0.0117, cosine 0.99993-0.99998).
    image, draft = decode_draft(big_jpeg, fit_of(resize_of(tiny.preprocess)))
    assert image.size == (256, 192) and draft == Draft((2048, 1536), (0, 0, 256, 192))
    exact, fast = _rows([_ref(big_jpeg)], tiny, "exact")[0], _rows([_ref(big_jpeg)], tiny, "fast")[0]
    diff = (fast - exact).abs()
    assert float(diff.max()) == pytest.approx(0.0600, abs=0.015)
    assert float(diff.mean()) == pytest.approx(0.01168, rel=0.1)
    g = _global(tiny, torch.stack([exact, fast]))
    assert float(g[0] @ g[1]) == pytest.approx(0.999983, abs=5e-5)


def test_fast_keeps_the_geometry_of_a_jpeg_whose_sides_the_draft_scale_does_not_divide(tiny):
    # 640x425 at 1/4 decodes to 160x107 pixels for 160x106.25 of image. Resized over all of them (as before),
    # the image was stretched by the partial row and the centre crop moved by a fraction of a pixel: measured,
    # mean |diff| 0.266 (max 1.53) of the normalised pixels, against 0.0101 for 640x428, which 4 divides. Resized
    # over the image's own extent (Draft.box): 0.0103 (max 0.060), as close as the divisible size.
    def moved(size: tuple[int, int]) -> torch.Tensor:
        ref = [_ref(_photo(1, size))]
        return (_rows(ref, tiny, "fast") - _rows(ref, tiny, "exact")).abs()

    image, draft = decode_draft(_photo(1, (425, 640)), fit_of(resize_of(tiny.preprocess)))
    assert image.size == (160, 107) and draft == Draft((640, 425), (0, 0, 160, 106.25))
    odd, even = moved((425, 640)), moved((428, 640))
    assert float(odd.mean()) == pytest.approx(0.0103, rel=0.1) and float(even.mean()) == pytest.approx(0.0101, rel=0.1)
    assert float(odd.max()) == pytest.approx(0.060, abs=0.015)


def test_fast_keeps_enough_pixels_for_each_crop_and_cuts_it_where_exact_does(tiny):
    # tiny resizes to 64 px: the whole 640x425 JPEG alone could draft at 1/4 (160x107), but the grid's third of it
    # (213x142) would then have 53x35 pixels for its 96x64, and be resized up. So the draft keeps 1/2 (320x213).
    # Measured: fast crops against exact ones, mean |diff| 0.0127 (max 0.114). Before (a 1/4 draft, each box
    # rounded to draft pixels, up to 2 full-size pixels off, and stretched by the rounding): 0.1588 (max 1.58).
    boxes = [np.asarray(region_boxes(), dtype=np.float32)]
    ref = [_ref(_photo(1, (425, 640)))]
    fast_rows = ImageRows(ref, tiny.preprocess, boxes=boxes, decode="fast")
    assert decode_draft(ref[0].data, fast_rows._keep(boxes[0]))[0].size == (320, 213)
    assert decode_draft(ref[0].data, fast_rows._keep(None))[0].size == (160, 107)
    exact, fast = ImageRows(ref, tiny.preprocess, boxes=boxes)[0][2], fast_rows[0][2]
    diff = (fast - exact).abs()
    assert exact.shape == fast.shape == (18, 3, 64, 64)
    assert float(diff.mean()) == pytest.approx(0.0127, rel=0.1) and float(diff.max()) == pytest.approx(0.114, abs=0.03)


def test_a_fast_dataset_crosses_to_a_spawned_worker(tiny):
    """Where DataLoader workers spawn (macOS, Windows) the dataset is pickled into each: nothing in it may be a
    closure."""
    rows = ImageRows([_ref(_photo(1, (425, 640)))], tiny.preprocess, decode="fast",
                     boxes=[np.asarray(region_boxes(), dtype=np.float32)])
    again = pickle.loads(pickle.dumps(rows))
    assert torch.equal(again[0][1], rows[0][1]) and torch.equal(again[0][2], rows[0][2])


@pytest.mark.parametrize("resize", [T.Resize(224), T.Resize(64, max_size=80), T.Resize((256, 192))],
                         ids=["shorter side", "max_size", "both sides"])
@pytest.mark.parametrize("size", [(640, 425), (425, 640), (299, 224), (224, 224), (1000, 100), (60, 900)])
def test_fit_is_the_size_torchvisions_resize_gives(resize, size):
    assert fit_of(resize)(*size) == resize(Image.new("RGB", size)).size


def test_fast_leaves_a_png_exact(tiny, tmp_path):
    buf = io.BytesIO()
    Image.open(io.BytesIO(_photo(1, (480, 640)))).save(buf, format="PNG")
    assert torch.equal(_rows([_ref(buf.getvalue())], tiny, "fast"), _rows([_ref(buf.getvalue())], tiny, "exact"))


def test_gpu_steps_run_the_same_preprocess_on_tensors(tiny, big_jpeg):
    # The device path's decode + resize/crop/normalise, here on the CPU (nvjpeg itself needs a GPU). Measured:
    # max |diff| 0.0150 (one grey level: torch's and PIL's bicubic round differently), mean 0.00069, cosine 0.999998.
    data = torch.frombuffer(bytearray(big_jpeg), dtype=torch.uint8)
    rows, pixels, errors = GpuPreprocess(tiny.preprocess, "cpu")([(7, data, "big.jpg")])
    assert rows == [7] and not errors
    exact = _rows([_ref(big_jpeg)], tiny, "exact")[0]
    diff = (pixels[0] - exact).abs()
    assert float(diff.max()) == pytest.approx(0.0150, abs=0.015)
    assert float(diff.mean()) == pytest.approx(0.00069, rel=0.2)
    g = _global(tiny, torch.stack([exact, pixels[0]]))
    assert float(g[0] @ g[1]) == pytest.approx(0.999998, abs=5e-5)


def test_gpu_workers_send_jpeg_bytes_and_decode_the_rest(tiny):
    png = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(png, format="PNG")
    truncated = _photo(2, (200, 300))[:-500]
    ds = ImageRows([_ref(_photo(2, (200, 300))), _ref(png.getvalue()), _ref(truncated)], tiny.preprocess, decode="gpu")
    jpeg, other, cut = ds[0], ds[1], ds[2]
    assert jpeg[1] is None and jpeg[4][0].dtype == torch.uint8 and other[1] is not None and other[4] is None
    assert cut[4] is None and "truncated" in cut[3]  # no end-of-image marker: the CPU path names the fault


def test_gpu_decode_on_a_cpu_host_is_refused_naming_the_others(pairs_dir, tmp_path):
    with pytest.raises(InputError, match="--decode exact .*--decode fast"):
        check_gpu_decode("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--decode exact"):
            extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(tmp_path / "g.zarr"),
                                  workers=0, decode="gpu", device="cpu"))
        assert not (tmp_path / "g.zarr").exists()


def test_a_store_remembers_its_decode_and_a_resume_must_match(pairs_dir, tmp_path):
    out = tmp_path / "s.zarr"
    extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0, decode="fast"))
    attrs = dict(zarr.open_group(str(out)).attrs)
    assert attrs["extraction"]["decode"] == "fast" and " --decode fast" in resume_command(attrs, out)
    with pytest.raises(CacheError, match="decode"):
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0))
    # a store of the earlier --decode fast, whose drafts were stretched by their partial pixel: not resumed
    root = zarr.open_group(str(out))
    root.attrs["extraction"] = {k: v for k, v in attrs["extraction"].items() if k != "draft_extent"}
    with pytest.raises(CacheError, match="draft_extent is None in the store, 'exact' now; pass --overwrite"):
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0, decode="fast"))


def test_three_writers_write_the_same_store_as_one(pairs_dir, tmp_path):
    stores = []
    for writers in (1, 3):
        out = tmp_path / f"w{writers}.zarr"
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0, shard_rows=2,
                              batch_size=2, writers=writers))
        stores.append(store_files(out, drop=("created",)))
    one, three = stores
    assert sum(k.startswith(".done/images/") for k in one) == 6 and sum(k.startswith(".done/texts/") for k in one) == 8
    assert one.keys() == three.keys()
    assert [k for k in one if one[k] != three[k]] == []  # chunks and done markers (with their checksums) alike


def test_token_codec_is_lossless_and_refused_when_malformed(pairs_dir, tmp_path):
    got = {}
    for codec in ("none", "zstd:3"):
        out = tmp_path / f"{codec.replace(':', '')}.zarr"
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0,
                              token_codec=codec))
        got[codec] = CacheReader(out)
        codecs = zarr.open_group(str(out))["images/patches"].compressors
        assert [type(c).__name__ for c in codecs] == ([] if codec == "none" else ["ZstdCodec"])
    rows = np.arange(12)
    assert np.array_equal(got["none"].read("images", "patches", rows), got["zstd:3"].read("images", "patches", rows))
    with pytest.raises(InputError, match="--token-codec is none or zstd:LEVEL"):
        ExtractConfig(model="tiny", data="pairs", root=".", out="x", token_codec="gzip")


def test_workers_auto_leaves_one_core_to_the_model():
    cfg = ExtractConfig(model="tiny", data="pairs", root=".", out="x")
    assert cfg.workers == max(1, len(os.sched_getaffinity(0)) - 1)
    assert ExtractConfig(model="tiny", data="pairs", root=".", out="x", workers=3).workers == 3


@pytest.mark.parametrize("workers, batch_bytes, free, ahead", [
    (0, 10, 0, 4),            # no workers: nothing crosses shared memory
    (2, 10, None, 4),         # no /dev/shm to measure (macOS): the default
    (2, 10, 10_000, 4),       # room for far more than 4 batches each: PREFETCH at most
    (2, 10, 80, 4),           # exactly 4 each
    (2, 10, 79, 3),           # one byte short of 4 each
    (2, 10, 20, 1),           # one each
    (2, 10, 19, 0),           # not one each: the caller refuses the run
])
def test_prefetch_fits_the_workers_batches_in_shared_memory(workers, batch_bytes, free, ahead):
    from compalign.extract.image_rows import prefetch_batches

    assert prefetch_batches(workers, batch_bytes, free) == ahead


def test_a_shared_memory_too_small_for_the_workers_is_refused_before_a_store_is_made(pairs_dir, tmp_path,
                                                                                     monkeypatch, caplog):
    import logging

    import compalign.extract.runner as runner

    batch = 8 * 3 * 64 * 64 * 4  # the tiny backbone's float32 pixels, --batch-size 8
    monkeypatch.setattr(runner, "shm_free", lambda: batch)  # room for one worker's batch, not two
    cfg = dict(model="tiny", data="pairs", root=str(pairs_dir), batch_size=8)
    with pytest.raises(InputError, match=r"/dev/shm has 0.4 MiB free; 2 decoding workers need at least 0.8 MiB there "
                                         r"\(one batch of 8 each\)\. Give it more \(docker run --shm-size=16g\)"):
        extract(ExtractConfig(**cfg, out=str(tmp_path / "no.zarr"), workers=2))
    assert not (tmp_path / "no.zarr").exists()
    monkeypatch.setattr(runner, "shm_free", lambda: 2 * batch)  # one batch each fits: fewer ready, same store
    with caplog.at_level(logging.WARNING, logger="compalign.extract.runner"):
        extract(ExtractConfig(**cfg, out=str(tmp_path / "one.zarr"), workers=2))
    assert "each of the 2 decoding workers keeps 1 batches ready instead of 4" in caplog.text
    extract(ExtractConfig(**cfg, out=str(tmp_path / "zero.zarr"), workers=0))
    one, zero = CacheReader(tmp_path / "one.zarr"), CacheReader(tmp_path / "zero.zarr")
    n = one.layout.n_images
    assert np.array_equal(one.read("images", "patches", np.arange(n)), zero.read("images", "patches", np.arange(n)))


def test_gpu_decode_is_refused_where_torchvision_cannot_decode_on_the_device(monkeypatch):
    """nvJPEG missing from the build, or a driver it cannot use: refused at the start, naming the cause. Unchecked,
    the run went on with every file taking the per-file fallback (PIL on the main process)."""
    import torchvision.io

    cpu_decode, asked = torchvision.io.decode_jpeg, []

    def decode_on(data, mode, device):  # the device's decoder, played by the CPU's
        asked.append(device)
        return cpu_decode(data, mode=mode)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_on)
    check_gpu_decode("cuda:1")
    assert asked == ["cuda:1"]

    def no_nvjpeg(data, mode, device):
        raise RuntimeError("torchvision not compiled with nvJPEG support\nmore lines")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_nvjpeg)
    with pytest.raises(InputError) as e:
        check_gpu_decode("cuda")
    assert str(e.value) == ("--decode gpu: this torchvision cannot decode JPEGs on cuda (torchvision not compiled with "
                            "nvJPEG support); use --decode fast (JPEG draft mode in the CPU workers) or --decode exact")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_photo(seed, (480, 640)))).save(buf, format="PNG")
    return buf.getvalue()


def _cosines(bb, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(each image's global cosine (n,), each patch token's (n, P)) between the features of pixels a and b."""
    with torch.no_grad():
        ea, eb = bb.encode_images(a, [-1]), bb.encode_images(b, [-1])
    cos = torch.nn.functional.cosine_similarity
    return cos(ea.global_, eb.global_, dim=-1), cos(ea.patches[-1], eb.patches[-1], dim=-1)


def test_a_fast_run_measures_what_its_decode_moves_on_its_own_images(tiny, tmp_path):
    files = {"0.jpg": _photo(3, (960, 1280)), "1.jpg": _photo(4, (960, 1280)), "2.png": _png(5),
             "3.jpg": b"not an image at all"}
    refs = [ImageRef(key=n, origin=n, data=d) for n, d in files.items()]
    check = check_decode(tiny, refs, "fast", "cpu")
    good = refs[:3]  # the junk file decodes neither way and is left out
    exact, fast = _rows(good, tiny, "exact"), _rows(good, tiny, "fast")
    diff = (fast - exact).abs()
    g, p = _cosines(tiny, exact, fast)
    assert check.images == 3
    assert check.pixel_mean == pytest.approx(float(diff.mean()), rel=1e-6)
    assert check.pixel_max == pytest.approx(float(diff.max()), rel=1e-6)
    assert (check.global_min, check.global_mean) == pytest.approx((float(g.min()), float(g.mean())), abs=1e-6)
    assert check.patch_mean == pytest.approx(float(p.mean()), abs=1e-6)
    assert float(diff[2].max()) == 0 and float(g[2]) == pytest.approx(1, abs=1e-6)  # a PNG: fast is exact

    # the same figures at the end of a real run, from the images of its plan; none for exact or a done rerun
    (tmp_path / "img").mkdir()
    for name, data in files.items():
        (tmp_path / "img" / name).write_bytes(data)
    (tmp_path / "pairs.jsonl").write_text("".join(f'{{"image": "img/{n}", "caption": "a photo {n}"}}\n' for n in files))
    cli = ["extract", "--model", "tiny", "--data", "pairs", "--root", str(tmp_path), "--workers", "0"]
    said = [" ".join(CliRunner().invoke(app, [*cli, *extra]).output.split())
            for extra in (["--out", str(tmp_path / "f.zarr"), "--decode", "fast"],
                          ["--out", str(tmp_path / "f.zarr"), "--decode", "fast"], ["--out", str(tmp_path / "e.zarr")])]
    assert (f"--decode fast vs exact on 3 of these images: normalised pixels moved by {check.pixel_mean:.4f} on average "
            f"(at most {check.pixel_max:.3f}); cosine with the exact features: global embedding min ") in said[0]
    assert "image failed" in said[0] and "vs exact" not in said[1] and "vs exact" not in said[2]
    # the store keeps what the run measured, and `cache info` shows it with the store; an exact store has none
    kept = dict(zarr.open_group(tmp_path / "f.zarr", mode="r").attrs)["decode_check"]
    assert kept["decode"] == "fast" and kept["images"] == 3
    assert kept["pixel_mean"] == pytest.approx(check.pixel_mean, rel=1e-6)
    assert kept["patch_mean"] == pytest.approx(check.patch_mean, abs=1e-6)
    info = [" ".join(CliRunner().invoke(app, ["cache", "info", str(tmp_path / z)]).output.split()) for z in ("f.zarr", "e.zarr")]
    assert (f"measured at extraction: --decode fast vs exact on 3 of its images: normalised pixels moved by "
            f"{check.pixel_mean:.4f} on average") in info[0]
    assert "measured at extraction" not in info[1]
    assert "decode_check" not in dict(zarr.open_group(tmp_path / "e.zarr", mode="r").attrs)


def test_the_gpu_decode_check_pairs_each_device_decoded_image_with_its_own_exact_one(tiny):
    # --decode gpu sends a JPEG to the device and decodes a PNG on the CPU, so a batch's pixels come back in
    # another order than its rows; here the device is the CPU (nvjpeg needs a GPU), whose figures
    # test_gpu_steps_run_the_same_preprocess_on_tensors measured: max |diff| one grey level, cosine 0.999998.
    jpeg = ImageRef(key="j", origin="j.jpg", data=_photo(6, (960, 1280)))
    png = ImageRef(key="p", origin="p.png", data=_png(7))
    alone, mixed = check_decode(tiny, [jpeg], "gpu", "cpu"), check_decode(tiny, [png, jpeg], "gpu", "cpu")
    assert alone.images == 1 and mixed.images == 2
    assert alone.pixel_max == pytest.approx(0.0150, abs=0.015) and mixed.pixel_max == alone.pixel_max
    assert mixed.pixel_mean == pytest.approx(alone.pixel_mean / 2, rel=1e-5)  # the PNG moved nothing
    assert alone.global_min == pytest.approx(0.999998, abs=5e-5) and mixed.global_min == alone.global_min
    assert mixed.global_mean == pytest.approx((alone.global_min + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("n_refs, broken, n, rows", [
    (3, (), 16, [0, 1, 2]),                  # fewer than asked: all of them
    (5, (1,), 16, [0, 2, 3, 4]),             # a row the plan already failed is never read
    (10, (), 4, [0, 3, 6, 9]),               # spread from the first row to the last
    (10, (0, 9), 3, [1, 5, 8]),              # over the readable rows alone
    (0, (), 16, []),
])
def test_the_decode_check_samples_readable_rows_across_the_plan(n_refs, broken, n, rows):
    refs = [ImageRef(key=str(i), origin=f"{i}.jpg", data=b"", error="gone" if i in broken else None)
            for i in range(n_refs)]
    assert sample_rows(refs, n) == rows
