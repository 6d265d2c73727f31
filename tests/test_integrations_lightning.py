import copy
import csv
import math

import pytest

pl = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from batchscope.integrations.lightning import NoiseScaleCallback  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402

from .lightning_helpers import TinyClassifier, TinyData, make_data, trainer  # noqa: E402


def reference_history(module: TinyClassifier, micro: int, accumulation: int, n: int = 512) -> list:
    """batchscope's own monitor in a plain loop over the same micro-batches, in the same order."""
    model = copy.deepcopy(module)
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    monitor = NoiseScaleMonitor(model, micro_batch=micro)
    batches = list(DataLoader(make_data(n), batch_size=micro, shuffle=False))
    for s in range(len(batches) // accumulation):
        total = 0.0
        for x, y in batches[s * accumulation:(s + 1) * accumulation]:
            loss = nn.functional.cross_entropy(model(x), y) / accumulation
            loss.backward()
            total += float(loss)
        monitor.update(total)
        opt.step()
        opt.zero_grad()
    return monitor.history


def test_noise_callback_matches_monitor_on_identical_micro_batches(tmp_path):
    # 512 examples, micro-batch 8, 4 per step: 16 optimizer steps, every window full and equal.
    pl.seed_everything(0)
    module = TinyClassifier()
    ref = reference_history(module, micro=8, accumulation=4)
    cb = NoiseScaleCallback()
    t = trainer(tmp_path, [cb], accumulate_grad_batches=4)
    t.fit(module, datamodule=TinyData(batch_size=8))
    got = cb.monitor.history
    assert len(got) == len(ref) == 16 and cb.left_out == 0
    # Same weights, same micro-batches, same operations: equal to float64 round-off.
    for a, b in zip(got, ref):
        assert a.b_simple == pytest.approx(b.b_simple, rel=1e-9)
        assert a.g2 == pytest.approx(b.g2, rel=1e-9) and a.trace == pytest.approx(b.trace, rel=1e-9)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
    # ... and it went through the Trainer's logger, once per optimizer step.
    rows = list(csv.DictReader(open(t.logger.log_dir + "/metrics.csv")))
    logged = [float(r["noise/b_simple"]) for r in rows if r.get("noise/b_simple")]
    assert logged == pytest.approx([p.b_simple for p in got], rel=1e-6)
    assert any(r.get("noise/b_simple_low") for r in rows)


def test_short_last_window_and_smaller_last_batch_are_left_out(tmp_path):
    # 500 examples / micro-batch 8: 63 batches, the last of 4; accumulate 4: 15 full windows and a
    # final window of 3 batches whose loss Lightning still divides by 4.
    cb = NoiseScaleCallback()
    t = trainer(tmp_path, [cb], accumulate_grad_batches=4)
    t.fit(TinyClassifier(), datamodule=TinyData(batch_size=8, n=500))
    assert len(cb.monitor.history) == 15 and cb.left_out == 1
    assert all(math.isfinite(p.b_simple) for p in cb.monitor.history)


def test_missing_extra_names_it(monkeypatch):
    import sys

    import batchscope.integrations.requires as requires

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(ImportError, match=r"^batchscope.integrations.lightning needs lightning: "
                                          r"pip install 'batchscope\[lightning\]'$"):
        requires.require("lightning.pytorch", "lightning", "batchscope.integrations.lightning")
