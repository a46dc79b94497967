"""Nothing lost, nothing read as zeros: --overwrite, damaged chunks, unfinished stores, one writer, .h5 caches."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import mini_sugarcrepe, store_files
from typer.testing import CliRunner

from compalign.cache import CacheError, CacheReader
from compalign.cli.heads import app as heads_app
from compalign.cli.main import app
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.target import writer_lock


def _extract(root: Path, out: Path, *extra: str, data: str = "pairs"):
    return CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", data, "--root", str(root), "--out", str(out),
                                    "--workers", "0", "--shard-rows", "4", *extra])


def _chunks(store: Path) -> dict[str, bytes]:
    return {k: v for k, v in store_files(store).items() if "/c/" in k}


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / store.name
    shutil.copytree(store, out)
    return out


# ---- --overwrite only ever replaces a compalign store ----------------------------------------------------------

@pytest.mark.parametrize("target", ["root", "parent of root", "not a store", "regular file"])
def test_overwrite_refuses_what_is_not_a_store_and_deletes_nothing(pairs_dir, tmp_path, target):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(3):
        (notes / f"{i}.txt").write_text(f"note {i}")
    (tmp_path / "file.zarr").write_text("a regular file")
    out = {"root": pairs_dir, "parent of root": tmp_path, "not a store": notes, "regular file": tmp_path / "file.zarr"}[target]
    before = store_files(tmp_path)
    res = _extract(pairs_dir, out, "--overwrite")
    assert res.exit_code == 2, res.output
    assert {"root": "is the data root", "parent of root": "holds it", "not a store": "not a compalign store (3 entries)",
            "regular file": "is not a folder"}[target] in " ".join(res.output.split())
    after = store_files(tmp_path)
    assert after == before and len(after) == 12 + 1 + 3 + 1  # images, pairs.jsonl, notes, the file: all still there


def test_overwrite_replaces_a_store_and_says_what_it_removed(pairs_dir, tmp_path):
    out = tmp_path / "p.zarr"
    assert _extract(pairs_dir, out).exit_code == 0
    res = _extract(pairs_dir, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert f"replaced the store {out}" in " ".join(res.output.split())
    assert CacheReader(out).shards_done() == {"images": (3, 3), "texts": (4, 4)}


def test_a_folder_that_is_not_a_store_is_refused_without_overwrite_too(pairs_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    res = _extract(pairs_dir, out)
    assert res.exit_code == 2 and "not a compalign store" in res.output and "Create one with" not in res.output
    assert (out / "thesis.tex").read_text() == "keep me"


def test_a_store_that_never_finished_a_shard_is_replaced_by_the_corrected_command(pairs_dir, tmp_path):
    out = tmp_path / "p.zarr"
    assert _extract(pairs_dir, out).exit_code == 0
    for m in (out / ".done").rglob("0*"):  # as if the first start failed before any shard was done
        m.unlink()
    res = _extract(pairs_dir, out, "--batch-size", "8")  # other settings: nothing is lost by starting again
    assert res.exit_code == 0, res.output
    assert "it held no finished shard" in " ".join(res.output.split())
    assert CacheReader(out).attrs["extraction"]["batch_size"] == 8


def test_settings_that_differ_name_the_field(pairs_dir, tmp_path):
    out = tmp_path / "p.zarr"
    assert _extract(pairs_dir, out).exit_code == 0
    res = _extract(pairs_dir, out, "--batch-size", "8")
    assert res.exit_code == 2 and "batch_size is 64 in the store, 8 now" in " ".join(res.output.split())


# ---- one writer per store --------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_and_the_store_is_untouched(pairs_dir, tmp_path):
    out = tmp_path / "p.zarr"
    assert _extract(pairs_dir, out).exit_code == 0
    before = store_files(out)
    with writer_lock(out):  # the first writer, still running
        res = _extract(pairs_dir, out, "--overwrite")
    assert res.exit_code == 2 and "another compalign extract (pid" in res.output
    assert store_files(out) == before


def test_an_out_that_cannot_be_written_is_a_message(pairs_dir):
    res = _extract(pairs_dir, Path("/sys/compalign-test.zarr"))  # sysfs refuses new files, even to root
    assert res.exit_code == 2 and "cannot write in /sys" in res.output and "--out" in res.output


# ---- damaged shards: named, refused, rewritten -------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["texts/global/c/1/0", "images/patches/c/0/0/0"])
def test_a_removed_chunk_is_named_refused_by_scoring_and_rewritten_by_resume(mini_sc_cache, tmp_path, victim):
    store = _copy(mini_sc_cache, tmp_path)
    good = _chunks(store)
    (store / victim).unlink()
    kind, shard = victim.split("/")[0], int(victim.split("/")[3])

    reader = CacheReader(store)  # reading the rows of the lost chunk fails; it never gives zeros
    with pytest.raises(CacheError, match=f"{kind} shard {shard} is marked done but its chunk file is gone"):
        reader.read(kind, victim.split("/")[1], np.arange(shard * 4, shard * 4 + 2))

    res = CliRunner().invoke(app, ["cache", "info", str(store), "--verify"])
    assert res.exit_code == 1 and f"{kind} shard {shard}" in res.output and f"{victim} is missing" in res.output

    head = "global" if kind == "texts" else "maxsim"
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(store), "--head", head])
    assert res.exit_code == 2 and f"{kind} shard {shard}" in res.output and "compalign extract" in res.output

    root = CacheReader(store).attrs["source"]["root"]
    s = extract(ExtractConfig(model="tiny", data="sugarcrepe", root=root, out=str(store), workers=0, shard_rows=4))
    assert s.shards_written == 1 and s.repaired == [f"{kind} shard {shard} was damaged ({victim} is missing): rewritten"]
    assert _chunks(store) == good  # exactly the lost file came back, byte for byte
    res = CliRunner().invoke(app, ["cache", "info", str(store), "--verify"])
    assert res.exit_code == 0 and "verified: every done shard matches its checksums (7 shards)" in res.output


def test_a_chunk_with_flipped_bytes_fails_its_checksum_and_is_rewritten(mini_sc_cache, tmp_path):
    store = _copy(mini_sc_cache, tmp_path)
    good = _chunks(store)
    victim = store / "images/global/c/1/0"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["cache", "info", str(store), "--verify", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["damaged"] == {"images shard 1": ["images/global/c/1/0 does not match its checksum"]}
    s = extract(ExtractConfig(model="tiny", data="sugarcrepe", root=CacheReader(store).attrs["source"]["root"],
                              out=str(store), workers=0, shard_rows=4))
    assert s.shards_written == 1 and _chunks(store) == good


# ---- unfinished and empty stores -------------------------------------------------------------------------------

def test_an_unfinished_store_is_refused_with_the_command_that_finishes_it(mini_sc_cache, tmp_path):
    store = _copy(mini_sc_cache, tmp_path)
    (store / ".done/images/000001").unlink()  # killed before the last image shard was durable
    shutil.rmtree(store / "images/patches/c/1")
    with pytest.raises(CacheError, match=r"unfinished \(images 1/2 shards done\)") as e:
        CacheReader(store).require_complete()
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(store)])
    assert res.exit_code == 2 and "unfinished" in res.output
    command = str(e.value).split("`")[1]  # the command the message gives, run as it is
    assert command.startswith("compalign extract --model tiny --data sugarcrepe") and "--shard-rows 4" in command
    assert CliRunner().invoke(app, shlex.split(command)[1:]).exit_code == 0
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(store)])
    assert res.exit_code == 0 and "12 items, 0 left out" in res.output


def test_every_image_failed_exits_non_zero_at_extraction_and_at_scoring(tmp_path):
    root = mini_sugarcrepe(tmp_path / "sc", corrupt=True)
    out = tmp_path / "bad.zarr"
    res = _extract(root, out, data="sugarcrepe")
    assert res.exit_code == 1 and "every one of the 6 images failed" in " ".join(res.output.split())
    res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(out)])
    assert res.exit_code == 2 and "all 12 items" in res.output and "compalign cache info" in res.output
    res = CliRunner().invoke(heads_app, ["train", "global_mlp", "--cache", str(out), "--out", str(tmp_path / "run"),
                                         "--steps", "2"])
    assert res.exit_code == 2 and "no item survived extraction" in " ".join(res.output.split())


# ---- .h5 exports are caches like any other --------------------------------------------------------------------

def test_an_hdf5_export_is_scored_trained_and_described_through_the_cli(mini_sc_cache, tmp_path):
    h5 = tmp_path / "sc.h5"
    assert CliRunner().invoke(app, ["cache", "export", str(mini_sc_cache), str(h5)]).exit_code == 0
    runs = {}
    for cache in (mini_sc_cache, h5):
        out = tmp_path / f"{cache.suffix}.json"
        res = CliRunner().invoke(heads_app, ["score", "--bench", "sugarcrepe", "--cache", str(cache), "--json", str(out)])
        assert res.exit_code == 0, res.output
        runs[cache.suffix] = json.loads(out.read_text())
    assert runs[".h5"]["metrics"] == runs[".zarr"]["metrics"] and runs[".h5"]["items"] == runs[".zarr"]["items"]
    res = CliRunner().invoke(heads_app, ["train", "global_mlp", "--cache", str(h5), "--out", str(tmp_path / "run"),
                                         "--steps", "2", "--batch-size", "4", "--eval-every", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "head.json").read_text())["trained_on"]["cache"] == str(h5)
    info = json.loads(CliRunner().invoke(app, ["cache", "info", str(h5), "--json"]).output)
    assert info["bytes_on_disk"] == h5.stat().st_size
    assert sum(a["bytes"] for a in info["arrays"]) > 0 and all(a["bytes"] > 0 for a in info["arrays"] if "global" in a["name"])


def test_export_into_a_missing_folder_names_it(mini_sc_cache, tmp_path):
    res = CliRunner().invoke(app, ["cache", "export", str(mini_sc_cache), str(tmp_path / "no" / "such" / "x.h5")])
    assert res.exit_code == 2 and "does not exist; create it (mkdir -p" in " ".join(res.output.split())


def test_checksums_taken_as_written_equal_the_files_read_back(tmp_path, monkeypatch):
    import compalign.cache.store as store

    lay = store.Layout(n_images=10, n_texts=0, embed_dim=8, n_patches=4, n_prefix=1, image_width=6, text_len=1,
                       text_width=8, layers=[-1], shard_rows=4, chunk_rows=2)
    def write(path: Path, digests: bool) -> dict[str, str]:
        store.create_store(path, lay, {}, {}, [f"k{i}" for i in range(10)], [f"o{i}" for i in range(10)], [], [], {})
        root = store.open_store(path, "r+", digests=digests)
        for s, lo in enumerate(range(0, 10, 4)):
            n = min(4, 10 - lo)
            r = np.random.default_rng(s)
            store.write_shard(root, path, "images", s, lo, {
                "global": r.standard_normal((n, 8), dtype=np.float32),
                "patches": r.standard_normal((n, 4, 6)).astype(np.float16),
                "prefix": r.standard_normal((n, 1, 6)).astype(np.float16),
                "status": np.ones(n, np.int8), "error": np.full(n, "", dtype=str)})
        if digests:
            assert not [k for k in root.store.written if "/c/" in k]  # every chunk's checksum went into a marker
        return {f.name: f.read_text() for f in sorted((path / ".done" / "images").iterdir())}

    read_back = write(tmp_path / "a.zarr", digests=False)
    monkeypatch.setattr(store, "_digest", lambda f: pytest.fail(f"{f} was read back for its checksum"))
    assert write(tmp_path / "b.zarr", digests=True) == read_back  # the same markers, no chunk read again
    monkeypatch.undo()
    assert not store.damaged_shards(tmp_path / "b.zarr")  # and they verify against the files


def test_a_shard_written_whole_reads_and_lists_nothing_and_replaces_what_was_there(tmp_path, monkeypatch):
    """Zarr reads a sharded array's stored shard before writing into it; through the writers' DigestStore a
    shard written whole reads none of it (in a bucket: no HEAD and LIST for a new shard, no download of an old
    one rewritten after a crash), and its marker is made without listing its files."""
    import compalign.cache.store as store
    from compalign.cache.location import Location

    lay = store.Layout(n_images=8, n_texts=0, embed_dim=8, n_patches=4, n_prefix=1, image_width=6, text_len=1,
                       text_width=8, layers=[-1], shard_rows=4, chunk_rows=2)
    path = tmp_path / "s.zarr"
    store.create_store(path, lay, {}, {}, [f"k{i}" for i in range(8)], [f"o{i}" for i in range(8)], [], [], {})
    root = store.open_store(path, "r+", digests=True)
    reads, inner = [], root.store._store
    real_get = type(inner).get

    async def get(self, key, *args, **kwargs):
        reads.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(type(inner), "get", get)
    monkeypatch.setattr(Location, "files", lambda self: pytest.fail(f"{self} was listed"))

    def shard(seed: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed)
        return {"global": r.standard_normal((4, 8), dtype=np.float32),
                "patches": r.standard_normal((4, 4, 6)).astype(np.float16),
                "prefix": r.standard_normal((4, 1, 6)).astype(np.float16),
                "status": np.ones(4, np.int8), "error": np.full(4, "", dtype=str)}

    for s in (0, 1):
        store.write_shard(root, path, "images", s, 4 * s, shard(s))
    store.write_shard(root, path, "images", 1, 4, shard(7))  # shard 1 again, as a rerun after a crash writes it
    assert [k for k in reads if "/c/" in k] == []
    monkeypatch.undo()
    assert not store.damaged_shards(path)
    patches = store.open_store(path)["images/patches"][:]
    np.testing.assert_array_equal(patches[:4], shard(0)["patches"])
    np.testing.assert_array_equal(patches[4:], shard(7)["patches"])  # the new rows, none of the old
