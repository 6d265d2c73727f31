import copy
import math

import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

from batchscope.integrations.hf import NoiseScaleCallback  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402

from .hf_helpers import TokenData, args, tiny_bert  # noqa: E402


def capture_batches(model):
    seen = []

    def hook(module, a, kw):
        if module.training:
            seen.append({k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)})
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def replay(model, batches, accumulation: int, lr: float, clip: float, micro: int, divide: bool):
    """batchscope's own monitor in a plain loop over the Trainer's micro-batches, in its order.

    ``divide``: whether the Trainer divides each micro-batch loss by the accumulation count; it does
    not when the model takes loss keyword arguments (it then expects the model to normalise).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = NoiseScaleMonitor(model, micro_batch=micro)
    model.train()
    for s in range(len(batches) // accumulation):
        for b in batches[s * accumulation:(s + 1) * accumulation]:
            (model(**b).loss / (accumulation if divide else 1)).backward()
        monitor.update()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
    return monitor.history


def test_noise_callback_matches_monitor_and_logs(tmp_path):
    model = tiny_bert()
    start = copy.deepcopy(model)
    seen, handle = capture_batches(model)
    cb = NoiseScaleCallback()
    a = args(tmp_path, max_grad_norm=0.5, dataloader_drop_last=True)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=TokenData(256), callbacks=[cb])
    trainer.train()
    handle.remove()
    assert a.max_grad_norm == 0.5          # clipping handed back after the run
    got = cb.monitor.history
    ref = replay(start, seen, 4, 0.05, 0.5, 8, divide=not trainer.model_accepts_loss_kwargs)
    assert len(got) == len(ref) == 8 and cb.left_out == 0
    # Same weights (clipping included), same micro-batches: equal to round-off.
    for x, y in zip(got, ref):
        assert x.b_simple == pytest.approx(y.b_simple, rel=1e-6)
        assert x.g2 == pytest.approx(y.g2, rel=1e-6)
    logged = [h["noise/b_simple"] for h in trainer.state.log_history if "noise/b_simple" in h]
    finite = [p.b_simple for p in got if math.isfinite(p.b_simple)]   # inf: signal not yet told from zero
    assert len(finite) >= 2 and logged == pytest.approx(finite, rel=1e-12)


def test_smaller_last_batch_is_left_out(tmp_path):
    # 250 examples / 8: 31 full batches and one of 2; accumulation 4: the last step mixes sizes.
    cb = NoiseScaleCallback()
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path), train_dataset=TokenData(250),
                                   callbacks=[cb])
    trainer.train()
    assert len(cb.monitor.history) == 7 and cb.left_out == 1
