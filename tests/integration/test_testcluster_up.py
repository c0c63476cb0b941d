"""`kpbench cluster up` for real: a 2-node cluster (etcd, kube-apiserver, controller manager,
scheduler; per node containerd v2 + kubelet in its own namespaces), both nodes Ready, kubeadm's
kube-proxy DaemonSet running on both, a pod on each node reachable from the other node directly
and through a Service (kube-proxy's rules), then `cluster down` leaves nothing: no namespaces,
links, mounts, cgroups, processes, containerd state, host sysctls as found, root namespace's
iptables/nft untouched, also after a kubelet died mid-run. A kubelet that cannot start: up fails with its log lines, removes
everything, and the command exits 2.

Needs root, the binaries of `make cluster-bins` and the images of `make cluster-images`; skipped
with the reason otherwise. Runs as test cluster instance 9 (`kpbtc9-*`), so a developer's cluster
(instance 0) may stay up meanwhile.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.lab import netns
from harness.testcluster import network, node as nodemod, sysctls
from harness.testcluster.plan import INSTANCE_ENV, Names

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]
NAMES = Names(9)


@pytest.fixture(autouse=True)
def _instance(monkeypatch):
    monkeypatch.setenv(INSTANCE_ENV, str(NAMES.instance))


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups)"
    for tool in ("ip", "nsenter", "unshare", "openssl", "iptables-save", "nft"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    try:
        from harness.targets.local_binaries import pinned_kube_version
        from harness.testcluster.artifacts import cluster_binaries

        cluster_binaries(pinned_kube_version())
    except UserError as e:
        return f"test cluster binaries missing: {e}"
    try:
        from harness.testcluster import images
    except ImportError:
        return "harness.testcluster.images is not here (the offline images)"
    if not shutil.which("mmdebstrap") and not list(images.IMAGES_DIR.glob("*.tar")):
        return "mmdebstrap not installed and no image archives built (make cluster-images)"
    if network.existing_namespaces(NAMES):
        return (
            f"test cluster instance {NAMES.instance} is up ({', '.join(network.existing_namespaces(NAMES))})"
        )
    return None


_reason = _skip_reason()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _root_snapshot() -> dict:
    """The root namespace's links, addresses, routes and rules, the sysctls, this instance's
    namespaces and cgroups (another instance's own link and routes are left out)."""

    def out(*argv: str) -> list[str]:
        lines = subprocess.run(list(argv), capture_output=True, text=True).stdout.splitlines()
        return [ln for ln in lines if not _other_instance(ln)]

    return {
        "links": sorted(line.split(":")[1].split("@")[0].strip() for line in out("ip", "-o", "link")),
        "addrs": out("ip", "-o", "addr"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": _strip_counters(out("iptables-save")),
        "nft": out("nft", "list", "tables"),
        "sysctls": sysctls.read(),
        "netns": network.existing_namespaces(NAMES),
        "cgroups": [str(p) for p in nodemod.cgroup_dirs(NAMES)],
    }


def _other_instance(line: str) -> bool:
    return "kpbtc" in line and NAMES.prefix not in line and NAMES.host_link not in line


def _strip_counters(lines: list[str]) -> list[str]:
    return [line.split(" [")[0] for line in lines if not line.startswith("#")]


def _mounts_mentioning(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def _procs_mentioning(path: Path) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                if str(path).encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    found.append(int(d))
            except OSError:
                pass
    return found


def _assert_nothing_left(d: Path, before: dict) -> None:
    after = _root_snapshot()
    assert after == before
    assert not d.exists()
    assert not _mounts_mentioning(d)
    assert not _procs_mentioning(d)
    for host in nodemod.HOST_DIRS:
        assert not any(
            line.split()[4] == host for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )


def _http_get(ns: str, ip: str, port: int) -> bytes:
    with netns.in_netns(ns):
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        conn.connect()
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200
        return r.read()
    finally:
        conn.close()


def _pod(name: str, node: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-m", "http.server", "8080"],
                    "workingDir": "/etc",
                }
            ],
        },
    }


def _wait(what: str, fn, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.5)


def test_two_nodes_up_pods_across_nodes_and_down_leaves_nothing(tmp_path):
    from harness.k8s.endpoint import ApiEndpoint
    from harness.k8s.rest import Rest
    from harness.testcluster import lifecycle
    from harness.testcluster.images import HARNESS_IMAGE

    d = tmp_path / "tc"
    before = _root_snapshot()
    t0 = time.monotonic()
    try:
        try:
            c = lifecycle.up(2, directory=d, log=print)
        except lifecycle.ClusterBusy as e:
            pytest.skip(f"another test cluster: {e}")
        print(f"bring-up {time.monotonic() - t0:.1f} s: {c.timings}")
        kc = json.loads(Path(c.kubeconfig).read_text())
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]))
        rest = Rest(
            ApiEndpoint(host=c.server, ca_file=str(ca), token=kc["users"][0]["user"]["token"]).client()
        )

        nodes = rest.get("/api/v1/nodes")["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == sorted(c.nodes)
        for n in nodes:
            ready = {x["type"]: x["status"] for x in n["status"]["conditions"]}["Ready"]
            assert ready == "True", n["metadata"]["name"]
        ds = rest.get("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")["status"]
        assert ds["desiredNumberScheduled"] == 2 and ds["numberReady"] == 2
        cm = rest.get("/api/v1/namespaces/kube-system/configmaps/kube-proxy")
        assert "config.conf" in cm["data"]

        # a pod on each node; each reachable from the other node, directly and through a Service
        names = {node: f"web{i}" for i, node in enumerate(c.nodes)}
        for node, name in names.items():
            rest.create("/api/v1/namespaces/default/pods", _pod(name, node, HARNESS_IMAGE))

        def pod_ips():
            ips = {}
            for node, name in names.items():
                p = rest.get(f"/api/v1/namespaces/default/pods/{name}")
                st = p.get("status", {})
                if st.get("phase") != "Running" or not st.get("podIP"):
                    return None
                ips[node] = st["podIP"]
            return ips

        ips = _wait("both pods Running", pod_ips)
        a, b = c.nodes
        svc = rest.create(
            "/api/v1/namespaces/default/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web1"},
                "spec": {"selector": {"app": names[b]}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        )
        for src, dst in ((a, b), (b, a)):
            body = _wait(
                f"pod on {dst} reachable from {src}",
                lambda s=src, t=dst: _try(lambda: _http_get(s, ips[t], 8080)),
            )
            assert b"passwd" in body  # the directory listing of /etc in the pod
        via_svc = _wait(
            "the Service (kube-proxy's rules on node a) reaching the pod on node b",
            lambda: _try(lambda: _http_get(a, svc["spec"]["clusterIP"], 80)),
        )
        assert b"passwd" in via_svc

        # a kubelet that dies mid-run: down still leaves nothing behind (its pods keep running)
        from harness.testcluster.state import load

        st = load(d / "state.json")
        assert st is not None
        kubelet = next(p for p in st.state.procs if p.name == f"{b}/kubelet")
        os.kill(kubelet.pid, signal.SIGKILL)
    finally:
        t1 = time.monotonic()
        lifecycle.down(d, log=print)
        print(f"tear-down {time.monotonic() - t1:.1f} s")
    _assert_nothing_left(d, before)
    assert lifecycle.down(d, log=print) == []  # idempotent: nothing more to do


def _try(fn):
    try:
        return fn()
    except (OSError, AssertionError, http.client.HTTPException):
        return None


def test_a_kubelet_that_cannot_start_fails_up_with_its_log_and_removes_everything(
    tmp_path, monkeypatch, capsys
):
    """Through the command: exit status 2 and the kubelet's own error line, nothing left behind.
    The fault is the one this machine's notes warn of: kubelet told to refuse cgroup v1
    (failCgroupV1: true, the default from v1.35) on this cgroup v1 host (in-process, so the
    renderer can be swapped)."""
    from harness import cli
    from harness.testcluster import lifecycle

    d = tmp_path / "tc"
    before = _root_snapshot()
    real = nodemod.render_kubelet_config

    def broken(node, **kw):
        return {**real(node, **kw), "failCgroupV1": True}

    monkeypatch.setattr(nodemod, "render_kubelet_config", broken)
    try:
        rc = cli.main(["cluster", "up", "--nodes", "1", "--dir", str(d)])
        err = capsys.readouterr().err
        if "another `kpbench cluster up/down`" in err or "test cluster is " in err:
            pytest.skip(f"another test cluster: {err.strip()}")
        assert rc == 2, err
        assert "kpbench: error:" in err and "kubelet exited" in err and "cgroup v1" in err
        _assert_nothing_left(d, before)
        logs = Path(f"{d}-logs")
        assert "cgroup v1" in (logs / "node1-kubelet.log").read_text()
        shutil.rmtree(logs, ignore_errors=True)
    finally:
        lifecycle.down(d, log=print)
