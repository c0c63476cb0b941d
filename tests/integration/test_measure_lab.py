"""harness.measure against a small real lab (tests.support.minilab): client -> router -> server.

The router does Service DNAT with plain iptables; nginx in the server namespace answers GET /
with "<podname> <ip>:<port>". Everything is created by the module fixture and removed after.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from harness.lab import netns
from harness.measure.agent import Agent
from harness.measure.connect import measure_connect
from harness.measure.load import LoadGenerator, adaptive_summary, measure_load, measure_loads
from harness.measure.sync import measure_sync_full, measure_sync_one, positions
from harness.model import Endpoint, ModelSpec, build_model
from harness.samples import PointContext
from tests.support.minilab import DnatDataplane, MiniLab

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

N = 6
CTX = PointContext("run", "pt", "lab", "host", "dnat-test", "nft", N, 1, 0)


@pytest.fixture(scope="module")
def lab():
    model = build_model(ModelSpec(n_services=N, endpoints=1))
    pod = model.pods[0]
    refused = model.service(500).with_endpoints((Endpoint(pod.ip, 9999, pod.node),))  # nobody listens
    dropped = model.service(501)  # DNAT would work, but a raw DROP rule eats the SYN
    services = list(model.services) + [refused, dropped]
    lab = MiniLab(model)
    try:
        dp = DnatDataplane(lab.router)
        dp.full_sync(services)
        netns.run(
            lab.router,
            ["iptables", "-t", "raw", "-A", "PREROUTING", "-d", f"{dropped.cluster_ip}/32", "-j", "DROP"],
        )
        with Agent(lab.client) as agent:
            yield {
                "lab": lab,
                "model": model,
                "dp": dp,
                "agent": agent,
                "services": services,
                "refused": refused,
                "dropped": dropped,
            }
    finally:
        lab.close()
        assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{lab.tag}-")]


def test_http_get_reaches_backend_through_vip(lab):
    svc = lab["model"].services[0]
    r = lab["agent"].http_get(svc.cluster_ip, 80)
    ep = svc.endpoints[0]
    assert r["status"] == 200 and r["body"].split()[1] == ep.addr
    assert 0 < r["us"] < 1e6


def test_connect_samples_plausible(lab):
    timeout = 1.0
    rows = measure_connect(
        lab["agent"],
        CTX,
        lab["model"].services,
        N,
        60,
        random.Random(1),
        timeout,
        edge_samples=10,
        direct_samples=40,
    )
    by = {}
    for r in rows:
        by.setdefault((r["metric"], r["position"]), []).append(r)
    assert len(by[("connect_us", "random")]) == 60
    assert len(by[("connect_us", "first")]) == len(by[("connect_us", "last")]) == 10
    assert len(by[("connect_direct_us", "")]) == 40
    for r in rows:
        assert not r["timed_out"], r
        assert 0 < r["value"] < timeout * 1e6 and r["unit"] == "us"
    assert sorted(r["seq"] for r in by[("connect_us", "random")]) == list(range(60))


@pytest.mark.parametrize("which", ["refused", "dropped"])
def test_dead_service_gives_timed_out_rows(lab, which):
    svc, timeout = lab[which], 0.15
    rows = measure_connect(
        lab["agent"], CTX, [svc], 1, 5, random.Random(2), timeout, edge_samples=1, direct_samples=0, warmup=0
    )
    assert len(rows) == 7  # 5 random + first + last: none dropped
    assert all(r["timed_out"] and r["value"] == timeout * 1e6 for r in rows)
    raw = lab["agent"].connect([(svc.cluster_ip, 80, "")], samples=2, timeout=timeout)
    errs = {err for _, _, err in raw}
    assert errs == ({"refused"} if which == "refused" else {"timeout"})
    if which == "dropped":  # the blocking connect gave up at SO_SNDTIMEO, elapsed time reported
        assert all(0.9 * timeout * 1e6 < us < 3 * timeout * 1e6 for _, us, _ in raw)


def test_poll_sees_rule_added_within_ms(lab):
    svc = lab["model"].service(600)
    ep = lab["model"].pods[1]
    agent = lab["agent"]
    agent.poll_start(svc.cluster_ip, 80, "served", interval=0.001, timeout=3.0)
    time.sleep(0.02)  # polling, not yet served
    t_before = time.perf_counter_ns()
    netns.run(
        lab["lab"].router,
        [
            "iptables",
            "-t",
            "nat",
            "-I",
            "KPB-SERVICES",
            "-d",
            f"{svc.cluster_ip}/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            f"{ep.ip}:80",
        ],
    )
    t_after = time.perf_counter_ns()
    res = agent.poll_result()
    lab["dp"].full_sync(lab["services"])  # drop the extra rule again
    assert res["satisfied"] and not res["timed_out"]
    assert res["attempts"] >= 10
    assert t_before < res["t_ns"] <= t_after + 5_000_000, (res, t_before, t_after)


def test_poll_gone_and_backend(lab):
    agent, svc = lab["agent"], lab["model"].services[1]
    assert agent.poll(svc.cluster_ip, 80, "backend:" + svc.endpoints[0].addr, timeout=1.0)["satisfied"]
    r = agent.poll(svc.cluster_ip, 80, "backend:nobody", timeout=0.1)
    assert r["timed_out"] and not r["satisfied"] and r["attempts"] >= 50
    r = agent.poll(lab["refused"].cluster_ip, 80, "gone", timeout=1.0)
    assert r["satisfied"] and r["detail"] == "refused"


def test_poll_gone_needs_the_control_answered(lab):
    """Silence counts as "gone" only once a control attempt to a served Service was answered."""
    agent, served, dropped = lab["agent"], lab["model"].services[1], lab["dropped"]
    other = lab["model"].services[2]
    ctl = (other.cluster_ip, 80)
    r = agent.poll(dropped.cluster_ip, 80, "gone", timeout=1.0, attempt_timeout=0.05, control=ctl)
    assert r["satisfied"] and r["detail"] == "no answer (control answered)"
    r = agent.poll(served.cluster_ip, 80, "gone", timeout=0.3, attempt_timeout=0.05, control=ctl)
    assert not r["satisfied"] and r["timed_out"]
    # a control that is never answered: silence is not taken for "gone"
    r = agent.poll(
        dropped.cluster_ip, 80, "gone", timeout=0.3, attempt_timeout=0.05, control=(dropped.cluster_ip, 80)
    )
    assert not r["satisfied"]


def test_a_lost_syn_is_not_gone(lab):
    """The first SYN to a served Service is dropped (the statistic match), the rest answered: the
    silent first attempt, even with its control answered, is not taken for "gone"."""
    agent, svc, other = lab["agent"], lab["model"].services[3], lab["model"].services[4]
    rule = ["-d", f"{svc.cluster_ip}/32", "-p", "tcp", "--syn", "-m", "statistic", "--mode", "nth",
            "--every", "100000", "--packet", "0", "-j", "DROP"]  # fmt: skip
    netns.run(lab["lab"].router, ["iptables", "-t", "raw", "-I", "PREROUTING", *rule])
    try:
        r = agent.poll(
            svc.cluster_ip, 80, "gone", timeout=0.5, attempt_timeout=0.05, control=(other.cluster_ip, 80)
        )
    finally:
        netns.run(lab["lab"].router, ["iptables", "-t", "raw", "-D", "PREROUTING", *rule])
    assert not r["satisfied"], r


def test_poll_paced_to_a_cpu_share(lab):
    """With max_cpu_share the poller's own CPU stays near that share; t_prev_ns precedes t_ns."""
    agent, svc = lab["agent"], lab["model"].services[1]
    r = agent.poll(lab["dropped"].cluster_ip, 80, "served", interval=0.001, timeout=0.5, max_cpu_share=0.02)
    assert not r["satisfied"] and r["cpu_share"] < 0.06, r
    r = agent.poll(svc.cluster_ip, 80, "served", interval=0.001, timeout=1.0, max_cpu_share=0.05)
    assert r["satisfied"] and r["t_prev_ns"] is None  # the first attempt saw it
    with pytest.raises(Exception, match="max_cpu_share"):
        agent.poll(svc.cluster_ip, 80, "served", max_cpu_share=1.5)


def test_sync_one_and_full(lab):
    dp, services = lab["dp"], list(lab["model"].services)  # all served (no dead ones)
    dp.full_sync(services)
    try:
        rows = measure_sync_one(lab["agent"], dp, services, lab["model"], CTX, samples=2, timeout=2.0)
        counts = dp.counts()
    finally:
        dp.full_sync(lab["services"])
    one = [r for r in rows if r["metric"] == "sync_one_s"]
    apply = [r for r in rows if r["metric"] == "sync_apply_s"]
    assert sorted(r["change"] for r in one) == ["add", "add", "delete", "delete", "update", "update"]
    assert len(apply) == 6
    res = [r for r in rows if r["metric"] == "sync_resolution_s"]
    assert len(res) == 6 and all(0 <= r["value"] <= o["value"] for r, o in zip(res, one, strict=True))
    for r in one:
        assert not r["timed_out"], r
        assert 0 < r["value"] < 2.0
    assert sorted(r["seq"] for r in one if r["change"] == "update") == [0, 1]
    assert len(set(positions(len(services), 2))) == 2  # the two samples are at different positions
    assert counts["rules"] == len(services)  # restored: N unchanged
    full = measure_sync_full(dp, services, CTX)
    assert full[0]["metric"] == "sync_full_s" and 0 < full[0]["value"] < 5


def test_sync_one_times_out_when_never_served(lab):
    class NoOp:  # a dataplane whose apply changes nothing in the kernel
        mode = "noop"

        def apply(self, services, change):
            pass

    rows = measure_sync_one(
        lab["agent"],
        NoOp(),
        lab["services"],
        lab["model"],
        CTX,
        samples=1,
        kinds=("add",),
        timeout=0.1,
        verify_restore=False,
    )
    one = [r for r in rows if r["metric"] == "sync_one_s"]
    assert len(one) == 1 and one[0]["timed_out"] and one[0]["value"] == 0.1


@pytest.mark.parametrize("keepalive", [False, True])
def test_load_request_latency(lab, keepalive):
    mini = lab["lab"]
    before = mini.accepted_connections()
    res = measure_load(
        mini.client,
        CTX,
        lab["model"].services,
        users=3,
        rate=300,
        duration=0.5,
        timeout=1.0,
        keepalive=keepalive,
    )
    accepted = mini.accepted_connections() - before - 1  # minus the status request
    req = [r for r in res.rows if r["metric"] == "request_us"]
    corr = [r for r in res.rows if r["metric"] == "request_corrected_us"]
    s = res.summary
    assert len(req) == len(corr) == s["requests"] >= 140
    assert not any(r["timed_out"] for r in req)
    assert all(r["keepalive"] == ("true" if keepalive else "false") for r in res.rows)
    vals = [r["value"] for r in req]
    assert all(0 < v < 1e6 for v in vals)
    assert any(v % 1000 for v in vals) and len({round(v, 1) for v in vals}) > 10  # sub-ms resolution
    c_by_seq = {r["seq"]: r["value"] for r in corr}
    assert all(c_by_seq[r["seq"]] >= r["value"] for r in req)  # intended start <= actual start
    metrics = {r["metric"] for r in res.rows}
    assert {
        "load_target_rps",
        "load_achieved_rps",
        "load_requests",
        "load_failures",
        "load_client_cpu_pct",
        "cpu_system_s",
        "cpu_softirq_s",
        "cpu_user_s",
        "cpu_busy_pct",
    } <= metrics
    if keepalive:
        assert s["connections"] == 3 and accepted == 3
    else:  # a new TCP connection per request, seen by the client and by the server
        assert s["connections"] == s["requests"] == accepted


def test_load_adaptive_phases_in_one_process(lab):
    """Both keepalive variants from one load-generator process, each an adaptive phase: never
    shorter than its minimum, never longer than its cap, its schedule cut consistently (every
    request kept, none counted missed for stopping early), and the CI it reports is the one its
    own request_us rows give."""
    from harness.measure.adaptive import ci_halfwidth_rel

    res = measure_loads(
        lab["lab"].client,
        CTX,
        lab["model"].services,
        keepalives=[False, True],
        users=3,
        rate=300,
        duration=4.0,
        min_duration=1.0,
        timeout=1.0,
    )
    assert [r.summary["keepalive"] for r in res] == [False, True]
    for r, ka in zip(res, ("false", "true"), strict=True):
        s = r.summary
        assert all(row["keepalive"] == ka for row in r.rows)
        assert 1.0 <= s["duration_s"] <= 4.0 and s["duration_cap_s"] == 4.0
        assert s["scheduled"] <= s["scheduled_cap"]
        assert s["stopped_early"] == (s["scheduled"] < s["scheduled_cap"])
        assert s["requests"] + s["missed"] == s["scheduled"]
        assert s["requests"] >= 300  # the minimum duration's requests at the rate
        req = [row["value"] for row in r.rows if row["metric"] == "request_us"]
        assert len(req) == s["requests"]
        spent = adaptive_summary(r)[f"request_us keepalive={ka}"]
        assert spent["samples"] == len(req)
        w = ci_halfwidth_rel(req)
        assert spent["ci_rel"] == round(w, 4) and spent["ci_met"] == (w <= 0.05)
        print(ka, s["duration_s"], s["requests"], spent)


def test_one_load_generator_serves_several_points(lab):
    """A kept generator answers request after request from one process (one `import locust`), each
    phase as complete as a one-shot worker's; closing it ends the process."""
    kw = dict(users=2, rate=200, duration=0.5, timeout=1.0)
    with LoadGenerator(lab["lab"].client) as gen:
        first = measure_loads(
            lab["lab"].client, CTX, lab["model"].services, keepalives=[False], generator=gen, **kw
        )
        second = measure_loads(
            lab["lab"].client, CTX, lab["model"].services, keepalives=[True, False], generator=gen, **kw
        )
        proc = gen.proc
        assert proc is not None and proc.poll() is None  # waiting for the next request
    assert proc.poll() is not None  # ended with the generator
    pids = {r.summary["pid"] for r in first + second}
    assert len(pids) == 1 and gen.requests == 2
    assert [r.summary["keepalive"] for r in second] == [True, False]
    for r in first + second:
        s = r.summary
        assert s["requests"] + s["missed"] == s["scheduled"] >= 90
        assert len([row for row in r.rows if row["metric"] == "request_us"]) == s["requests"]


def test_load_saturation_flag(lab):
    res = measure_load(
        lab["lab"].client,
        CTX,
        lab["model"].services,
        users=1,
        rate=100000,
        duration=0.3,
        timeout=1.0,
        keepalive=False,
        cpu=False,
    )
    assert res.saturated and res.reasons
    assert res.summary["missed"] > 0
    assert res.summary["requests"] + res.summary["missed"] == res.summary["scheduled"]
