"""The cluster target's disruption phase, its pure parts: the prober's clock mapped against the
harness's (the shortest round trip, its half as the uncertainty), kube-proxy's wall-clock sync
span mapped through the prober's node, the Services and backends as a model, and measure_during
placing the phases in the prober's clock."""

from __future__ import annotations

import time

import pytest

from harness.cluster import manifests
from harness.cluster.disrupt_probe import ClockMap, clock_map
from harness.cluster.objects import CreatedService
from harness.measure import disrupt
from harness.measure.sync import other_endpoints
from harness.samples import PointContext
from harness.targets.cluster_disruption import cluster_model, span_ns
from harness.targets.local_disruption import SyncState

MS = 1_000_000


def test_clock_map_takes_the_shortest_round_trip_and_its_middle():
    # the prober's clock runs 5 s ahead of ours; its wall clock is 1e18 ns ahead of its monotonic
    off, wall = 5_000 * MS, 10**18
    samples = [
        (100 * MS, 100 * MS + off + 7 * MS, 10**18 + 100 * MS + off + 7 * MS, 110 * MS),  # queued reply
        (200 * MS, 200 * MS + off + 1 * MS, 10**18 + 200 * MS + off + 1 * MS, 202 * MS),  # the best one
        (300 * MS, 300 * MS + off + 1 * MS, 10**18 + 300 * MS + off + 1 * MS, 305 * MS),
    ]
    c = clock_map(samples)
    assert c.offset_ns == off and c.rtt_ns == 2 * MS and c.wall_minus_mono_ns == wall
    assert c.as_dict()["uncertainty_us"] == 1000.0
    assert c.from_harness(1 * MS) == 1 * MS + off and c.to_harness(c.from_harness(123)) == 123
    with pytest.raises(ValueError):
        clock_map([])


def test_kube_proxys_wall_clock_span_maps_through_the_probers_node():
    # the harness's clock is 3 s behind the prober's; the node's wall clock = prober mono + W
    clock = ClockMap(offset_ns=3_000 * MS, rtt_ns=MS, wall_minus_mono_ns=1_700_000_000_000 * MS)
    before = SyncState(0.0, count=2, seconds=1.0, full=1, changes=0, pending=0)
    # the last sync ended at prober-mono 50 s (= wall 1.70000005e9 s); 0.25 s of syncs since `before`
    after = SyncState(1_700_000_050.0, count=4, seconds=1.25, full=1, changes=2, pending=0)
    start, end = span_ns(before, after, 0, clock)
    assert end == 47_000 * MS  # prober 50 s - 3 s
    assert (end - start) / 1e9 == pytest.approx(0.25, abs=1e-6)
    # never before the call that caused the syncs (in the harness's clock)
    start2, end2 = span_ns(before, after, end - 100 * MS, clock)
    assert (start2, end2) == (end - 100 * MS, end)
    start3, end3 = span_ns(before, after, end + MS, clock)  # a call after the sync's end: empty
    assert start3 == end3 == end + MS


def test_the_run_services_as_a_model_and_an_update_moves_to_other_backends():
    svcs = [CreatedService(f"kpb-svc-{i:06d}", f"10.96.0.{10 + i}", 80) for i in range(5)]
    backends = [("10.244.1.5", "n1"), ("10.244.2.6", "n2"), ("10.244.1.7", "n1")]
    model, services = cluster_model(svcs, backends, 1, "ns")
    assert [s.cluster_ip for s in services] == [s.cluster_ip for s in svcs]
    assert [s.ports[0].port for s in services] == [manifests.SERVICE_PORT] * 5
    # as harness.cluster.objects assigns them: backend (i + j) mod k
    assert [s.endpoints[0].ip for s in services] == [backends[i % 3][0] for i in range(5)]
    assert services[4].endpoints[0].node == "n2" and services[4].endpoints[0].port == manifests.BACKEND_PORT
    moved = other_endpoints(services[1], model)
    assert moved and {e.ip for e in moved}.isdisjoint({e.ip for e in services[1].endpoints})
    new = model.service(len(services))
    assert new.endpoints and new.name not in {s.name for s in services}


def test_measure_during_places_the_phases_in_the_probers_clock():
    """A prober whose clock is 1000 s ahead of ours: the sync the harness timed lands between its
    before and after attempts only once mapped by the prober's offset."""
    off = 1_000 * 10**9
    made = []

    class FakeProber:  # the records a prober in another kernel would return, in its own clock
        def __init__(self, ns, targets, *, rate, keepalive, timeout):
            self.offset_ns = off
            self.t_running_ns = time.perf_counter_ns() + off
            made.append(self)

        def stop(self):
            lo, s0, s1 = self.t_running_ns, self.sync[0] + off, self.sync[1] + off
            att = [
                [lo + 1_000, 50.0, "", 0.0],
                [s0 + 1_000, 60.0, "refused", 0.0],
                [s1 + 20 * MS, 40.0, "", 0.0],
            ]
            return disrupt.Records(att, [], lo, lo)

        def close(self):
            pass

    def sync():
        t0 = time.perf_counter_ns()
        time.sleep(0.02)
        made[0].sync = (t0, time.perf_counter_ns())
        return made[0].sync

    ctx = PointContext("r", "p", "cluster", "cluster", "iptables", "", 1, 1, 1)
    obs = disrupt.measure_during(
        None, [("10.0.0.1", 80)], sync, ctx, "add", rate=100, keepalive=0, window_s=0.03, timeout=0.01,
        start_prober=FakeProber,
    )  # fmt: skip
    phases = [r["phase"] for r in obs.rows if r["metric"] == "disrupt_connect_us"]
    assert phases == ["before", "during", "after"]
    assert [r["phase"] for r in obs.rows if r["metric"] == "disrupt_failed"] == ["during"]


def test_the_preflight_lists_what_the_disruption_phase_changes(tmp_path):
    """Without --yes nothing changes, and the list says the probed node's kube-proxy pod is deleted."""
    from harness.cluster import ClusterError
    from harness.scenario import load_scenario
    from harness.targets.cluster import ClusterTarget
    from tests.support.fakeapi import FakeCluster

    ov = [(["target"], "cluster"), (["services"], {"counts": [10]})]
    ov += [
        (["measure", "disruption", "enabled"], True),
        (["measure", "disruption", "kinds"], ["full", "add"]),
    ]
    with FakeCluster() as fake:
        lines: list[str] = []
        t = ClusterTarget(fake.kubeconfig(tmp_path / "kc.yaml"), None, False, out=lines.append)
        with pytest.raises(ClusterError):
            t.preflight(load_scenario("quick", ov))
    (line,) = [x for x in lines if "measure.disruption" in x]
    assert (
        "DaemonSet pod on" in line and "deleted 3 times" in line and "one Service add through the API" in line
    )
