"""The tiny backbone's pretraining (loss goes down, seeded = identical) and the locality probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compalign.cli.shapes import app
from compalign.extract.backbones import load_backbone, resolve
from compalign.extract.presets import TINY_CHECKPOINT
from compalign.shapes import WorldConfig, write_world
from compalign.shapes.losses import clip_loss
from compalign.shapes.pretrain import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainConfig,
    build_model,
    load_train_data,
    pretrain_backbone,
    train,
)
from compalign.shapes.probe import (
    ProbeConfig,
    box_cells,
    linear_probe,
    pool_objects,
    probe_cache,
)

# A model small enough to train in a second: the real vocabulary (the tokenizer's), tiny widths.
SMALL_MODEL = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=48, n_test_id=32, n_test_ood=16, seed=3), out)
    return out


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(world: Path, seed: int, steps: int = 30) -> tuple[dict[str, torch.Tensor], list[float]]:
    cfg = PretrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup=3, seed=seed, log_every=10)
    model, pre, tok = build_model(SMALL_MODEL, seed)
    losses = train(model, load_train_data(world, pre, tok), cfg)
    return _state(model), losses


# -- pretraining -----------------------------------------------------------------------------


def test_clip_loss_is_low_for_matching_features_and_symmetric() -> None:
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    matched = clip_loss(x, x, torch.tensor(50.0))
    shuffled = clip_loss(x, x.roll(1, 0), torch.tensor(50.0))
    assert matched < 0.01 < np.log(8) < shuffled
    y = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert torch.allclose(clip_loss(x, y, torch.tensor(10.0)), clip_loss(y, x, torch.tensor(10.0)))


def test_training_lowers_the_loss_and_is_deterministic(world: Path) -> None:
    state_a, losses_a = _train(world, seed=0)
    state_b, losses_b = _train(world, seed=0)
    state_c, _ = _train(world, seed=1)
    assert np.mean(losses_a[-5:]) < np.mean(losses_a[:5]) - 0.3, (losses_a[:5], losses_a[-5:])
    assert losses_a == losses_b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_trimmed_text_features_equal_open_clips(world: Path) -> None:
    from compalign.shapes.pretrain import encode_text_trimmed

    model, pre, tok = build_model(SMALL_MODEL, 0)
    data = load_train_data(world, pre, tok)
    tokens = data.tokens[:16]
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # there is padding to trim
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(model, tokens), model.encode_text(tokens, normalize=True), atol=1e-6)


def test_compact_vocabulary_trains_the_same_weights(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compalign.shapes.pretrain as pretrain

    init = build_model(SMALL_MODEL, 0)[0].token_embedding.weight.detach().clone()
    compact, _ = _train(world, seed=0, steps=8)

    class FullVocab:  # the plain path: the whole (49408, W) embedding in the optimiser
        def __init__(self, model: torch.nn.Module, tokens: torch.Tensor) -> None:
            pass

        def remap(self, tokens: torch.Tensor) -> torch.Tensor:
            return tokens

        def restore(self) -> None:
            pass

    monkeypatch.setattr(pretrain, "CompactVocab", FullVocab)
    full, _ = _train(world, seed=0, steps=8)
    assert compact.keys() == full.keys()
    for k in full:
        assert torch.allclose(compact[k], full[k], atol=1e-6), k
    emb = compact["token_embedding.weight"]
    assert emb.shape == init.shape  # restored to the full vocabulary
    moved = (emb != init).any(1)
    assert 0 < int(moved.sum()) < 200  # only the rows of the world's words were trained


def test_device_is_validated_and_cuda_without_a_gpu_is_refused(world: Path) -> None:
    with pytest.raises(ValueError, match="device must be cpu, cuda"):
        PretrainConfig(device="tpu")
    assert PretrainConfig().device == "cpu"  # the shipped backbone's path stays the deterministic one
    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    model, pre, tok = build_model(SMALL_MODEL, 0)
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        train(model, load_train_data(world, pre, tok), PretrainConfig(steps=1, batch_size=8, device="cuda"))
    res = CliRunner().invoke(app, ["backbone", "--world", str(world), "--out", str(world.parent / "no-gpu"), "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA device is visible" in res.output


def test_batches_hold_distinct_images(world: Path) -> None:
    from compalign.shapes.recipe import sample_batches

    model, pre, tok = build_model(SMALL_MODEL, 0)
    data = load_train_data(world, pre, tok)
    gen = torch.Generator().manual_seed(0)
    for img, cap in sample_batches(data, 16, 10, gen):
        assert len(set(img.tolist())) == len(img) == 16
        assert torch.equal(data.caption_image[cap], img)  # each caption belongs to its image


def test_augmentations_repaint_only_the_background_and_grey_drops_colour_words(world: Path) -> None:
    from compalign.shapes.pretrain import augment_batch

    model, pre, tok = build_model(SMALL_MODEL, 0)
    data = load_train_data(world, pre, tok, augment=True)
    assert data.background is not None and data.tokens_grey is not None and data.mean_std is not None
    mean, std = data.mean_std
    img = torch.arange(16)
    cap = torch.tensor([int(torch.nonzero(data.caption_image == i)[0]) for i in img])
    to_rgb = lambda x: ((x * std + mean) * 255).round()  # noqa: E731

    x, t = augment_batch(data.pixels, data.tokens, img, cap, data, PretrainConfig(p_background=1.0), torch.Generator())
    bg = data.background[img].expand_as(x)
    assert torch.equal(x[~bg], data.pixels[img][~bg])  # objects untouched
    rgb = to_rgb(x)
    for i in range(16):  # one grey per image, the same in the three channels
        assert len(torch.unique(rgb[i][bg[i]])) == 1
    assert len(torch.unique(rgb[:, 0, 0, 0])) > 4 and torch.equal(t, data.tokens[cap])

    x, t = augment_batch(data.pixels, data.tokens, img, cap, data, PretrainConfig(p_grey=1.0), torch.Generator())
    rgb = to_rgb(x)
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1)
    colours = set(json.loads((world / "world.json").read_text())["config"]["colours"])
    texts = [tok.decode(row.tolist()) for row in t]
    assert not any(c in text.split() for text in texts for c in colours)
    named = [tok.decode(data.tokens[c].tolist()) for c in cap.tolist()]
    assert any(c in text.split() for text in named for c in colours)  # there were colour words to drop

    # Augmented training runs, is seeded, and keeps the batch order (its draws have their own stream).
    cfg = PretrainConfig(steps=4, batch_size=8, warmup=1, p_background=0.5, p_grey=0.5)
    runs = []
    for _ in range(2):
        model, pre, tok = build_model(SMALL_MODEL, 0)
        runs.append(train(model, load_train_data(world, pre, tok, augment=True), cfg))
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="probabilities"):
        PretrainConfig(p_grey=1.5)
    with pytest.raises(ValueError, match="augment=True"):
        train(build_model(SMALL_MODEL, 0)[0], load_train_data(world, pre, tok), cfg)


def test_recolour_paints_each_named_colour_one_random_rgb_that_never_reads_as_a_held_out_pair(world: Path) -> None:
    from compalign.shapes import load_scenes
    from compalign.shapes.augment import recolour_draw
    from compalign.shapes.pretrain import augment_batch
    from compalign.shapes.writer import load_held_out, load_world_config

    model, pre, tok = build_model(SMALL_MODEL, 0)
    data = load_train_data(world, pre, tok, augment=True)
    assert data.colour_map is not None and data.forbid is not None and data.mean_std is not None
    mean, std = data.mean_std
    wcfg, held = load_world_config(world), load_held_out(world)
    names = sorted(wcfg.colours)
    palette = torch.tensor([wcfg.colours[n] for n in names], dtype=torch.float32)  # (K, 3)
    scenes = load_scenes(world / "train" / "scenes.jsonl")
    img = torch.arange(len(data.image_names))
    cap = torch.tensor([int(torch.nonzero(data.caption_image == i)[0]) for i in img])
    cfg = PretrainConfig(p_recolour=1.0)
    x, t = augment_batch(data.pixels, data.tokens, img, cap, data, cfg, torch.Generator().manual_seed(0))
    rgb = ((x * std + mean) * 255).round()  # (N, 3, H, W)
    assert torch.equal(x[data.background.expand_as(x)], data.pixels[data.background.expand_as(x)])  # background kept
    changed = 0
    for i, name in enumerate(data.image_names):
        colours = {o.colour for o in scenes[name].objects}
        assert {names[k] for k in data.colour_map[i].unique().tolist() if k != 255} == colours
        for c in colours:
            new = rgb[i][:, data.colour_map[i] == names.index(c)]  # (3, P): all of one named colour's pixels
            assert (new == new[:, :1]).all()  # one new RGB per named colour
            nearest = names[int(((palette - new[:, 0]) ** 2).sum(1).argmin())]
            shapes = {o.shape for o in scenes[name].objects if o.colour == c}
            assert not any((nearest, s) in held for s in shapes), (name, c, nearest, shapes)
            changed += int(not torch.equal(new[:, 0], palette[names.index(c)]))
    assert changed > 0.9 * sum(len({o.colour for o in scenes[n].objects}) for n in data.image_names)
    assert torch.equal(t, data.tokens_grey[cap])  # colour words dropped with the colours

    # The rule itself: with every name but one forbidden, a draw reads as that one or, when none of its tries
    # was allowed, keeps its colour; unchosen images keep theirs.
    b, k = 64, len(names)
    forbid = torch.ones(b, k, k, dtype=torch.bool)
    forbid[..., 2] = False
    chosen = torch.arange(b) % 2 == 0
    new = recolour_draw(forbid, palette / 255, torch.tensor(wcfg.background) / 255, chosen, torch.Generator())
    drawn = new[chosen]  # (B/2, K, 3)
    kept = (drawn == palette / 255).all(-1)  # (B/2, K)
    reads_as = torch.cdist(drawn.reshape(-1, 3), palette / 255).argmin(-1).view(b // 2, k)
    assert ((reads_as == 2) | kept).all() and (~kept).float().mean() > 0.8
    assert torch.equal(new[~chosen], (palette / 255).expand(b // 2, k, 3))
    with pytest.raises(ValueError, match="probabilities"):
        PretrainConfig(p_recolour=-0.1)


def test_augmentations_refuse_a_noisy_world(tmp_path: Path) -> None:
    write_world(WorldConfig(n_train=4, n_test_id=2, n_test_ood=2, noise_std=4.0), tmp_path)
    model, pre, tok = build_model(SMALL_MODEL, 0)
    with pytest.raises(ValueError, match=r"noise_std 4\.0"):
        load_train_data(tmp_path, pre, tok, augment=True)


def test_checkpoint_round_trips_through_load_backbone(world: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(steps=3, batch_size=8, warmup=1, save_dtype="fp32")
    result = pretrain_backbone(world, tmp_path / "ckpt", cfg, model_cfg=SMALL_MODEL)
    folder = result.out
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_cfg"] == SMALL_MODEL
    assert config["preprocess_cfg"]["size"] == 64
    assert config["compalign"]["pretrain"]["steps"] == 3
    assert (folder / WEIGHTS_NAME).stat().st_size == result.bytes
    bb = load_backbone(f"local-dir:{folder}")
    assert bb.meta["checkpoint_sha"] and bb.meta["image_size"] == [64, 64]
    # The loaded preprocessing is the one training used, and the weights are the trained ones.
    model, pre, tok = build_model(SMALL_MODEL, 0)
    model.load_state_dict(
        {k: v for k, v in bb.model.state_dict().items()}, strict=True
    )  # same architecture: keys and shapes match
    png = sorted((world / "train" / "images").glob("*.png"))[0]
    img = Image.open(png).convert("RGB")
    assert torch.equal(bb.preprocess(img), pre(img))
    trained = pretrain_backbone(world, tmp_path / "again", cfg, model_cfg=SMALL_MODEL)
    assert (trained.out / WEIGHTS_NAME).read_bytes() == (folder / WEIGHTS_NAME).read_bytes()


def test_backbone_cli_writes_a_checkpoint(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_ckpt"
    res = CliRunner().invoke(app, ["backbone", "--world", str(world), "--out", str(out), "--steps", "2", "--fp16"])
    assert res.exit_code == 0, res.output
    assert (out / WEIGHTS_NAME).is_file() and (out / CONFIG_NAME).is_file()
    assert "loss" in res.output
    bad = CliRunner().invoke(app, ["backbone", "--world", str(tmp_path / "nowhere"), "--out", str(out)])
    assert bad.exit_code == 2 and "shapes make" in bad.output


# -- the shipped checkpoint ------------------------------------------------------------------


def test_shipped_checkpoint_is_the_tiny_preset() -> None:
    if not (TINY_CHECKPOINT / CONFIG_NAME).is_file():
        pytest.fail(f"the tiny backbone is not shipped at {TINY_CHECKPOINT}: run `make backbone`")
    assert (TINY_CHECKPOINT / WEIGHTS_NAME).stat().st_size <= 20_000_000
    model_name, _ = resolve("tiny", None)
    assert model_name == f"local-dir:{TINY_CHECKPOINT}"
    bb = load_backbone("tiny")
    assert bb.meta["image_size"] == [64, 64]
    assert bb.meta["preprocess"]["size"] in (64, [64, 64])
    pixels = bb.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert pixels.shape == (3, 64, 64)
    out = bb.encode_images(pixels[None], [-1])
    assert out.patches[-1].shape[1] == 64  # an 8x8 grid of 8-px patches
    # Trained, not random: the text tower separates colour words.
    ids = bb.tokenize(["a red circle", "a blue circle", "a red circle"]).ids
    emb = torch.nn.functional.normalize(bb.encode_texts(ids, [-1]).global_, dim=-1)
    assert float(emb[0] @ emb[2]) > float(emb[0] @ emb[1]) + 0.05


# -- the probe -------------------------------------------------------------------------------


def test_box_cells_map_boxes_to_patches() -> None:
    inside, centre = box_cells((16, 8, 32, 24), canvas=64, grid=8)  # x 16..31, y 8..23
    assert sorted(inside.tolist()) == [10, 11, 18, 19]
    assert centre == 19  # centre (24, 16) -> row 2, column 3
    inside, centre = box_cells((0, 0, 3, 3), canvas=64, grid=8)  # no patch centre inside
    assert inside.tolist() == [0] and centre == 0


def _synthetic(n_images: int, signal: str, seed: int = 0):
    """Patches (N, 64, 16) where each object writes its colour (and maybe shape) into its box."""
    rng = np.random.default_rng(seed)
    colour_dirs, shape_dirs = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    patches = rng.normal(scale=0.5, size=(n_images, 64, 16)).astype(np.float32)
    objects, colours, shapes = [], [], []
    for i in range(n_images):
        for x0 in (0, 32):  # two objects side by side, each a 32 x 32 box = 4 x 4 patches
            c, s = int(rng.integers(6)), int(rng.integers(6))
            box = (x0, 16, x0 + 32, 48)
            cells, _ = box_cells(box, 64, 8)
            patches[i, cells] += colour_dirs[c] + (shape_dirs[s] if signal == "both" else 0)
            objects.append((i, box))
            colours.append(c)
            shapes.append(s)
    return patches, objects, np.array(colours), np.array(shapes)


def test_linear_probe_reads_what_is_encoded_and_nothing_else() -> None:
    patches, objects, colours, shapes = _synthetic(150, signal="colour")
    pooled = pool_objects(patches, objects, canvas=64)
    tr, te = np.arange(200), np.arange(200, 300)
    cfg = ProbeConfig()
    for pool in ("box", "centre"):
        acc, chance, _ = linear_probe(pooled[pool][tr], colours[tr], pooled[pool][te], colours[te], cfg)
        assert acc > 0.97 and chance < 0.35
        acc, chance, _ = linear_probe(pooled[pool][tr], shapes[tr], pooled[pool][te], shapes[te], cfg)
        assert acc < 0.35  # shape is not in the features: chance level (1/6)
    patches, objects, colours, shapes = _synthetic(150, signal="both", seed=1)
    pooled = pool_objects(patches, objects, canvas=64)
    pair = colours * 6 + shapes
    acc, _, _ = linear_probe(pooled["box"][tr], pair[tr], pooled["box"][te], pair[te], cfg)
    assert acc > 0.5  # 36 classes from an additive code: far above chance (~3%)


class _FakeReader:
    """What probe_cache reads from a cache, holding synthetic patches."""

    def __init__(self, patches: dict[int, np.ndarray], origin: list[str]):
        self.patches, self.path = patches, Path("fake.zarr")
        self.root = {"images/origin": np.array(origin)}
        self.attrs = {"extraction": {"layers": sorted(patches, reverse=True)}}

    def ok(self, kind: str) -> np.ndarray:
        return np.ones(len(self.root["images/origin"]), dtype=bool)

    def read(self, kind: str, field: str, rows: np.ndarray, layer: int = -1) -> np.ndarray:
        return self.patches[layer][rows]


def test_probe_cache_reports_each_layer_against_the_scene_boxes(world: Path) -> None:
    from compalign.shapes import load_scenes, load_world_config

    wcfg = load_world_config(world)
    scenes = load_scenes(world / "test_id" / "scenes.jsonl")
    names = sorted(scenes)
    colours = sorted(wcfg.colours)
    rng = np.random.default_rng(0)
    code = rng.normal(size=(len(colours), 24))
    informative = rng.normal(scale=0.3, size=(len(names), 64, 24)).astype(np.float32)
    for i, n in enumerate(names):
        for o in scenes[n].objects:
            cells, _ = box_cells(o.box, scenes[n].canvas, 8)
            informative[i, cells] += code[colours.index(o.colour)]
    noise = rng.normal(size=(len(names), 64, 24)).astype(np.float32)
    # The cache lists images in its own order, with folder prefixes, as a SugarCrepe store does.
    order = rng.permutation(len(names))
    reader = _FakeReader({-1: informative[order], -2: noise[order]}, [f"val2017/{names[j]}" for j in order])
    result = probe_cache(reader, world, "test_id", ProbeConfig(train_fraction=0.7))
    table = result.table()
    assert set(table) == {(-1, "box"), (-1, "centre"), (-2, "box"), (-2, "centre")}
    assert table[(-1, "box")]["colour"] > 0.9
    assert table[(-2, "box")]["colour"] < 0.5  # noise reads at about chance
    assert result.n_objects == sum(len(s.objects) for s in scenes.values())
    assert {r.n_test for r in result.rows} == {result.rows[0].n_test} and result.rows[0].n_test > 0


def test_transfer_probe_tells_a_factorised_code_from_a_pair_code(world: Path) -> None:
    """Fitted on familiar pairs (test_id): shape reads on held-out pairs only if it is coded apart from colour."""
    from compalign.shapes import load_held_out, load_scenes, load_world_config
    from compalign.shapes.probe import transfer_probe

    wcfg = load_world_config(world)
    colours, shapes = sorted(wcfg.colours), list(wcfg.shapes)
    rng = np.random.default_rng(0)
    colour_code, shape_code = rng.normal(size=(len(colours), 64)), rng.normal(size=(len(shapes), 64))
    pair_code = rng.normal(size=(len(colours), len(shapes), 64))  # one unrelated vector per (colour, shape)

    def reader(split: str) -> _FakeReader:
        scenes = load_scenes(world / split / "scenes.jsonl")
        names = sorted(scenes)
        factorised = rng.normal(scale=0.1, size=(len(names), 64, 64)).astype(np.float32)
        paired = factorised.copy()
        for i, n in enumerate(names):
            for o in scenes[n].objects:
                cells, _ = box_cells(o.box, scenes[n].canvas, 8)
                c, k = colours.index(o.colour), shapes.index(o.shape)
                factorised[i, cells] += colour_code[c] + shape_code[k]
                paired[i, cells] += pair_code[c, k]
        return _FakeReader({-1: factorised, -2: paired}, [f"val2017/{n}" for n in names])

    held = load_held_out(world)
    ood = load_scenes(world / "test_ood" / "scenes.jsonl")
    assert any((o.colour, o.shape) in held for s in ood.values() for o in s.objects)
    res = transfer_probe(reader("test_id"), reader("test_ood"), world)
    assert set(res) == {-1, -2}
    held_acc, familiar_acc, n_held, n_familiar = res[-1]["shape"]
    assert n_held > 0 and n_familiar > 0
    assert held_acc > 0.9 and familiar_acc > 0.9  # factorised: unseen pairs read like familiar ones
    held_acc, familiar_acc, _, _ = res[-2]["shape"]
    assert familiar_acc > 0.9 and held_acc < 0.5  # a code per pair: the probe cannot read an unseen one
    assert res[-1]["colour"][0] > 0.9
    with pytest.raises(ValueError, match="held-out pair"):
        transfer_probe(reader("test_id"), reader("test_id"), world, "test_id", "test_id")


def test_probe_cli_on_an_extracted_cache(world: Path, tmp_path: Path) -> None:
    from compalign.extract.runner import ExtractConfig, extract

    ckpt = pretrain_backbone(world, tmp_path / "ckpt", PretrainConfig(steps=2, batch_size=8, warmup=1), SMALL_MODEL).out

    def extract_split(split: str) -> Path:
        store = tmp_path / f"{split}.zarr"
        root = str(world / split / "sugarcrepe")
        extract(ExtractConfig(f"local-dir:{ckpt}", "sugarcrepe", root, str(store), workers=0, batch_size=64, shard_rows=16))
        return store

    store = extract_split("test_id")
    res = CliRunner().invoke(app, ["probe", "--cache", str(store), "--world", str(world)])
    assert res.exit_code == 0, res.output
    assert "colour" in res.output and "chance" in res.output and "R@1" in res.output
    bad = CliRunner().invoke(app, ["probe", "--cache", str(store), "--world", str(world), "--split", "nope"])
    assert bad.exit_code == 2 and "scenes.jsonl" in bad.output
    ood = extract_split("test_ood")
    args = ["probe", "--cache", str(ood), "--world", str(world), "--split", "test_ood", "--fit-on", str(store)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "transfer probe" in res.output and "held-out" in res.output
    bad = CliRunner().invoke(app, ["probe", "--cache", str(store), "--world", str(world), "--fit-on", str(store)])
    assert bad.exit_code == 2 and "held-out pair" in bad.output
