"""The cluster target's loop pieces that need no cluster: the node kernel check (on this machine's
kernel), the refusal of a mode the nodes cannot run before kube-proxy is touched, cleanup Jobs at
every switch (cluster option cleanup=always), and distributed locust (a real master and two real
workers on loopback, with harness/cluster/locustfile.py) read back as rows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from harness.cluster import ClusterError, namespace_for
from harness.cluster.load import parse_worker_log, result
from harness.cluster.nodecheck import check, features_to_check
from harness.cluster.restore import load as load_restore, restore_cluster
from harness.samples import PointContext
from harness.scenario import load_scenario
from tests.support.fakeapi import CM, DS, KUBEADM_CONFIG, FakeCluster
from tests.unit.test_cluster_restore import RUN, _assert_original, _setup


def test_ipvs_check_agrees_with_proc():
    """The generic netlink check (what kube-proxy's IPVS proxier does) agrees with /proc/net/ip_vs,
    which exists once IPVS is in the kernel (the check loads ip_vs where it is a module)."""
    ok, why = check(["ipvs", "not-a-feature"])["ipvs"]
    assert ok == os.path.exists("/proc/net/ip_vs")
    assert ok or "IPVS" in why
    assert features_to_check(["iptables", "nftables"]) == {}
    assert features_to_check(["iptables", "ipvs"]) == {"ipvs": ["ipvs"]}


def _target(fake, tmp_path, modes, **opts):
    from harness.cluster.options import ClusterOptions
    from harness.cluster.switch import Waits
    from harness.targets import cluster as ct

    sc = load_scenario(
        "quick", [(["target"], "cluster"), (["services"], {"counts": [10]}), (["modes"], modes)]
    )
    t = ct.ClusterTarget(
        fake.kubeconfig(tmp_path / "kc.yaml"),
        None,
        True,
        out=lambda s: None,
        options=ClusterOptions(ready_timeout_s=5, **opts),
        waits=lambda rest: Waits(rest, lambda s: None, poll_s=0.01, rollout_timeout_s=5),
    )
    (tmp_path / "points").mkdir()
    return sc, t, SimpleNamespace(dir=tmp_path, scenario=sc, meta={"run_id": RUN, "points": []})


def test_mode_the_nodes_lack_is_refused_before_kube_proxy_changes(tmp_path):
    from harness.runner import plan_points

    if check(["ipvs"])["ipvs"][0]:
        pytest.skip("this kernel has IPVS: nothing to refuse")
    with FakeCluster() as fake:
        sc, t, run = _target(fake, tmp_path, ["iptables", "ipvs"])
        t.preflight(sc)
        cm_rv = fake.objects[CM]["metadata"]["resourceVersion"]
        ds_rv = fake.objects[DS]["metadata"]["resourceVersion"]
        with pytest.raises(ClusterError) as e:
            t.run_points(run, plan_points(sc, t.plan(sc)), lambda ev: None)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("ipvs mode needs IPVS") and "node-a" in msg
        assert "drop ipvs from --modes" in msg
        # kube-proxy was never touched: same objects (resourceVersion), no cleanup Job, no pods left
        assert fake.objects[CM]["metadata"]["resourceVersion"] == cm_rv
        assert fake.objects[DS]["metadata"]["resourceVersion"] == ds_rv
        assert fake.jobs_ran == []
        assert not fake.list(f"/api/v1/namespaces/{namespace_for(RUN)}/pods")
        assert load_restore(tmp_path).status == "restored"


def test_cleanup_always_runs_jobs_between_iptables_and_nftables(tmp_path):
    with FakeCluster() as fake:
        _, _, state, path, ctl = _setup(fake, tmp_path)
        state.cleanup_always = True
        ctl.switch("iptables", "nftables")
        assert sorted(n for n, _ in fake.jobs_ran) == ["node-a", "node-b"]
        assert fake.node_mode("node-a") == "nftables"
        restore_cluster(ctl, state, path, log=lambda s: None)
        _assert_original(fake)
        assert len(fake.jobs_ran) == 4  # and again on the way back
        assert fake.running_config == KUBEADM_CONFIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_locust_records_every_request(tmp_path):
    """A real locust master and two workers (harness.cluster.locust_main) against the cluster
    backend; every worker prints its raw requests, which become request_us rows."""
    backend_port, master_port = _free_port(), _free_port()
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([["127.0.0.1", backend_port]]))
    env = {
        **os.environ,
        "KPBENCH_TARGETS": str(targets),
        "KPBENCH_USERS": "4",
        "KPBENCH_RATE": "40",
        "KPBENCH_KEEPALIVE": "0",
        "KPBENCH_TIMEOUT": "2",
        "POD_NAME": "backend-0",
        "POD_IP": "127.0.0.1",
    }
    py = [sys.executable, "-m"]
    procs = [
        subprocess.Popen(
            [*py, "harness.cluster.backend", "--port", str(backend_port), "--bind", "127.0.0.1"], env=env
        )
    ]
    try:
        master = subprocess.Popen(
            [*py, "harness.cluster.locust_main", "--master", "--headless", "--expect-workers", "2",
             "--users", "4", "--spawn-rate", "4", "--run-time", "3s", "--only-summary",
             "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(master)
        workers = [
            subprocess.Popen(
                [
                    *py,
                    "harness.cluster.locust_main",
                    "--worker",
                    "--master-host",
                    "127.0.0.1",
                    "--master-port",
                    str(master_port),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        procs += workers
        master.wait(timeout=90)
        outs = [w.communicate(timeout=30)[0] for w in workers]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    parsed = [parse_worker_log(o) for o in outs]
    assert [rep for _, rep in parsed] == [1, 1]  # both workers reported
    records = [r for recs, _ in parsed for r in recs]
    assert all(recs for recs, _ in parsed)  # the users were spread over both workers
    assert 40 * 3 * 0.5 <= len(records) <= 40 * 3 * 1.5  # ~ the rate for the run time
    assert all(ok for _, _, ok, _ in records) and all(ms > 0 for _, ms, _, _ in records)
    ctx = PointContext(RUN, "p", "cluster", "cluster", "iptables", "", 1, 1, 0)
    res = result(ctx, records, 2, 40.0, 3.0, 2.0, keepalive=False)
    req = [r for r in res.rows if r["metric"] == "request_us"]
    assert len(req) == len(records) and [r["seq"] for r in req] == list(range(len(records)))
    summary = {r["metric"]: r["value"] for r in res.rows if r["metric"].startswith("load_")}
    assert summary["load_requests"] == len(records) and summary["load_failures"] == 0
    t0 = min(s for s, _, _, _ in records)  # the rate counts the phase's duration from the first request
    assert summary["load_achieved_rps"] == pytest.approx(sum(s < t0 + 3.0 for s, _, _, _ in records) / 3.0)
    assert time.time() - max(s for s, _, _, _ in records) < 120  # start times are wall clock


def test_a_node_whose_kubelet_died_does_not_hold_the_switch_or_the_restore(tmp_path):
    """node-b NotReady (its kubelet is dead): its kube-proxy pod can neither be replaced nor become
    available, and no Job runs there. The switch and the restore finish on the Ready nodes and
    say which node was not rolled, instead of waiting for the rollout timeout."""
    from tests.support.fakeapi import node

    nodes = [node("node-a"), node("node-b", ip="192.0.2.11", ready=False)]
    with FakeCluster(nodes=nodes) as fake:
        assert fake.objects[DS]["status"]["numberAvailable"] == 1
        _, _, state, path, ctl = _setup(fake, tmp_path)
        modes = ctl.switch("iptables", "ipvs", scheduler="rr")
        assert modes["node-a"] == "ipvs" and modes["node-b"].startswith("not rolled: node NotReady")
        assert [n for n, _ in fake.jobs_ran] == ["node-a"]  # no cleanup Job where no kubelet runs it
        restore_cluster(ctl, state, path, log=lambda s: None)
        _assert_original(fake)
        assert load_restore(path).status == "restored"
        assert ctl.last_node_modes["node-b"].startswith("not rolled")


def test_sync_delta_reads_the_ipv4_series_of_a_dual_stack_kube_proxy():
    """kube-proxy (dual-stack by default) labels its sync histogram ip_family="IPv4"/"IPv6"."""
    from harness.cluster.probe import sync_delta_us
    from harness.k8s.metrics import parse_metrics

    def scrape(s4, c4, s6, c6):
        h = "kubeproxy_sync_proxy_rules_duration_seconds"
        return parse_metrics(
            f'{h}_sum{{ip_family="IPv4"}} {s4}\n{h}_count{{ip_family="IPv4"}} {c4}\n'
            f'{h}_sum{{ip_family="IPv6"}} {s6}\n{h}_count{{ip_family="IPv6"}} {c6}\n'
        )

    us, n = sync_delta_us(scrape(1.0, 10, 5.0, 10), scrape(1.3, 13, 9.0, 20))
    assert n == 3 and us == pytest.approx(0.1e6)
    assert sync_delta_us(scrape(1.0, 10, 0, 0), scrape(1.0, 10, 2.0, 4)) is None  # no IPv4 sync
    unlabelled = parse_metrics(
        "kubeproxy_sync_proxy_rules_duration_seconds_sum 2\nkubeproxy_sync_proxy_rules_duration_seconds_count 4\n"
    )
    assert sync_delta_us({}, unlabelled) == (0.5e6, 4)


def test_no_pod_gets_an_env_var_per_service():
    """Every pod the run creates has enableServiceLinks false: its namespace holds the run's
    Services, and 10,000 Services' docker-link variables made exec fail with E2BIG
    ("argument list too long") in the cleanup Jobs and the locust workers."""
    from harness.cluster import manifests as m

    ns, run = "kpbench-x", "x"
    specs = [
        m.backend_deployment(ns, run, "img", 2)["spec"]["template"]["spec"],
        m.cleanup_job(ns, run, "n1", "kp")["spec"]["template"]["spec"],
        m.probe_pod(ns, run, "n1", "img")["spec"],
        m.node_check_pod(ns, run, "n1", "img", ["ipvs"])["spec"],
        *(
            o["spec"]["template"]["spec"]
            for o in m.locust_manifests(ns, run, "img", 2, users=2, rate=1, duration_s=1)
            if o["kind"] == "Job"
        ),
    ]
    assert len(specs) == 6 and all(s["enableServiceLinks"] is False for s in specs)
