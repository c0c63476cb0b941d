"""The local target's components, for real: upstream etcd + kube-apiserver inside a lab namespace,
Services + EndpointSlices through the official Python client, and upstream kube-proxy (iptables
and nftables modes) programming the host kernel inside a node namespace. Needs root and the
binaries from `make kube` (kube/build.sh) or KUBE_BIN_DIR; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time

import pytest

from harness.lab import netns
from harness.model import ModelSpec, build_model
from harness.targets import localcluster as lc
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube, pytest.mark.kernel]

N_SERVICES = 40


_reason = kube_skip_reason(("ip", "iptables-save", "nft", "openssl", "ss"), "network namespaces")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _root_snapshot() -> dict:
    """What of the root namespace this test could plausibly disturb."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    sysctls = {}
    for k in (
        "net/netfilter/nf_conntrack_max",
        "net/netfilter/nf_conntrack_tcp_timeout_established",
        "net/ipv4/conf/all/route_localnet",
        "net/ipv4/ip_forward",
    ):
        try:
            sysctls[k] = open(f"/proc/sys/{k}").read().strip()
        except OSError:
            sysctls[k] = None
    return {
        "sysctls": sysctls,
        "links": sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M)),
        "api_addr": "10.254.0." in addrs,
        "kube_chains": sorted(set(re.findall(r"^:(KUBE-[^ ]+)", ipt, re.M))),
        "nft_tables": sorted(nft.split("\n")),
        "listening": sorted(
            lc.netns_listening(None)
            & {lc.API_PORT, lc.ETCD_PORT, lc.ETCD_PORT + 1, lc.METRICS_PORT, lc.HEALTHZ_PORT}
        ),
    }


@pytest.fixture(scope="module")
def root_before():
    return _root_snapshot()


@pytest.fixture(scope="module")
def cluster(root_before):
    with lc.LocalCluster() as c:
        yield c


@pytest.fixture(scope="module")
def model():
    return build_model(ModelSpec(n_services=N_SERVICES, endpoints=2, seed=7))


def test_apiserver_up_inside_its_namespace(cluster, root_before):
    assert cluster.netns in netns.list_namespaces()
    assert cluster.apiserver.alive() and cluster.etcd.alive()
    inside = lc.netns_listening(cluster.netns)
    assert {lc.API_PORT, lc.ETCD_PORT} <= inside
    tls = ssl.create_default_context(cafile=str(cluster.pki["ca_crt"]))
    status, body = lc.http_get(
        cluster.netns, cluster.api_addr, lc.API_PORT, "/version", tls=tls, token=cluster.tokens["admin"]
    )
    assert status == 200 and lc.kube_version().encode() in body
    # RBAC is on: the kube-proxy identity may list Services but not create them
    status, _ = lc.http_get(
        cluster.netns,
        cluster.api_addr,
        lc.API_PORT,
        "/api/v1/services",
        tls=tls,
        token=cluster.tokens["kube-proxy"],
    )
    assert status == 200
    status, _ = lc.http_get(
        cluster.netns,
        cluster.api_addr,
        lc.API_PORT,
        "/api/v1/secrets",
        tls=tls,
        token=cluster.tokens["kube-proxy"],
    )
    assert status == 403
    # nothing of it is in the root namespace
    assert _root_snapshot() == root_before
    assert cluster.kubeconfig().exists()


def test_services_and_slices_created_and_listed(cluster, model):
    stats = lc.create_services(
        cluster, model.services, qps=None, concurrency=4, node_names={"a": "node-a", "b": "node-b"}
    )
    assert stats.services == N_SERVICES and stats.slices == N_SERVICES and not stats.errors
    assert set(lc.list_names(cluster, "kpbench", "services")) == {s.name for s in model.services}
    assert len(lc.list_names(cluster, "kpbench", "endpointslices")) == N_SERVICES
    # idempotent: a second pass finds everything there
    again = lc.create_services(cluster, model.services[:5], concurrency=2)
    assert again.existed == 10


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last is True:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s: {last}")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_programs_rules_in_node_namespace(cluster, model, mode):
    node_ns = netns.ns_name(cluster.tag, f"node-{mode[:3]}")
    node_name = f"node-{mode[:3]}"
    netns.create(node_ns)
    cluster.namespaces.append(node_ns)  # removed with the cluster even if this test fails
    try:
        ip = cluster.attach_node(node_ns)
        lc.create_node(cluster, node_name, ip, pod_cidr="10.244.0.0/24")
        kp = cluster.start_kube_proxy(node_ns, node_name, mode, min_sync_period="0s")
        ips = {s.cluster_ip for s in model.services}

        def programmed():
            if not kp.alive():
                raise AssertionError(f"kube-proxy died:\n{kp.proc.log_tail()}")
            if mode == "iptables":
                out = netns.run(node_ns, ["iptables-save", "-t", "nat"]).stdout
                svc_rules = re.findall(r"^-A KUBE-SERVICES -d (\S+)/32 .* -j KUBE-SVC-\w+", out, re.M)
                missing = ips - set(svc_rules)
                chains = set(re.findall(r"^:(KUBE-SVC-\w+)", out, re.M))
                return True if not missing and len(chains) >= N_SERVICES else f"{len(missing)} IPs missing"
            out = netns.run(node_ns, ["nft", "list", "table", "ip", "kube-proxy"], check=False).stdout
            missing = {i for i in ips if f"{i} . tcp . 80 : goto service-" not in out}
            chains = set(re.findall(r"chain (service-\S+-kpbench/svc-\d+/tcp/http)", out))
            return True if not missing and len(chains) >= N_SERVICES else f"{len(missing)} IPs missing"

        _wait(programmed, 60, f"{mode} rules for {N_SERVICES} Services")
        m = lc.scrape_metrics(node_ns, kp.metrics_port)
        assert m["proxy_mode"] == mode
        assert any(k.startswith("kubeproxy_sync_proxy_rules_duration_seconds_count") for k in m["metrics"])
        assert m["metrics"].get('kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}', 0) > 0
        kp.stop()
        assert not kp.alive()
    finally:
        netns.delete(node_ns)
        cluster.namespaces.remove(node_ns)


def test_start_failure_reports_log_and_cleans_up():
    c = lc.LocalCluster(apiserver_args=["--no-such-flag"], ready_timeout=30)
    with pytest.raises(lc.LocalClusterError, match="no-such-flag"):
        with c:
            pass
    assert c.netns not in netns.list_namespaces()
    assert c.workdir is not None and not c.workdir.exists()
    assert all(not p.alive() for p in c.procs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_everything(sig, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM of the process that owns a cluster leaves nothing behind."""
    tag = f"sg{os.getpid() % 10000}{sig.value}"
    code = (
        f"import time; from harness.targets import localcluster as lc\n"
        f"with lc.LocalCluster(tag={tag!r}) as c:\n"
        f"    print('UP', c.workdir, c.etcd.popen.pid, c.apiserver.popen.pid, flush=True)\n"
        f"    time.sleep(300)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=lc.REPO)
    try:
        line = p.stdout.readline()
        assert line.startswith("UP"), line
        _, workdir, *pids = line.split()
        assert netns.ns_name(tag, "api") in netns.list_namespaces()
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert netns.ns_name(tag, "api") not in netns.list_namespaces()
    assert not os.path.exists(workdir)
    for pid in map(int, pids):
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_teardown_removes_everything_and_root_namespace_untouched(cluster, root_before):
    procs, nss, workdir = list(cluster.procs), list(cluster.namespaces), cluster.workdir
    cluster.stop()
    assert all(not p.alive() for p in procs)
    left = set(netns.list_namespaces()) & set(nss)
    assert not left, f"namespaces left: {left}"
    assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{cluster.tag}-")]
    assert workdir is not None and not workdir.exists()
    assert _root_snapshot() == root_before
