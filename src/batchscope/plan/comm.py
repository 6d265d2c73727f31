"""Gradient synchronisation time: ring all-reduce within a node and across nodes, and its overlap.

Pure functions, seconds and bytes. A ring all-reduce of S bytes over N ranks is a reduce-scatter
followed by an all-gather, 2(N-1) steps each moving S/N bytes per rank (Patarasuk & Yuan 2009;
the "bus bandwidth" convention of nccl-tests' PERFORMANCE.md):

    T_ring(S, N) = 2 (N-1)/N * S / bandwidth + 2 (N-1) * latency          (0 for N = 1)

``bandwidth`` is what one rank can push per direction (nccl-tests' busbw), ``latency`` the cost of
one ring step. Past one node the all-reduce is hierarchical (what NCCL and Horovod do): a
reduce-scatter and an all-gather inside each node over g local ranks, and between them an
all-reduce across the n nodes in which the node's shards together move S bytes through the node's
network links:

    T_hier = 2 (g-1)/g * S / bw_node + 2 (g-1) * lat_node + 2 (n-1)/n * S / bw_net + 2 (n-1) * lat_net

Overlap with the backward pass follows Pollux (Qiao et al., OSDI 2021, eq. for T_iter): with k
accumulation passes only the last overlaps, T_step = (k-1) T_pass + (T_pass^g + T_sync^g)^(1/g),
gamma = 1 no overlap (the sum), gamma -> infinity perfect overlap (the max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError

GB = 1e9
US = 1e-6


@dataclass(frozen=True)
class Link:
    """One interconnect: per-rank bandwidth (bytes/s, one direction) and the latency of one ring step."""

    name: str
    bandwidth: float        # bytes per second
    latency: float          # seconds per ring step
    source: str = ""        # where the numbers come from

    def __post_init__(self):
        check_link(self.bandwidth, self.latency, self.name)

    def describe(self) -> str:
        return f"{self.name}: {self.bandwidth / GB:.3g} GB/s, {self.latency / US:.3g} us per step"


def check_link(bandwidth: float, latency: float, name: str = "link") -> None:
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ConfigError(f"the bandwidth of {name} must be a positive number of GB/s. Got {bandwidth / GB:g} GB/s "
                          "instead; give a positive --bandwidth (--network-bandwidth between nodes) or a preset")
    if not (isinstance(latency, (int, float)) and math.isfinite(latency) and latency >= 0):
        raise ConfigError(f"the latency of {name} must be zero or a positive number of microseconds. Got "
                          f"{latency / US:g} us instead; give --latency (--network-latency between nodes) >= 0")


# Peak figures from the vendors' data sheets unless said otherwise. Achieved all-reduce bus bandwidth can
# be well below them (benchmarks/results/plan.md sets three presets beside a published nccl-tests table:
# NVLink 4 within 7%, NVLink 3 and PCIe 5 1.2-1.8x optimistic), and the latencies are order-of-magnitude
# values: measure with `plan --measure-comm` where you can, or override with --bandwidth/--latency.
PRESETS: dict[str, Link] = {link.name: link for link in (
    Link("nvlink4", 450 * GB, 2 * US,
         "H100 SXM data sheet: NVLink 4, 900 GB/s per GPU both directions -> 450 GB/s each way; latency assumed"),
    Link("nvlink3", 300 * GB, 2 * US,
         "A100 SXM data sheet: NVLink 3, 600 GB/s per GPU both directions -> 300 GB/s each way; latency assumed"),
    Link("pcie5", 63 * GB, 5 * US,
         "PCIe 5.0 x16: 32 GT/s x 16 lanes x 128/130 = 63 GB/s each way; peer-to-peer latency assumed"),
    Link("pcie4", 31.5 * GB, 5 * US,
         "PCIe 4.0 x16: 16 GT/s x 16 lanes x 128/130 = 31.5 GB/s each way; peer-to-peer latency assumed"),
    Link("ib-ndr", 50 * GB, 5 * US,
         "InfiniBand NDR, one 400 Gb/s port per node = 50 GB/s; ~5 us per ring step with GPUDirect RDMA assumed"),
    Link("ib-ndr-x8", 400 * GB, 5 * US,
         "8 InfiniBand NDR 400 Gb/s ports per node (DGX H100: one per GPU) = 400 GB/s per node"),
    Link("100gbe", 12.5 * GB, 20 * US,
         "100 Gb Ethernet line rate = 12.5 GB/s; ~20 us per ring step over TCP assumed"),
    Link("gloo-loopback", 0.916 * GB, 96.6 * US,
         "measured: gloo all-reduce between 2 CPU processes over loopback on a shared 2-core machine, "
         "fitted over 4 KiB-64 MiB (benchmarks/results/plan.json; `batchscope plan --measure-comm`)"),
)}


def preset(name: str) -> Link:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown interconnect {name!r}; choose one of {', '.join(PRESETS)} "
                          "or give --bandwidth and --latency") from None


def ring_allreduce_seconds(nbytes: float, n: int, link: Link) -> float:
    """2 (N-1)/N * S / bandwidth + 2 (N-1) * latency; no synchronisation on one rank."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / link.bandwidth + 2 * (n - 1) * link.latency


@dataclass(frozen=True)
class Cluster:
    """Where the devices sit: ``per_node`` devices on ``node_link``, nodes joined by ``network``."""

    node_link: Link
    per_node: int = 8
    network: Optional[Link] = None     # None: every device count must fit in one node

    def layout(self, n: int) -> tuple[int, int]:
        """(devices per node used, nodes) for ``n`` devices, filling nodes first."""
        if n <= self.per_node:
            return n, 1
        if n % self.per_node:
            raise ConfigError(f"{n} devices do not fill whole nodes of {self.per_node}; use a multiple of "
                              f"{self.per_node} or change --per-node")
        if self.network is None:
            raise ConfigError(f"{n} devices need {n // self.per_node} nodes of {self.per_node} but no network "
                              "between nodes was given; pass --network")
        return self.per_node, n // self.per_node

    def allreduce_seconds(self, nbytes: float, n: int) -> float:
        g, nodes = self.layout(n)
        if nodes == 1:
            return ring_allreduce_seconds(nbytes, g, self.node_link)
        # reduce-scatter + all-gather inside the node (half a ring each, together one ring's cost) ...
        inside = ring_allreduce_seconds(nbytes, g, self.node_link)
        # ... and an all-reduce of the node's S bytes (g shards of S/g) across the nodes
        return inside + ring_allreduce_seconds(nbytes, nodes, self.network)

    def describe(self) -> str:
        across = f"; nodes of {self.per_node} over {self.network.describe()}" if self.network else ""
        return f"within a node {self.node_link.describe()}{across}"


# What `find --devices N` and `plan` assume without options: nodes of 8 GPUs on NVLink 4 joined by 8 NDR
# ports each (a DGX H100 SuperPOD-like system). Stated in their output; change with --link/--network.
DEFAULT_CLUSTER = Cluster(PRESETS["nvlink4"], 8, PRESETS["ib-ndr-x8"])


def overlapped(t_pass: float, t_sync: float, gamma: float, passes: int = 1) -> float:
    """Pollux's step time: (k-1) T_pass + (T_pass^gamma + T_sync^gamma)^(1/gamma)."""
    if not gamma >= 1:
        raise ConfigError(f"the overlap exponent gamma must be at least 1 (1: no overlap). Got {gamma!r} instead.")
    if t_sync <= 0:
        return passes * t_pass
    if math.isinf(gamma):
        last = max(t_pass, t_sync)
    else:
        hi = max(t_pass, t_sync)  # scaled to avoid overflow at large gamma
        last = hi * ((t_pass / hi) ** gamma + (t_sync / hi) ** gamma) ** (1.0 / gamma)
    return (passes - 1) * t_pass + last


@dataclass(frozen=True)
class CommFit:
    """latency + bytes / bandwidth fitted to measured all-reduce times on ``ranks`` ranks."""

    link: Link
    ranks: int
    points: tuple                 # (bytes, median seconds)
    r2: float


def fit_allreduce(sizes: Sequence[float], seconds: Sequence[float], ranks: int, name: str = "measured") -> CommFit:
    """Least squares of t = 2(N-1) lat + 2(N-1)/N S / bw over message sizes, weighted by 1/t.

    Relative weights: a 4 KB message takes microseconds and a 64 MB one tens of milliseconds, and
    the small ones are what pins the latency.
    """
    if ranks < 2:
        raise ConfigError("measuring an all-reduce needs at least 2 ranks; there is nothing to synchronise on one")
    s, t = np.asarray(sizes, float), np.asarray(seconds, float)
    if len(s) < 2 or np.ptp(s) == 0:
        raise ConfigError("fitting the all-reduce needs at least two message sizes")
    steps, volume = 2 * (ranks - 1), 2 * (ranks - 1) / ranks * s
    a = np.stack([np.full_like(s, steps), volume], axis=1) / t[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    lat, inv_bw = max(float(lat), 0.0), float(inv_bw)
    if inv_bw <= 0:
        raise ConfigError("the measured all-reduce times do not grow with the message size, so no bandwidth "
                          "can be fitted; rerun --measure-comm on a quieter machine")
    pred = steps * lat + volume * inv_bw
    r2 = 1.0 - float(((t - pred) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-300))
    link = Link(name, 1.0 / inv_bw, lat, f"fitted to all-reduce times of {len(s)} message sizes on {ranks} ranks")
    return CommFit(link, ranks, tuple(zip(s.tolist(), t.tolist())), r2)
