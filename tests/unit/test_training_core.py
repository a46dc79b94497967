"""core.training: the learning-rate schedule, AdamW groups, optimizer state as tensors, data parallel."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from compalign.core.training import cosine_lr, load_optimizer_tensors, optimizer_tensors, param_groups


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    lr = dict(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert cosine_lr(0, **lr) == pytest.approx(0.1)  # (step + 1) / warmup of the peak
    assert cosine_lr(4, **lr) == pytest.approx(0.5)
    assert cosine_lr(9, **lr) == 1.0 and cosine_lr(10, **lr) == 1.0  # the peak at the end of warmup
    assert cosine_lr(55, **lr) == pytest.approx(0.55)  # half way down the cosine: (lr + min_lr) / 2
    assert cosine_lr(100, **lr) == pytest.approx(0.1) and cosine_lr(250, **lr) == pytest.approx(0.1)  # held at min_lr
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)  # min_lr defaults to 0
    assert cosine_lr(0, 10, 0, 2.0) == 2.0  # no warmup: the peak at once


def test_param_groups_decay_matrices_only():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.pos_embed = torch.nn.Parameter(torch.zeros(9, 4))
            self.scale = torch.nn.Parameter(torch.tensor(1.0))
            self.frozen = torch.nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    m = M()
    decay, rest = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0

    def ids(group):
        return {id(p) for p in group["params"]}

    assert ids(decay) == {id(m.proj.weight)}
    assert ids(rest) == {id(m.proj.bias), id(m.pos_embed), id(m.scale)}  # the frozen one in neither
    decay, rest = param_groups(m, 0.05, spare=("proj",))  # other names spared: positions are then decayed
    assert ids(decay) == {id(m.pos_embed)} and ids(rest) == {id(m.proj.weight), id(m.proj.bias), id(m.scale)}


def test_the_shipped_backbone_recipe_gets_the_lr_and_groups_it_was_trained_with():
    # shapes/pretrain.py once had its own schedule and groups; the shipped backbone was trained with them. The
    # literals here were computed with that code: core's functions must give the same numbers, to the bit.
    from compalign.core.assets import TINY_CHECKPOINT
    from compalign.shapes.pretrain import PretrainConfig, build_model, default_model_cfg
    from compalign.shapes.recipe import NO_DECAY

    record = json.loads((TINY_CHECKPOINT / "open_clip_config.json").read_text())["compalign"]["pretrain"]
    cfg = PretrainConfig.from_dict(record)
    assert (cfg.steps, cfg.warmup, cfg.lr, cfg.weight_decay) == (4000, 100, 2e-3, 0.1)
    lrs = [cosine_lr(s, cfg.steps, cfg.warmup, cfg.lr) for s in range(cfg.steps)]
    assert [lrs[s] for s in (0, 49, 98, 99, 100, 101, 2049, 2050, 3998, 3999)] == [
        2e-05, 0.001, 0.00198, 0.002, 0.002, 0.0019999996755554286, 0.0010008055364907264, 0.001,
        1.297778075781686e-09, 3.2444457154223726e-10]
    # every one of the 4,000 steps, as float64 bytes
    assert hashlib.sha256(np.array(lrs, np.float64).tobytes()).hexdigest() == (
        "2666b9f2549cfb733a27609035ea4ea1d29ad6249d921763a2e6b9601739a9a0")

    model, _, _ = build_model(default_model_cfg(), cfg.seed)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, rest = param_groups(model, cfg.weight_decay, spare=NO_DECAY)
    decayed, spared = [names[id(p)] for p in decay["params"]], [names[id(p)] for p in rest["params"]]
    mats = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    assert decayed == ["text_projection", "visual.proj", "visual.conv1.weight",
                       *(f"visual.transformer.resblocks.{i}.{m}" for i in range(4) for m in mats),
                       *(f"transformer.resblocks.{i}.{m}" for i in range(3) for m in mats)]
    assert spared == [n for n, _ in model.named_parameters() if n not in decayed] and len(spared) == 67  # the rest, in order
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    # Core's default would decay the token embedding (2-D, no "pos"): the one parameter the recipe spares on top.
    default_decay = {names[id(p)] for p in param_groups(model, cfg.weight_decay)[0]["params"]}
    assert default_decay - set(decayed) == {"token_embedding.weight"}


def test_optimizer_state_round_trips_through_tensors_and_json():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(param_groups(m, 0.1), lr=1e-2)
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    assert set(tensors) == {f"opt.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    again = torch.optim.AdamW(param_groups(m, 0.1), lr=1e-2)
    load_optimizer_tensors(again, tensors, meta)
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


# The process-level helpers, imported in the tests that use them.


def test_outside_torchrun_there_is_one_process(monkeypatch):
    from compalign.core.training import init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1)


def test_data_parallel_gives_the_gradients_of_the_module_itself():
    from compalign.core.training import data_parallel

    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("no torch.distributed here, or a process group is already up")
    torch.manual_seed(0)
    m, x = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 1)), torch.randn(6, 3)
    m(x).pow(2).mean().backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = data_parallel(m, torch.device("cpu"))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.module is m
        ddp(x).pow(2).mean().backward()
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), want))
    finally:
        dist.destroy_process_group()


def test_deterministic_cpu_restores_what_it_changed():
    from compalign.core.training import deterministic_cpu

    det, n = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with deterministic_cpu(torch.device("cpu"), 1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled() == det and torch.get_num_threads() == n
