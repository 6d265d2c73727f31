"""The profile's grid against the real steps at the measuring batch, and how a per-step cost moves `find`.

For each task: `find` with the hardware profiled now (so the profile is of this device), then twice
more on that same profile and seed (the measuring run, hence the noise fit, is the same):
``step_overhead=0`` (the grid alone, as `find` planned before real steps were timed) and with a
callback that sleeps 5 ms after every step (a slow logger or data pipeline). Reported per task: the
grid's prediction and the measured step at the measuring layout (ms, ratio), the overhead added, the
noise monitor's own cost per step (the measuring run's steps against the timed ones), and the
recommended batch and predicted time to target of each run.

    python benchmarks/real_step_time.py [--tasks dots,digits,mnist1d] [--threads 1]

Results: benchmarks/results/real_step_time.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

import torch

from batchscope import load_task
from batchscope.plan.find import find
from batchscope.serialize import write_json
from batchscope.train import Callback

RESULTS = Path(__file__).parent / "results"


class Sleep(Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, ctx, loss):
        time.sleep(self.seconds)


def summary(r) -> dict:
    st, rec = r.step_time, r.recommendation
    return {"batch_size": rec.batch_size, "lr": rec.lr, "predicted_seconds": rec.predicted["seconds"],
            "grid_ms": st["predicted_seconds"] * 1e3, "measured_ms": st["measured_seconds"] * 1e3,
            "iqr_ms": st["spread_seconds"] * 1e3, "ratio": st["measured_seconds"] / st["predicted_seconds"],
            "bare_ms": None if st.get("bare_seconds") is None else st["bare_seconds"] * 1e3,
            "overhead_ms": st["overhead_seconds"] * 1e3, "added_ms": st["added_seconds"] * 1e3,
            "monitored_ms": st["monitored_seconds"] * 1e3, "line": st["line"],
            "measuring_cost": r.measuring["cost"]}


def one_task(name: str, sleep: float) -> dict:
    task = load_task(name)
    base = find(task, device="cpu")
    profile = base.profile
    grid_only = find(task, device="cpu", profile=profile, step_overhead=0.0)
    slow = find(task, device="cpu", profile=profile, callbacks=[Sleep(sleep)])
    return {"task": name, "reference_batch": task.reference_batch, "knee": profile.knee,
            "alpha_ms": profile.alpha * 1e3, "beta_us": profile.beta * 1e6,
            "find": summary(base), "grid_only": summary(grid_only), "with_sleep": summary(slow)}


def hf_gpt2() -> dict:
    """A GPT-2 built from a small config under the Hugging Face Trainer (batch 32, AdamW): find with the
    Trainer's own steps timed (the default) and without (the measuring run's steps in batchscope's loop),
    on one hardware profile."""
    import tempfile

    import transformers
    from torch.utils.data import Dataset

    from batchscope.integrations.hf import find as hf_find

    class Tokens(Dataset):
        """Sequences of 32 of 64 tokens, each the previous times 3 plus 1 (mod 64), 20% replaced at random."""

        def __init__(self, n: int, seed: int = 0):
            g = torch.Generator().manual_seed(seed)
            seq = [torch.randint(0, 64, (n, 1), generator=g)]
            for _ in range(31):
                noise, flip = torch.randint(0, 64, (n, 1), generator=g), torch.rand(n, 1, generator=g) < 0.2
                seq.append(torch.where(flip, noise, (seq[-1] * 3 + 1) % 64))
            self.ids = torch.cat(seq, 1)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2,
                                                                 n_head=2))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(output_dir=tmp, per_device_train_batch_size=32, learning_rate=1e-3,
                                              optim="adamw_torch", lr_scheduler_type="constant", report_to=[],
                                              save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(4096),
                                       eval_dataset=Tokens(512, seed=1))
        profile = None
        for timed in (True, False):          # one profile for both: only the steps timed differ
            r = hf_find(trainer, target=2.5, time_trainer=timed, memory_budget="1GiB", max_batch=512, profile=profile)
            profile = r.profile
            out["trainer_timed" if timed else "measuring_run_only"] = {**summary(r), "source": r.step_time["source"]}
    return out


def markdown(rows: list[dict], sleep: float, threads: int, hf: Optional[dict] = None, load=None) -> str:
    out = [f"# The grid against the real step at the measuring batch (CPU, {threads} thread)", "",
           *([f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {os.cpu_count()} "
              "CPUs: other work shared the machine, so differences below about a millisecond are noise.", ""]
             if load else []),
           "Real steps timed after the measuring run at its batch B_ref in one pass (the layout the grid times), "
           "the noise monitor detached, each followed by a bare step of the grid's kind (bare: their median; added: "
           "the median of real - bare); the measuring run's own steps (8 passes, monitor on) beside them.", "",
           "| task | B_ref | grid ms | measured ms (IQR) | measured / grid | bare ms | added ms | measuring run's "
           "steps ms | B (grid only) | B (with real steps) | B (+ sleep) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, g, s = r["find"], r["grid_only"], r["with_sleep"]
        out.append(f"| {r['task']} | {r['reference_batch']} | {f['grid_ms']:.3g} | "
                   f"{f['measured_ms']:.3g} ({f['iqr_ms']:.2g}) | {f['ratio']:.2f} | {f['bare_ms']:.3g} | "
                   f"{f['added_ms']:.3g} | "
                   f"{f['monitored_ms']:.3g} | {g['batch_size']} | {f['batch_size']} | {s['batch_size']} |")
    out += ["", f"+ sleep: a callback sleeping {sleep * 1e3:g} ms after every step; its overhead added: "
            + ", ".join(f"{r['task']} {r['with_sleep']['added_ms']:.3g} ms" for r in rows) + "."]
    if hf:
        out += ["", "GPT-2 from a config (2 layers, 64 wide, 32 tokens) under the Hugging Face Trainer, batch 32, "
                "AdamW:", ""]
        for key, h in hf.items():
            bare = "" if h["bare_ms"] is None else f" (bare steps {h['bare_ms']:.3g} ms)"
            out.append(f"- {h['source']}: {h['line']}{bare}; recommended B={h['batch_size']} (lr {h['lr']:.3g})")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="dots,digits,mnist1d")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.005)
    ap.add_argument("--no-hf", action="store_true", help="leave out the GPT-2 under the Hugging Face Trainer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    rows = []
    for name in args.tasks.split(","):
        rows.append(one_task(name, args.sleep))
        print(rows[-1]["task"], rows[-1]["find"]["line"], flush=True)
    hf = None if args.no_hf else hf_gpt2()
    load.append(os.getloadavg()[0])
    write_json(RESULTS / "real_step_time.json", {"threads": args.threads, "sleep_seconds": args.sleep, "tasks": rows,
                                                 "hf_gpt2": hf, "load_average": load})
    text = markdown(rows, args.sleep, args.threads, hf, load)
    (RESULTS / "real_step_time.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
