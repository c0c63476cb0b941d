"""Restore file round-trip; mode switch and restore, including failures injected halfway.

Against tests.support.fakeapi (loopback, in-memory): the fake's DaemonSet "rolls out" at once,
its Jobs succeed at once and its nodes' /proxyMode answer the mode last rolled out.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from harness.cli import main
from harness.cluster import (
    ANN_MODIFIED,
    KP_KEY,
    PAUSE_KEY,
    ClusterError,
    kubeproxy_config as kpc,
    namespace_for,
)
from harness.cluster.kube import Rest, connect
from harness.cluster.preflight import read_kube_proxy
from harness.cluster.restore import load, restore_cluster, restore_path, save_initial, state_from_cluster
from harness.cluster.switch import KubeProxyController, Waits
from harness.scenario import load_scenario
from tests.support.fakeapi import CM, DS, KUBEADM_CONFIG, FakeCluster

RUN = "20261201T063000Z-a1b2c3"


class Boom(RuntimeError):
    pass


def _setup(fake, tmp_path, waits_cls=Waits):
    conn = connect(fake.kubeconfig(tmp_path / "kc.yaml"), None)
    rest = Rest(conn.api)
    kp = read_kube_proxy(rest)
    state = state_from_cluster(RUN, namespace_for(RUN), conn, rest.get(CM), kp, {"node-a": "iptables"})
    path = restore_path(tmp_path)
    state = save_initial(path, state)
    waits = waits_cls(rest, lambda s: None, poll_s=0.01, rollout_timeout_s=5, cleanup_timeout_s=5)
    ctl = KubeProxyController(rest, state, path, waits=waits, log=lambda s: None)
    return conn, rest, state, path, ctl


def _assert_original(fake):
    cm = fake.objects[CM]
    assert cm["data"][KP_KEY] == KUBEADM_CONFIG  # byte for byte
    assert ANN_MODIFIED not in cm["metadata"]["annotations"]
    assert cm["metadata"]["annotations"]["kubeadm.kubernetes.io/component-config.hash"] == "sha256:abc"
    assert cm["metadata"]["labels"] == {"app": "kube-proxy"}
    assert PAUSE_KEY not in fake.objects[DS]["spec"]["template"]["spec"]["nodeSelector"]
    assert fake.node_mode("node-a") == "iptables" and fake.running_config == KUBEADM_CONFIG


def test_restore_file_round_trip(tmp_path):
    with FakeCluster() as fake:
        _, _, state, path, _ = _setup(fake, tmp_path)
    assert path.name == "cluster-restore.json" and not list(tmp_path.glob("*.tmp"))
    back = load(tmp_path)  # a run folder or the file itself
    assert back == state
    assert back.original_text == KUBEADM_CONFIG and back.original_mode == "iptables"
    assert back.daemonset["image"] == "registry.k8s.io/kube-proxy:v1.34.2"
    assert back.configmap["data"]["kubeconfig.conf"].startswith("apiVersion: v1")
    assert back.node_modes == {"node-a": "iptables"} and back.status == "saved"
    d = json.loads(path.read_text())
    assert d["version"] == 1 and d["configmap"]["annotations"]["kubeadm.kubernetes.io/component-config.hash"]


def test_restore_file_errors(tmp_path):
    with pytest.raises(ClusterError, match="does not exist"):
        load(tmp_path)
    restore_path(tmp_path).write_text("{not json")
    with pytest.raises(ClusterError, match="cannot be read"):
        load(tmp_path)
    restore_path(tmp_path).write_text(json.dumps({"version": 99}))
    with pytest.raises(ClusterError, match="version 99"):
        load(tmp_path)


def test_resumed_run_keeps_the_first_original(tmp_path):
    with FakeCluster() as fake:
        _, rest, state, path, ctl = _setup(fake, tmp_path)
        ctl.switch("iptables", "nftables")
        # a resumed run would read the cluster as it is now (nftables): the file must keep iptables
        kp = read_kube_proxy(rest)
        assert kp.mode == "nftables"
        again = save_initial(
            path,
            state_from_cluster(
                RUN, "ns", SimpleNamespace(kubeconfig="k", context="c", server="s"), rest.get(CM), kp, {}
            ),
        )
        assert again.original_mode == "iptables" and again.original_text == KUBEADM_CONFIG


def test_switch_with_cleanup_and_restore(tmp_path):
    with FakeCluster() as fake:
        _, rest, state, path, ctl = _setup(fake, tmp_path)
        modes = ctl.switch("iptables", "ipvs", scheduler="rr")
        assert modes == {"node-a": "ipvs", "node-b": "ipvs"}
        doc = kpc.parse(fake.cm_config())
        assert doc["mode"] == "ipvs" and doc["ipvs"]["minSyncPeriod"] == "1ms"
        assert doc["metricsBindAddress"] == "0.0.0.0:10249"
        assert fake.objects[CM]["metadata"]["annotations"][ANN_MODIFIED] == RUN
        assert fake.objects[CM]["data"]["kubeconfig.conf"] == state.configmap["data"]["kubeconfig.conf"]
        assert sorted(n for n, _ in fake.jobs_ran) == ["node-a", "node-b"]
        assert all(cmd[1] == "--cleanup" for _, cmd in fake.jobs_ran)
        tmpl = fake.objects[DS]["spec"]["template"]
        assert (
            PAUSE_KEY not in tmpl["spec"]["nodeSelector"]
            and "kubectl.kubernetes.io/restartedAt" in tmpl["metadata"]["annotations"]
        )
        assert load(path).status == "changed" and load(path).modes_possibly_running == ["ipvs"]

        restore_cluster(ctl, state, path, log=lambda s: None)
        _assert_original(fake)
        assert len(fake.jobs_ran) == 4  # ipvs -> iptables cleaned up too
        assert load(path).status == "restored"
        assert not fake.list("/api/v1/namespaces", f"kpbench.io/run={RUN}")


def test_no_cleanup_to_nftables(tmp_path):
    with FakeCluster() as fake:
        _, _, state, path, ctl = _setup(fake, tmp_path)
        ctl.switch("iptables", "nftables")
        assert fake.jobs_ran == [] and fake.node_mode("node-b") == "nftables"
        restore_cluster(ctl, state, path, log=lambda s: None)
        _assert_original(fake)


@pytest.mark.parametrize("where", ["rollout", "cleanup", "configmap_put", "interrupt"])
def test_failure_halfway_is_restored(tmp_path, where):
    class FailingWaits(Waits):
        def rollout(self):
            if where == "rollout":
                raise Boom("rollout timed out (injected)")
            if where == "interrupt":
                raise KeyboardInterrupt
            return super().rollout()

        def jobs_done(self, ns, names):
            if where == "cleanup":
                raise Boom("cleanup failed (injected)")
            return super().jobs_done(ns, names)

    with FakeCluster() as fake:
        _, rest, state, path, ctl = _setup(fake, tmp_path, FailingWaits)
        if where == "configmap_put":
            fake.fail_on[("PUT", CM)] = 500
        with pytest.raises((Boom, KeyboardInterrupt, Exception)):
            ctl.switch("iptables", "ipvs")
        # halfway: paused (cleanup), or config written and restarted (rollout), or paused with PUT refused
        if where in ("cleanup", "configmap_put"):
            assert PAUSE_KEY in fake.objects[DS]["spec"]["template"]["spec"]["nodeSelector"]
        if where in ("rollout", "interrupt"):
            assert "mode: ipvs" in fake.cm_config()
        assert load(path).status == "changed" and "ipvs" in load(path).modes_possibly_running
        fake.fail_on.clear()
        # a fresh controller, as `kpbench restore` would build it from the file
        st = load(path)
        ctl2 = KubeProxyController(
            rest,
            st,
            path,
            waits=Waits(rest, lambda s: None, poll_s=0.01, rollout_timeout_s=5),
            log=lambda s: None,
        )
        restore_cluster(ctl2, st, path, log=lambda s: None)
        _assert_original(fake)
        assert load(path).status == "restored"


def test_restore_failure_is_recorded(tmp_path):
    with FakeCluster() as fake:
        _, _, state, path, ctl = _setup(fake, tmp_path)
        ctl.switch("iptables", "nftables")
        fake.fail_on[("PUT", CM)] = 503
        with pytest.raises(ApiException) as e:
            restore_cluster(ctl, state, path, log=lambda s: None)
        assert e.value.status == 503
        st = load(path)
        assert st.status == "restore-failed" and "restore failed" in st.history[-1]["event"]


def test_kpbench_restore_command(tmp_path, capsys):
    with FakeCluster() as fake:
        _, _, state, path, ctl = _setup(fake, tmp_path)
        ctl.switch("iptables", "ipvs")
        assert main(["restore", str(tmp_path)]) == 0  # uses the kubeconfig/context saved in the file
        assert "restored: kube-proxy runs iptables" in capsys.readouterr().out
        _assert_original(fake)
        assert main(["restore", str(tmp_path)]) == 0
        assert "already restored" in capsys.readouterr().out
        # nothing changed since: --force still leaves it as found and restarts nothing
        n_patch = sum(1 for c in fake.calls if c[0] == "PATCH")
        assert main(["restore", str(tmp_path), "--force"]) == 0
        assert sum(1 for c in fake.calls if c[0] == "PATCH") == n_patch


def test_kpbench_restore_errors(tmp_path, capsys):
    assert main(["restore", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with FakeCluster() as fake:
        _, _, state, path, ctl = _setup(fake, tmp_path)
        other = FakeCluster().start()
        try:
            kc = other.kubeconfig(tmp_path / "other.yaml")
            assert main(["restore", str(tmp_path), "--kubeconfig", kc]) == 2
            assert "is not the cluster the run changed" in capsys.readouterr().err
        finally:
            other.stop()


def test_target_restores_when_the_run_fails(tmp_path):
    """run_points: a failure after the first mode switch still puts kube-proxy back."""
    from harness.cluster.options import ClusterOptions
    from harness.runner import plan_points
    from harness.targets import cluster as ct

    sc = load_scenario(
        "quick",
        [(["target"], "cluster"), (["services"], {"counts": [10]}), (["modes"], ["ipvs", "iptables"])],
    )
    with FakeCluster() as fake:
        t = ct.ClusterTarget(
            fake.kubeconfig(tmp_path / "kc.yaml"),
            None,
            True,
            out=lambda s: None,
            options=ClusterOptions(ready_timeout_s=0.1),
            waits=lambda rest: Waits(rest, lambda s: None, poll_s=0.01, rollout_timeout_s=5),
        )
        t.preflight(sc)
        (tmp_path / "points").mkdir()
        run = SimpleNamespace(dir=tmp_path, scenario=sc, meta={"run_id": RUN, "points": []})

        def setup_then_switch(self):
            self.store.ensure_namespace()
            self.ctl.switch("iptables", "ipvs")
            raise Boom("pods never became ready (injected)")

        orig = ct._Session.setup
        ct._Session.setup = setup_then_switch
        try:
            with pytest.raises(Boom):
                t.run_points(run, plan_points(sc, t.plan(sc)), lambda ev: None)
        finally:
            ct._Session.setup = orig
        _assert_original(fake)
        assert load(tmp_path).status == "restored"
        assert not fake.list("/api/v1/namespaces", f"kpbench.io/run={RUN}")
