"""The LR schedule against hand-computed values; parameter groups; resumable state."""
import math

import pytest
import torch
from torch import nn

from detkit.engine.optim import WarmupSchedule, build_optimizer, build_scheduler, load_optimizer_state, param_groups


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_step_values():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1)
    sched = build_scheduler(opt, max_iters=100, schedule="step", milestones=[6, 8], gamma=0.1,
                            warmup_iters=4, warmup_factor=0.2)
    lrs = _lrs(sched, opt, 10)
    # warm-up: f = 0.2 * (1 - t/4) + t/4 -> 0.2, 0.4, 0.6, 0.8; then 1; x0.1 from t=6; x0.01 from t=8
    expected = [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_cosine_values_and_warmup_product():
    s = WarmupSchedule(max_iters=10, schedule="cosine", warmup_iters=2, warmup_factor=0.5, min_factor=0.1)
    # t=0: cos part 1.0, warm-up 0.5; t=1: cos 0.1+0.9*(1+cos(pi/10))/2, warm-up 0.75
    assert s(0) == pytest.approx(0.5)
    assert s(1) == pytest.approx((0.1 + 0.9 * (1 + math.cos(math.pi / 10)) / 2) * 0.75)
    assert s(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(10) == pytest.approx(0.1)
    assert s(20) == pytest.approx(0.1)  # clamped past the end


def test_scheduler_state_resumes():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0)
    sched = build_scheduler(opt, max_iters=20, schedule="cosine", warmup_iters=3)
    _lrs(sched, opt, 7)
    opt2 = build_optimizer(nn.Linear(2, 2), lr=1.0)
    sched2 = build_scheduler(opt2, max_iters=20, schedule="cosine", warmup_iters=3)
    # as the trainer does: optimizer (holds the current lr) and scheduler (holds t)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert _lrs(sched2, opt2, 5) == pytest.approx(_lrs(sched, opt, 5))


def test_sgd_defaults_and_no_decay_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))
    model[2].weight.requires_grad_(False)  # a frozen stage is left out
    opt = build_optimizer(model, lr=0.01)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # conv w, conv b, bn w, bn b
    groups = param_groups(model, weight_decay=5e-4, no_decay_norm_bias=True)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert groups[1]["weight_decay"] == 0.0


def test_bad_schedule_settings():
    with pytest.raises(ValueError, match="unknown schedule"):
        WarmupSchedule(max_iters=10, schedule="poly")
    with pytest.raises(ValueError, match="milestones"):
        WarmupSchedule(max_iters=10, milestones=[5, 2])
    with pytest.raises(ValueError, match="trainable"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), lr=0.1)


def test_fused_sgd_on_the_cpu_matches_the_per_tensor_update():
    import copy

    import torch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    fused = build_optimizer(model, lr=0.1, weight_decay=1e-3, no_decay_norm_bias=True)
    plain = build_optimizer(twin, lr=0.1, weight_decay=1e-3, no_decay_norm_bias=True, fused=False)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in plain.param_groups)
    x = torch.randn(32, 8)
    for _ in range(3):  # momentum buffers in play from the second step
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[0].weight, start[0].weight)  # the steps did move the weights


def test_loading_a_state_keeps_this_optimizers_kernel_and_the_parameters_layout():
    torch.manual_seed(0)
    saved_model = nn.Conv2d(3, 4, 3)
    saved = build_optimizer(saved_model, lr=0.1, fused=False)  # saved by a run on the per-tensor kernel
    saved_model(torch.randn(1, 3, 5, 5)).sum().backward()
    saved.step()
    model = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)  # resumed channels_last, fused
    opt = build_optimizer(model, lr=0.1, fused=True)
    load_optimizer_state(opt, saved.state_dict())
    assert opt.param_groups[0]["fused"] is True  # a plain load_state_dict would take the saved False
    for p, q in zip(model.parameters(), saved_model.parameters()):
        buf = opt.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and torch.equal(buf, saved.state[q]["momentum_buffer"])
    model(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()  # the fused kernel accepts the restored buffers
