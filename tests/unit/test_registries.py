"""One contract over every registry (timm style): sorted names, duplicates refused, unknown names listed, entries usable."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

from compalign.core import NotFoundError
from compalign.core.registry import Registry
from compalign.evaluate.benchmarks.base import BENCHMARKS, Benchmark
from compalign.extract.backbones import resolve
from compalign.extract.presets import PRESETS
from compalign.extract.sources.base import SOURCES
from compalign.heads.base import HEADS, Head
from compalign.heads.losses import LOSSES

ALL = {"head": HEADS, "loss": LOSSES, "benchmark": BENCHMARKS, "data kind": SOURCES, "backbone preset": PRESETS}


@pytest.mark.parametrize("kind", sorted(ALL))
def test_names_are_sorted_and_duplicates_are_refused(kind):
    reg = ALL[kind]
    names = reg.names()
    assert reg.kind == kind and names == sorted(names) and len(names) >= 2
    with pytest.raises(RuntimeError, match=f"{kind} '{names[0]}' is already registered"):
        reg.register(names[0], reg.get(names[0]))
    assert reg.names() == names  # the refused entry left nothing behind


@pytest.mark.parametrize("kind", sorted(ALL))
def test_an_unknown_name_lists_every_name(kind):
    reg = ALL[kind]
    with pytest.raises(NotFoundError) as e:
        reg.get("no-such-thing")
    assert str(e.value) == f"unknown {kind} 'no-such-thing'; available: {', '.join(reg.names())}"


def test_every_head_builds_and_its_metadata_matches_without_building():
    for name in HEADS.names():
        head = HEADS.create(name)
        assert isinstance(head, Head) and head.name == name and head.trainable == HEADS.meta(name)["trainable"]
        assert HEADS.meta(name)["about"]


def test_every_benchmark_reads_a_registered_data_kind():
    for name in BENCHMARKS.names():
        bench = BENCHMARKS.create(name)
        assert isinstance(bench, Benchmark) and bench.name == name and bench.source in SOURCES


def test_every_loss_says_which_scores_it_needs():
    for name in LOSSES.names():
        assert callable(LOSSES.get(name)) and LOSSES.meta(name)["needs"] <= {"matrix", "hard", "text_hard"}


def test_every_preset_resolves_to_something_open_clip_can_build():
    for name in PRESETS.names():
        model, tag = resolve(name, None)
        if model.startswith("local-dir:"):
            assert (Path(model.removeprefix("local-dir:")) / "open_clip_config.json").is_file(), name
        else:
            assert model in open_clip.list_models(), name
            assert tag is None or tag in open_clip.list_pretrained_tags_by_model(model), (name, tag)


def test_metadata_filters_names():
    reg: Registry[int] = Registry("thing")
    reg.register("b", 2, even=True)
    reg.register("a", 1, even=False)
    reg.register("c", 4, even=True)
    assert reg.names() == ["a", "b", "c"] and reg.names(even=True) == ["b", "c"] and reg.meta("a") == {"even": False}


def test_the_head_provider_table_names_the_module_that_registers_each_head():
    from compalign import heads  # noqa: F401  (declares the providers)

    names = HEADS.names()  # imports every provider
    assert sorted(HEADS.providers()) == names
    assert {n: HEADS.meta(n)["module"] for n in names} == HEADS.providers()


def test_scoring_with_the_global_head_never_imports_torch(mini_sc_cache, tmp_path):
    import json
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom compalign.cli.heads import app\n"
            f"r = CliRunner().invoke(app, ['score', '--bench', 'sugarcrepe', '--cache', {str(mini_sc_cache)!r}, '--json', "
            f"{str(tmp_path / 'o.json')!r}])\nassert r.exit_code == 0, r.output\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "False"
    assert json.loads((tmp_path / "o.json").read_text())["counts"]["items"] == 12
