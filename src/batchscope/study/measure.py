"""What a study measures inside each run, as pure functions plus thin :class:`~batchscope.train.Callback` adapters.

* distance of the weights from their initial values, per layer and in total (Hoffer et al. 2017,
  "Train longer, generalize better", relate it to the number of updates);
* cosine similarity of final and initial weights, per layer;
* the distribution of gradient norms |g_B| over N fresh batches at an early and a late checkpoint
  (Keskar et al. 2017 and McCandlish et al. 2018: its spread is the gradient noise the batch averages away);
* loss and metric on a fixed subset of the training set at every evaluation, beside the loop's
  validation numbers, for the generalization gap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..data import batch_indices, forward, split_batch, take, to_device
from ..train import Callback, HistoryPoint, TrainContext, evaluate
from ..train import crossing_step  # noqa: F401 - steps to target has one definition, in train

TOTAL = "total"


def layer_of(param_name: str) -> str:
    """The module a parameter belongs to: '0.weight' and '0.bias' are layer '0'."""
    head, _, _ = param_name.rpartition(".")
    return head or param_name


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A float64 copy of the trainable parameters, by name."""
    return {n: p.detach().to("cpu", torch.float64).clone() for n, p in model.named_parameters() if p.requires_grad}


def _group(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layers: dict[str, list[torch.Tensor]] = {}
    for name, t in params.items():
        layers.setdefault(layer_of(name), []).append(t.flatten())
    return {k: torch.cat(v) for k, v in layers.items()}


def layer_distances(current: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 distance |w - w0| per layer and over all parameters (key ``'total'``)."""
    cur, ini = _group(current), _group(initial)
    out = {k: float(torch.linalg.vector_norm(cur[k] - ini[k])) for k in cur}
    out[TOTAL] = math.sqrt(sum(v * v for v in out.values()))
    return out


def layer_cosines(current: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine similarity <w, w0> / (|w| |w0|) per layer and over all parameters; nan where a norm is 0."""
    cur, ini = _group(current), _group(initial)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
        return float(torch.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else float("nan")

    out = {k: cos(cur[k], ini[k]) for k in cur}
    out[TOTAL] = cos(torch.cat(list(cur.values())), torch.cat(list(ini.values())))
    return out


@dataclass(frozen=True)
class GradNormStats:
    """The distribution of |g_B| over N batches of size B, taken at one optimizer step."""

    step: int
    batch_size: int
    n: int
    mean: float
    std: float
    p05: float
    median: float
    p95: float
    norms: tuple  # every measured norm, so any histogram can be drawn later

    def to_dict(self) -> dict:
        d = asdict(self)
        d["norms"] = [float(f"{x:.6g}") for x in self.norms]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GradNormStats":
        return cls(**{**d, "norms": tuple(d["norms"])})


def grad_norm_stats(norms, step: int, batch_size: int) -> GradNormStats:
    x = np.asarray(norms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no gradient norms to summarise")
    p05, med, p95 = np.quantile(x, [0.05, 0.5, 0.95])
    return GradNormStats(step, batch_size, int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0,
                         float(p05), float(med), float(p95), tuple(float(v) for v in x))


def gradient_norms(model: nn.Module, task, batch_size: int, n_batches: int, seed: int,
                   device: torch.device) -> list[float]:
    """|g_B| of the mean loss over ``n_batches`` fresh batches of ``batch_size``; the model is not updated.

    Batches come from their own generator and the global RNG is restored afterwards, so measuring
    never changes the training run it is measured in.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    stream = batch_indices(task.n_train, batch_size, torch.Generator().manual_seed(seed))
    norms = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for _ in range(n_batches):
            inputs, target = split_batch(to_device(take(task.train_data, next(stream)), device))
            grads = torch.autograd.grad(task.loss_fn(forward(model, inputs), target), params, allow_unused=True)
            sq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
            norms.append(math.sqrt(sq))
    for p, g in zip(params, saved):
        p.grad = g
    return norms


class CurveRecorder(Callback):
    """At every evaluation: training-subset loss/metric, distance from the initial weights; every step's loss."""

    def __init__(self, train_eval_examples: int = 2048):
        self.train_eval_examples = train_eval_examples
        self.initial: dict[str, torch.Tensor] = {}
        self.curve: list[dict] = []
        self.step_losses: list[float] = []
        self.final: dict = {}
        self.distance: dict[str, float] = {}
        self.cosine: dict[str, float] = {}

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.initial = snapshot(ctx.model)

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        self.step_losses.append(loss)

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        train_loss, train_metric = evaluate(ctx.model, ctx.task, "train", ctx.device, self.train_eval_examples)
        dist = layer_distances(snapshot(ctx.model), self.initial)
        self.curve.append({
            "step": point.step, "examples": point.examples, "epoch": point.examples / ctx.task.n_train,
            "seconds": point.seconds, "lr": point.lr, "batch_loss": point.loss,
            "train_loss": train_loss, "train_metric": train_metric,
            "eval_loss": point.eval_loss, "eval_metric": point.metric,
            "distance": dist[TOTAL], "layer_distance": {k: v for k, v in dist.items() if k != TOTAL},
        })

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.finish(ctx.model, ctx.task, ctx.device)

    def finish(self, model: nn.Module, task, device, full: bool = True) -> None:
        """Final numbers on the whole training and validation sets (also called on a diverged run)."""
        train_loss, train_metric = evaluate(model, task, "train", device, None if full else self.train_eval_examples)
        val_loss, val_metric = evaluate(model, task, "val", device) if task.val_data is not None else (None, None)
        w = snapshot(model)
        self.distance = layer_distances(w, self.initial)
        self.cosine = layer_cosines(w, self.initial)
        gap = train_metric - val_metric if train_metric is not None and val_metric is not None else None
        self.final = {"train_loss": train_loss, "train_metric": train_metric, "val_loss": val_loss,
                      "val_metric": val_metric, "gap": gap}


class GradNormProbe(Callback):
    """The gradient-norm distribution at ``early_step`` and after the last step."""

    def __init__(self, n_batches: int, early_step: int, seed: int = 0):
        self.n_batches = n_batches
        self.early_step = max(1, early_step)
        self.seed = seed
        self.stats: dict[str, GradNormStats] = {}

    def _measure(self, ctx: TrainContext, label: str) -> None:
        norms = gradient_norms(ctx.model, ctx.task, ctx.batch_size, self.n_batches, self.seed + 7919 * ctx.step,
                               ctx.device)
        self.stats[label] = grad_norm_stats(norms, ctx.step, ctx.batch_size)

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        if ctx.step == self.early_step:
            self._measure(ctx, "early")

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self._measure(ctx, "late")
