"""`compalign shapes ...`: bad input is one message and exit 2; a bug in the library keeps its traceback (exit 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compalign.cli.main import app
from compalign.core import CompalignError, InputError, MissingFileError
from compalign.shapes import PlacementError, WorldConfig, WorldExistsError, load_scenes, load_world_config, write_world


def _shapes(*args: str):
    return CliRunner().invoke(app, ["shapes", *args])


def _said(res) -> str:
    return " ".join(res.output.split())  # rich may wrap long lines; compare the words


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=4, n_test_id=2, n_test_ood=2), out)
    return out


@pytest.fixture
def broken_world(tmp_path: Path) -> Path:
    """A folder whose world.json was cut off mid-write (not JSON)."""
    out = tmp_path / "broken"
    out.mkdir()
    (out / "world.json").write_text('{"schema": "compalign.shapes/1", "config": {', encoding="utf-8")
    return out


# ---- bad input: one message naming the file or flag and the fix, exit 2 -----------------------------------------------

def test_a_missing_world_names_its_file_and_the_command_that_makes_it(tmp_path: Path) -> None:
    nowhere = tmp_path / "nonexistent"
    res = _shapes("backbone", "--world", str(nowhere), "--out", str(tmp_path / "ckpt"))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    said = _said(res)
    assert said.startswith("error:") and "train/pairs.jsonl" in said and f"compalign shapes make --out {nowhere}" in said
    assert "Traceback" not in res.output and not (tmp_path / "ckpt").exists()
    # the library says the same through a CompalignError that is still a FileNotFoundError
    with pytest.raises(MissingFileError, match=r"world\.json is missing.*compalign shapes make --out") as e:
        load_world_config(nowhere)
    assert isinstance(e.value, FileNotFoundError)


def test_a_world_json_that_is_not_json_is_named_with_its_fix(broken_world: Path, tmp_path: Path) -> None:
    score = tmp_path / "score.json"
    score.write_text(json.dumps({"head": "h", "items": []}), encoding="utf-8")
    res = _shapes("breakdown", "--world", str(broken_world), str(score))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    said = _said(res)
    assert f"error: {broken_world / 'world.json'} is not valid JSON" in said
    assert f"compalign shapes make --out {broken_world} --force" in said
    with pytest.raises(InputError, match="is not valid JSON") as e:
        load_world_config(broken_world)
    assert isinstance(e.value, ValueError)
    # `make` over it refuses without --force: a WorldExistsError, which is a CompalignError (exit 2) and a FileExistsError
    res = _shapes("make", "--out", str(broken_world), "--n-train", "4", "--n-test", "2")
    assert res.exit_code == 2 and "error:" in _said(res) and "--force" in _said(res)
    assert issubclass(WorldExistsError, CompalignError) and issubclass(WorldExistsError, FileExistsError)


def test_a_score_file_that_is_not_json_or_not_a_score_file_is_named(world: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("not json at all", encoding="utf-8")
    res = _shapes("breakdown", "--world", str(world), str(junk))
    assert res.exit_code == 2 and f"error: {junk} is not valid JSON" in _said(res)
    assert "compalign-heads score --json" in _said(res)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"head": "h"}), encoding="utf-8")
    res = _shapes("breakdown", "--world", str(world), str(other))
    assert res.exit_code == 2 and f"error: {other} has no 'items' list" in _said(res)
    res = _shapes("breakdown", "--world", str(world), str(tmp_path / "absent.json"))
    assert res.exit_code == 2 and f"{tmp_path / 'absent.json'} is missing" in _said(res)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["make", "--out", "W", "--no-such-flag"], "No such option"),  # typer's own usage error is also exit 2
        (["make", "--out", "W", "--size", "8"], "error: WorldConfig:"),  # objects cannot fit the canvas
        (["backbone", "--world", "W", "--out", "C", "--batch-size", "1"], "PretrainConfig: steps must be >= 1 and batch_size"),
        (["backbone", "--world", "W", "--out", "C", "--p-grey", "1.5"], "error: PretrainConfig: p_background, p_grey and"),
    ],
)
def test_a_bad_option_is_a_message_and_exit_2(args: list[str], said: str, tmp_path: Path) -> None:
    args = [str(tmp_path / a) if a in ("W", "C") else a for a in args]
    res = _shapes(*args)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert said in _said(res) and "Traceback" not in res.output
    assert not (tmp_path / "W").exists() and not (tmp_path / "C").exists()


def test_damaged_world_files_are_input_errors_that_name_the_file_and_line(world: Path, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes.jsonl"
    good = (world / "train" / "scenes.jsonl").read_text(encoding="utf-8").splitlines()[0]
    scenes.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{scenes} line 2 is not valid JSON")):
        load_scenes(scenes)
    scenes.write_text(good + "\n" + json.dumps({"image": "x.png"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{scenes} line 2 is not a scene row")):
        load_scenes(scenes)
    with pytest.raises(MissingFileError, match="compalign shapes make"):
        load_scenes(tmp_path / "nowhere.jsonl")
    # a config that cannot be placed is the user's to fix, and stays the RuntimeError it was
    assert issubclass(PlacementError, CompalignError) and issubclass(PlacementError, RuntimeError)


# ---- a bug is not bad input: no message, the exception itself, exit 1 ------------------------------------------------

def _broken(exc: type[BaseException]):
    def broken(*args, **kwargs):
        raise exc("an injected bug")

    return broken


# the builtins the old broad excepts turned into "error: ..." messages, and one they never caught
BUGS = [ZeroDivisionError, ValueError, KeyError, RuntimeError, FileNotFoundError]


@pytest.mark.parametrize("exc", BUGS)
def test_a_bug_in_write_world_keeps_its_traceback(exc: type[BaseException], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("compalign.cli.shapes.write_world", _broken(exc))
    res = _shapes("make", "--out", str(tmp_path / "w"), "--n-train", "4", "--n-test", "2")
    assert res.exit_code == 1 and type(res.exception) is exc and "error:" not in res.output


@pytest.mark.parametrize("exc", BUGS)
def test_a_bug_in_breakdown_keeps_its_traceback(exc: type[BaseException], world: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("compalign.shapes.breakdown.breakdown", _broken(exc))
    score = tmp_path / "score.json"
    score.write_text(json.dumps({"head": "h", "items": []}), encoding="utf-8")
    res = _shapes("breakdown", "--world", str(world), str(score))
    assert res.exit_code == 1 and type(res.exception) is exc and "error:" not in res.output


def test_a_bug_in_pretraining_keeps_its_traceback(world: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("compalign.shapes.pretrain.pretrain_backbone", _broken(ZeroDivisionError))
    res = _shapes("backbone", "--world", str(world), "--out", str(tmp_path / "ckpt"), "--steps", "1")
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError) and "error:" not in res.output
    monkeypatch.setattr("compalign.shapes.pretrain.pretrain_backbone", _broken(RuntimeError))  # was caught before
    res = _shapes("backbone", "--world", str(world), "--out", str(tmp_path / "ckpt"), "--steps", "1")
    assert res.exit_code == 1 and type(res.exception) is RuntimeError and "error:" not in res.output


def test_only_an_unprobeable_text_side_skips_the_text_probe(world: Path, monkeypatch, capsys) -> None:
    from compalign.cli.shapes import _print_text_probe
    from compalign.shapes.text_probe import TextProbeUnavailableError

    def unprobeable(*args, **kwargs):
        raise TextProbeUnavailableError("cache.zarr: another tokenizer")

    monkeypatch.setattr("compalign.shapes.text_probe.probe_text_binding", unprobeable)
    _print_text_probe(object(), world, 0)
    assert "text probe skipped: cache.zarr: another tokenizer" in " ".join(capsys.readouterr().err.split())
    monkeypatch.setattr("compalign.shapes.text_probe.probe_text_binding", _broken(ValueError))
    with pytest.raises(ValueError, match="an injected bug"):  # a bug is not "skipped"
        _print_text_probe(object(), world, 0)
