"""The test cluster's pure parts: plan, rendered configs, kubeadm's kube-proxy objects, state file."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.testcluster import addons, node as nodemod, sysctls
from harness.testcluster.plan import CLUSTER_CIDR, INSTANCE_ENV, Names, current_instance, make_plan
from harness.testcluster.state import ClusterState, StateFile, load


def test_plan_addresses_do_not_overlap(tmp_path):
    plan = make_plan(3, "v1.37.2", tmp_path, instance=0)
    assert [n.name for n in plan.nodes] == ["kpbtc-node1", "kpbtc-node2", "kpbtc-node3"]
    underlay = ipaddress.ip_network(plan.underlay_cidr)
    ips = {plan.api_addr, plan.host_addr, *(n.ip for n in plan.nodes)}
    assert len(ips) == 5 and all(ipaddress.ip_address(i) in underlay for i in ips)
    cidrs = [ipaddress.ip_network(n.pod_cidr) for n in plan.nodes]
    assert all(c.subnet_of(ipaddress.ip_network(CLUSTER_CIDR)) for c in cidrs)
    assert len({str(c) for c in cidrs}) == 3
    assert not underlay.overlaps(ipaddress.ip_network(plan.service_cidr))
    assert not underlay.overlaps(ipaddress.ip_network(CLUSTER_CIDR))
    assert plan.nodes[0].pod_gateway == str(cidrs[0].network_address + 1)
    assert len({n.dir for n in plan.nodes}) == 3 and all(n.dir.is_relative_to(tmp_path) for n in plan.nodes)
    # interface names: at most 15 characters
    assert all(len(n) <= 15 for n in (plan.names.host_link, plan.names.host_peer, Names(9).host_link))


def test_instances_share_no_name(tmp_path, monkeypatch):
    a, b = Names(0), Names(7)
    assert not b.api_netns.startswith(a.prefix) and not a.api_netns.startswith(b.prefix)
    for attr in (
        "api_netns",
        "host_link",
        "host_peer",
        "underlay_cidr",
        "host_addr",
        "cgroup_parent",
        "socket_dir",
    ):
        assert getattr(a, attr) != getattr(b, attr), attr
    assert not ipaddress.ip_network(a.underlay_cidr).overlaps(ipaddress.ip_network(b.underlay_cidr))
    monkeypatch.setenv(INSTANCE_ENV, "7")
    plan = make_plan(2, "v1.37.2", tmp_path)
    assert plan.names == b and plan.nodes[0].name == "kpbtc7-node1" and plan.nodes[0].ip == "10.253.7.11"
    assert plan.nodes[0].cgroup_root == "/kpbench-testcluster7/kpbtc7-node1"
    monkeypatch.setenv(INSTANCE_ENV, "10")
    with pytest.raises(ValueError, match=INSTANCE_ENV):
        current_instance()


@pytest.mark.parametrize("count", [0, 21])
def test_plan_refuses_node_counts(count, tmp_path):
    with pytest.raises(ValueError, match="1 to 20"):
        make_plan(count, "v1.37.2", tmp_path)


def test_containerd_config_is_per_node_toml(tmp_path):
    plan = make_plan(2, "v1.37.2", tmp_path)
    docs = [
        tomllib.loads(
            nodemod.render_containerd_config(
                n,
                pause_image="registry.k8s.io/pause:3.10.2",
                runc=Path("/usr/sbin/runc"),
                cni_bin_dir=Path("/usr/lib/cni"),
            )
        )
        for n in plan.nodes
    ]
    a, b = docs
    assert a["version"] == 3
    for key in ("root", "state"):
        assert a[key] != b[key] and a[key].startswith(str(plan.nodes[0].dir))
    assert a["grpc"]["address"] == str(plan.nodes[0].containerd_socket) != b["grpc"]["address"]
    assert len(a["ttrpc"]["address"]) < 100  # a unix socket path has at most 107 bytes
    rt = a["plugins"]["io.containerd.cri.v1.runtime"]
    assert rt["restrict_oom_score_adj"] is True and rt["netns_mounts_under_state_dir"] is True
    runc = rt["containerd"]["runtimes"]["runc"]["options"]
    assert (
        runc["SystemdCgroup"] is False
        and runc["Root"]
        != b["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"]["Root"]
    )
    assert (
        a["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
        == "registry.k8s.io/pause:3.10.2"
    )
    assert a["plugins"]["io.containerd.nri.v1.nri"]["disable"] is True


def test_kubelet_and_cni_config(tmp_path):
    plan = make_plan(2, "v1.37.2", tmp_path)
    n = plan.nodes[1]
    k = nodemod.render_kubelet_config(n, ca_file=tmp_path / "ca.crt")
    assert k["cgroupDriver"] == "cgroupfs" and k["failCgroupV1"] is False
    assert k["cgroupRoot"] == f"/kpbench-testcluster/{n.name}"
    assert k["containerRuntimeEndpoint"] == f"unix://{n.containerd_socket}"
    assert k["authentication"]["anonymous"]["enabled"] is False and k["authorization"]["mode"] == "Webhook"
    assert k["podLogsDir"].startswith(str(n.short_dir)) and k["address"] == n.ip
    # kubelet's sockets under its root dir: at most 107 bytes, however deep the state directory
    assert len(str(n.short_dir / "kubelet" / "pod-resources" / "4003767407")) < 100
    cni = nodemod.render_cni_config(n)
    ipam = cni["plugins"][0]["ipam"]
    assert ipam["ranges"][0][0] == {"subnet": n.pod_cidr, "gateway": n.pod_gateway}
    assert ipam["dataDir"].startswith(str(n.dir))


def test_holder_binds_every_shared_host_path(tmp_path):
    n = make_plan(1, "v1.37.2", tmp_path).nodes[0]
    script = nodemod.holder_script(n)
    for host, sub in nodemod.HOST_DIRS.items():
        assert f"mount --bind {n.dir / sub} {host}" in script
    assert f"mount --bind {n.dir} {n.short_dir}" in script
    assert script.startswith(f"mount -t tmpfs -o mode=0700 kpbtc-images {nodemod.containerd_root(n)} && ")
    assert script.endswith("exec sleep infinity")


def test_cgroup_mounts_are_the_v1_hierarchies():
    info = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert nodemod.cgroup_mounts(info) == [Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/systemd")]
    assert nodemod.cgroup_mounts(info, v2=True)[-1] == Path("/sys/fs/cgroup/unified")


def _zip_present(version: str) -> bool:
    return addons.module_zip(version).is_file()


@pytest.mark.skipif(
    not _zip_present("v1.37.2"),
    reason="the k8s.io/kubernetes v1.37.2 module zip is not downloaded (make kube)",
)
def test_kube_proxy_objects_are_kubeadms():
    objs = addons.render(
        "v1.37.2",
        server="https://10.253.0.1:6443",
        image="registry.k8s.io/kube-proxy:v1.37.2",
        cluster_cidr=CLUSTER_CIDR,
    )
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ServiceAccount", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "DaemonSet"]
    cm, ds = objs[-2], objs[-1]
    assert (cm["metadata"]["namespace"], cm["metadata"]["name"]) == ("kube-system", "kube-proxy")
    conf = yaml.safe_load(cm["data"]["config.conf"])
    assert conf["kind"] == "KubeProxyConfiguration" and conf["mode"] == ""
    assert conf["conntrack"]["maxPerCore"] == 0 and conf["oomScoreAdj"] == 0
    assert conf["clusterCIDR"] == CLUSTER_CIDR
    assert "server: https://10.253.0.1:6443" in cm["data"]["kubeconfig.conf"]
    c = ds["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.k8s.io/kube-proxy:v1.37.2" and c["imagePullPolicy"] == "IfNotPresent"
    assert "--config=/var/lib/kube-proxy/config.conf" in c["command"]
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    assert {v["name"]: v.get("hostPath", {}).get("path") for v in ds["spec"]["template"]["spec"]["volumes"]}[
        "lib-modules"
    ] == "/lib/modules"
    assert all(addons.collection_path(o).startswith("/ap") for o in objs)


def test_template_fill_refuses_unknown_fields():
    assert addons.fill("a: {{ .X }}\nb: {{ .Y}}", {"X": "1", "Y": "2"}) == "a: 1\nb: 2"
    with pytest.raises(UserError, match=r"\.Z"):
        addons.fill("{{ .Z }}", {})


def test_state_round_trip(tmp_path):
    sf = StateFile(
        tmp_path / "state.json", ClusterState(kube_version="v1.37.2", sysctls={"kernel.panic": "1"})
    )
    sf.add("namespaces", "kpbtc-api")
    sf.add("namespaces", "kpbtc-api")
    sf.add_proc("etcd", 1)
    back = load(tmp_path / "state.json")
    assert back is not None
    assert back.state.namespaces == ["kpbtc-api"] and back.state.procs[0].pid == 1
    assert back.state.procs[0].start is not None
    assert load(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(UserError, match="version"):
        load(tmp_path / "bad.json")


def test_sysctls_restore_writes_back_what_changed(tmp_path, monkeypatch):
    files = {"kernel.panic": "10", "vm.overcommit_memory": "0"}
    for k, v in files.items():
        (tmp_path / k).write_text(v + "\n")
    monkeypatch.setattr(sysctls, "_path", lambda key: tmp_path / key)
    assert sysctls.read(["kernel.panic", "vm.overcommit_memory", "no.such"]) == {
        "kernel.panic": "10",
        "vm.overcommit_memory": "0",
    }
    changed = sysctls.restore({"kernel.panic": "1", "vm.overcommit_memory": "0"})
    assert changed == ["kernel.panic: 10 -> 1"]
    assert (tmp_path / "kernel.panic").read_text() == "1"
