"""`extract --crops`: grid and oracle boxes cropped, encoded alone and cached; resume; the regions_crops /
regions_oracle heads against numpy; the world's boxes.jsonl; the messages."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_images
from PIL import Image
from recompute import expected_region_scores, unit
from typer.testing import CliRunner

from compalign.cache import CacheError, CacheReader
from compalign.cache.store import resume_command
from compalign.cli.main import app
from compalign.core import InputError, MissingFileError, NotFoundError
from compalign.core.regions import region_boxes
from compalign.evaluate.benchmarks import create_benchmark
from compalign.extract.backbones import load_backbone
from compalign.extract.crops import canonical_spec, parse_crops, pixel_box
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head
from compalign.shapes import WorldConfig, load_scenes, write_world

W, H = 56, 40  # non-square images, so a swapped width and height would show
# The 18 boxes of `grid` on a 56 x 40 image, by hand: x edges of thirds 0, 18.67 -> 19, 37.33 -> 37, 56;
# y edges 0, 13.33 -> 13, 26.67 -> 27, 40; the halves span 60%: 33.6 -> 34, 22.4 -> 22, 24, 16.
HAND = [(0, 0, 56, 40),
        (0, 0, 28, 20), (28, 0, 56, 20), (0, 20, 28, 40), (28, 20, 56, 40),
        (0, 0, 19, 13), (19, 0, 37, 13), (37, 0, 56, 13),
        (0, 13, 19, 27), (19, 13, 37, 27), (37, 13, 56, 27),
        (0, 27, 19, 40), (19, 27, 37, 40), (37, 27, 56, 40),
        (0, 0, 34, 40), (22, 0, 56, 40), (0, 0, 56, 24), (0, 16, 56, 40)]


def _chunks(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file() and "/c/" in str(f)}


def _encode(bb, images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        return bb.model.encode_image(torch.stack([bb.preprocess(im) for im in images])).numpy()


# ---- the SPEC and the pixels of a box ----------------------------------------------------------------------------

def test_a_spec_names_a_grid_the_oracle_or_both_and_anything_else_lists_the_forms():
    assert parse_crops("grid") == (((1, 2, 3), True), False) == parse_crops("1,2,3+halves")
    assert parse_crops("1,2") == (((1, 2), False), False) and parse_crops("oracle") == (None, True)
    assert parse_crops("oracle+1,2+halves") == (((1, 2), True), True)
    assert [canonical_spec(s) for s in ("1,2,3+halves", " 2,4+halves ", "1,2", "oracle", "oracle+grid", "1,2+oracle")] == [
        "grid", "2,4+halves", "1,2", "oracle", "grid+oracle", "1,2+oracle"]
    assert ExtractConfig(model="tiny", data="pairs", root=".", out="x", crops="1,2,3+halves").crops == "grid"
    for bad in ("", "0,1", "1,1", "1,2+quarters", "tiles", "oracle+oracle", "grid+halves", "grid+grid"):
        with pytest.raises(InputError, match=r"--crops is none, grid, oracle, grid\+oracle, or grid sizes such as 1,2 or "
                                             rf"1,2,3\+halves \(\+oracle\) \(got {re.escape(repr(bad))}\)"):
            ExtractConfig(model="tiny", data="pairs", root=".", out="x", crops=bad)


def test_a_box_becomes_rounded_pixels_at_least_one_wide_inside_the_image():
    assert [pixel_box(b, W, H) for b in region_boxes()] == HAND
    assert pixel_box((0.5, 0.5, 0.501, 0.502), 10, 10) == (5, 5, 6, 6)  # under a pixel: one pixel
    assert pixel_box((0.999, 0.999, 1, 1), 10, 10) == (9, 9, 10, 10)  # at the edge: the last pixel
    assert pixel_box((0.25, 0.5, 0.75, 1.0), 64, 64) == (16, 32, 48, 64)


# ---- grid crops in the cache -------------------------------------------------------------------------------------

CAPTIONS = ["a red square and a blue circle", "a small green triangle", "a large yellow star above a red cross",
            "a purple diamond", "a blue circle to the left of a green square", "a cyan star", "a red circle"]


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crops") / "sc"
    names = [f"{i:012d}.png" for i in range(6)]
    make_images(root / "val2017", names, size=(H, W))
    shutil.copy(root / "val2017" / names[2], root / "val2017" / "000000000099.png")  # same bytes, another name
    names.append("000000000099.png")
    items = {str(i): {"filename": n, "caption": CAPTIONS[i], "negative_caption": CAPTIONS[(i + 1) % len(CAPTIONS)]}
             for i, n in enumerate(names)}
    (root / "swap_att.json").write_text(json.dumps(items))
    return root


def _grid_cfg(root: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(**{"model": "tiny", "data": "sugarcrepe", "root": str(root), "out": str(out), "workers": 0,
                            "shard_rows": 4, "batch_size": 5, "segments": "rules", "crops": "grid", **kw})


@pytest.fixture(scope="module")
def grid_cache(grid_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crops-cache") / "sc.zarr"
    extract(_grid_cfg(grid_root, out, workers=1))  # crops are cut in the decode worker
    return out


def test_each_grid_crop_is_the_box_cut_from_the_image_and_encoded_alone(grid_root, grid_cache):
    r = CacheReader(grid_cache)
    assert r.attrs["extraction"]["crops"] == {"spec": "grid", "boxes": region_boxes().tolist()}
    assert resume_command(r.attrs, grid_cache).endswith("--segments rules --crops grid")
    assert r.layout.n_images == 6  # the copy under another name is the same image: one row, its crops once
    crops = r.gather("images", ("global", "regions_crops"), np.arange(6))
    assert sorted(crops) == ["global", "regions_crops"] and crops["regions_crops"].shape == (6, 18, r.layout.embed_dim)
    bb = load_backbone("tiny")
    for row, origin in enumerate(r.column("images/origin")):
        image = Image.open(grid_root / "val2017" / str(origin)).convert("RGB")
        assert image.size == (W, H)
        want = _encode(bb, [image.crop(box) for box in HAND])  # my own crops of the 18 boxes
        np.testing.assert_allclose(crops["regions_crops"][row], want, atol=1e-5)
    # the first box is the whole image: its crop is the image itself
    np.testing.assert_allclose(crops["regions_crops"][:, 0], crops["global"], atol=1e-5)


def test_a_removed_crops_chunk_or_an_unfinished_shard_is_redone_alone(grid_root, grid_cache, tmp_path):
    store = tmp_path / "sc.zarr"
    shutil.copytree(grid_cache, store)
    good = _chunks(store)
    victim = "images/regions/crops/c/1/0/0"
    (store / victim).unlink()
    with pytest.raises(CacheError, match="images shard 1 is marked done but its chunk file is gone"):
        CacheReader(store).gather("images", ("regions_crops",), np.array([4]))
    s = extract(_grid_cfg(grid_root, store))
    assert s.shards_written == 1 and s.repaired == [f"images shard 1 was damaged ({victim} is missing): rewritten"]
    assert _chunks(store) == good  # the lost file came back byte for byte (workers 0 now, 1 before)

    # killed before image shard 0 was durable: no marker, and none of the files it lists written
    marker = store / ".done/images/000000"
    files = json.loads(marker.read_text())["files"]
    assert "images/regions/crops/c/0/0/0" in files and len(files) == 6  # global, status, error, patches, prefix, crops
    marker.unlink()
    for f in files:
        (store / f).unlink()
    s = extract(_grid_cfg(grid_root, store))
    texts = CacheReader(store).shards_done()["texts"][1]
    assert (s.shards_written, s.shards_skipped, s.repaired) == (1, texts + 1, [])  # every text shard and image shard 1 kept
    assert _chunks(store) == good


def test_a_resume_with_other_crops_is_refused_naming_the_setting(grid_root, grid_cache, tmp_path):
    store = tmp_path / "sc.zarr"
    shutil.copytree(grid_cache, store)
    before = _chunks(store)
    with pytest.raises(CacheError, match=r"a different extraction: crops.spec is 'grid' in the store, '1,2' now; "
                                         r"pass --overwrite"):
        extract(_grid_cfg(grid_root, store, crops="1,2"))
    with pytest.raises(CacheError, match=r"crops is \{'spec': 'grid', 'boxes': \[\[0.0, .*\.\.\. in the store, None now"):
        extract(_grid_cfg(grid_root, store, crops="none"))
    assert _chunks(store) == before


@pytest.mark.parametrize("name, mix", [("regions_crops", 0.5), ("regions_crops_only", 1.0)])
def test_regions_crops_scores_are_the_mixed_best_crop_cosines_of_the_cache(grid_cache, name, mix):
    r = CacheReader(grid_cache)
    result = create_benchmark("sugarcrepe").evaluate(r, create_head(name))
    crops = unit(r.read("images", "regions/crops", r.rows("images", r.items["image"])))  # (n, 18, E)
    want = expected_region_scores(r, list(crops), mix)
    for field in ("pos", "neg"):
        np.testing.assert_allclose([i[field] for i in result.items], want[field], atol=1e-5)


# ---- the oracle: a shapes world's true object boxes ----------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=2, n_test_id=6, n_test_ood=2, seed=3), out)
    return out


def _fractions(scene) -> list[list[float]]:
    return [[v / scene.canvas for v in o.box] for o in scene.objects]


def _boxes_file(path: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(sorted(r) == ["boxes", "image"] for r in rows) and len({r["image"] for r in rows}) == len(rows)
    return {r["image"]: r["boxes"] for r in rows}


def test_the_world_writes_every_images_object_boxes_beside_each_benchmark(world):
    for split in ("test_id", "test_ood"):
        scenes = load_scenes(world / split / "scenes.jsonl")
        for folder in ("sugarcrepe", "retrieval"):
            assert _boxes_file(world / split / folder / "boxes.jsonl") == {name: _fractions(s) for name, s in scenes.items()}
        negs = load_scenes(world / split / "bivlc" / "negative_scenes.jsonl")
        table = pq.read_table(world / split / "bivlc" / "test.parquet").to_pylist()
        want = {row["image"]["path"]: _fractions(scenes[row["image"]["path"]]) for row in table}
        want |= {row["negative_image"]["path"]: _fractions(negs[row["negative_image"]["path"]]) for row in table}
        assert _boxes_file(world / split / "bivlc" / "boxes.jsonl") == want and len(want) > len(table) / 2


@pytest.fixture(scope="module")
def oracle_caches(world, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("oracle")
    out = {}
    for name, data, crops in (("sugarcrepe", "sugarcrepe", "oracle"), ("bivlc", "bivlc", "oracle"),
                              ("grid", "sugarcrepe", "grid"), ("both", "sugarcrepe", "oracle+grid")):
        out[name] = base / f"{name}.zarr"
        extract(ExtractConfig(model="tiny", data=data, root=str(world / "test_id" / data), out=str(out[name]),
                              workers=0, shard_rows=4, batch_size=8, segments="rules", crops=crops))
    return out


def _oracle_rows(world: Path, r: CacheReader, data: str) -> list[tuple]:
    """(scene, PIL image) of each image row: by file name (SugarCrepe) or by its parquet cell (BiVLC)."""
    split = world / "test_id"
    origins = [str(o) for o in r.column("images/origin")]
    if data == "sugarcrepe":
        scenes = load_scenes(split / "scenes.jsonl")
        return [(scenes[o], Image.open(split / "sugarcrepe" / "val2017" / o)) for o in origins]
    scenes = load_scenes(split / "scenes.jsonl") | load_scenes(split / "bivlc" / "negative_scenes.jsonl")
    table = pq.read_table(split / "bivlc" / "test.parquet").to_pylist()
    out = []
    for origin in origins:  # test.parquet#ROW:COLUMN
        row, col = origin.split("#")[1].split(":")
        cell = table[int(row)][col]
        out.append((scenes[cell["path"]], Image.open(io.BytesIO(cell["bytes"]))))
    return out


@pytest.mark.parametrize("data", ["sugarcrepe", "bivlc"])
def test_oracle_stores_exactly_each_images_object_boxes_and_their_crops(world, oracle_caches, data):
    r = CacheReader(oracle_caches[data])
    scenes, images = zip(*_oracle_rows(world, r, data))
    n = [len(s.objects) for s in scenes]
    R = max(n)
    assert r.attrs["extraction"]["crops"] == {"spec": "oracle", "oracle": {"boxes_file": "boxes.jsonl", "max_boxes": R,
                                                                          "boxes_sha256": ANY}}
    rows = np.arange(r.layout.n_images)
    boxes, mask = r.read("images", "regions/oracle_boxes", rows), r.read("images", "regions/oracle_mask", rows)
    assert boxes.shape == (len(rows), R, 4) and mask.tolist() == [[j < k for j in range(R)] for k in n]
    for row, scene in enumerate(scenes):
        want = np.zeros((R, 4))
        want[:n[row]] = _fractions(scene)
        np.testing.assert_array_equal(boxes[row], want)  # exactly the scene's boxes, zero past them
    b = r.gather("images", ("regions_oracle",), rows)
    assert sorted(b) == ["regions_oracle", "regions_oracle_mask"] and b["regions_oracle"].shape == (len(rows), R, 128)
    np.testing.assert_array_equal(b["regions_oracle_mask"], mask)
    assert (b["regions_oracle"][~mask] == 0).all()
    bb = load_backbone("tiny")
    for row in (0, len(rows) - 1):  # each object's own pixels, cropped by me and encoded alone
        want = _encode(bb, [images[row].convert("RGB").crop(o.box) for o in scenes[row].objects])
        np.testing.assert_allclose(b["regions_oracle"][row, :n[row]], want, atol=1e-5)


def test_one_store_holds_grid_and_oracle_crops_as_two_stores_would(oracle_caches):
    both, grid, oracle = (CacheReader(oracle_caches[k]) for k in ("both", "grid", "sugarcrepe"))
    assert both.attrs["extraction"]["crops"] == {**grid.attrs["extraction"]["crops"], **oracle.attrs["extraction"]["crops"],
                                                 "spec": "grid+oracle"}
    assert resume_command(both.attrs, oracle_caches["both"]).endswith("--crops grid+oracle")
    rows = np.arange(both.layout.n_images)
    np.testing.assert_allclose(both.read("images", "regions/crops", rows), grid.read("images", "regions/crops", rows),
                               atol=1e-5)
    np.testing.assert_allclose(both.read("images", "regions/oracle", rows), oracle.read("images", "regions/oracle", rows),
                               atol=1e-5)
    for name in ("regions/oracle_mask", "regions/oracle_boxes", "global"):
        np.testing.assert_array_equal(both.read("images", name, rows), oracle.read("images", name, rows))
    for head in ("regions_crops", "regions_oracle"):
        a = create_benchmark("sugarcrepe").evaluate(both, create_head(head)).items
        b = create_benchmark("sugarcrepe").evaluate(grid if head == "regions_crops" else oracle, create_head(head)).items
        np.testing.assert_allclose([x["pos"] for x in a], [x["pos"] for x in b], atol=1e-5)


@pytest.mark.parametrize("name, mix", [("regions_oracle", 0.5), ("regions_oracle_only", 1.0)])
def test_regions_oracle_scores_are_the_mixed_best_object_cosines_of_the_cache(oracle_caches, name, mix):
    r = CacheReader(oracle_caches["sugarcrepe"])
    result = create_benchmark("sugarcrepe").evaluate(r, create_head(name))
    irows = r.rows("images", r.items["image"])
    regions = r.read("images", "regions/oracle", irows)
    mask = r.read("images", "regions/oracle_mask", irows)
    assert len(result.items) == len(irows) > 20
    want = expected_region_scores(r, [unit(reg[m]) for reg, m in zip(regions, mask)], mix)  # only its own boxes
    for field in ("pos", "neg"):
        np.testing.assert_allclose([i[field] for i in result.items], want[field], atol=1e-5)


# ---- messages ------------------------------------------------------------------------------------------------------

def test_oracle_without_boxes_names_the_world_and_grid_and_creates_nothing(grid_root, tmp_path):
    out = tmp_path / "o.zarr"
    with pytest.raises(MissingFileError, match=rf"--crops oracle needs the true object boxes in {grid_root}/boxes.jsonl, "
                                               r"which only the synthetic world writes .*For other data use `--crops grid`"):
        extract(_grid_cfg(grid_root, out, crops="oracle"))
    res = CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "sugarcrepe", "--root", str(grid_root),
                                   "--out", str(out), "--crops", "oracle"])
    assert res.exit_code == 2 and "compalign shapes make" in res.output and "--crops grid" in " ".join(res.output.split())
    assert not out.exists()
    res = CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "sugarcrepe", "--root", str(grid_root),
                                   "--out", str(out), "--crops", "2x2"])
    assert res.exit_code == 2 and "--crops is none, grid, oracle, grid+oracle, or grid sizes" in " ".join(res.output.split())


def test_a_boxes_file_without_an_image_or_with_a_bad_row_names_it(world, tmp_path):
    root = tmp_path / "sc"
    shutil.copytree(world / "test_id" / "sugarcrepe", root)
    lines = (root / "boxes.jsonl").read_text().splitlines()
    keep = [line for line in lines if json.loads(line)["image"] != "000000000003.png"]
    assert len(keep) == len(lines) - 1

    def run():
        extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root), out=str(tmp_path / "o.zarr"), crops="oracle"))

    (root / "boxes.jsonl").write_text("\n".join(keep) + "\n")
    with pytest.raises(InputError, match=r"boxes.jsonl has no boxes for image '000000000003.png' \(000000000003.png\): it "
                                         r"belongs to another world or split"):
        run()
    (root / "boxes.jsonl").write_text("\n".join([*keep, json.dumps({"image": "000000000003.png",
                                                                     "boxes": [[0.5, 0.1, 0.2, 0.3]]})]) + "\n")
    with pytest.raises(InputError, match=r"the boxes of '000000000003.png' are not \[\[x0, y0, x1, y1\], ...\] with"):
        run()
    (root / "boxes.jsonl").write_text("\n".join([*keep, '{"image": "000000000003.png"}']) + "\n")
    with pytest.raises(InputError, match=rf"boxes.jsonl line {len(keep) + 1} is not an \{{\"image\", \"boxes\"\}} row "
                                         r"\(KeyError: 'boxes'\); rebuild the world"):
        run()
    assert not (tmp_path / "o.zarr").exists()


def test_a_region_head_on_a_store_without_its_regions_names_the_flag(mini_sc_cache, grid_cache):
    bench = create_benchmark("sugarcrepe")
    with pytest.raises(NotFoundError, match=r"has no crops regions \(images/regions/crops\); re-extract with `--crops grid`"):
        bench.evaluate(CacheReader(mini_sc_cache), create_head("regions_crops"))
    with pytest.raises(NotFoundError, match=r"has no oracle regions \(images/regions/oracle\); re-extract with `--crops oracle`"):
        bench.evaluate(CacheReader(grid_cache), create_head("regions_oracle_only"))
    assert CacheReader(grid_cache).has_regions("regions_crops") and not CacheReader(mini_sc_cache).has_regions("regions_crops")


def test_without_crops_the_store_has_no_regions(mini_sc_cache):
    r = CacheReader(mini_sc_cache)
    assert "crops" not in r.attrs["extraction"] and "images/regions" not in r.root
    assert "--crops" not in resume_command(r.attrs, mini_sc_cache)
