"""Program real kernels in fresh namespaces: every payload is accepted by its tool; 200 Services
per mode, read back, each change kind, cleanup leaves nothing.

iptables (legacy and nft backends) and nftables run on the host kernel. IPVS needs
/proc/net/ip_vs (the UML guest): skipped elsewhere with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess

import pytest

from harness import releases as versions
from harness.dataplane import make_dataplane, render
from harness.dataplane.base import Change, DataplaneSettings
from harness.lab import netns
from harness.model import Endpoint, ModelSpec, build_model
from harness.modes import MODES

pytestmark = pytest.mark.kernel
_seq = itertools.count()
NODE_IP = "10.255.0.1"
V134 = "v1.34.12"  # the nftables counts below are that release's (v1.36+: expected_nftables_v136)


@pytest.fixture
def ns():
    name = netns.ns_name(f"test-dp{os.getpid()}", str(next(_seq)))
    netns.delete(name)
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)
    assert name not in netns.list_namespaces()


def lab_routes(ns: str) -> None:
    """A device and a route to the pod CIDR (IPVS refuses unroutable real servers)."""
    r = lambda *a: netns.run(ns, list(a))  # noqa: E731
    r("ip", "link", "add", "kpb0", "type", "veth", "peer", "name", "kpb1")
    r("ip", "link", "set", "kpb0", "up")
    r("ip", "link", "set", "kpb1", "up")
    r("ip", "addr", "add", f"{NODE_IP}/24", "dev", "kpb0")
    r("ip", "route", "add", "10.244.0.0/16", "via", "10.255.0.2")


def model_200():
    m = build_model(ModelSpec(n_services=200, endpoints=2, node_ports=20, affinity=10))
    services = list(m.services)
    for i in range(0, 200, 50):  # 4 Services without endpoints
        services[i + 25] = services[i + 25].with_endpoints(())
    return m, services


def small():
    m = build_model(ModelSpec(n_services=3, endpoints=2, node_ports=2, affinity=1))
    s = list(m.services)
    s[1] = dataclasses.replace(s[1], external_ips=("192.0.2.10",))
    s[2] = s[2].with_endpoints(())
    return s


def changes(m, services):
    """(kind, change, services after): add a new Service, change endpoints, delete one."""
    new = m.service(200)
    after_add = services + [new]
    pods = m.pods
    upd = after_add[3].with_endpoints(tuple(Endpoint(p.ip, 80, p.node) for p in pods[:3]))
    after_upd = [upd if s.name == upd.name else s for s in after_add]
    gone = after_upd[10]  # has affinity
    after_del = [s for s in after_upd if s.name != gone.name]
    return [
        ("add", Change("add", new), after_add),
        ("update", Change("update", upd), after_upd),
        ("delete", Change("delete", gone), after_del),
    ]


# ------------------------------------------------------------------ the tools accept the payloads
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_iptables_payload_accepted(ns, backend):
    for services in (small(), model_200()[1]):
        text = render("iptables", services, DataplaneSettings(iptables_backend=backend, node_ips=(NODE_IP,)))
        netns.run(ns, [f"iptables-{backend}-restore", "--noflush", "--test"], input=text)


@pytest.mark.parametrize(
    "release", [versions.representative("nftables", f) for f in versions.families("nftables")]
)
def test_nftables_payload_accepted(ns, release):
    for services in (small(), model_200()[1]):
        for settings in (DataplaneSettings(node_ips=(NODE_IP,)), DataplaneSettings()):
            settings = dataclasses.replace(settings, kube_version=release)
            netns.run(ns, ["nft", "-c", "-f", "-"], input=render("nftables", services, settings))


def test_ipvs_iptables_and_ipset_parts_accepted(ns):
    text = render("ipvs", small(), DataplaneSettings(node_ips=(NODE_IP,)))
    ipsets = text.split("# ipset restore\n")[1].split("# iptables-legacy-restore --noflush\n")[0]
    ipt = text.split("# iptables-legacy-restore --noflush\n")[1]
    netns.run(ns, ["ipset", "-exist", "restore"], input=ipsets)
    netns.run(ns, ["iptables-legacy-restore", "--noflush", "--test"], input=ipt)


# ------------------------------------------------------------------ expected counts (independent of the renderer)
def expected_iptables(services, node_ips=1):
    rules = 4 + node_ips  # POSTROUTING x3, MARK-MASQ, nodeports rule(s) in KUBE-SERVICES
    chains = 4 + 1  # KUBE-SERVICES, -NODEPORTS, -POSTROUTING, -MARK-MASQ, canary
    svc_rules = node_ips
    rejects = 0
    for s in services:
        e = len(s.endpoints)
        if e == 0:
            rejects += 1 + (1 if s.ports[0].node_port else 0)
            continue
        rules += 3 * e + 2 + (e if s.affinity_timeout else 0) + (3 if s.ports[0].node_port else 0)
        chains += 1 + e + (1 if s.ports[0].node_port else 0)
        svc_rules += 1
    return {
        "nat_kube_rules": rules,
        "nat_chains": chains,
        "nat_kube_services_rules": svc_rules,
        "filter_kube_rules": 3 + rejects,
        "filter_kube_services_rules": sum(not s.endpoints for s in services),
    }


def expected_nftables(services):
    c = {
        "chains": 16,
        "rules": 23,
        "cluster_ips": 0,
        "service_ips": 0,
        "service_nodeports": 0,
        "no_endpoint_services": 0,
        "no_endpoint_nodeports": 0,
    }
    for s in services:
        e = len(s.endpoints)
        c["cluster_ips"] += 1
        np_ = bool(s.ports[0].node_port)
        if e == 0:
            c["no_endpoint_services"] += 1
            c["no_endpoint_nodeports"] += np_
            continue
        c["chains"] += 1 + e + np_
        c["rules"] += 2 + 2 * e + (2 * e if s.affinity_timeout else 0) + 2 * np_
        c["service_ips"] += 1
        c["service_nodeports"] += np_
    return c


def expected_nftables_v136(services, single_dnat: bool):
    """v1.36+ (single_dnat: v1.37): no mark-for-masquerade chain, one masquerade rule in
    `services`, endpoint chains only with affinity, a shared hairpin-connections set."""
    c = {
        "chains": 15,
        "rules": 22,
        "cluster_ips": 0,
        "service_ips": 0,
        "service_nodeports": 0,
        "no_endpoint_services": 0,
        "no_endpoint_nodeports": 0,
        "hairpin_connections": 0,
    }
    hairpin = set()
    for s in services:
        e = len(s.endpoints)
        c["cluster_ips"] += 1
        np_ = bool(s.ports[0].node_port)
        if e == 0:
            c["no_endpoint_services"] += 1
            c["no_endpoint_nodeports"] += np_
            continue
        aff = s.affinity_timeout is not None
        c["chains"] += 1 + (e if aff else 0) + np_
        c["rules"] += 1 + (3 * e if aff else 0) + 2 * np_
        c["service_ips"] += 1
        c["service_nodeports"] += np_
        hairpin.update((x.ip, x.port) for x in s.endpoints)
    c["hairpin_connections"] = len(hairpin)
    return c


@pytest.mark.parametrize("release", ["v1.36.3", "v1.37.2"])
def test_nftables_v136_program_apply_cleanup(ns, release):
    m, services = model_200()
    one = [s.with_endpoints(s.endpoints[:1]) for s in services[:20]]  # v1.37's plain dnat
    services = one + list(services[20:])
    dp = make_dataplane("nftables", ns, DataplaneSettings(node_ips=(NODE_IP,), kube_version=release))
    single = release == "v1.37.2"
    dp.full_sync(services)
    exp = expected_nftables_v136(services, single)
    assert subset(dp.counts(), exp) == exp
    plain = one[15]  # one endpoint, no affinity
    chain = next(c for c in dp.objects(plain).chains if c.startswith("service-"))
    listing = netns.run(ns, ["nft", "list", "chain", "ip", "kube-proxy", chain]).stdout
    assert ("numgen" not in listing) == single and "dnat" in listing
    for kind, change, after in changes(m, services):
        dp.apply(after, change)
        exp = expected_nftables_v136(after, single)
        assert subset(dp.counts(), exp) == exp, kind
    dp.cleanup()
    assert dp.counts()["table"] == 0


def expected_ipvs(services, node_ips=1):
    vs = rs = members = 0
    for s in services:
        e = len(s.endpoints)
        k = 1 + (node_ips if s.ports[0].node_port else 0)
        vs += k
        rs += k * e
        members += 1 + 1 + bool(s.ports[0].node_port)  # CLUSTER-IP, IPVS-IPS, NODE-PORT-TCP
    loop = {(e.ip, e.port) for s in services for e in s.endpoints}
    return {
        "virtual_servers": vs,
        "real_servers": rs,
        "addresses": len(services),
        "ipset_members": members + len(loop),
    }


def subset(counts, expected):
    return {k: counts[k] for k in expected}


# ------------------------------------------------------------------ 200 Services, each change, cleanup
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_iptables_program_apply_cleanup(ns, backend):
    m, services = model_200()
    dp = make_dataplane("iptables", ns, DataplaneSettings(iptables_backend=backend, node_ips=(NODE_IP,)))
    dp.full_sync(services)
    assert subset(dp.counts(), expected_iptables(services)) == expected_iptables(services)
    dp.full_sync(services)  # idempotent: a second full sync replaces, never duplicates
    assert subset(dp.counts(), expected_iptables(services)) == expected_iptables(services)
    for kind, change, after in changes(m, services):
        dp.apply(after, change)
        assert subset(dp.counts(), expected_iptables(after)) == expected_iptables(after), kind
    # a fresh object (no memory of the last sync) finds the old chains in the kernel
    fresh = make_dataplane("iptables", ns, DataplaneSettings(iptables_backend=backend, node_ips=(NODE_IP,)))
    last = changes(m, services)[-1][2]
    shrunk = last[5].with_endpoints(last[5].endpoints[:1])
    last = [shrunk if s.name == shrunk.name else s for s in last]
    fresh.apply(last, Change("update", shrunk))
    assert subset(fresh.counts(), expected_iptables(last)) == expected_iptables(last)
    dp.cleanup()
    assert all(v == 0 for v in dp.counts().values()), dp.counts()
    save = netns.run(ns, [f"iptables-{backend}-save"]).stdout
    assert "KUBE-" not in save


def test_nftables_program_apply_cleanup(ns):
    m, services = model_200()
    dp = make_dataplane("nftables", ns, DataplaneSettings(node_ips=(NODE_IP,), kube_version=V134))
    dp.full_sync(services)
    exp = expected_nftables(services)
    assert subset(dp.counts(), exp) == exp
    dp.full_sync(services)
    assert subset(dp.counts(), exp) == exp
    for kind, change, after in changes(m, services):
        dp.apply(after, change)
        exp = expected_nftables(after)
        assert subset(dp.counts(), exp) == exp, kind
    dp.cleanup()
    assert dp.counts()["table"] == 0
    assert "kube-proxy" not in netns.run(ns, ["nft", "list", "tables"]).stdout


@pytest.mark.skipif(
    not os.path.exists("/proc/net/ip_vs"),
    reason="this kernel has no IPVS (/proc/net/ip_vs missing: the host 6.18 kernel is built "
    "without CONFIG_IP_VS); runs inside the UML guest",
)
def test_ipvs_program_apply_cleanup(ns):
    lab_routes(ns)
    m, services = model_200()
    dp = make_dataplane("ipvs", ns, DataplaneSettings(node_ips=(NODE_IP,)))
    try:
        dp.full_sync(services)
        exp = expected_ipvs(services)
        assert subset(dp.counts(), exp) == exp
        ipvsadm = netns.run(ns, ["ipvsadm", "-Ln"]).stdout
        assert "persistent 10800" in ipvsadm and "Masq    1" in ipvsadm
        link = netns.run(ns, ["ip", "-d", "link", "show", "kube-ipvs0"]).stdout
        assert "NOARP" in link and "state DOWN" in link and "dummy" in link
        for kind, change, after in changes(m, services):
            dp.apply(after, change)
            exp = expected_ipvs(after)
            assert subset(dp.counts(), exp) == exp, kind
        assert netns.run(ns, ["sysctl", "-n", "net.ipv4.vs.conntrack"]).stdout.strip() == "1"
        dp.cleanup()
        assert all(v == 0 for v in dp.counts().values()), dp.counts()
        assert (
            subprocess.run(
                netns.exec_prefix(ns) + ["ip", "link", "show", "kube-ipvs0"], capture_output=True
            ).returncode
            != 0
        )
    finally:
        dp.close()


def _mode_runs_here(mode: str) -> str | None:
    if mode == "ipvs" and not os.path.exists("/proc/net/ip_vs"):
        return "this kernel has no IPVS; runs inside the UML guest (test_ipvs_in_guest.py)"
    return None


@pytest.mark.parametrize("mode", MODES)
def test_200_services_answer_through_the_lab(mode):
    """200 Services programmed on both lab nodes: counts read back, ClusterIPs answered by their
    endpoints from the client pod, and nothing left after cleanup."""
    why = _mode_runs_here(mode)
    if why:
        pytest.skip(why)
    from harness.lab.backends import expected_body
    from harness.lab.topology import Lab
    from harness.measure.agent import Agent

    model = build_model(ModelSpec(n_services=200, endpoints=2))
    with Lab(model, tag=f"t{os.getpid() % 10000}{mode[:2]}") as lab:
        dps = {
            n: make_dataplane(mode, lab.node_ns(n), DataplaneSettings(node_ips=(lab.node_ip(n),)))
            for n in model.spec.nodes
        }
        for dp in dps.values():
            dp.full_sync(model.services)
        counts = dps["a"].counts()
        if mode == "ipvs":
            # counts() reads the netlink dump (/proc/net/ip_vs loses entries when another
            # namespace holds virtual servers too, on 6.1); every one is also looked up by address
            assert counts.get("addresses") == 200, counts
            assert counts.get("virtual_servers") == 200 and counts.get("real_servers") == 400, counts
            missing = [
                s.name
                for s in model.services
                if netns.run(
                    lab.node_ns("a"),
                    ["ipvsadm", "-Ln", "-t", f"{s.cluster_ip}:{s.ports[0].port}"],
                    check=False,
                ).returncode
                != 0
            ]
            assert not missing, missing
        else:
            installed = {
                "iptables": counts.get("nat_kube_services_rules"),
                "nftables": counts.get("service_ips"),
            }[mode]
            assert installed is not None and installed >= 200, counts
        pods = {p.ip: p for p in model.pods}
        with Agent(lab.client_ns) as agent:
            for svc in (model.services[0], model.services[77], model.services[199]):
                res = agent.http_get(svc.cluster_ip, svc.ports[0].port)
                body = res.get("body", "")
                allowed = {expected_body(pods[e.ip], e.ip, e.port) for e in svc.endpoints}
                assert body in allowed, (svc.name, res, allowed)
        for dp in dps.values():
            dp.cleanup()
        after = dps["a"].counts()
        left = {
            "iptables": after.get("nat_kube_services_rules"),
            "ipvs": after.get("addresses"),
            "nftables": after.get("service_ips"),
        }[mode]
        assert not left, after
        if mode == "ipvs":
            assert netns.run(lab.node_ns("a"), ["ipvsadm", "-Ln"]).stdout.count("TCP") == 0


def _read_back_cases() -> list[tuple[str, str]]:
    """Every registered mode with the legacy backend, and with nft where its read-back names the backend."""
    from harness.modes import mode as mode_spec

    return [
        (m, b)
        for m in MODES
        for b in ("legacy", "nft")
        if b == "legacy" or "{backend}" in " ".join(mode_spec(m).read_back.service_ips)
    ]


@pytest.mark.parametrize("mode, backend", _read_back_cases())
def test_registry_read_back_finds_every_programmed_service(ns, mode, backend):
    """The registry's read-back (what the local target polls kube-proxy's state with) lists the
    ClusterIPs the lab dataplane, kube-proxy's twin, programmed, and none before; the dump covers them."""
    why = _mode_runs_here(mode)
    if why:
        pytest.skip(why)
    from harness.modes import mode as mode_spec

    rb = mode_spec(mode).read_back
    lab_routes(ns)
    _, services = model_200()
    dp = make_dataplane(mode, ns, DataplaneSettings(node_ips=(NODE_IP,), iptables_backend=backend), node="a")
    try:
        assert (
            set(rb.ip_pattern.findall(netns.run(ns, rb.service_ips_argv(backend), check=False).stdout))
            == set()
        )
        dp.full_sync(services)
        found = set(rb.ip_pattern.findall(netns.run(ns, rb.service_ips_argv(backend), check=False).stdout))
        ips = {s.cluster_ip for s in services}
        assert ips <= found and found - ips <= {NODE_IP}  # (iptables: the NodePort jump to the node's IP)
        dump = "\n".join(netns.run(ns, argv, check=False).stdout for argv in rb.dump_argvs(backend))
        assert all(s.cluster_ip in dump for s in services)
        dp.cleanup()
    finally:
        getattr(dp, "close", lambda: None)()


def test_a_restore_streamed_for_longer_than_five_seconds_is_applied(ns):
    """iptables-restore's lock wait must not cut a slow stream: with `-w 5` iptables 1.8.9 leaves
    an alarm(5) running, and its SIGALRM ends the read of a stdin still open ("COMMIT expected")."""
    import time

    from harness.dataplane.iptables import IptablesDataplane

    dp = IptablesDataplane(ns, DataplaneSettings(iptables_backend="legacy"))

    def slow():
        yield "*filter\n"
        time.sleep(6)  # a renderer still producing (a large table in the UML guest)
        yield ":KUBE-SLOW - [0:0]\nCOMMIT\n"

    dp.restore(slow())
    assert ":KUBE-SLOW " in dp.save("filter")
