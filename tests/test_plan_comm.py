"""Ring all-reduce times, the hierarchical form, Pollux's overlap and the latency/bandwidth fit, by hand."""

import math

import pytest

from batchscope.errors import ConfigError
from batchscope.plan.comm import GB, US, Cluster, Link, fit_allreduce, overlapped, preset, ring_allreduce_seconds


def test_ring_allreduce_on_hand_computed_cases():
    link = Link("test", 10 * GB, 5 * US)
    # 4 ranks, 100 MB: 2*3/4 * 1e8 / 1e10 = 15 ms of transfer, 6 steps * 5 us = 30 us
    assert ring_allreduce_seconds(1e8, 4, link) == pytest.approx(15e-3 + 30e-6, rel=1e-12)
    # 2 ranks: each sends half and receives half, twice: S / bw, plus 2 latencies
    assert ring_allreduce_seconds(1e8, 2, link) == pytest.approx(1e-2 + 10e-6, rel=1e-12)
    assert ring_allreduce_seconds(1e8, 1, link) == 0.0
    # the bandwidth term tends to 2 S / bw as N grows; latency grows linearly
    assert ring_allreduce_seconds(1e8, 1000, Link("x", 10 * GB, 0.0)) == pytest.approx(2e-2 * 999 / 1000)


def test_hierarchical_allreduce_adds_the_network_ring_over_nodes():
    node, net = Link("node", 100 * GB, 1 * US), Link("net", 10 * GB, 10 * US)
    c = Cluster(node, per_node=8, network=net)
    s = 1e9
    inside = 2 * 7 / 8 * s / 100e9 + 14 * 1e-6          # 17.5 ms + 14 us
    across = 2 * 3 / 4 * s / 10e9 + 6 * 10e-6           # 4 nodes: 150 ms + 60 us
    assert c.allreduce_seconds(s, 32) == pytest.approx(inside + across, rel=1e-12)
    assert c.allreduce_seconds(s, 8) == pytest.approx(inside, rel=1e-12)
    assert c.allreduce_seconds(s, 4) == pytest.approx(2 * 3 / 4 * s / 100e9 + 6e-6, rel=1e-12)
    with pytest.raises(ConfigError, match="12 devices do not fill whole nodes of 8"):
        c.allreduce_seconds(s, 12)
    with pytest.raises(ConfigError, match="no network between nodes"):
        Cluster(node, per_node=8).allreduce_seconds(s, 16)


def test_overlap_interpolates_between_the_sum_and_the_max():
    assert overlapped(3.0, 4.0, 1.0) == pytest.approx(7.0)
    assert overlapped(3.0, 4.0, 2.0) == pytest.approx(5.0)          # (9 + 16) ** 0.5
    assert overlapped(3.0, 4.0, math.inf) == 4.0
    assert overlapped(3.0, 4.0, 1e6) == pytest.approx(4.0)          # no overflow at a huge gamma
    # with 3 accumulation passes only the last overlaps the all-reduce
    assert overlapped(3.0, 4.0, 2.0, passes=3) == pytest.approx(6.0 + 5.0)
    assert overlapped(3.0, 0.0, 1.0, passes=3) == 9.0
    with pytest.raises(ConfigError, match="gamma must be at least 1"):
        overlapped(3.0, 4.0, 0.5)


def test_fit_recovers_latency_and_bandwidth_from_exact_times():
    link = Link("truth", 2 * GB, 40 * US)
    sizes = [4096 * 4**i for i in range(7)]
    fit = fit_allreduce(sizes, [ring_allreduce_seconds(s, 4, link) for s in sizes], ranks=4)
    assert fit.link.bandwidth == pytest.approx(2e9, rel=1e-9)
    assert fit.link.latency == pytest.approx(40e-6, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)


@pytest.mark.parametrize("bandwidth, latency, match", [
    (0, 1e-6, "bandwidth of bad must be a positive number"),
    (-5e9, 1e-6, "bandwidth of bad must be a positive number"),
    (math.inf, 1e-6, "bandwidth of bad must be a positive number"),
    (1e9, -1e-6, "latency of bad must be zero or a positive number"),
])
def test_bad_links_are_refused(bandwidth, latency, match):
    with pytest.raises(ConfigError, match=match):
        Link("bad", bandwidth, latency)


def test_presets_say_where_their_numbers_come_from():
    for name in ("nvlink4", "pcie4", "pcie5", "ib-ndr", "100gbe", "gloo-loopback"):
        link = preset(name)
        assert link.source and link.bandwidth > 0
    # PCIe 4.0 x16: 16 GT/s x 16 lanes x 128/130 encoding / 8 bits
    assert preset("pcie4").bandwidth == pytest.approx(16e9 * 16 * 128 / 130 / 8, rel=0.01)
    assert preset("ib-ndr").bandwidth == pytest.approx(400e9 / 8)
    with pytest.raises(ConfigError, match="unknown interconnect 'nvlink9'"):
        preset("nvlink9")
