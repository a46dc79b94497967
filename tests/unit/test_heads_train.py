"""Training heads from a cache: data plan, losses, determinism, resume, checkpoints, refusals, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from compalign.cache.reader import CacheReader
from compalign.core.training import deterministic_cpu
from compalign.heads import load_head
from compalign.heads.data import Planner, load_pairs, split_by_image, subset_images
from compalign.heads.losses import Scores, get_loss, list_losses, parse_losses
from compalign.heads.train import TrainConfig, lr_at, train_head, validate


@pytest.fixture(scope="module")
def world_caches(tmp_path_factory):
    """A 60-scene shapes world: its training pairs (with negatives) and its test-OOD SugarCrepe, extracted with tiny."""
    from compalign.extract.runner import ExtractConfig, extract
    from compalign.shapes import WorldConfig, write_world

    root = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_train=60, n_test_id=10, n_test_ood=10), root / "world")
    train, sc = root / "train.zarr", root / "sc.zarr"
    extract(ExtractConfig(model="tiny", data="pairs", root=str(root / "world" / "train"), out=str(train), workers=0,
                          shard_rows=64, layers=[-1, -2]))
    extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root / "world" / "test_ood" / "sugarcrepe"),
                          out=str(sc), workers=0, shard_rows=64, layers=[-1, -2]))
    return train, sc


FAST = dict(steps=8, batch_size=16, eval_every=4, save_every=4, n_hard=2, prefetch=2, val_fraction=0.2, warmup=2)


# ---- data ------------------------------------------------------------------------------------------
def test_pairs_come_with_their_own_negatives_and_split_by_image(world_caches):
    r = CacheReader(world_caches[0])
    pairs = load_pairs(r)
    assert {"swap_att", "replace_obj", "add_obj"} <= set(pairs.kinds)
    items = r.items
    strings = r.root["texts/strings"][:]
    for i in range(0, len(pairs), 17):  # every negative is the item's own negative of that kind
        row = np.flatnonzero(r.rows("texts", items["caption"]) == pairs.caption[i])[0]
        for j, kind in enumerate(pairs.kinds):
            key = items[f"neg:{kind}"][row]
            assert (pairs.negs[i, j] < 0) == (key == "")
            if key:
                assert strings[pairs.negs[i, j]] == strings[r.rows("texts", [key])[0]]
    train, val = split_by_image(pairs, 0.2, seed=0)
    assert not set(train.image) & set(val.image) and len(train) + len(val) == len(pairs)
    assert np.array_equal(split_by_image(pairs, 0.2, seed=0)[1].image, val.image)
    few = subset_images(val, 5, seed=0)  # validation on a capped, seeded subset: every item of each kept image
    assert len(np.unique(few.image)) == 5 and np.array_equal(subset_images(val, 5, seed=0).image, few.image)
    assert len(few) == np.isin(val.image, few.image).sum() and subset_images(val, 10**6, seed=0) is val
    with pytest.raises(ValueError, match="no negatives of kind"):
        load_pairs(r, ["swap_colour"])


def test_the_batch_plan_is_seeded_and_visits_every_image_once_per_epoch(world_caches):
    pairs = load_pairs(CacheReader(world_caches[0]))
    a, b = Planner(pairs, 8, 2, seed=3, shard_rows=16, buffer_shards=2), Planner(pairs, 8, 2, seed=3, shard_rows=16)
    seen = []
    for s in range(a.steps_per_epoch):
        p = a.plan(s)
        imgs = pairs.image[p.items]
        assert len(set(imgs)) == len(imgs) == 8  # distinct images: no caption meets its own image as a negative
        own = pairs.negs[p.items]
        assert all(n < 0 or n in own[i] for i, row in enumerate(p.negs) for n in row)
        seen += list(imgs)
    assert len(seen) == len(set(seen)) >= len(np.unique(pairs.image)) - 8
    again = Planner(pairs, 8, 2, seed=3, shard_rows=16, buffer_shards=2)
    assert np.array_equal(again.plan(5).items, a.plan(5).items) and np.array_equal(again.plan(5).negs, a.plan(5).negs)
    assert not np.array_equal(b.plan(a.steps_per_epoch).items, b.plan(0).items)  # a new epoch, a new order


# ---- losses ----------------------------------------------------------------------------------------
def test_losses_match_their_definitions():
    assert set(list_losses()) >= {"infonce", "hardneg", "igc", "tgc"}
    m = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    hard = torch.tensor([[2.0, 5.0], [1.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    th = torch.tensor([[1.0, 9.0], [0.5, -1.0]])
    s = Scores(pos=m.diag(), matrix=m, hard=hard, hard_mask=mask, text_hard=th)
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (ce(m, torch.arange(2)) + ce(m.T, torch.arange(2)))
    assert torch.allclose(get_loss("infonce")[0](s), want)
    sp = torch.nn.functional.softplus
    want = (sp(torch.tensor(2.0 - 3)) + sp(torch.tensor(1.0 - 2)) + sp(torch.tensor(0.0 - 2))) / 3  # masked pair left out
    assert torch.allclose(get_loss("hardneg")[0](s), want)
    t = torch.tensor
    want = (ce(t([[3.0, 1.0, 2.0]]), t([0])) + ce(t([[0.0, 2.0, 1.0, 0.0]]), t([1]))) / 2
    assert torch.allclose(get_loss("igc")[0](s), want)
    want = (ce(torch.tensor([[3.0, 1.0]]), torch.tensor([0])) + ce(torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0]))) / 2
    assert torch.allclose(get_loss("tgc")[0](s), want)
    assert parse_losses("infonce=1, hardneg=0.5") == {"infonce": 1.0, "hardneg": 0.5}
    with pytest.raises(KeyError, match="available"):
        parse_losses("clip")


def test_learning_rate_warms_up_then_follows_a_cosine():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))


# ---- training --------------------------------------------------------------------------------------
def _tensors(path):
    return load_file(str(path))


def test_training_is_deterministic_and_resumes_to_the_same_weights(world_caches, tmp_path):
    cfg = TrainConfig(**FAST, losses={"infonce": 1, "hardneg": 1, "igc": 0.5, "tgc": 0.5})
    a = train_head("tflocal_tiny", world_caches[0], tmp_path / "a", cfg)
    train_head("tflocal_tiny", world_caches[0], tmp_path / "b", cfg)
    ta, tb = _tensors(tmp_path / "a" / "last.safetensors"), _tensors(tmp_path / "b" / "last.safetensors")
    assert a.steps == 8 and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    class Crash(Exception):
        pass

    def crash_at_6(e):
        if e.get("step") == 6 and "loss" in e:
            raise Crash

    with pytest.raises(Crash):
        train_head("tflocal_tiny", world_caches[0], tmp_path / "c", cfg, progress=crash_at_6)
    last = json.loads((tmp_path / "c" / "last.json").read_text())
    assert last["step"] == 4
    last["ident"]["train"]["amp"] = True  # as runs stored it before amp joined the fields a resume may change
    (tmp_path / "c" / "last.json").write_text(json.dumps(last))
    # resumed on the shard-LRU reader with no prefetch: where and how fast, not what is computed
    c = train_head("tflocal_tiny", world_caches[0], tmp_path / "c",
                   dataclasses.replace(cfg, reader_resident_mb=0, prefetch=0, amp=True))
    tc = _tensors(tmp_path / "c" / "last.safetensors")
    assert c.steps == 8 and all(torch.equal(ta[k], tc[k]) for k in ta)  # the resumed run equals the uninterrupted one
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8]
    # Every logged accuracy is what `validate` counts on the held-out split: a whole number of wins per kind
    # over that kind's validation negatives, `acc` their mean; the kept head is the best row and re-validates to it.
    reader = CacheReader(world_caches[0])
    val = subset_images(split_by_image(load_pairs(reader), cfg.val_fraction, cfg.seed)[1], cfg.val_images, cfg.seed)
    n_negs = {k: int((val.negs[:, j] >= 0).sum()) for j, k in enumerate(val.kinds)}
    assert all(n_negs.values())
    for row in log:
        assert set(row) == {"step", "loss", "acc", *(f"acc_{k}" for k in n_negs)}
        for k, n in n_negs.items():
            wins = row[f"acc_{k}"] * n / 100
            assert wins == pytest.approx(round(wins), abs=1e-6) and 0 <= round(wins) <= n, (row, k)
        assert row["acc"] == pytest.approx(np.mean([row[f"acc_{k}"] for k in n_negs]), abs=1e-9)
    best = next(r for r in log if r["acc"] == max(x["acc"] for x in log))  # the first of the best
    assert a.best_step == best["step"] and a.best == {k: v for k, v in best.items() if k not in ("step", "loss")}
    with deterministic_cpu(torch.device("cpu"), cfg.threads):
        again = validate(load_head(tmp_path / "a"), reader, val, torch.device("cpu"))
    assert again == pytest.approx(a.best, abs=1e-9)
    with pytest.raises(ValueError, match="another head, config or cache"):
        train_head("tflocal_tiny", world_caches[0], tmp_path / "a", TrainConfig(**{**FAST, "lr": 0.5}))


def test_a_trained_head_scores_benchmarks_and_refuses_another_backbone(world_caches, tmp_path):
    from compalign.evaluate.benchmarks import create_benchmark

    res = train_head("global_mlp_tiny", world_caches[0], tmp_path / "g", TrainConfig(**FAST))
    assert (tmp_path / "g" / "head.json").is_file()
    head = load_head(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "head.json").read_text())
    assert meta["trained_on"]["fingerprint"] == CacheReader(world_caches[0]).fingerprint and meta["train"]["steps"] == 8
    # The kept head's validation accuracy is what `validate` recomputes for it on the same held-out split.
    cfg = TrainConfig(**FAST)
    reader = CacheReader(world_caches[0])
    val = subset_images(split_by_image(load_pairs(reader), cfg.val_fraction, cfg.seed)[1], cfg.val_images, cfg.seed)
    assert {k: v for k, v in meta["metrics"].items() if k != "step"} == res.best and meta["metrics"]["step"] == res.best_step
    with deterministic_cpu(torch.device("cpu"), cfg.threads):
        assert validate(head, reader, val, torch.device("cpu")) == pytest.approx(res.best, abs=1e-9)
    assert res.best["acc"] == pytest.approx(np.mean([v for k, v in res.best.items() if k != "acc"]), abs=1e-9)
    out = create_benchmark("sugarcrepe").evaluate(CacheReader(world_caches[1]), head)
    assert out.head == "global_mlp_tiny@g"
    # Its SugarCrepe metrics are the accuracies of its own items, as many per subset as the world's JSON files hold.
    sc = world_caches[1].parent / "world" / "test_ood" / "sugarcrepe"
    want_n = {f.stem: len(json.loads(f.read_text())) for f in sorted(sc.glob("*.json"))}
    assert len(want_n) == 7
    subset = np.array([i["subset"] for i in out.items])
    correct = np.array([i["correct"] for i in out.items])
    assert {s: int((subset == s).sum()) for s in want_n} == want_n and all(i["valid"] for i in out.items)
    np.testing.assert_array_equal(correct, [i["pos"] > i["neg"] for i in out.items])  # strict: a tie is wrong
    m = out.metrics
    bow = np.array([i["bow_proof"] for i in out.items])  # the world's swaps reorder the positive's own words
    assert set(np.unique(subset[bow]).tolist()) == {"swap_att", "swap_obj"}
    assert set(m) == {*want_n, "replace", "swap", "add", "macro", "micro",
                      *(f"bow_proof/{k}" for k in ("swap_att", "swap_obj", "swap", "macro", "micro"))}
    for s in want_n:
        assert m[s] == pytest.approx(100 * correct[subset == s].mean(), abs=1e-9), s
    for cat in ("replace", "swap", "add"):
        assert m[cat] == pytest.approx(100 * correct[np.char.startswith(subset, cat + "_")].mean(), abs=1e-9), cat
    assert m["macro"] == pytest.approx(np.mean([m[s] for s in want_n]), abs=1e-9)
    assert m["micro"] == pytest.approx(sum(m[s] * n for s, n in want_n.items()) / sum(want_n.values()), abs=1e-9)

    class OtherBackbone(CacheReader):
        backbone_id = "0123456789abcdef"

    with pytest.raises(ValueError, match=r"trained on caches of backbone 'tiny'.*0123456789abcdef"):
        create_benchmark("sugarcrepe").evaluate(OtherBackbone(world_caches[1]), head)


def test_training_refuses_what_it_cannot_do(world_caches, tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        train_head("maxsim", world_caches[0], tmp_path / "m", TrainConfig(**FAST))
    with pytest.raises(ValueError, match="n_hard"):
        train_head("tflocal_tiny", world_caches[0], tmp_path / "t", TrainConfig(**{**FAST, "n_hard": 0}))
    with pytest.raises(ValueError, match="layers"):
        train_head("tflocal_tiny", world_caches[0], tmp_path / "t", TrainConfig(**FAST), head_config={"layer": -3})



def test_rows_of_image_caption_negative_caption_train_too(world_caches, tmp_path):
    """TROHN-Text / SugarCrepe-style items (image, caption, negative_caption): one negative kind, 'negative'."""
    assert load_pairs(CacheReader(world_caches[1])).kinds == ("negative",)
    res = train_head("tflocal_tiny", world_caches[1], tmp_path / "t", TrainConfig(**{**FAST, "steps": 2, "n_hard": 1}))
    assert res.steps == 2 and (tmp_path / "t" / "head.safetensors").is_file()


def test_cli_trains_then_scores_the_checkpoint(world_caches, tmp_path):
    from compalign.cli.heads import app

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "tflocal_tiny", "--cache", str(world_caches[0]), "--out", str(run),
                                   "--steps", "6", "--batch-size", "16", "--eval-every", "3", "--set", "match=max",
                                   "--loss", "infonce=1,hardneg=1", "--train-set", "warmup=2"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "head.json").read_text())["head_config"]["match"] == "max"
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["score", "--bench", "sugarcrepe", "--cache", str(world_caches[1]),
                                   "--checkpoint", str(run), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["head"] == "tflocal_tiny@run"
    score = ["score", "--bench", "sugarcrepe", "--cache", str(world_caches[1]), "--head"]
    res = CliRunner().invoke(app, [*score, "maxsim"])  # training-free: scores as it is
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*score, "tflocal_tiny"])  # trainable, no weights: refused, both ways out named
    assert res.exit_code == 2 and "--checkpoint" in res.output and "--untrained" in res.output
    res = CliRunner().invoke(app, [*score, "tflocal_tiny", "--untrained"])  # its seeded init, asked for explicitly
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", "global", "--cache", str(world_caches[0]), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nothing to train" in res.output
    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0 and "tflocal_tiny" in res.output and "igc" in res.output
