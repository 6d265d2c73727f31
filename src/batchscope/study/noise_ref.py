"""B_simple beside the empirical B_crit: one gradient-noise measurement per study.

McCandlish et al. 2018 compare B_crit fitted from steps-to-target with the simple noise scale
B_simple = tr(Σ)/|G|² measured along training; they find the two within a small factor. The study
measures B_simple with the micro-batch estimator of :mod:`batchscope.noise` during a fixed-lr run
at a middle batch size of the sweep, and reports it over the whole run and at its end.
"""

from __future__ import annotations

from typing import Optional

from ..errors import DivergedError
from ..noise import NoiseError, estimate_from_samples, measure_noise
from ..plan.recommend import largest_divisor
from ..tasks import Task
from ..train import TrainConfig, total_steps
from .plan import StudyPlan


def noise_setup(plan: StudyPlan, task: Task) -> dict:
    """Which run to measure in: the plan's median batch size, SGD if studied, fixed lr, capped steps."""
    b = plan.noise_batch or plan.batch_sizes[len(plan.batch_sizes) // 2]
    b = min(b, task.n_train)
    micro = largest_divisor(b, b // 8)
    opt = "sgd" if "sgd" in plan.optimizers else plan.optimizers[0]
    cfg = TrainConfig(batch_size=b, steps=plan.steps, epochs=plan.epochs if plan.budget == "epochs" else None)
    steps = min(plan.noise_steps, total_steps(task, cfg, b))
    return {"batch_size": b, "micro_batch": micro, "optimizer": opt, "lr": plan.base_lr(opt, task), "steps": steps}


def measure_study_noise(plan: StudyPlan, task: Task) -> Optional[dict]:
    """The record stored as the study's 'noise' meta entry (None when the plan asks for none)."""
    if not plan.noise_steps:
        return None
    s = noise_setup(plan, task)
    where = (f"micro-batch estimator, B={s['batch_size']} in micro-batches of {s['micro_batch']}, "
             f"{s['steps']} steps of {s['optimizer']} at lr {s['lr']:g}")
    if s["micro_batch"] >= s["batch_size"]:
        return {**s, "error": f"batch size {s['batch_size']} is too small to split into micro-batches",
                "where": where}
    try:
        m = measure_noise(task, s["batch_size"], s["micro_batch"], steps=s["steps"], lr=s["lr"],
                          optimizer=s["optimizer"], seed=plan.seeds[0], device=plan.device, eval_every=s["steps"],
                          eval_examples=512)
    except (NoiseError, DivergedError) as e:
        return {**s, "error": str(e), "where": where}
    whole = estimate_from_samples([r.g2 for r in m.raw], [r.trace for r in m.raw], m.estimate.method,
                                  batch_small=m.estimate.batch_small, batch_big=m.estimate.batch_big)
    return {**s, "where": where + ", averaged over the run", "b_simple": whole.b_simple, "low": whole.low,
            "high": whole.high, "level": whole.level, "end": m.estimate.to_dict(), "whole_run": whole.to_dict()}
