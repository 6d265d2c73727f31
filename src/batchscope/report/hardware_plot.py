"""A picture of a profile: step time and throughput, and memory, against the batch size."""

from __future__ import annotations

from pathlib import Path

from ..hardware.profile import HardwareProfile
from .plots import pyplot, save


def plot_profile(profile: HardwareProfile, path: "str | Path") -> Path:
    """Write a two-panel PNG: measured step time with the fitted line (and the knee), and memory
    per probe with the fitted line, the budget and the ceiling. matplotlib is an optional extra."""
    plt = pyplot()
    import numpy as np

    path = Path(path)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    b = np.array([p.batch for p in profile.points], dtype=float)
    t = np.array([p.seconds for p in profile.points])
    spread = np.array([p.spread for p in profile.points])
    grid = np.geomspace(max(1.0, b.min()), max(b.max(), 2.0), 200)
    ax_t.errorbar(b, t * 1e3, yerr=spread / 2 * 1e3, fmt="o", label="median step time (IQR)")
    ax_t.plot(grid, (profile.alpha + profile.beta * grid) * 1e3, "-",
              label=f"fit α={profile.alpha * 1e3:.3g} ms + β·B, β={profile.beta * 1e6:.3g} µs (R²={profile.r2:.3f})")
    if profile.knee:
        ax_t.axvline(profile.knee, color="grey", ls=":", label=f"knee B={profile.knee}")
    ax_t.set_xscale("log", base=2)
    ax_t.set_yscale("log")
    ax_t.set_xlabel("batch size B")
    ax_t.set_ylabel("step time (ms)")
    ax_x = ax_t.twinx()
    ax_x.plot(b, b / t, "s--", color="tab:green", alpha=0.6, label="throughput")
    ax_x.set_ylabel("examples / s")
    ax_t.legend(fontsize=7, loc="upper left")

    probes = [p for p in profile.memory_probes if p.peak_bytes is not None and not p.oom]
    if probes:
        mb = np.array([p.batch for p in probes], dtype=float)
        mm = np.array([p.peak_bytes for p in probes]) / 2**20
        ax_m.plot(mb, mm, "o", label="probe steps")
        if profile.m0 is not None:
            top = max(mb.max(), profile.max_batch)
            g = np.linspace(0, top, 100)
            ax_m.plot(g, (profile.m0 + profile.m1 * g) / 2**20, "-",
                      label=f"fit {profile.m0 / 2**20:.3g} MiB + {profile.m1 / 2**10:.3g} KiB·B")
        if profile.memory_budget and profile.memory_budget <= 3 * mm.max() * 2**20:
            ax_m.axhline(profile.memory_budget / 2**20, color="red", ls="--", label="budget")
        elif profile.memory_budget:  # far above: a line there would flatten the measurements
            ax_m.plot([], [], " ", label=f"budget {profile.memory_budget / 2**20:,.0f} MiB (off the chart)")
        ax_m.axvline(profile.max_batch, color="grey", ls=":",
                     label=f"max batch {profile.max_batch} ({profile.limited_by})")
        ax_m.legend(fontsize=7)
    else:
        ax_m.text(0.5, 0.5, f"memory {profile.memory_method}", ha="center", va="center", transform=ax_m.transAxes)
    ax_m.set_xlabel("batch size B")
    ax_m.set_ylabel("peak step memory (MiB)")
    dev = profile.device.get("name", profile.device.get("type"))
    fig.suptitle(f"{profile.task} on {dev}" + (" (AMP)" if profile.amp else ""))
    return save(fig, path, dpi=110)
