"""The cluster target against a real kube-apiserver (the local target's etcd + kube-apiserver,
inside a lab network namespace), with kubeadm-style kube-proxy objects created here.

What is real: the API server (validation, RBAC, admission incl. PodSecurity), the official Python
client, SelfSubjectAccessReview, the node proxy to a real upstream kube-proxy's /proxyMode and
/metrics (kube-proxy runs in a node namespace attached to the API bridge), object creation at a
bounded rate and deletion by label, the ConfigMap patch and its restore.
What is not: there is no kube-controller-manager, scheduler or kubelet, so the DaemonSet never
rolls out, Jobs never run and namespaces stay Terminating; the waits for those are stubbed.
Needs root and `make kube` binaries; skipped with the reason otherwise. Marker: kube.
"""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import pytest

from harness.cluster import (
    ANN_MODIFIED,
    KP_KEY,
    LABEL_RUN,
    PAUSE_KEY,
    RESTART_ANN,
    ClusterError,
    manifests as m,
    namespace_for,
)
from harness.cluster.kube import Rest, connect
from harness.cluster.objects import ObjectStore
from harness.cluster.preflight import read_kube_proxy
from harness.cluster.probe import scrape_node
from harness.cluster.restore import load, restore_cluster, restore_path, save_initial, state_from_cluster
from harness.cluster.switch import CM_PATH, DS_PATH, KubeProxyController, Waits
from harness.scenario import load_scenario
from tests.support.fakeapi import KUBEADM_CONFIG, kubeadm_configmap, kubeadm_daemonset
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube]

NODE_KP = "node-kp"  # runs a real kube-proxy
NODE_B = "node-b"  # a Node object only


_reason = kube_skip_reason(("ip", "openssl", "iptables-save"), "network namespaces for the local API server")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


class Boom(RuntimeError):
    pass


class StubWaits(Waits):
    """No DaemonSet/Job/namespace controllers here: the waits only check what the API can show."""

    fail_rollout: BaseException | None = None

    def pods_gone(self, selector):
        return None

    def jobs_done(self, namespace, names):
        for n in names:  # they were really created (validated by the API server)
            self.rest.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{n}")
        self.jobs_seen = getattr(self, "jobs_seen", []) + list(names)

    def rollout(self):
        ds = self.rest.get(DS_PATH)
        assert ds["spec"]["template"]["metadata"]["annotations"][RESTART_ANN]
        if self.fail_rollout is not None:
            e, self.fail_rollout = self.fail_rollout, None
            raise e

    def node_modes(self, nodes, mode, port, *, verify=True):
        return {n: "unverified: no kubelets here" for n in nodes}


def _in_api(c, fn, *args):
    """Run fn inside the API server's network namespace (setns is per thread; threads fn starts
    inherit it), so every connection the client opens is made there."""
    with c.api.executor(1) as ex:
        return ex.submit(fn, *args).result()


def _admin(c):
    return connect(str(c.kubeconfig("admin")), None)


def _create_nodes(rest, ip):
    from tests.support.fakeapi import node

    for name, addr in ((NODE_KP, ip), (NODE_B, None)):
        body = node(name, kernel="6.18.0-kpbench-test", ip=addr or "0.0.0.0")
        if addr is None:
            body["status"]["addresses"] = []  # nothing to dial: the node proxy fails at once
        rest.create("/api/v1/nodes", body)


@pytest.fixture(scope="module")
def cluster():
    """The local API server, Node objects, and a real kube-proxy (iptables) for node-kp in a node
    namespace attached to the API bridge (its metrics listen on 0.0.0.0:10249 there)."""
    from harness.lab import netns
    from harness.targets import localcluster as lc

    with lc.LocalCluster() as c:
        c.in_api = lambda fn, *a: _in_api(c, fn, *a)
        node_ns = netns.ns_name(c.tag, "node-kp")
        netns.create(node_ns)
        c.namespaces.append(node_ns)  # deleted with the cluster
        ip = c.attach_node(node_ns)
        c.in_api(lambda: _create_nodes(Rest(_admin(c).api), ip))
        c.kube_proxy = c.start_kube_proxy(node_ns, NODE_KP, "iptables", min_sync_period="0s")
        yield c


@pytest.fixture()
def kubeadm(cluster):
    """kube-system/kube-proxy ConfigMap + DaemonSet as kubeadm makes them; removed afterwards."""

    def create():
        rest = Rest(_admin(cluster).api)
        rest.create("/api/v1/namespaces/kube-system/configmaps", kubeadm_configmap())
        rest.create("/apis/apps/v1/namespaces/kube-system/daemonsets", kubeadm_daemonset())

    def remove():
        rest = Rest(_admin(cluster).api)
        rest.delete(CM_PATH)
        rest.delete(DS_PATH)

    cluster.in_api(create)
    yield
    cluster.in_api(remove)


def _scenario(modes=("iptables", "ipvs")):
    return load_scenario(
        "quick", [(["target"], "cluster"), (["services"], {"counts": [20]}), (["modes"], list(modes))]
    )


# ------------------------------------------------------------------------------------------ tests


def test_preflight_passes_on_kubeadm_layout(cluster, kubeadm):
    from harness.targets.cluster import ClusterTarget

    lines: list[str] = []

    def run():
        t = ClusterTarget(str(cluster.kubeconfig("admin")), None, True, out=lines.append)
        t.preflight(_scenario())
        return t

    t = cluster.in_api(run)
    text = "\n".join(lines)
    assert "permissions: all" in text
    assert "runs iptables" in text
    # read from the real kube-proxy through the API server's node proxy
    assert f"{NODE_KP}=iptables" in text and t.report.node_modes() == {NODE_KP: "iptables"}
    assert "6.18.0-kpbench-test" in text and NODE_B in text
    assert t.report.kube_proxy.image == "registry.k8s.io/kube-proxy:v1.34.2"

    def without_yes():
        ClusterTarget(str(cluster.kubeconfig("admin")), None, False, out=lambda s: None).preflight(
            _scenario()
        )

    with pytest.raises(ClusterError, match="without --yes"):
        cluster.in_api(without_yes)

    def labelled():
        return Rest(_admin(cluster).api).get("/api/v1/namespaces", query={"labelSelector": LABEL_RUN})[
            "items"
        ]

    assert cluster.in_api(labelled) == []  # preflight created nothing


def test_metrics_through_node_proxy(cluster, kubeadm):
    def run():
        return scrape_node(Rest(_admin(cluster).api), NODE_KP, 10249)

    metrics = cluster.in_api(run)
    assert any(k.startswith("kubeproxy_sync_proxy_rules_duration_seconds_count") for k in metrics)


def test_preflight_without_configmap(cluster):
    from harness.targets.cluster import ClusterTarget

    def run():
        rest = Rest(_admin(cluster).api)
        rest.create("/apis/apps/v1/namespaces/kube-system/daemonsets", kubeadm_daemonset())
        try:
            ClusterTarget(str(cluster.kubeconfig("admin")), None, True, out=lambda s: None).preflight(
                _scenario()
            )
        finally:
            rest.delete(DS_PATH)

    with pytest.raises(
        ClusterError, match="not configured the kubeadm way.*ConfigMap kube-system/kube-proxy does not"
    ):
        cluster.in_api(run)


def test_permissions_checked(cluster, kubeadm):
    """The kube-proxy identity (ClusterRole system:node-proxier) may not do what a run needs."""
    from harness.targets.cluster import ClusterTarget

    def run():
        ClusterTarget(str(cluster.kubeconfig("kube-proxy")), None, True, out=lambda s: None).preflight(
            _scenario()
        )

    with pytest.raises(ClusterError) as e:
        cluster.in_api(run)
    msg = str(e.value)
    assert "lacks permissions" in msg and "create namespaces" in msg and "\n" not in msg


def test_objects_created_and_deleted_by_label(cluster, kubeadm):
    run_id = f"it-{int(time.time())}"
    ns = namespace_for(run_id)

    def run():
        conn = _admin(cluster)
        rest = Rest(conn.api)
        store = ObjectStore(rest, ns, run_id, qps=40, burst=10, workers=4)
        store.ensure_namespace()
        # ServiceAccount admission wants the namespace's default SA (no controller makes it here)
        rest.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "default"}})
        store.create_backend("kpbench:latest", 2)
        eps = [("10.244.1.5", NODE_KP), ("10.244.1.6", NODE_B)]
        stats = store.create_services(0, 20, selector=False, endpoints=eps, per_service=2)
        sel = store.create_services(20, 25, selector=True)
        # the rendered privileged manifests pass the real API's validation and PodSecurity admission
        store._create(f"/api/v1/namespaces/{ns}/pods", m.probe_pod(ns, run_id, NODE_KP, "kpbench:latest"))
        for node in (NODE_KP, NODE_B):
            store._create(
                f"/apis/batch/v1/namespaces/{ns}/jobs",
                m.cleanup_job(ns, run_id, node, "registry.k8s.io/kube-proxy:v1.34.2"),
            )
        for obj in m.locust_manifests(ns, run_id, "kpbench:latest", 3, users=6, rate=100, duration_s=5):
            kind = {"ConfigMap": "configmaps", "Service": "services", "Job": "jobs"}[obj["kind"]]
            group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
            store._create(f"{group}/namespaces/{ns}/{kind}", obj)
        svcs = rest.get(f"/api/v1/namespaces/{ns}/services", query={"labelSelector": store.selector})["items"]
        slices = rest.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            query={"labelSelector": store.selector},
        )["items"]
        before = store.remaining()
        # everything goes by label (KubeProxyController.delete_run_objects: objects, then namespaces)
        state = SimpleNamespace(run_id=run_id, namespace=ns)
        KubeProxyController(rest, state, None, waits=StubWaits(rest), log=lambda s: None).delete_run_objects(
            wait_s=0
        )
        after = store.remaining()
        nsobj = rest.get_or_none(f"/api/v1/namespaces/{ns}")
        return stats, sel, svcs, slices, before, after, nsobj

    stats, sel, svcs, slices, before, after, nsobj = cluster.in_api(run)
    assert len(svcs) == 25 + 1 and len(slices) == 20  # + the locust master Service
    assert all(s["spec"]["clusterIP"] for s in svcs)
    assert stats.objects == 40 and stats.seconds >= (40 - 10) / 40 * 0.9  # the token bucket held the rate
    assert before["services"] == 26 and before["jobs"] == 4 and before["pods"] == 1
    assert after == {}
    # no namespace controller here: the namespace is Terminating (a real cluster then removes it)
    assert nsobj is None or nsobj["status"]["phase"] == "Terminating"


@pytest.mark.parametrize(
    "inject", [Boom("rollout never finished (injected)"), KeyboardInterrupt()], ids=["failure", "ctrl-c"]
)
def test_configmap_patched_and_restored_with_failure_halfway(cluster, kubeadm, tmp_path, inject):
    run_id = f"it-{int(time.time() * 1000) % 10**9}"

    def run():
        conn = _admin(cluster)
        rest = Rest(conn.api)
        kp = read_kube_proxy(rest)
        original = copy.deepcopy(rest.get(CM_PATH))
        path = restore_path(tmp_path)
        state = save_initial(path, state_from_cluster(run_id, namespace_for(run_id), conn, original, kp, {}))
        waits = StubWaits(rest)
        waits.fail_rollout = inject
        ctl = KubeProxyController(rest, state, path, waits=waits, log=lambda s: None)
        try:
            ctl.switch("iptables", "ipvs")
        except (Boom, KeyboardInterrupt) as e:
            caught = e
        else:
            caught = None
        halfway = rest.get(CM_PATH), rest.get(DS_PATH), load(path)
        # restore as `kpbench restore` would: from the file alone
        st = load(path)
        ctl2 = KubeProxyController(
            rest, st, path, waits=StubWaits(rest), log=lambda s: None, namespace_wait_s=0
        )  # no namespace controller here
        restore_cluster(ctl2, st, path, log=lambda s: None)
        return original, caught, halfway, rest.get(CM_PATH), rest.get(DS_PATH), load(path), waits

    original, caught, (cm_mid, ds_mid, st_mid), cm, ds, st, waits = cluster.in_api(run)
    assert type(caught) is type(inject)
    # halfway: kube-proxy paused for cleanup, cleaned up (Jobs created on both nodes), ipvs written, restarted
    assert (
        "mode: ipvs" in cm_mid["data"][KP_KEY] and cm_mid["metadata"]["annotations"][ANN_MODIFIED] == run_id
    )
    assert PAUSE_KEY not in ds_mid["spec"]["template"]["spec"]["nodeSelector"]
    assert len(waits.jobs_seen) == 2 and st_mid.status == "changed"
    # restored: config.conf byte for byte, the other key and the kubeadm annotation as found
    assert cm["data"] == original["data"] and cm["data"][KP_KEY] == KUBEADM_CONFIG
    assert ANN_MODIFIED not in (cm["metadata"].get("annotations") or {})
    assert cm["metadata"]["annotations"] == original["metadata"]["annotations"]
    assert cm["metadata"]["labels"] == original["metadata"]["labels"]
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert st.status == "restored" and st.modes_possibly_running == ["iptables"]


def test_target_run_restores_on_failure(cluster, kubeadm, tmp_path):
    """ClusterTarget.run_points: the run switches mode, then fails; the finally block restores."""
    from harness.cluster.options import ClusterOptions
    from harness.runner import plan_points
    from harness.targets import cluster as ct

    sc = _scenario(modes=("nftables", "iptables"))
    run_id = f"it-{int(time.time() * 1000) % 10**9}"

    def run():
        t = ct.ClusterTarget(
            str(cluster.kubeconfig("admin")),
            None,
            True,
            out=lambda s: None,
            options=ClusterOptions(ready_timeout_s=1, namespace_wait_s=0),
            waits=StubWaits,
        )
        t.preflight(sc)
        (tmp_path / "points").mkdir()
        r = SimpleNamespace(dir=tmp_path, scenario=sc, meta={"run_id": run_id, "points": []})
        orig = ct._Session.setup

        def setup(self):
            self.store.ensure_namespace()
            self.ctl.switch("iptables", "nftables")
            raise Boom("backend never ready (injected)")

        ct._Session.setup = setup
        try:
            with pytest.raises(Boom):
                t.run_points(r, plan_points(sc, t.plan(sc)), lambda ev: None)
        finally:
            ct._Session.setup = orig
        rest = Rest(_admin(cluster).api)
        return rest.get(CM_PATH), load(tmp_path)

    cm, st = cluster.in_api(run)
    assert cm["data"][KP_KEY] == KUBEADM_CONFIG and ANN_MODIFIED not in cm["metadata"]["annotations"]
    assert st.status == "restored" and [h["event"] for h in st.history][-1] == "restored"


def test_load_phase_and_node_check_manifests_pass_the_api(cluster, kubeadm):
    """The load phase's objects (targets ConfigMap, master Service, master and worker Jobs with the
    master's ClusterIP) and the node kernel check pod pass the real API's validation and PodSecurity
    admission, and go by label."""
    run_id = f"it-load-{int(time.time())}"
    ns = namespace_for(run_id)

    def run():
        rest = Rest(_admin(cluster).api)
        store = ObjectStore(rest, ns, run_id)
        store.ensure_namespace()
        rest.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "default"}})
        kw = dict(users=4, rate=40, duration_s=3, targets='[["10.96.0.10", 80]]', suffix="-1")
        cm, svc, _, _ = m.locust_manifests(ns, run_id, "kpbench:latest", 2, **kw)
        rest.create(f"/api/v1/namespaces/{ns}/configmaps", cm)
        ip = rest.create(f"/api/v1/namespaces/{ns}/services", svc)["spec"]["clusterIP"]
        *_, master, worker = m.locust_manifests(ns, run_id, "kpbench:latest", 2, master_host=ip, **kw)
        for job in (master, worker):
            rest.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job)
        got = rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs/kpbench-locust-worker-1")
        wc = got["spec"]["template"]["spec"]["containers"][0]["command"]
        rest.create(
            f"/api/v1/namespaces/{ns}/pods", m.node_check_pod(ns, run_id, NODE_B, "kpbench:latest", ["ipvs"])
        )
        before = store.remaining()
        store.delete_by_label()
        rest.delete(f"/api/v1/namespaces/{ns}")
        return wc, ip, before, store.remaining()

    wc, ip, before, after = cluster.in_api(run)
    assert wc[wc.index("--master-host") + 1] == ip
    assert before == {"configmaps": 1, "services": 1, "jobs": 2, "pods": 1}
    assert after == {}
