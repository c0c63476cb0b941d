"""Cluster target preflight: kubeconfig problems, reachability, permissions, kubeadm layout, --yes.

Against tests.support.fakeapi (an in-memory API on a loopback port, plain HTTP) so the real
client code runs; nothing leaves this machine.
"""

from __future__ import annotations

import os
import socket

import pytest
import yaml

from harness.cli import main
from harness.cluster import ANN_MODIFIED, PAUSE_KEY, ClusterError
from harness.cluster.kube import connect, read_kubeconfig
from harness.scenario import load_scenario
from harness.targets.cluster import ClusterTarget
from tests.support.fakeapi import CM, DS, FakeCluster, kubeadm_configmap


def _scenario(**over):
    ov = [(["target"], "cluster"), (["services"], {"counts": [10]})]
    ov += [(k.split("."), v) for k, v in over.items()]
    return load_scenario("quick", ov)


def _unused_loopback_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _kubeconfig(path, server: str, context: str = "test") -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _preflight(fake, tmp_path, yes=True, scenario=None, out=None):
    lines = [] if out is None else out
    t = ClusterTarget(fake.kubeconfig(tmp_path / "kc.yaml"), None, yes, out=lines.append)
    t.preflight(scenario or _scenario())
    return t, lines


def _mutations(fake):
    return [
        c
        for c in fake.calls
        if c[0] in ("PUT", "PATCH", "DELETE") or (c[0] == "POST" and "selfsubjectaccessreviews" not in c[1])
    ]


# ---------------------------------------------------------------------------- kubeconfig


def test_missing_kubeconfig(tmp_path):
    with pytest.raises(ClusterError) as e:
        connect(str(tmp_path / "nope.yaml"), None)
    msg = str(e.value)
    assert "nope.yaml" in msg and "does not exist" in msg and "--kubeconfig" in msg and "\n" not in msg


def test_missing_kubeconfig_cli_exit_2(tmp_path, capsys):
    rc = main(["run", "quick", "--target", "cluster", "--kubeconfig", str(tmp_path / "nope.yaml"), "--yes"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "does not exist" in err


def test_default_kubeconfig_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "envkc"))
    with pytest.raises(ClusterError, match=r"envkc \(from \$KUBECONFIG\) does not exist"):
        read_kubeconfig(None)


def test_kubeconfig_not_yaml_or_not_kubeconfig(tmp_path):
    p = tmp_path / "kc"
    p.write_text("clusters: [unclosed\n")
    with pytest.raises(ClusterError, match="not valid YAML"):
        connect(str(p), None)
    p.write_text("just: text\n")
    with pytest.raises(ClusterError, match="no clusters or contexts"):
        connect(str(p), None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_kubeconfig(tmp_path):
    p = tmp_path / "kc"
    p.write_text("x: 1\n")
    p.chmod(0)
    with pytest.raises(ClusterError, match="cannot be read"):
        connect(str(p), None)


def test_unknown_context(tmp_path):
    kc = _kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    with pytest.raises(ClusterError, match=r"context 'other' not found .*one of test"):
        connect(kc, "other")


def test_unreachable_server(tmp_path, capsys):
    port = _unused_loopback_port()
    kc = _kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}")
    with pytest.raises(ClusterError) as e:
        connect(kc, None, timeout=2)
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "connection refused" in msg and "cannot reach the API server" in msg
    assert "\n" not in msg
    rc = main(["run", "quick", "--target", "cluster", "--kubeconfig", kc])
    assert rc == 2 and "cannot reach the API server" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the cluster


def test_preflight_passes_and_lists_nodes_mode_changes(tmp_path):
    with FakeCluster() as fake:
        t, lines = _preflight(fake, tmp_path, yes=True)
        text = "\n".join(lines)
        assert "runs iptables" in text and "node-a=iptables" in text
        assert "6.8.0-45-generic" in text and "node-b" in text
        assert "kube-proxy --cleanup" in text  # quick runs iptables and ipvs
        assert "put config.conf back exactly as found" in text
        assert t.report.kube_proxy.image == "registry.k8s.io/kube-proxy:v1.34.2"
        assert t.plan(_scenario()) == {m: ["cluster"] for m in _scenario().modes}
        assert _mutations(fake) == []


def test_refuses_without_yes_and_changes_nothing(tmp_path):
    with FakeCluster() as fake:
        lines: list = []
        with pytest.raises(ClusterError) as e:
            _preflight(fake, tmp_path, yes=False, out=lines)
        assert "--yes" in str(e.value) and "nothing was changed" in str(e.value)
        assert any("edit ConfigMap kube-system/kube-proxy" in ln for ln in lines)  # printed what it would do
        assert _mutations(fake) == []


def test_refuses_without_yes_cli(tmp_path, capsys):
    with FakeCluster() as fake:
        kc = fake.kubeconfig(tmp_path / "kc.yaml")
        rc = main(
            [
                "run",
                "quick",
                "--target",
                "cluster",
                "--kubeconfig",
                kc,
                "--services",
                "10",
                "--out",
                str(tmp_path / "res"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith("kpbench: error: refusing to change the cluster without --yes")
        )
        assert _mutations(fake) == []
        assert not (tmp_path / "res").exists()  # no run folder either


def test_no_kube_proxy_configmap(tmp_path):
    with FakeCluster(with_configmap=False) as fake:
        with pytest.raises(ClusterError) as e:
            _preflight(fake, tmp_path)
        msg = str(e.value)
        assert msg.startswith("this cluster's kube-proxy is not configured the kubeadm way")
        assert (
            "ConfigMap kube-system/kube-proxy does not" in msg
            and "DaemonSet kube-system/kube-proxy exists" in msg
        )
        assert _mutations(fake) == []


def test_no_kube_proxy_at_all(tmp_path):
    with FakeCluster(with_configmap=False, with_daemonset=False) as fake:
        with pytest.raises(ClusterError, match="neither ConfigMap nor DaemonSet"):
            _preflight(fake, tmp_path)


def test_no_daemonset(tmp_path):
    with FakeCluster(with_daemonset=False) as fake:
        with pytest.raises(
            ClusterError, match="not configured the kubeadm way.*DaemonSet kube-system/kube-proxy does not"
        ):
            _preflight(fake, tmp_path)


def test_configmap_without_config_conf(tmp_path):
    with FakeCluster() as fake:
        cm = kubeadm_configmap()
        cm["data"] = {"kubeconfig.conf": "x"}
        fake.objects[CM] = cm
        with pytest.raises(ClusterError, match=r"has keys \['kubeconfig.conf'\] but no config.conf"):
            _preflight(fake, tmp_path)


def test_config_conf_not_kubeproxyconfiguration(tmp_path):
    with FakeCluster(config="kind: Something\n") as fake:
        with pytest.raises(ClusterError, match="not a KubeProxyConfiguration"):
            _preflight(fake, tmp_path)


def test_daemonset_not_using_the_configmap(tmp_path):
    with FakeCluster() as fake:
        c = fake.objects[DS]["spec"]["template"]["spec"]["containers"][0]
        c["command"] = ["/usr/local/bin/kube-proxy", "--proxy-mode=ipvs"]
        with pytest.raises(ClusterError, match="does not run kube-proxy with --config"):
            _preflight(fake, tmp_path)


def test_missing_permissions(tmp_path):
    deny = {("create", "jobs", ""), ("get", "nodes", "proxy"), ("create", "pods", "exec")}
    with FakeCluster(deny=deny) as fake:
        with pytest.raises(ClusterError) as e:
            _preflight(fake, tmp_path)
        msg = str(e.value)
        assert "lacks permissions" in msg
        assert "create jobs.batch in kpbench-preflight" in msg and "get nodes/proxy" in msg
        assert "create pods/exec" in msg and "nothing was changed" in msg
        assert _mutations(fake) == []


def test_nodes_disagree_with_configmap(tmp_path):
    with FakeCluster() as fake:
        cm = fake.objects[CM]
        cm["data"]["config.conf"] = cm["data"]["config.conf"].replace(
            'mode: ""', "mode: ipvs"
        )  # not rolled out
        with pytest.raises(
            ClusterError, match=r"another mode than its ConfigMap says \(ipvs\) on node-a=iptables"
        ):
            _preflight(fake, tmp_path)


def test_mode_from_configmap_when_node_proxy_unreachable(tmp_path):
    with FakeCluster(node_proxy=False) as fake:
        _, lines = _preflight(fake, tmp_path)
        assert any("not reachable through the node proxy" in ln for ln in lines)


def test_leftover_of_an_earlier_run(tmp_path):
    with FakeCluster() as fake:
        fake.objects[CM]["metadata"]["annotations"][ANN_MODIFIED] = "20261201T000000Z-abc"
        with pytest.raises(ClusterError, match="kpbench restore"):
            _preflight(fake, tmp_path)
        del fake.objects[CM]["metadata"]["annotations"][ANN_MODIFIED]
        fake.objects[DS]["spec"]["template"]["spec"]["nodeSelector"][PAUSE_KEY] = "true"
        with pytest.raises(ClusterError, match="paused by a kpbench run"):
            _preflight(fake, tmp_path)


def test_nftables_needs_kernel_5_13(tmp_path):
    from tests.support.fakeapi import node

    with FakeCluster(nodes=[node("old", kernel="4.19.0-26-amd64")]) as fake:
        with pytest.raises(ClusterError, match="nftables mode needs kernel >= 5.13.*old 4.19"):
            _preflight(fake, tmp_path, scenario=_scenario(modes=["iptables", "nftables"]))
