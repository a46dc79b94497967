"""Cached globals equal the model's own encode_image / encode_text; cached tokens equal forward_intermediates."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from compalign.cache import open_cache
from compalign.extract.backbones import Backbone, BackboneError, load_backbone
from compalign.extract.runner import ExtractConfig, extract


def assert_f16_equal(cached: np.ndarray, ref: np.ndarray) -> None:
    """Equal up to float16 rounding (relative step 2**-11), allowing a float32 difference of
    ~1e-6 between batchings to tip a value into the next float16 step."""
    assert cached.dtype == np.float16
    np.testing.assert_allclose(cached.astype(np.float32), ref, rtol=2**-10, atol=1e-4)


@pytest.mark.parametrize("model", ["ViT-B-32", "PE-Core-B-16"])
def test_cached_features_equal_the_models_own(model, pairs_dir, tmp_path):
    out = tmp_path / "c.zarr"
    extract(ExtractConfig(model=model, pretrained="none", data="pairs", root=str(pairs_dir), out=str(out),
                          batch_size=5, workers=0, shard_rows=8, layers=[-1, -3]))
    r = open_cache(out)
    bb = load_backbone(model, "none")  # same seed => same random weights
    m = bb.model

    # images: encode_image(preprocess(img)) and forward_intermediates, row by key
    origins = r.root["images/origin"][:]
    pix = torch.stack([bb.preprocess(Image.open(pairs_dir / o)) for o in origins])
    with torch.no_grad():
        want = m.encode_image(pix).numpy()
        fi = m.visual.forward_intermediates(pix, indices=[bb.image_depth - 1, bb.image_depth - 3],
                                            normalize_intermediates=True, output_fmt="NLC", output_extra_tokens=True)
    np.testing.assert_allclose(r.root["images/global"][:], want, atol=1e-5, rtol=0)
    for got_name, i in (("images/patches", 1), ("images/layers/-3/patches", 0)):  # ascending block order
        ref = fi["image_intermediates"][i].numpy()
        assert_f16_equal(r.root[got_name][:], ref)
    assert_f16_equal(r.root["images/prefix"][:], fi["image_intermediates_prefix"][1].numpy())

    # texts: encode_text at the full context vs the cache's length-cut pass
    strings = r.root["texts/strings"][:].tolist()
    ids = bb.tokenizer(strings)
    with torch.no_grad():
        want_t = m.encode_text(ids).numpy()
    np.testing.assert_allclose(r.root["texts/global"][:], want_t, atol=1e-5, rtol=0)
    lengths = r.root["texts/lengths"][:]
    toks = r.root["texts/tokens"][:]
    assert toks.shape[1] == lengths.max() < bb.context_length  # stored only up to the longest caption
    with torch.no_grad():
        ref = bb.encode_texts(ids, [-1]).tokens[-1].numpy()  # full-context pass
    for j, L in enumerate(lengths):
        assert_f16_equal(toks[j, :L], ref[j, :L])
        assert not toks[j, L:].any()  # zero after the caption


def test_siglip2_image_tower_parity():
    """SigLIP2's tokenizer needs a Hub download, so the image tower is checked on its own."""
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms("ViT-B-16-SigLIP2", pretrained=None)
    model.eval()
    bb = Backbone(model=model, preprocess=pre, tokenizer=None, name="siglip2", model_name="ViT-B-16-SigLIP2",
                  pretrained=None, causal_text=False, context_length=64, image_depth=12, text_depth=12)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8))
    x = pre(img)[None]
    out = bb.encode_images(x, [-1])
    with torch.no_grad():
        want = model.encode_image(x)
    np.testing.assert_allclose(out.global_.numpy(), want.numpy(), atol=1e-5, rtol=0)
    assert out.patches[-1].shape == (1, 196, 768)
    assert "image_proj" not in bb.projections()  # MAP pooling: no linear token map


def test_siglip2_offline_tokenizer_error_says_how_to_fix():
    with pytest.raises(BackboneError) as e:
        load_backbone("siglip2", "none")
    msg = str(e.value)
    assert "pip install" in msg or "huggingface-cli download" in msg


def test_missing_weights_offline_name_the_download():
    """Offline without cached weights: one error naming the exact `huggingface-cli download`."""
    import os
    import subprocess
    import sys

    code = ("from compalign.extract.backbones import load_backbone, BackboneError\n"
            "try:\n    load_backbone('clip')\nexcept BackboneError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "huggingface-cli download timm/vit_base_patch32_clip_224.openai" in res.stdout, res.stdout + res.stderr
    assert "HF_HUB_OFFLINE=1" in res.stdout


def test_bare_checkpoint_file_keeps_the_tags_preprocessing(tmp_path):
    """open_clip #1068: a file path as `pretrained` silently falls back to default preprocessing."""
    from compalign.extract.backbones import _checkpoint_preprocess

    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    kw = _checkpoint_preprocess("ViT-B-16-SigLIP2", str(f), None)
    assert kw["image_mean"] == (0.5, 0.5, 0.5) and kw["image_resize_mode"] == "squash"
    assert _checkpoint_preprocess("PE-Core-B-16", str(f), "meta")["image_interpolation"] == "bilinear"
    assert _checkpoint_preprocess("ViT-B-32", str(f), None)["image_mean"][0] == pytest.approx(0.48145466)
    assert _checkpoint_preprocess("ViT-B-32", "openai", None) == {}  # a tag brings its own


def test_checkpoint_file_loads_with_restored_preprocessing(tmp_path):
    torch.manual_seed(1)
    m = open_clip.create_model("PE-Core-B-16", pretrained=None)
    ckpt = tmp_path / "pe.pt"
    torch.save({"state_dict": m.state_dict()}, ckpt)
    bb = load_backbone("pe", str(ckpt))
    assert bb.meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] and bb.meta["checkpoint_sha"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(bb.model.encode_image(x).numpy(), m.eval().encode_image(x).numpy(), atol=1e-5)
