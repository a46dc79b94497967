"""core.training: the learning-rate schedule, AdamW groups, optimizer state as tensors, data parallel."""

from __future__ import annotations

import pytest
import torch

from compalign.core.training import (
    cosine_lr,
    data_parallel,
    deterministic_cpu,
    init_distributed,
    load_optimizer_tensors,
    optimizer_tensors,
    param_groups,
)


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


def test_outside_torchrun_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1)


def test_data_parallel_gives_the_gradients_of_the_module_itself():
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
    det, n = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with deterministic_cpu(torch.device("cpu"), 1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled() == det and torch.get_num_threads() == n
