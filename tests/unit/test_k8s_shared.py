"""The shared Kubernetes helpers (harness/k8s) and the atomic JSON write, without an apiserver."""

from __future__ import annotations

import json
import math

import pytest

from harness.jsonfile import write_json
from harness.k8s import KubeError, kubeproxy_config as kpc
from harness.k8s.metrics import parse_metrics
from harness.k8s.objects import post_object
from harness.k8s.ratelimit import TokenBucket


def test_parse_metrics_keeps_labels_as_written_and_skips_comments():
    text = (
        "# HELP kubeproxy_sync_proxy_rules_duration_seconds x\n"
        "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n"
        'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 3\n'
        'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 7\n'
        "kubeproxy_sync_proxy_rules_duration_seconds_sum 1.5e-2\n"
        'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09 1700000000000\n'
        "not a metric line\n"
    )
    m = parse_metrics(text)
    assert m == {
        'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"}': 3.0,
        'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"}': 7.0,
        "kubeproxy_sync_proxy_rules_duration_seconds_sum": 0.015,
        'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}': 1.7e9,
    }
    assert math.isinf(parse_metrics("x +Inf\n")["x"])


def test_token_bucket_unlimited_never_sleeps():
    slept = []
    b = TokenBucket(None, clock=lambda: 0.0, sleep=slept.append)
    for _ in range(1000):
        b.acquire()
    assert slept == []
    with pytest.raises(ValueError):
        TokenBucket(10, burst=0)


def test_render_sets_sync_in_every_section_and_mode_checked():
    cfg = kpc.render(
        kubeconfig="/k",
        mode="ipvs",
        node_name="node-a",
        sync_period="5s",
        min_sync_period="0s",
        ipvs_scheduler="wrr",
        metrics_port=10300,
    )
    assert cfg["mode"] == "ipvs" and cfg["metricsBindAddress"] == "0.0.0.0:10300"
    for m in kpc.MODES:
        assert cfg[m]["syncPeriod"] == "5s" and cfg[m]["minSyncPeriod"] == "0s"
    assert cfg["ipvs"]["scheduler"] == "wrr" and "scheduler" not in cfg["iptables"]
    assert cfg["conntrack"]["maxPerCore"] == 0  # never touch the host's nf_conntrack_max
    with pytest.raises(ValueError, match="use iptables, ipvs or nftables"):
        kpc.render(kubeconfig="/k", mode="userspace", node_name="n")


def test_set_mode_touches_only_that_mode():
    doc = {"kind": "KubeProxyConfiguration", "mode": "", "iptables": {"syncPeriod": "30s"}}
    out = kpc.set_mode(doc, "nftables", kpc.SyncSettings(min_sync_period="0s", ipvs_scheduler="sh"))
    assert out["mode"] == "nftables" and out["nftables"] == {"minSyncPeriod": "0s"}
    assert out["iptables"] == {"syncPeriod": "30s"} and doc["mode"] == ""  # a copy


def _body(kind="Service"):
    return {"kind": kind, "metadata": {"name": "s1", "namespace": "ns"}, "spec": {"clusterIP": "10.96.0.10"}}


def test_post_object_retry_policy(monkeypatch):
    monkeypatch.setattr("harness.k8s.objects.time.sleep", lambda s: None)
    answers = iter([(None, "connection reset"), (503, b""), (429, b""), (201, b'{"ok": 1}')])
    retries = []
    out = post_object(
        lambda p, b: next(answers),
        "/x",
        _body(),
        limiter=TokenBucket(None),
        on_retry=lambda: retries.append(1),
    )
    assert out == ("created", b'{"ok": 1}') and len(retries) == 3
    assert post_object(lambda p, b: (409, b""), "/x", _body(), limiter=TokenBucket(None))[0] == "existed"
    taken = (422, b"... provided IP is already allocated")
    assert (
        post_object(lambda p, b: taken, "/x", _body(), limiter=TokenBucket(None), is_ours=lambda b: True)[0]
        == "existed"
    )
    with pytest.raises(KubeError, match="HTTP 422"):
        post_object(lambda p, b: taken, "/x", _body(), limiter=TokenBucket(None), is_ours=lambda b: False)
    with pytest.raises(KubeError, match="HTTP 403"):
        post_object(lambda p, b: (403, b"forbidden"), "/x", _body(), limiter=TokenBucket(None))
    with pytest.raises(KubeError, match="HTTP 500"):
        post_object(lambda p, b: (500, b""), "/x", _body(), limiter=TokenBucket(None), max_retries=2)


def test_write_json_is_whole_and_leaves_no_temp(tmp_path):
    p = tmp_path / "status.json"
    write_json(p, {"a": 1, "t": object.__name__})
    write_json(p, {"a": 2}, indent=2, newline=True, fsync=True)
    assert json.loads(p.read_text()) == {"a": 2} and p.read_text().endswith("}\n")
    assert [f.name for f in tmp_path.iterdir()] == ["status.json"]


def test_bulk_create_counts_and_errors():
    from concurrent.futures import ThreadPoolExecutor

    from harness.k8s.objects import bulk_create

    seen: set = set()

    def post(path, body):
        name = body["metadata"]["name"]
        if name == "svc-3":
            return 403, b"forbidden"
        if (path, name) in seen:
            return 409, b""
        seen.add((path, name))
        return 201, b'{"spec": {"clusterIP": "10.96.0.%d"}}' % len(seen)

    def bodies(i):
        return [
            ("/svc", {"kind": "Service", "metadata": {"name": f"svc-{i}"}}),
            ("/sl", {"kind": "EndpointSlice", "metadata": {"name": f"svc-{i}-0"}}),
        ]

    stats, firsts = bulk_create(
        range(5), bodies, lambda: post, executor=ThreadPoolExecutor(3), qps=None, key=lambda i: f"ns/svc-{i}"
    )
    assert (stats.services, stats.slices, stats.objects, stats.existed) == (4, 4, 8, 0)
    assert len(stats.errors) == 1 and stats.errors[0].startswith("ns/svc-3: POST /svc svc-3: HTTP 403")
    assert (
        firsts[3] is None
        and firsts[0].startswith(b'{"spec"')
        and set(stats.created_at) == {"ns/svc-0", "ns/svc-1", "ns/svc-2", "ns/svc-4"}
    )
    again, firsts = bulk_create([0, 1], bodies, lambda: post, executor=ThreadPoolExecutor(2), qps=None)
    assert again.existed == 4 and firsts == [b"", b""]  # existed: the caller reads the object
    with pytest.raises(KubeError, match="HTTP 403"):
        bulk_create([3], bodies, lambda: post, executor=ThreadPoolExecutor(1), qps=None, raise_errors=True)
