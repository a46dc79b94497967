"""--model / --pretrained combinations: each one either does what it says (and meta records it) or refuses at once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants as hf_constants

from compalign.core import CompalignError
from compalign.extract.backbones import BackboneError, load_backbone, resolve
from compalign.extract.presets import TINY_CHECKPOINT, list_presets

SHIPPED = TINY_CHECKPOINT / "open_clip_model.safetensors"


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def create_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record every open_clip.create_model_and_transforms call (and still make it)."""
    calls: list[tuple] = []
    real = open_clip.create_model_and_transforms

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    return calls


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 and an empty HF cache (the cache path is read once at import, so patch it too)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


# -- 1. a folder backbone brings its own weights ---------------------------------------------


@pytest.mark.parametrize("value", [str(SHIPPED), "none", "openai"])
def test_tiny_refuses_pretrained_and_names_the_alternatives(value: str, create_calls: list) -> None:
    with pytest.raises(BackboneError) as e:
        load_backbone("tiny", value)
    msg = str(e.value)
    assert isinstance(e.value, CompalignError)
    assert "brings its own weights" in msg and f"--pretrained {value} does not apply" in msg
    assert "`--model compalign-tiny --pretrained none`" in msg
    assert "`--model compalign-tiny --pretrained FILE`" in msg
    assert create_calls == []  # refused before anything loaded


def test_other_folders_and_hub_repos_refuse_pretrained(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    cfg = {"model_cfg": {"embed_dim": 7, "vision_cfg": {}, "text_cfg": {}}}  # no registered config matches
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    for model in (f"local-dir:{folder}", str(folder), "hf-hub:org/repo"):
        with pytest.raises(BackboneError, match="brings its own weights") as e:
            resolve(model, "none")
        assert "compalign-tiny" not in str(e.value) and "Drop --pretrained" in str(e.value)
    assert resolve(f"local-dir:{folder}", None) == (f"local-dir:{folder}", None)  # without the flag: fine


def test_compalign_tiny_none_is_a_seeded_random_init(pixels: torch.Tensor) -> None:
    a = load_backbone("compalign-tiny", "none", seed=7)
    assert a.meta["pretrained"] is None and a.meta["checkpoint_sha"] is None and a.meta["seed"] == 7
    b = load_backbone("compalign-tiny", "none", seed=7)
    trained = load_backbone("tiny")
    got = a.encode_images(pixels, [-1]).global_
    assert torch.equal(got, b.encode_images(pixels, [-1]).global_)  # reproducible from the seed
    assert not torch.allclose(got, trained.encode_images(pixels, [-1]).global_)  # not the shipped weights


def test_compalign_tiny_loads_the_shipped_file(pixels: torch.Tensor) -> None:
    bb = load_backbone("compalign-tiny", str(SHIPPED))
    tiny = load_backbone("tiny")
    assert torch.equal(bb.encode_images(pixels, [-1]).global_, tiny.encode_images(pixels, [-1]).global_)
    ids = tiny.tokenize(["a red circle"]).ids
    assert torch.equal(bb.encode_texts(ids, [-1]).global_, tiny.encode_texts(ids, [-1]).global_)
    assert bb.meta["pretrained"] == str(SHIPPED) and bb.meta["seed"] is None
    assert bb.meta["checkpoint_sha"] == tiny.meta["checkpoint_sha"] is not None
    assert bb.meta["preprocess"] == tiny.meta["preprocess"]


# -- 2. a file that is not a checkpoint ------------------------------------------------------


@pytest.mark.parametrize("name,data", [
    ("random.pt", os.urandom(2000)),
    ("random.safetensors", os.urandom(2000)),
    ("empty.bin", b""),
    ("notes.bin", b"hello world\n"),
    ("zipish.pt", b"PK\x03\x04" + os.urandom(300)),
])
def test_not_a_checkpoint_names_the_file(tmp_path: Path, name: str, data: bytes) -> None:
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(BackboneError) as e:
        load_backbone("compalign-tiny", str(f))
    assert f"{f} is not an open_clip checkpoint" in str(e.value)
    assert ".safetensors" in str(e.value) and ".pt" in str(e.value)
    assert e.value.__cause__ is not None  # the reader's own error stays attached


def test_a_checkpoint_of_another_model_is_not_relabelled(tmp_path: Path) -> None:
    """Only failures inside the file read are wrapped: a state dict that does not fit still says so."""
    f = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(2)}, f)
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict") as e:
        load_backbone("compalign-tiny", str(f))
    assert not isinstance(e.value, BackboneError)


def test_unknown_tag_that_is_no_file_is_refused(create_calls: list) -> None:
    with pytest.raises(BackboneError, match="neither an existing file nor a pretrained tag of ViT-B-32") as e:
        load_backbone("ViT-B-32", "no-such-weights.pt")
    assert "openai" in str(e.value) and create_calls == []


# -- 3. offline without cached weights: one error, before open_clip runs -----------------------


def test_offline_clip_fails_fast_with_the_prefetch_command(offline: Path, create_calls: list) -> None:
    with pytest.raises(BackboneError) as e:
        load_backbone("clip")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg
    assert "huggingface-cli download timm/vit_base_patch32_clip_224.openai" in msg
    assert "run with HF_HUB_OFFLINE=1" in msg and "pip install" not in msg
    assert create_calls == []  # no download attempt, so no retries and no warnings


def test_offline_siglip2_without_transformers_names_the_extra(offline: Path, create_calls: list,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # not importable, whether installed or not
    with pytest.raises(BackboneError) as e:
        load_backbone("siglip2")
    msg = str(e.value)
    assert "pip install 'compalign[hf]'" in msg and "huggingface-cli download timm/ViT-B-16-SigLIP2" in msg
    assert create_calls == []


def test_cached_weights_go_on_to_open_clip(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the file in the HF cache the early refusal stays out of the way (open_clip is reached)."""
    repo = offline / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "open_clip_model.safetensors").write_bytes(b"")

    class Reached(Exception):
        pass

    def stub(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(open_clip, "create_model_and_transforms", stub)
    with pytest.raises(Reached):
        load_backbone("clip")


# -- 4./5. names -----------------------------------------------------------------------------


def test_unknown_backbone_lists_every_preset() -> None:
    with pytest.raises(BackboneError) as e:
        resolve("no-such-backbone", None)
    assert "clip-b16" in list_presets()
    for name in list_presets():
        assert name in str(e.value)


def test_pretrained_overrides_a_presets_tag() -> None:
    assert resolve("pe", "/some/ckpt.pt") == ("PE-Core-B-16", "/some/ckpt.pt")
    assert resolve("clip", "laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert resolve("clip", None) == ("ViT-B-32", "openai")
