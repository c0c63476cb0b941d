"""Rendered manifests of the cluster target, checked for content; kube-proxy config logic."""

from __future__ import annotations

import pytest
import yaml

from harness.cluster import (
    LABEL_ROLE,
    LABEL_RUN,
    ClusterError,
    kubeproxy_config as kpc,
    manifests as m,
    namespace_for,
)
from harness.cluster.objects import TokenBucket
from harness.cluster.options import options_from
from tests.support.fakeapi import KUBEADM_CONFIG

RUN = "20261201T063000Z-a1b2c3"
NS = namespace_for(RUN)


def _all_labels_ok(obj, role=None):
    lab = obj["metadata"]["labels"]
    assert lab[LABEL_RUN] == RUN
    if role:
        assert lab[LABEL_ROLE] == role


def test_namespace_is_labelled_and_allows_privileged():
    ns = m.namespace(NS, RUN)
    assert NS == "kpbench-20261201t063000z-a1b2c3" and len(NS) <= 63
    _all_labels_ok(ns, "namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_cleanup_job_per_node():
    image = "registry.k8s.io/kube-proxy:v1.34.2"
    jobs = [m.cleanup_job(NS, RUN, n, image) for n in ("node-a", "node-b", "x" * 80)]
    names = [j["metadata"]["name"] for j in jobs]
    assert len(set(names)) == 3 and all(len(n) <= 63 for n in names)
    for node, j in zip(("node-a", "node-b", "x" * 80), jobs, strict=True):
        _all_labels_ok(j, "cleanup")
        assert j["kind"] == "Job" and j["metadata"]["namespace"] == NS
        spec = j["spec"]["template"]["spec"]
        _all_labels_ok(j["spec"]["template"], "cleanup")
        assert spec["nodeName"] == node and spec["hostNetwork"] is True and spec["restartPolicy"] == "Never"
        assert spec["tolerations"] == [{"operator": "Exists"}]
        c = spec["containers"][0]
        assert c["image"] == image
        assert c["command"][:2] == ["/usr/local/bin/kube-proxy", "--cleanup"]
        assert c["securityContext"]["privileged"] is True
        mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
        assert mounts["/lib/modules"]["readOnly"] is True and "/run/xtables.lock" in mounts
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["lib-modules"]["hostPath"]["path"] == "/lib/modules"
        assert len(j["metadata"]["labels"]["kpbench.io/node"]) <= 63


def test_probe_pod():
    p = m.probe_pod(NS, RUN, "node-a", "ghcr.io/example/kpbench:1")
    _all_labels_ok(p, "probe")
    spec = p["spec"]
    assert spec["hostNetwork"] is True and spec["nodeName"] == "node-a"
    c = spec["containers"][0]
    assert c["image"] == "ghcr.io/example/kpbench:1" and c["securityContext"]["privileged"] is True
    assert "harness.measure.agent" in " ".join(c["command"])
    assert m.AGENT_COMMAND[-2:] == ["-m", "harness.measure.agent"]


def test_backend_and_services():
    d = m.backend_deployment(NS, RUN, "img", 3)
    _all_labels_ok(d, "backend")
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert d["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python3",
        "-m",
        "harness.cluster.backend",
    ]
    with_sel = m.service(NS, RUN, "s1", selector=True)
    without = m.service(NS, RUN, "s1", selector=False)
    _all_labels_ok(with_sel, "service")
    assert with_sel["spec"]["selector"] == m.backend_selector(RUN)
    assert "selector" not in without["spec"]
    assert without["spec"]["ports"][0]["targetPort"] == m.BACKEND_PORT


def test_endpoint_slices_chunked_and_not_controller_managed():
    eps = [(f"10.244.1.{i}", "node-a") for i in range(1, 251)]
    slices = m.endpoint_slices(NS, RUN, "s1", eps)
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    for s in slices:
        _all_labels_ok(s, "endpointslice")
        lab = s["metadata"]["labels"]
        assert lab["kubernetes.io/service-name"] == "s1"
        assert lab["endpointslice.kubernetes.io/managed-by"] != "endpointslice-controller.k8s.io"
        assert s["addressType"] == "IPv4" and s["ports"][0]["port"] == m.BACKEND_PORT
        assert all(e["conditions"]["ready"] for e in s["endpoints"])
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_locust_distributed():
    objs = m.locust_manifests(NS, RUN, "img", 4, users=40, rate=1000, duration_s=30)
    kinds = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    master = kinds[("Job", "kpbench-locust-master")]
    worker = kinds[("Job", "kpbench-locust-worker")]
    svc = kinds[("Service", "kpbench-locust-master")]
    for o in objs:
        _all_labels_ok(o)
    mc = master["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--master" in mc and mc[mc.index("--expect-workers") + 1] == "4" and "--headless" in mc
    assert worker["spec"]["parallelism"] == 4 and worker["spec"]["completions"] == 4
    wc = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--worker" in wc and wc[wc.index("--master-host") + 1] == f"kpbench-locust-master.{NS}.svc"
    assert svc["spec"]["selector"][LABEL_ROLE] == "locust-master"
    assert master["spec"]["template"]["metadata"]["labels"][LABEL_ROLE] == "locust-master"
    with pytest.raises(ValueError):
        m.locust_manifests(NS, RUN, "img", 0, users=1, rate=1, duration_s=1)


# ---------------------------------------------------------------------------- config.conf


def test_kubeadm_config_mode_and_patch():
    doc = kpc.parse(KUBEADM_CONFIG)
    assert kpc.configured_mode(doc) == "iptables" and kpc.raw_mode(doc) == ""
    new = kpc.with_mode(doc, "ipvs", kpc.SyncSettings(ipvs_scheduler="wrr"))
    assert (
        new["mode"] == "ipvs" and new["ipvs"]["minSyncPeriod"] == "1ms" and new["ipvs"]["scheduler"] == "wrr"
    )
    assert new["metricsBindAddress"] == "0.0.0.0:10249" and not kpc.metrics_on_loopback(new)
    assert kpc.metrics_on_loopback(doc)  # kubeadm's "" means 127.0.0.1:10249
    assert doc["mode"] == "" and doc["iptables"]["minSyncPeriod"] == "1s"  # the original is not touched
    again = kpc.parse(kpc.dump(new))
    assert again == new and again["clientConnection"] == doc["clientConnection"]
    changes = kpc.describe_change(doc, new)
    assert "mode: '' -> 'ipvs'" in changes


def test_needs_cleanup_matrix():
    assert kpc.needs_cleanup("iptables", "ipvs") and kpc.needs_cleanup("ipvs", "iptables")
    for a, b in [
        ("iptables", "nftables"),
        ("nftables", "ipvs"),
        ("ipvs", "nftables"),
        ("iptables", "iptables"),
    ]:
        assert not kpc.needs_cleanup(a, b)


def test_bad_config_conf():
    with pytest.raises(ClusterError, match="not valid YAML"):
        kpc.parse("mode: [")
    with pytest.raises(ClusterError, match="kubeadm way"):
        kpc.parse(yaml.safe_dump({"kind": "Other"}))
    with pytest.raises(ClusterError, match="only handles"):
        kpc.configured_mode({"kind": "KubeProxyConfiguration", "mode": "kernelspace"})


def test_options():
    o = options_from(
        None,
        env={
            "KPBENCH_CLUSTER": "{endpoints_via: selector, qps: 50, burst: 5}",
            "KPBENCH_IMAGE": "reg/kpbench:2",
        },
    )
    assert (o.endpoints_via, o.qps, o.burst, o.image) == ("selector", 50, 5, "reg/kpbench:2")
    with pytest.raises(ClusterError, match="unknown cluster option"):
        options_from(None, env={"KPBENCH_CLUSTER": "{qpz: 1}"})
    with pytest.raises(ClusterError, match="endpoints_via"):
        options_from(None, env={"KPBENCH_CLUSTER": "{endpoints_via: magic}"})

    class S:
        cluster = {"qps": 7}

    assert options_from(S(), env={}).qps == 7


def test_token_bucket_rate_and_burst():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    b = TokenBucket(qps=10, burst=5, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        b.acquire()
    assert now[0] == 0  # the burst goes at once
    for _ in range(20):
        b.acquire()
    assert now[0] == pytest.approx(2.0, abs=0.01)  # then 10 per second
