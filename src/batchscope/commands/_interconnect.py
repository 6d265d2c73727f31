"""The interconnect options `plan` and `find --devices` share, and the Cluster they describe."""

from __future__ import annotations

import click

from ._options import FINITE
from ..errors import ConfigError

_INTERCONNECT = [
    click.option("--link", default="nvlink4", show_default=True, help="interconnect within a node (a preset)"),
    click.option("--per-node", type=int, default=8, show_default=True, help="devices per node"),
    click.option("--network", default="ib-ndr-x8", show_default=True,
                 help="network between nodes (a preset, or none)"),
    click.option("--bandwidth", type=FINITE, default=None, help="override the within-node bandwidth, GB/s per device"),
    click.option("--latency", type=FINITE, default=None, help="override the within-node latency, us per ring step"),
    click.option("--network-bandwidth", "net_bandwidth", type=FINITE, default=None,
                 help="override the network bandwidth, GB/s per node"),
    click.option("--network-latency", "net_latency", type=FINITE, default=None,
                 help="override the network latency, us per ring step"),
    click.option("--gamma", type=FINITE, default=1.0, show_default=True,
                 help="overlap of the all-reduce with the backward pass (Pollux): 1 none, larger more"),
]


def interconnect_options(f):
    """How data-parallel devices synchronise: `plan` and `find --devices` take the same options."""
    for option in reversed(_INTERCONNECT):
        f = option(f)
    return f


def cluster_from(link, per_node, network, bandwidth, latency, net_bandwidth, net_latency, measured=None):
    """The Cluster the interconnect options describe (``measured``: a fitted link replaces --link)."""
    from ..plan.comm import GB, US, Cluster, Link, preset

    node = measured or preset(link)
    if bandwidth is not None or latency is not None:
        node = Link(f"{node.name} (overridden)", node.bandwidth if bandwidth is None else bandwidth * GB,
                    node.latency if latency is None else latency * US, "given on the command line")
    net = preset(network) if network != "none" else None
    if net is not None and (net_bandwidth is not None or net_latency is not None):
        net = Link(f"{net.name} (overridden)", net.bandwidth if net_bandwidth is None else net_bandwidth * GB,
                   net.latency if net_latency is None else net_latency * US, "given on the command line")
    if per_node < 1:
        raise ConfigError(f"--per-node must be a positive integer. Got {per_node!r} instead.")
    return Cluster(node, per_node, net)
