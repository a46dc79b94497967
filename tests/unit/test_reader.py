"""The cache reader: rows by key, gathered reads in the caller's order, shuffled batches covering every row once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from compalign.cache import CacheError, open_cache
from compalign.cache.info import cache_info
from compalign.cache.reader import CacheReader
from compalign.cli.main import app
from compalign.extract.runner import ExtractConfig, extract

SETTINGS = dict(model="tiny", data="pairs", workers=0, shard_rows=4, chunk_rows=2, layers=[-1, -2])  # the `store` fixture's


def _extract(root, out, **changes):
    extract(ExtractConfig(**{**SETTINGS, "root": str(root), "out": str(out), **changes}))
    return out


@pytest.fixture
def store(pairs_dir, tmp_path):
    return _extract(pairs_dir, tmp_path / "r.zarr")


def test_read_returns_rows_in_the_callers_order_with_repeats(store):
    r = open_cache(store)
    full = r.root["images/patches"][:]
    rows = np.array([7, 0, 7, 3, 11, 2, 2])
    np.testing.assert_array_equal(r.read("images", "patches", rows), full[rows])
    np.testing.assert_array_equal(r.read("images", "patches", rows, layer=-2), r.root["images/layers/-2/patches"][:][rows])
    keys = r.image_keys[[5, 1]]
    np.testing.assert_array_equal(r.rows("images", keys), [5, 1])
    with pytest.raises(KeyError, match="not in the cache"):
        r.rows("texts", ["no-such-key"])
    with pytest.raises(KeyError, match="layers extracted"):
        r.array("images", "patches", layer=-4)


def test_shuffled_batches_cover_every_row_once_and_are_seeded(store):
    r = open_cache(store)
    full = r.root["texts/tokens"][:]
    seen = []
    for rows, vals in r.batches("texts", "tokens", batch_size=3, shuffle=True, seed=1, buffer_shards=2):
        np.testing.assert_array_equal(vals, full[rows])
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(full)))
    assert seen != sorted(seen)  # actually shuffled
    again = [rows.tolist() for rows, _ in r.batches("texts", "tokens", batch_size=3, shuffle=True, seed=1, buffer_shards=2)]
    assert sum(again, []) == seen


def test_items_reference_rows_by_key_and_info_reports_everything(store, pairs_dir):
    r = open_cache(store)
    it = r.items
    assert len(it["id"]) == 16 and set(it) == {"id", "image", "caption"}
    strings = r.root["texts/strings"][:]
    assert strings[r.rows("texts", it["caption"][:1])][0] == "a picture of thing number 0"
    info = cache_info(store)
    assert info["counts"]["images"] == 12 and info["counts"]["texts"] == 16
    assert info["counts"]["image_shards_done"] == info["counts"]["image_shards"] == 3
    names = {a["name"]: a for a in info["arrays"]}
    assert names["images/patches"]["dtype"] == "float16" and names["images/global"]["dtype"] == "float32"
    lay = r.layout
    assert names["images/layers/-2/patches"]["shape"] == [12, lay.n_patches, lay.image_width]
    assert info["backbone"]["name"] == "tiny" and info["bytes_on_disk"] > 0
    assert len(r.fingerprint) == len(r.backbone_id) == 16


def test_fingerprint_is_shared_by_readers_of_the_same_store_and_changes_with_backbone_settings_or_data(
        store, pairs_dir, tmp_path):
    r = open_cache(store)
    ident = (r.fingerprint, r.backbone_id)
    # The same inputs (copied to another folder) and settings, extracted again: another store, the same identity.
    copy = tmp_path / "copy"
    shutil.copytree(pairs_dir, copy)
    twin = open_cache(_extract(copy, tmp_path / "twin.zarr"))
    assert twin.attrs["source"]["root"] != r.attrs["source"]["root"]  # not what identifies the data
    assert (twin.fingerprint, twin.backbone_id) == ident
    # The store's single-file HDF5 export.
    h5 = tmp_path / "r.h5"
    res = CliRunner().invoke(app, ["cache", "export", str(store), str(h5)])
    assert res.exit_code == 0, res.output
    exported = open_cache(h5)
    assert not exported.is_zarr and (exported.fingerprint, exported.backbone_id) == ident
    # Other extraction settings: the same backbone and data, another fingerprint.
    for name, change in (("layers", {"layers": [-1]}), ("shard_rows", {"shard_rows": 8})):
        other = open_cache(_extract(pairs_dir, tmp_path / f"{name}.zarr", **change))
        assert other.attrs["source"]["fingerprint"] == r.attrs["source"]["fingerprint"], name
        assert other.fingerprint != r.fingerprint and other.backbone_id == r.backbone_id, name
    # Other data: one more pair; one image's pixels changed under the same file name.
    more = tmp_path / "more"
    shutil.copytree(pairs_dir, more)
    with (more / "pairs.jsonl").open("a") as f:
        f.write('{"image": "img/000.png", "caption": "one more caption"}\n')
    repainted = tmp_path / "repainted"
    shutil.copytree(pairs_dir, repainted)
    make_images(repainted / "img", ["005.png"], seed=99)
    for root in (more, repainted):
        other = open_cache(_extract(root, tmp_path / f"{root.name}.zarr"))
        assert other.attrs["source"]["fingerprint"] != r.attrs["source"]["fingerprint"], root.name
        assert other.fingerprint != r.fingerprint and other.backbone_id == r.backbone_id, root.name
    # Another backbone (the tiny architecture, random init): another backbone id, hence another fingerprint.
    other = open_cache(_extract(pairs_dir, tmp_path / "bb.zarr", model="compalign-tiny", pretrained="none", seed=1))
    assert other.attrs["source"]["fingerprint"] == r.attrs["source"]["fingerprint"]
    assert other.attrs["extraction"] == r.attrs["extraction"]
    assert other.backbone_id != r.backbone_id and other.fingerprint != r.fingerprint

def test_layers_a_tower_lacks_are_kept_for_the_other_only(pairs_dir, tmp_path):
    from compalign.extract.backbones import load_backbone

    bb = load_backbone("tiny")
    deep = -(bb.text_depth + 1)  # exists in the image tower only (tiny: 4 image blocks, 3 text blocks)
    assert bb.image_depth > bb.text_depth
    out = tmp_path / "d.zarr"
    extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0, layers=[-1, deep]))
    r = open_cache(out)
    assert r.read("images", "patches", np.array([0]), layer=deep).shape[0] == 1
    with pytest.raises(KeyError, match="texts layers extracted"):
        r.array("texts", "tokens", layer=deep)
    with pytest.raises(ValueError, match="exceed both towers"):
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(tmp_path / "e.zarr"),
                              workers=0, layers=[-40]))


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="not a compalign cache"):
        open_cache(tmp_path)


def test_resume_refuses_a_different_backbone_or_data(store, pairs_dir):
    with pytest.raises(CacheError, match="different extraction|--overwrite"):
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(store), workers=0,
                              shard_rows=8, chunk_rows=2, layers=[-1, -2]))
    (pairs_dir / "pairs.jsonl").write_text((pairs_dir / "pairs.jsonl").read_text() +
                                           '{"image": "img/000.png", "caption": "one more"}\n')
    with pytest.raises(CacheError, match="another version of the data"):
        extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(store), workers=0,
                              shard_rows=4, chunk_rows=2, layers=[-1, -2]))


def test_scattered_reads_keep_memory_bounded(store):
    r = open_cache(store)
    shard_bytes = r.root["images/patches"][:4].nbytes
    r.cache_bytes = 2 * shard_bytes  # room for two decoded shards
    full = r.root["images/patches"][:]
    for rows in ([0, 5, 9], [11, 1], [4, 8, 0, 3]):
        np.testing.assert_array_equal(r.read("images", "patches", np.array(rows)), full[rows])
        assert r._lru_bytes <= r.cache_bytes and len(r._lru) <= 2


def test_resident_arrays_read_the_same_rows_within_their_budget(store):
    patches, tokens = open_cache(store).root["images/patches"][:], open_cache(store).root["texts/tokens"][:]
    # room for the image patches, not for the text tokens as well: those go through the shard LRU
    r = CacheReader(store, cache_bytes=2**20, resident_bytes=patches.nbytes + tokens.nbytes - 1)
    rows = np.array([5, 0, 5, 11, 2])
    np.testing.assert_array_equal(r.read("images", "patches", rows), patches[rows])
    np.testing.assert_array_equal(r.read("texts", "tokens", rows % len(tokens)), tokens[rows % len(tokens)])
    assert r._whole_bytes == patches.nbytes <= r.resident_bytes
    assert r._whole["images/patches"] is not None and r._whole["texts/tokens"] is None
    assert r._lru and all(path == "texts/tokens" for path, _ in r._lru)
    assert r.read("images", "patches", np.array([], dtype=np.int64)).shape == (0, *patches.shape[1:])


def test_a_local_dir_backbone_is_known_by_its_weights_not_its_folder(store, tmp_path):
    # The shipped `tiny` is read from the package folder: two checkouts (or a copied fine-tuned backbone) give
    # another model_name path for the same weights, and a head trained in one must score caches of the other.
    r = open_cache(store)
    assert r.backbone["model_name"].startswith("local-dir:") and r.backbone["checkpoint_sha"]

    def moved(name: str, **change: str):
        copy = tmp_path / name
        shutil.copytree(store, copy)
        meta = json.loads((copy / "zarr.json").read_text())
        meta["attributes"]["backbone"].update(change)
        (copy / "zarr.json").write_text(json.dumps(meta))
        return open_cache(copy)

    elsewhere = moved("elsewhere.zarr", model_name="local-dir:/another/checkout/backbone")
    assert (elsewhere.backbone_id, elsewhere.fingerprint) == (r.backbone_id, r.fingerprint)
    other_weights = moved("other.zarr", checkpoint_sha="0123456789abcdef")
    assert other_weights.backbone_id != r.backbone_id and other_weights.fingerprint != r.fingerprint
