"""End to end: `compalign extract --data webdataset` on two tar shards (tiny backbone, a decoding worker), then heads.

The cache must be one the heads use like any other: the global head's scores are the cosines of the stored
embeddings, maxsim scores every pair whose image decoded, and a head trains on it.
"""

from __future__ import annotations

import shlex

import numpy as np
from conftest import store_files
from typer.testing import CliRunner
from wds_data import ShardServer, samples, write_tar

from compalign.cache.reader import CacheReader
from compalign.cache.store import resume_command
from compalign.cli.heads import app as heads_app
from compalign.cli.main import app
from compalign.evaluate.scoring import score_pairs
from compalign.heads import create_head


def test_extract_two_shards_then_score_and_train(tmp_path):
    for s in (0, 1):
        write_tar(tmp_path / "shards" / f"{s:05d}.tar", samples(s, n=10))
    out = tmp_path / "wds.zarr"
    res = CliRunner().invoke(app, ["extract", "--model", "tiny", "--data", "webdataset",
                                   "--root", str(tmp_path / "shards" / "{00000..00001}.tar"), "--out", str(out),
                                   "--workers", "1", "--shard-rows", "8", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    # 20 samples: one has no caption, and one reuses another shard's image (one image row, two items)
    assert "18 images, 19 captions, 19 items" in " ".join(res.output.split())
    assert "skipped 00000.tar/000000002: no .txt caption" in res.output
    assert "image failed 00000.tar/000000001.jpg: cannot decode image" in " ".join(res.output.split())

    reader = CacheReader(out)
    # The store's own resume command quotes the pattern, so the shell passes it whole; rerun, it resumes.
    cmd = resume_command(reader.attrs, out)
    assert f"--root '{tmp_path / 'shards' / '{00000..00001}.tar'}'" in cmd
    res = CliRunner().invoke(app, shlex.split(cmd)[1:] + ["--workers", "1"])
    assert res.exit_code == 0 and "resumed" in res.output and "0 shards written" in " ".join(res.output.split())
    assert reader.attrs["source"]["kind"] == "webdataset" and reader.attrs["source"]["info"]["shards"] == "2"
    items = reader.items
    ok = reader.ok("images")[reader.rows("images", items["image"])]
    assert ok.sum() == 18 and not ok[1]  # the corrupt JPEG is the one failed row

    g = score_pairs(reader, create_head("global"), items["image"], items["caption"])
    im = reader.read("images", "global", reader.rows("images", items["image"][ok]))
    tx = reader.read("texts", "global", reader.rows("texts", items["caption"][ok]))
    cos = (im * tx).sum(1) / np.linalg.norm(im, axis=1) / np.linalg.norm(tx, axis=1)
    np.testing.assert_allclose(g[ok], cos, rtol=1e-5)
    assert np.isnan(g[~ok]).all()
    m = score_pairs(reader, create_head("maxsim"), items["image"], items["caption"])
    assert np.isfinite(m[ok]).all() and np.isnan(m[~ok]).all()

    res = CliRunner().invoke(heads_app, ["train", "global_mlp_tiny", "--cache", str(out), "--out", str(tmp_path / "run"),
                                         "--steps", "4", "--batch-size", "8", "--eval-every", "2",
                                         "--loss", "infonce=1", "--n-hard", "0"])  # web pairs carry no hard negatives
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run").is_dir() and any((tmp_path / "run").iterdir())


def test_shards_on_a_web_server_extract_the_local_store_reading_each_batch_as_one_range(tmp_path):
    for s in (0, 1):
        write_tar(tmp_path / "shards" / f"{s:05d}.tar", samples(s, n=10))
    args = ["extract", "--model", "tiny", "--data", "webdataset", "--shard-rows", "8", "--batch-size", "4"]
    local = str(tmp_path / "shards" / "{00000..00001}.tar")
    res = CliRunner().invoke(app, [*args, "--root", local, "--out", str(tmp_path / "here.zarr"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    server = ShardServer(tmp_path / "shards")
    try:
        url = server.url + "/{00000..00001}.tar"
        # one decoding worker: a forked process that opens its own http filesystem
        res = CliRunner().invoke(app, [*args, "--root", url, "--out", str(tmp_path / "there.zarr"), "--workers", "1"])
        assert res.exit_code == 0, res.output
    finally:
        server.close()
    same = ("created", "source.root")
    assert store_files(tmp_path / "here.zarr", same) == store_files(tmp_path / "there.zarr", same)
    # Planning read each tar shard whole (a range from byte 0); then 18 image rows in batches of 4 (the store's
    # shards hold 8 rows): one range per batch, two for rows 8-11, which span both tar shards; not one per image
    reads = [name for method, name, ranged in server.requests if method == "GET" and ranged and ranged[6:8] != "0-"]
    assert sorted(reads) == ["00000.tar"] * 3 + ["00001.tar"] * 3
