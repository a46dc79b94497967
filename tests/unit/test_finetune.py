"""End-to-end fine-tuning baselines (full, NegCLIP, CLIC, DeGLA): each loss by hand, the negatives guarantee, the folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from compalign.cli.shapes import app
from compalign.core import InputError
from compalign.core.assets import TINY_CHECKPOINT
from compalign.extract.backbones import load_backbone
from compalign.heads.losses import Scores, igc, tgc
from compalign.shapes import WorldConfig, caption_is_false, load_held_out, named_pairs, parse_caption, write_world
from compalign.shapes.finetune import (
    FinetuneConfig,
    _Run,
    composite_scene,
    draw_negatives,
    finetune_backbone,
    join,
    list_methods,
    load_finetune_data,
    load_local_dir,
)
from compalign.shapes.load import read_jsonl
from compalign.shapes.losses import clic_loss, clip_loss, degla_loss, negclip_loss
from compalign.shapes.pretrain import WEIGHTS_NAME, world_fingerprint
from compalign.shapes.scene import Scene, SceneObject

METHODS = ("clic", "degla", "full", "negclip")
FAST = dict(steps=3, batch_size=8, warmup=1, log_every=1)
E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
EYE = torch.stack([E1, E2])  # (2, 2): two unit features, orthogonal
SWAP = torch.stack([E2, E1])
ONE = torch.tensor(1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=24, n_test_id=4, n_test_ood=4, seed=3), out)
    return out


@pytest.fixture(scope="module")
def runs(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, list, list]]:
    """Each method, a few steps, twice with the same seed: (folder, folder again, texts seen, images seen)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for m in METHODS:
        texts: list[str] = []
        images: list[str] = []

        def seen(t: list[str], i: list[str], texts: list[str] = texts, images: list[str] = images) -> None:
            texts.extend(t)
            images.extend(i)

        a = finetune_backbone(world, root / f"{m}_a", FinetuneConfig(method=m, **FAST), seen=seen).out
        b = finetune_backbone(world, root / f"{m}_b", FinetuneConfig(method=m, **FAST)).out
        out[m] = (a, b, texts, images)
    return out


# -- each loss on a case computed by hand ------------------------------------------------------------


def test_the_registry_holds_the_four_methods_and_refuses_others() -> None:
    assert list_methods() == list(METHODS)
    with pytest.raises(InputError, match="unknown method 'negclip2'; known: clic, degla, full, negclip"):
        FinetuneConfig(method="negclip2")


def test_full_is_clips_symmetric_infonce() -> None:
    # logits = I: each of the 4 rows (2 image->text, 2 text->image) is -log(e / (e + 1))
    assert clip_loss(EYE, EYE, ONE).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # a perfect matching at a temperature of 100 leaves almost nothing; shuffled captions leave log(1 + e^100)
    assert clip_loss(EYE, SWAP, torch.tensor(100.0)).item() == pytest.approx(100.0, abs=1e-4)


def test_negclip_adds_the_hard_negative_to_the_image_to_text_denominator_only() -> None:
    # 2x2 logits = I, plus one hard negative equal to image 1's caption: image 1 sees [1, 0 | 1], image 2 [0, 1 | 0]
    e = math.e
    i2t = (math.log((2 * e + 1) / e) + math.log((e + 2) / e)) / 2
    t2i = math.log(1 + 1 / e)  # text->image is CLIP's: the negative is not an image
    got = negclip_loss(EYE, EYE, E1[None], ONE).item()
    assert got == pytest.approx(0.5 * (i2t + t2i), abs=1e-6)
    assert got > clip_loss(EYE, EYE, ONE).item()  # the hard negative only ever adds to the loss
    assert negclip_loss(EYE, EYE, torch.zeros(0, 2), ONE).item() == pytest.approx(t2i, abs=1e-6)  # none: CLIP


def test_clic_scores_the_joined_positives_its_negative_and_the_two_orders() -> None:
    # positives p1 = I (each composite's own joined caption), p2 = the other order, here SWAP (a different vector)
    # negative: image 1's is e2 (logit 0), image 2 has none (masked)
    e = math.e
    cont = (math.log(1 + 1 / e) + math.log(1 + e)) / 2  # p1's matrix is I, p2's is SWAP (diagonal 0, off 1)
    neg = (math.log(1 + 1 / e) + math.log(2)) / 2  # image 1: p1 logit 1 vs 0, p2 logit 0 vs 0; image 2 masked
    uni = 2.0  # ||e1 - e2||^2 for both composites
    got = clic_loss(EYE, torch.stack([EYE, SWAP]), SWAP, torch.tensor([True, False]), ONE)
    assert got.item() == pytest.approx(0.5 * cont + 0.5 * neg + 1.0 * uni, abs=1e-6)
    # two identical orders: the uni-modal term vanishes and the rest is CLIP + the 2-way negative term
    same = clic_loss(EYE, torch.stack([EYE, EYE]), SWAP, torch.tensor([True, True]), ONE, 1.0, 1.0, 1.0)
    assert same.item() == pytest.approx(2 * math.log(1 + 1 / e), abs=1e-6)


def test_a_composite_is_two_squeezed_halves_with_joined_captions() -> None:
    a = Scene(64, (SceneObject("circle", "red", "small", (8, 8, 24, 24)),), 0)
    b = Scene(64, (SceneObject("square", "blue", "large", (32, 0, 64, 32)),), 0)
    c = composite_scene(a, b)
    assert [o.box for o in c.objects] == [(4, 8, 12, 24), (48, 0, 64, 32)]
    assert [(o.colour, o.shape) for o in c.objects] == [("red", "circle"), ("blue", "square")]
    assert join("a red circle", "a large blue square") == "a red circle. a large blue square."


def test_clic_composites_pixels_captions_and_negatives(world: Path) -> None:
    model, pre, tok, _ = load_local_dir(TINY_CHECKPOINT)
    data = load_finetune_data(world, pre, tok)
    run = _Run(model, data, tok, FinetuneConfig(method="clic", seed=1), torch.device("cpu"), None)
    try:
        img, cap = torch.arange(8), torch.tensor([data.train.captions_of()[i][0] for i in range(8)])
        c = run.compose(img, cap)
        assert len(c.left) == 8  # the tiny world's captions all fit two to a context
        for i in range(8):
            a, b = int(img[i]), int(img[(i + 1) % 8])
            assert {int(c.left[i]), int(c.right[i])} == {a, b}
            ca, cb = data.texts[int(cap[i])], data.texts[int(cap[(i + 1) % 8])]
            assert (c.positives[0][i], c.positives[1][i]) == (f"{ca}. {cb}.", f"{cb}. {ca}.")
            scene = composite_scene(data.scenes[int(c.left[i])], data.scenes[int(c.right[i])])
            for p in (c.positives[0][i], c.positives[2][i], c.positives[3][i]):  # no positive is false of it
                assert not any(caption_is_false(parse_caption(s, data.world), scene, data.world) for s in p[:-1].split(". "))
            options = [(n, cb) for n in data.negatives[int(cap[i])].tolist() if n >= 0]
            options += [(n, ca) for n in data.negatives[int(cap[(i + 1) % 8])].tolist() if n >= 0]
            false = {join(*o) for n, other in options
                     if caption_is_false(parse_caption(data.texts[n], data.world), scene, data.world)
                     for o in ((data.texts[n], other), (other, data.texts[n]))}
            # the negative is one of the world's negatives of either caption, joined to the other, false of the
            # composite; a composite goes without one exactly when no such negative exists
            assert (c.negative[i] in false) if c.negative_mask[i] else not false, (i, c.negative[i])
        # the pixels: each half is its image squeezed to half width
        x = torch.cat([F.interpolate(data.train.pixels[r], size=(64, 32), mode="bilinear", antialias=True)
                       for r in (c.left, c.right)], dim=3)
        assert torch.equal(run.composites(c.left, c.right), model.encode_image(x, normalize=True))
    finally:
        run.restore()


def test_degla_distillation_vanishes_when_the_student_is_its_teacher_and_igc_tgc_are_the_heads() -> None:
    g = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(2))
    neg = F.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, True, True]])
    scale = torch.tensor(20.0)
    clip = clip_loss(img, txt, scale).item()
    # teacher == student: the distillation term is 0, whatever its weight
    only_distill = degla_loss(img, txt, neg, mask, img, txt, neg, scale, w_distill=1.0, w_igc=0.0, w_tgc=0.0)
    assert only_distill.item() == pytest.approx(clip, abs=1e-6)
    # a teacher off by d on one image feature: the term is ||d||^2 (masked negatives never count)
    t_img, t_neg = img.clone(), neg.clone()
    t_img[1] += 0.5
    t_neg[2, 0] += 7.0  # item 2 has no negatives: masked
    moved = degla_loss(img, txt, neg, mask, t_img, txt, t_neg, scale, w_distill=1.0, w_igc=0.0, w_tgc=0.0)
    assert moved.item() == pytest.approx(clip + 8 * 0.25, abs=1e-5)
    # IGC and TGC are the heads' losses on the same scores
    matrix, hard = scale * img @ txt.T, scale * torch.einsum("be,bke->bk", img, neg)
    want_igc = igc(Scores(pos=matrix.diagonal(), matrix=matrix, hard=hard, hard_mask=mask)).item()
    got_igc = degla_loss(img, txt, neg, mask, img, txt, neg, scale, w_distill=0.0, w_igc=1.0, w_tgc=0.0).item() - clip
    assert got_igc == pytest.approx(want_igc, abs=1e-5)
    t_pos, text_hard = 10.0 * (txt * txt).sum(-1), 10.0 * torch.einsum("be,bke->bk", txt, neg)
    want_tgc = tgc(Scores(pos=t_pos, text_hard=text_hard, hard_mask=mask)).item()
    got_tgc = degla_loss(img, txt, neg, mask, img, txt, neg, scale, w_distill=0.0, w_igc=0.0, w_tgc=1.0).item() - clip
    assert got_tgc == pytest.approx(want_tgc, abs=1e-5)
    # and TGC by hand: one negative orthogonal to its caption, the teacher's view of the caption the caption itself
    by_hand = degla_loss(EYE, EYE, SWAP[:, None], torch.tensor([[True], [False]]), EYE, EYE, SWAP[:, None], ONE,
                         w_distill=0.0, w_igc=0.0, w_tgc=1.0).item() - clip_loss(EYE, EYE, ONE).item()
    assert by_hand == pytest.approx(math.log(1 + math.exp(-10)) / 2, abs=1e-7)


def test_degla_teacher_starts_as_the_student_and_follows_it_by_ema(world: Path) -> None:
    model, pre, tok, _ = load_local_dir(TINY_CHECKPOINT)
    run = _Run(model, load_finetune_data(world, pre, tok), tok, FinetuneConfig(method="degla", degla_ema=0.75),
               torch.device("cpu"), None)
    try:
        before = run.teacher.text_projection.detach().clone()
        assert torch.equal(before, model.text_projection)
        with torch.no_grad():
            model.text_projection.add_(1.0)
        run.ema()  # teacher <- 0.75 teacher + 0.25 student
        assert torch.allclose(run.teacher.text_projection, before + 0.25, atol=1e-6)
        assert not run.teacher.text_projection.requires_grad
    finally:
        run.restore()


def test_negatives_are_drawn_among_those_the_caption_has() -> None:
    negs = torch.tensor([[5, -1, 7], [-1, -1, -1], [-1, 9, -1]])
    rows, mask = draw_negatives(negs, 2, torch.Generator().manual_seed(0))
    assert sorted(rows[0].tolist()) == [5, 7] and mask[0].tolist() == [True, True]
    assert mask[1].tolist() == [False, False]
    assert rows[2][mask[2]].tolist() == [9] and mask[2].tolist() == [True, False]


# -- the negatives guarantee ---------------------------------------------------------------------------


def _train_strings(world: Path) -> tuple[set[str], set[str]]:
    rows = [r for _, r in read_jsonl(world / "train" / "pairs.jsonl")]
    return {r["caption"] for r in rows} | {t for r in rows for t in r["negatives"].values()}, {r["image"] for r in rows}


def test_no_training_text_or_image_is_outside_the_train_split_or_names_a_held_out_pair(world: Path, runs) -> None:
    strings, images = _train_strings(world)
    captions = {r["caption"] for _, r in read_jsonl(world / "train" / "pairs.jsonl")}
    negatives = strings - captions
    held = load_held_out(world)
    cfg = json.loads((world / "world.json").read_text())["config"]
    assert held and not cfg["leak_negatives"]
    wcfg = WorldConfig.from_dict(cfg)
    for m in METHODS:
        _, _, texts, seen_images = runs[m]
        assert seen_images and set(seen_images) <= images, m
        sentences = [s for t in texts for s in (t[:-1].split(". ") if m == "clic" and t.endswith(".") else [t])]
        assert set(sentences) <= strings, (m, sorted(set(sentences) - strings)[:3])
        assert not any(named_pairs(parse_caption(s, wcfg)) & held for s in set(sentences))
        # the methods with hard negatives did use them (the audit covers them); full saw captions only
        assert set(sentences) <= captions if m == "full" else set(sentences) & negatives, m
    assert any(t.count(". ") == 1 for t in runs["clic"][2])  # CLIC encoded joined captions


def test_a_world_whose_train_texts_name_a_held_out_pair_is_refused(world: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    colour, shape = sorted(load_held_out(world))[0]
    lines = (bad / "train" / "pairs.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["negatives"]["replace_att"] = f"a {colour} {shape}"
    (bad / "train" / "pairs.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    _, pre, tok, _ = load_local_dir(TINY_CHECKPOINT)
    with pytest.raises(InputError, match=f"names held-out pairs .*'a {colour} {shape}'.*--leak-negatives"):
        load_finetune_data(bad, pre, tok)


# -- the folders ---------------------------------------------------------------------------------------


def test_each_method_writes_a_backbone_extract_loads_that_moved_and_repeats(world: Path, runs) -> None:
    shipped = load_file(str(TINY_CHECKPOINT / WEIGHTS_NAME))
    for m in METHODS:
        a, b, _, _ = runs[m]
        record = json.loads((a / "open_clip_config.json").read_text())["compalign"]
        assert (record["finetune"]["method"], record["finetune"]["steps"], record["finetune"]["seed"]) == (m, 3, 0)
        assert record["world"]["fingerprint"] == world_fingerprint(world) and record["n_images"] == 24
        bb = load_backbone(f"local-dir:{a}")
        assert bb.model_name == f"local-dir:{a}"
        loaded = {k: v for k, v in bb.model.state_dict().items() if k in shipped}
        tuned = load_file(str(a / WEIGHTS_NAME))
        assert loaded.keys() == tuned.keys() == shipped.keys()
        assert all(torch.equal(loaded[k], tuned[k]) for k in tuned)  # extract sees exactly the trained weights
        moved = [k for k in shipped if not torch.equal(shipped[k], tuned[k])]
        assert "visual.conv1.weight" in moved and "text_projection" in moved, m  # both towers trained
        assert (a / WEIGHTS_NAME).read_bytes() == (b / WEIGHTS_NAME).read_bytes(), m  # same seed, same bytes


def test_methods_differ_from_each_other(runs) -> None:
    w = {m: load_file(str(runs[m][0] / WEIGHTS_NAME))["text_projection"] for m in METHODS}
    assert all(not torch.equal(w[x], w[y]) for x in METHODS for y in METHODS if x < y)


def test_the_cli_fine_tunes_and_names_the_methods(world: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "--method", "negclip", "--world", str(world), "--out", str(tmp_path / "n"),
                              "--steps", "2", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "negclip-fine-tuned backbone written to" in res.output
    assert json.loads((tmp_path / "n" / "open_clip_config.json").read_text())["compalign"]["finetune"]["steps"] == 2
    res = runner.invoke(app, ["finetune", "--method", "sgd", "--world", str(world), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown method 'sgd'" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(app, ["finetune", "--method", "full", "--world", str(tmp_path / "none"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "compalign shapes make --out" in res.output
