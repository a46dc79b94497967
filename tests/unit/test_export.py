"""HDF5 export: every array equal to the Zarr store, and scoring from the file gives the same results."""

from __future__ import annotations

import warnings

import numpy as np
import zarr
from typer.testing import CliRunner

from compalign.cache import open_cache
from compalign.cli.main import app
from compalign.evaluate.benchmarks import create_benchmark
from compalign.heads import create_head


def _arrays(path):
    out = {}

    def walk(g, prefix):
        for name, a in g.arrays():
            out[prefix + name] = a[:]
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        walk(zarr.open_group(str(path), mode="r"), "")
    return out


def test_hdf5_export_equals_the_store_and_scores_the_same(sugarcrepe_tiny_cache, tmp_path):
    h5 = tmp_path / "sc.h5"
    res = CliRunner().invoke(app, ["cache", "export", str(sugarcrepe_tiny_cache), str(h5)])
    assert res.exit_code == 0, res.output
    z, h = open_cache(sugarcrepe_tiny_cache), open_cache(h5)
    assert h.attrs == z.attrs and h.fingerprint == z.fingerprint
    for name, want in _arrays(sugarcrepe_tiny_cache).items():
        got = h.root[name][:]
        assert got.shape == want.shape and np.array_equal(got, want), name
    a = create_benchmark("sugarcrepe").evaluate(z, create_head("global"))
    b = create_benchmark("sugarcrepe").evaluate(h, create_head("global"))
    assert a.metrics == b.metrics and [i["correct"] for i in a.items] == [i["correct"] for i in b.items]
    rows = np.array([5, 1, 1500, 5])
    np.testing.assert_array_equal(h.read("texts", "tokens", rows), z.read("texts", "tokens", rows))
