"""Your own loop, checkpointed with adapt_state half-way, continues exactly as the uninterrupted loop."""

import torch
from torch import nn

from batchscope.adapt import (AdaptiveBatchSampler, BatchSizeController, ScaledLearningRate, StepTimeModel,
                              adapt_state, load_adapt_state)
from batchscope.noise import NoiseScaleMonitor

N = 4096


def _parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sampler = AdaptiveBatchSampler(N, 8, seed=1)
    controller = BatchSizeController(StepTimeModel(2e-3, 2e-5), start_batch=8, n_train=N, max_batch=64, every=4,
                                    min_samples=2)
    return model, opt, sampler, controller, NoiseScaleMonitor(model, micro_batch=4), ScaledLearningRate(0.05, 8)


def _steps(parts, it, first, last, data):
    model, opt, sampler, controller, monitor, rate = parts
    x, y = data
    sizes = []
    for step in range(first, last + 1):
        idx = torch.tensor(next(it))
        sizes.append(len(idx))
        for g in opt.param_groups:
            g["lr"] = rate.lr(len(idx))
        for part in idx.chunk(2):
            (nn.functional.mse_loss(model(x[part]), y[part]) / 2).backward()
        monitor.micro_batch = len(idx) // 2
        monitor.update()
        rate.observe(monitor.estimate().b_simple)
        opt.step()
        opt.zero_grad()
        rate.advance(len(idx))
        if controller.due(step):
            sampler.set_batch_size(controller.decide(step, monitor.estimate()).batch_size)
    return sizes


def test_checkpoint_and_resume_equals_the_uninterrupted_loop():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 4, generator=g)
    data = (x, x.sin().sum(1, keepdim=True) + 0.3 * torch.randn(N, 1, generator=g))
    full = _parts()
    ref = _steps(full, iter(full[2]), 1, 30, data)
    first = _parts()
    sizes = _steps(first, iter(first[2]), 1, 15, data)
    saved = {"model": first[0].state_dict(), "opt": first[1].state_dict(),
             "adapt": adapt_state(first[2], first[3], first[4], first[5])}
    again = _parts()
    again[0].load_state_dict(saved["model"])
    again[1].load_state_dict(saved["opt"])
    load_adapt_state(saved["adapt"], *again[2:])
    sizes += _steps(again, iter(again[2]), 16, 30, data)
    assert sizes == ref and max(ref) > 8
    for p, q in zip(full[0].parameters(), again[0].parameters()):
        assert torch.allclose(p, q, atol=1e-6)
