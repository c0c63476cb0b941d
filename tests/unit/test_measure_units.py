"""harness.measure pieces that need no kernel: schedules, row building, CPU deltas, saturation."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from harness.measure import agent as agent_mod
from harness.measure.connect import measure_connect
from harness.measure.cpu import CpuSnapshot, cpu_rows, delta, snapshot
from harness.measure.load import _rows, saturation
from harness.measure.sync import (
    SyncError,
    _control,
    other_endpoints,
    positions,
    resolution_s,
    served_time,
)
from harness.model import ModelSpec, build_model
from harness.samples import PointContext

CTX = PointContext("run", "pt", "lab", "host", "iptables", "legacy", 10, 1, 0)


def test_positions_spread_evenly():
    assert positions(10, 5) == [1, 3, 5, 7, 9]
    assert positions(1000, 3) == [166, 500, 833]
    assert positions(3, 3) == [0, 1, 2]
    assert positions(0, 3) == []
    assert all(0 <= p < 2 for p in positions(2, 7))


def test_other_endpoints_move_to_other_pods():
    m = build_model(ModelSpec(n_services=10, endpoints=2))
    for i, svc in enumerate(m.services):
        new = other_endpoints(svc, m, shift=i)
        assert len(new) == 2
        assert not {e.ip for e in new} & {e.ip for e in svc.endpoints}
    m5 = build_model(ModelSpec(n_services=3, endpoints=5))  # every pod used: move to other ports
    new = other_endpoints(m5.services[0], m5)
    assert len(new) == 3 and not {e.addr for e in new} & {e.addr for e in m5.services[0].endpoints}
    m4 = build_model(ModelSpec(n_services=3, endpoints=4))  # every pod port in use: nowhere to go
    with pytest.raises(SyncError):
        other_endpoints(m4.services[0], m4)


class FakeAgent:
    """Answers connect: 'bad' IPs fail (like a refused / dropped attempt), others take 50 us."""

    def __init__(self, bad=()):
        self.bad = set(bad)
        self.calls = 0

    def connect(self, targets, samples=1, timeout=1.0):
        self.calls += 1
        return [
            [i, timeout * 1e6 * 1.01 if ip in self.bad else 50.0, "timeout" if ip in self.bad else ""]
            for _ in range(samples)
            for i, (ip, port, tag) in enumerate(targets)
        ]


def test_measure_connect_rows_and_censoring():
    m = build_model(ModelSpec(n_services=10))
    bad = m.services[9].cluster_ip  # the last in lookup order
    rows = measure_connect(
        FakeAgent([bad]), CTX, m.services, 10, 100, random.Random(0), 0.5, edge_samples=7, direct_samples=20
    )
    last = [r for r in rows if r["position"] == "last"]
    assert len(last) == 7 and all(r["timed_out"] and r["value"] == 0.5e6 for r in last)
    first = [r for r in rows if r["position"] == "first"]
    assert len(first) == 7 and not any(r["timed_out"] for r in first)
    rnd = [r for r in rows if r["position"] == "random"]
    assert len(rnd) == 100 and {r["path"] for r in rnd} == {"clusterip"}
    assert sum(r["timed_out"] for r in rnd) > 0  # ~10 % of the draws hit the bad Service
    direct = [r for r in rows if r["metric"] == "connect_direct_us"]
    assert len(direct) == 20 and all(r["value"] == 50.0 and r["path"] == "pod" for r in direct)
    assert measure_connect(FakeAgent(), CTX, m.services, 0, 10, random.Random(0), 1.0) == []


def _summary(**kw):
    s = {
        "target_rps": 100.0,
        "achieved_rps": 100.0,
        "requests": 3,
        "failures": 1,
        "missed": 0,
        "connections": 3,
        "client_cpu_pct": 10.0,
        "proc_stat": [
            [0, 100, 0, 50, 800, 0, 0, 10, 0, 2],
            [1_000_000_000, 200, 0, 80, 1500, 0, 0, 30, 0, 2],
        ],
    }
    s.update(kw)
    return s


def test_load_rows_keep_float_latency_and_failures():
    recs = [
        [1, 1, 2_000_000, 2_100_000, 2_450_123, 1, "", 1],
        [0, 0, 1_000_000, 1_000_500, 1_300_777, 1, "", 1],
        [2, 0, 3_000_000, 3_000_000, 4_000_000, 0, "timeout", 1],
    ]
    rows, sat, s, why = _rows(CTX, recs, _summary(), False, 1.0, True)
    req = [r for r in rows if r["metric"] == "request_us"]
    corr = [r for r in rows if r["metric"] == "request_corrected_us"]
    assert [r["seq"] for r in req] == [0, 1, 2]
    assert req[0]["value"] == pytest.approx(300.277) and corr[0]["value"] == pytest.approx(300.777)
    assert req[1]["value"] == pytest.approx(350.123) and corr[1]["value"] == pytest.approx(450.123)
    assert req[2]["timed_out"] and req[2]["value"] == 1e6 and corr[2]["value"] == 1e6
    assert all(r["keepalive"] == "false" for r in rows)
    assert not sat and why == []
    cpu = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("cpu_")}
    assert cpu["cpu_user_s"] == pytest.approx(100 / 100) and cpu["cpu_softirq_s"] == pytest.approx(0.2)


def test_saturation_rules():
    assert saturation(_summary()) == []
    assert saturation(_summary(achieved_rps=94.0))
    assert saturation(_summary(client_cpu_pct=91.0))
    assert not saturation(_summary(achieved_rps=95.0, client_cpu_pct=90.0))


def test_cpu_delta_from_proc_stat(tmp_path):
    def write(vals, ncpu=2):
        p = tmp_path / "stat"
        body = "cpu  " + " ".join(map(str, vals)) + " 0 0\n"
        body += "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(ncpu)) + "intr 1 2\n"
        p.write_text(body)
        return snapshot(str(p))

    a = write([100, 10, 50, 1000, 5, 1, 20, 0])
    b = write([300, 10, 150, 1200, 5, 3, 60, 0])
    d = delta(a, b)
    tick = 100  # USER_HZ is 100 on Linux
    assert d["user_s"] == pytest.approx(200 / tick) and d["system_s"] == pytest.approx(100 / tick)
    assert d["softirq_s"] == pytest.approx(40 / tick) and d["irq_s"] == pytest.approx(2 / tick)
    assert d["busy_pct"] == pytest.approx(100 * 342 / 542) and d["ncpu"] == 2
    rows = cpu_rows(CTX, a, b, keepalive=True)
    assert {r["metric"] for r in rows} >= {"cpu_user_s", "cpu_system_s", "cpu_softirq_s", "cpu_busy_pct"}
    assert all(r["keepalive"] == "true" for r in rows)
    real = snapshot()
    assert isinstance(real, CpuSnapshot) and real.total > 0


def test_agent_imports_stdlib_only():
    """The agent may run in a UML guest: no third-party (or locust/gevent) imports."""
    code = (
        "import sys, harness.measure.agent as a; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('locust','gevent','pyroute2','pandas')]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_agent_protocol_errors_keep_it_alive():
    with agent_mod.Agent(None) as a:  # in this namespace: only ping / bad commands, no traffic
        assert a.ping()["pid"] == a.pid
        with pytest.raises(agent_mod.AgentError, match="unknown command"):
            a.request({"cmd": "nope"})
        with pytest.raises(agent_mod.AgentError, match="interval"):
            a.poll_start("127.0.0.1", 9, "served", interval=2.0)
        with pytest.raises(agent_mod.AgentError, match="max_cpu_share"):
            a.poll_start("127.0.0.1", 9, "served", max_cpu_share=0)
        assert a.ping()["ok"]
    assert a.proc.returncode == 0


def test_paced_start_keeps_the_beat_without_a_share():
    ms = 1_000_000
    assert agent_mod.paced_start(10 * ms, 10 * ms, ms, 5 * ms, None) == 11 * ms
    # fell behind: restart the beat from now, no burst
    assert agent_mod.paced_start(10 * ms, 25 * ms, ms, 0, None) == 26 * ms
    # cheap attempts: the share does not bind
    assert agent_mod.paced_start(10 * ms, 10 * ms, ms, ms / 100, 0.15) == 11 * ms


def test_paced_start_bounds_the_pollers_cpu_share():
    """A simulated poller whose attempts cost `cost` of CPU, with the agent's running estimate: its
    spacing settles at cost / share (never below the interval, never above the cap) and its CPU
    share over the run stays within the bound wherever the cap does not bind."""
    ms = 1_000_000
    for cost, share in ((ms * 17 // 10, 0.15), (ms // 10, 0.15), (5 * ms, 0.5), (20 * ms, 0.15)):
        t, nxt, est, starts = 0, 0, 0.0, []
        while t < 5000 * ms:
            t = max(t, nxt)
            starts.append(t)
            t += cost  # the attempt's own work
            est += agent_mod.COST_EWMA * (cost - est)
            nxt = agent_mod.paced_start(nxt, t, ms, est, share)
        gap = (starts[-1] - starts[-101]) / 100
        want = min(max(ms, cost / share), agent_mod.MAX_PACED_NS)
        assert gap == pytest.approx(want, rel=0.02), (cost, share)
        if cost / share <= agent_mod.MAX_PACED_NS:
            assert cost * len(starts) <= share * t * 1.02 or gap == pytest.approx(ms, rel=0.02)


def test_resolution_is_the_window_the_state_arrived_in():
    assert resolution_s(30, 25, 10) == 5e-9  # previous attempt after the change was asked
    assert resolution_s(30, 5, 10) == 20e-9  # previous attempt before it: window from t0
    assert resolution_s(30, None, 10) == 20e-9  # the first attempt saw it


def test_an_attempt_straddling_the_change_is_timed_by_its_completion():
    # started at 8, completed at 12, change asked at 10: the state came in (10, 12]
    assert served_time({"t_ns": 8, "t_done_ns": 12, "t_prev_ns": 5}, 10) == (12, None)
    assert resolution_s(*served_time({"t_ns": 8, "t_done_ns": 12, "t_prev_ns": 5}, 10), 10) == 2e-9
    # started and completed before the change: it held before (the caller's SyncError)
    assert served_time({"t_ns": 8, "t_done_ns": 9, "t_prev_ns": 5}, 10) == (8, 5)
    # started after the change: its start, as before
    assert served_time({"t_ns": 30, "t_done_ns": 31, "t_prev_ns": 25}, 10) == (30, 25)


def test_gone_polls_get_a_control_service_that_stays():
    model = build_model(ModelSpec(n_services=3))
    a, b, c = model.services
    assert _control([a, b, c], a, "gone") == (c.cluster_ip, c.ports[0].port)
    assert _control([a, b, c], b, "gone") == (a.cluster_ip, a.ports[0].port)
    assert _control([a, b, c], b, "served") is None
    assert _control([a], a, "gone") is None
