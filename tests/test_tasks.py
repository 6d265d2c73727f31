import math

import pytest
import torch

from batchscope import TrainConfig, load_task, train
from batchscope.tasks import BUILTINS


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_task_loads_offline_and_loss_falls(name):
    task = load_task(name)
    facts = task.facts()
    assert facts["parameters"] > 1000 and facts["train_examples"] >= 1000
    if name == "mnist1d":
        assert task.n_train >= 10_000
    # The transformer of 'text' is the costly one: 20 steps already take its validation loss from
    # 4.75 (uniform over the vocabulary) to about 2.9, far past the 0.1 asked.
    steps, examples = (20, 128) if name == "text" else (150, 512)
    result = train(task, TrainConfig(batch_size=32, steps=steps, eval_every=steps, eval_examples=examples))
    first, last = result.history[0], result.history[-1]
    assert last.eval_loss < first.eval_loss - 0.1, (first, last)
    assert math.isfinite(last.loss) and last.loss < first.loss


def test_text_task_splits_by_file_and_predicts_next_character():
    task = load_task("text")
    x, y = task.train_data[0]
    assert torch.equal(x[1:], y[:-1])  # targets are the inputs shifted by one character
    tx = task.train_data.tensors[0]
    vx = task.val_data.tensors[0]
    assert len(vx) > 0 and len(tx) > 5 * len(vx)
    # held-out files: the first validation window appears nowhere in the training windows
    assert not (tx == vx[0]).all(dim=1).any()
