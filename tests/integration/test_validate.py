"""The functional validation matrix (harness.validate, issue 8) against the real two-node lab.

Host kernel: iptables and nftables modes must pass every cell; deliberately broken dataplanes
(one Service deleted on both nodes, one Service chain flushed on the entry node only, the hairpin
masquerade rule removed) must make exactly the cells that depend on what was broken fail, and
nothing else. IPVS: the same matrix through the validate-only worker inside the UML guest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from harness import validate as V
from harness.dataplane import names
from harness.dataplane.base import Change, DataplaneSettings
from harness.lab import netns
from harness.model import ModelSpec, Service, build_model

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not shutil.which("nginx"), reason="needs nginx (make setup)"),
]

HOST_MODES = ("iptables", "nftables")


def _dataplane(mode: str, ns: str, settings: DataplaneSettings):
    """make_dataplane when harness.dataplane provides it, else the mode's class directly."""
    try:
        from harness.dataplane import make_dataplane
    except ImportError:
        make_dataplane = None
    if make_dataplane is not None:
        return make_dataplane(mode, ns, settings)
    if mode == "iptables":
        from harness.dataplane.iptables import IptablesDataplane

        return IptablesDataplane(ns, settings)
    if mode == "nftables":
        from harness.dataplane.nftables import NftablesDataplane

        return NftablesDataplane(ns, settings)
    raise LookupError(mode)


@pytest.fixture(scope="module")
def lab():
    from harness.lab.topology import Lab
    from harness.measure.agent import Agent

    model = build_model(ModelSpec(n_services=0, endpoints=1))
    lab = Lab(model, tag="vtest").up()
    agent = None
    try:
        agent = Agent(lab.client_ns)
        settings = DataplaneSettings(node_ips=tuple(lab.node_ip(n) for n in model.spec.nodes))
        yield lab, agent, model, settings
    finally:
        if agent is not None:
            agent.close()
        lab.down()
    assert not netns.list_namespaces("kpb-vtest-"), "lab namespaces left behind"


class Broken:
    """A mode's dataplane that, after every full sync, breaks something with `breaker(dp, services)`."""

    def __init__(self, dp, breaker=None):
        self.dp, self.breaker, self.mode = dp, breaker, dp.mode

    def full_sync(self, services: Sequence[Service]) -> None:
        self.dp.full_sync(services)
        if self.breaker is not None:
            self.breaker(self.dp, list(services))

    def __getattr__(self, name):
        return getattr(self.dp, name)


def _run(lab_fixture, mode: str, breakers: dict[str, Any] | None = None) -> dict:
    lab, agent, model, settings = lab_fixture
    # each node serves NodePorts on its own address only, as kube-proxy does
    dps = {
        n: Broken(
            _dataplane(mode, lab.node_ns(n), replace(settings, node_ips=(lab.node_ip(n),))),
            (breakers or {}).get(n),
        )
        for n in model.spec.nodes
    }
    try:
        return V.validate_mode(lab, agent, dps, model, settings)
    finally:
        for d in dps.values():
            d.cleanup()


_baseline: dict[str, dict] = {}


def baseline(lab_fixture, mode: str) -> dict:
    if mode not in _baseline:
        _baseline[mode] = _run(lab_fixture, mode)
    return _baseline[mode]


def _failed(res: dict) -> set[str]:
    return {c["path"] for c in res["cells"] if not c["passed"]}


def _explain(res: dict) -> str:
    return "\n".join(
        f"  {c['path']}: {c['from']} -> {c['to']}: {c['note'] or c['observed_backend']}"
        for c in res["cells"]
        if not c["passed"]
    )


def _assert_exactly(lab_fixture, mode: str, res: dict, expected: set[str], base: dict | None = None) -> None:
    """`res` fails exactly `expected` beyond what the unbroken baseline fails; the expected cells
    must pass in the baseline, or the breakage would prove nothing."""
    base = base if base is not None else baseline(lab_fixture, mode)
    vacuous = expected & _failed(base)
    assert not vacuous, (
        f"{mode}: cells already failing without the breakage: {sorted(vacuous)}\n{_explain(base)}"
    )
    assert _failed(res) == _failed(base) | expected, (
        f"{mode}: expected exactly {sorted(expected)} to fail (beyond the baseline's "
        f"{sorted(_failed(base))}), got:\n{_explain(res)}"
    )
    assert res["passed"] is False and set(res["failed_cells"]) == _failed(res)


def _services(lab_fixture) -> dict[str, Service]:
    lab, _, model, _ = lab_fixture
    return V.validation_services(model, lab.client_ip)


def _cells_of(res: dict, key: str) -> set[str]:
    return {c["path"] for c in res["cells"] if c.get("service") == key}


# ------------------------------------------------------------------------------------ matrix


@pytest.mark.parametrize("mode", HOST_MODES)
def test_matrix_passes(lab, mode):
    res = baseline(lab, mode)
    assert res["mode"] == mode
    groups = {c["group"] for c in res["cells"]}
    assert groups == {1, 2, 3, 4, 5, 6}, groups
    assert len(res["cells"]) >= 20
    assert res["passed"], f"{mode}: failing cells:\n{_explain(res)}"
    assert res["failed_cells"] == []
    # kube-proxy rejects (iptables REJECT / nftables reject-chain) a Service without endpoints
    assert res["no_endpoints_behaviour"] == "reject"
    by = {c["path"]: c for c in res["cells"]}
    assert (
        by["pod->svc->same pod (hairpin)"]["observed_backend"]
        == f"client {lab[0].client_ip}:{V.HAIRPIN_PORT}"
    )
    assert by["pod->svc->pod cross node"]["observed_backend"].split()[0].startswith("b")
    assert by["pod->svc->pod same node"]["observed_backend"].split()[0].startswith("a")
    for c in res["cells"]:
        assert c["latency_ms"] is not None and c["latency_ms"] >= 0
    json.dumps(res)  # goes into metadata.json as is


@pytest.mark.parametrize("release", [r for r in ("v1.33.13", "v1.34.12", "v1.36.3")])
def test_nftables_matrix_passes_for_every_release_family(lab, release):
    """The default release is test_matrix_passes'; each older nftables family carries the traffic too."""
    lab_, agent, model, settings = lab
    res = _run((lab_, agent, model, replace(settings, kube_version=release)), "nftables")
    assert res["passed"], f"nftables {release}: failing cells:\n{_explain(res)}"
    assert res["no_endpoints_behaviour"] == "reject"


def test_format_table_names_every_path_and_mode(lab):
    results = {m: baseline(lab, m) for m in HOST_MODES}
    text = V.format_table({**results, "ipvs": None})
    for m in (*HOST_MODES, "ipvs"):
        assert m in text
    for c in results["iptables"]["cells"]:
        assert c["path"] in text
    assert "not run" in text


# ------------------------------------------------------------------------------------ broken dataplanes


@pytest.mark.parametrize("mode", HOST_MODES)
def test_deleted_service_fails_exactly_its_cells(lab, mode):
    """apply(delete) of the same-node Service on both nodes: its 3 cells fail, nothing else."""
    victim = _services(lab)[V.SAME]

    def delete(dp, services):
        rest = [s for s in services if s.name != victim.name]
        dp.apply(rest, Change("delete", next(s for s in services if s.name == victim.name)))

    res = _run(lab, mode, {"a": delete, "b": delete})
    expected = _cells_of(res, V.SAME)
    assert expected == {
        "pod->svc->pod same node",
        "node->svc->pod same node (a)",
        "node->svc->pod cross node (b)",
    }
    _assert_exactly(lab, mode, res, expected)


@pytest.mark.parametrize("mode", HOST_MODES)
def test_flushed_service_chain_on_the_entry_node_fails_its_cells(lab, mode):
    """The cross-node Service's dispatch chain flushed on node a only: the paths entering through
    node a fail; node b (same Service, its own rules intact) still works."""
    svc = _services(lab)[V.CROSS]
    port = svc.ports[0]

    def flush(dp, services):
        if mode == "iptables":
            chain = names.svc_chain(svc.port_string(port), port.protocol)
            netns.run(
                dp.ns, [f"iptables-{dp.settings.iptables_backend}", "-w", "5", "-t", "nat", "-F", chain]
            )
        else:
            chain = names.nft_service_chain(svc.namespace, svc.name, port.protocol, port.name)
            netns.run(dp.ns, ["nft", f"flush chain ip kube-proxy {chain}"])

    res = _run(lab, mode, {"a": flush})
    _assert_exactly(lab, mode, res, {"pod->svc->pod cross node", "node->svc->pod cross node (a)"})


def _drop_hairpin_masquerade(mode: str, svc: Service):
    ep = svc.endpoints[0]

    def breaker(dp, services):
        if mode == "iptables":
            save = netns.run(dp.ns, [f"iptables-{dp.settings.iptables_backend}-save", "-t", "nat"]).stdout
            sep = names.sep_chain(svc.port_string(svc.ports[0]), "tcp", ep.addr)
            rules = [
                ln
                for ln in save.splitlines()
                if ln.startswith(f"-A {sep} ") and f"-s {ep.ip}/32" in ln and "KUBE-MARK-MASQ" in ln
            ]
            assert len(rules) == 1, f"no hairpin masquerade rule in {sep}:\n{save}"
            netns.run(
                dp.ns,
                [
                    f"iptables-{dp.settings.iptables_backend}",
                    "-w",
                    "5",
                    "-t",
                    "nat",
                    "-D",
                    *_split(rules[0][3:]),
                ],
            )
        elif getattr(dp, "shared_masq", False):  # nftables v1.36+: the hairpin-connections element
            key = f"{ep.ip} . {ep.ip} . tcp . {ep.port}"
            netns.run(dp.ns, ["nft", f"delete element ip kube-proxy hairpin-connections {{ {key} }}"])
        else:
            p = svc.ports[0]
            chain = names.nft_endpoint_chain(svc.namespace, svc.name, p.protocol, p.name, ep.ip, ep.port)
            out = netns.run(dp.ns, ["nft", "-a", "list", "chain", "ip", "kube-proxy", chain]).stdout
            handles = re.findall(rf"ip saddr {re.escape(ep.ip)} .*mark-for-masquerade.* # handle (\d+)", out)
            assert len(handles) == 1, f"no hairpin masquerade rule in {chain}:\n{out}"
            netns.run(dp.ns, ["nft", f"delete rule ip kube-proxy {chain} handle {handles[0]}"])

    return breaker


def _split(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


@pytest.mark.parametrize("mode", HOST_MODES)
def test_hairpin_cell_needs_the_hairpin_masquerade(lab, mode):
    """Without the endpoint chain's "source is the endpoint itself -> masquerade" rule, only the
    hairpin cell fails (the reply would come from the pod's own address)."""
    res = _run(lab, mode, {"a": _drop_hairpin_masquerade(mode, _services(lab)[V.HAIRPIN])})
    _assert_exactly(lab, mode, res, {"pod->svc->same pod (hairpin)"})


def test_hairpin_cell_needs_the_endpoint_chain_masquerade_before_v136(lab):
    """nftables before v1.36 masquerades hairpin traffic in each endpoint chain (v1.36+: a set)."""
    lab_, agent, model, settings = lab
    fx = (lab_, agent, model, replace(settings, kube_version="v1.34.12"))
    res = _run(fx, "nftables", {"a": _drop_hairpin_masquerade("nftables", _services(lab)[V.HAIRPIN])})
    _assert_exactly(fx, "nftables", res, {"pod->svc->same pod (hairpin)"}, base=_run(fx, "nftables"))


@pytest.mark.parametrize("mode", HOST_MODES)
def test_affinity_removed_fails_only_the_affinity_cell(lab, mode):
    """The affinity Service programmed without sessionAffinity: 50 requests spread, the cell fails."""
    aff = _services(lab)[V.AFFINITY]

    def drop_affinity(dp, services):
        plain = replace(aff, affinity_timeout=None)
        dp.apply([plain if s.name == aff.name else s for s in services], Change("update", plain))

    res = _run(lab, mode, {"a": drop_affinity})
    _assert_exactly(lab, mode, res, {c["path"] for c in res["cells"] if c.get("service") == V.AFFINITY})


@pytest.mark.parametrize("mode", HOST_MODES)
def test_nodeport_deleted_on_one_node_fails_only_that_nodes_cells(lab, mode):
    """The NodePort Service deleted on node b only: the NodePort on node b's address fails, node a's
    still works. (Each node must serve NodePorts on its own addresses only, as kube-proxy does;
    with DataplaneSettings.node_ips listing every node, node a would answer for node b.)"""
    victim = _services(lab)[V.NODEPORT]

    def delete(dp, services):
        dp.apply([s for s in services if s.name != victim.name], Change("delete", victim))

    res = _run(lab, mode, {"b": delete})
    _assert_exactly(lab, mode, res, {"pod->nodeport node b", "node a->nodeport node b"})


# ------------------------------------------------------------------------------------ worker path


def _host_scenario(modes):
    from harness.scenario import load_scenario

    return load_scenario("quick", [(["modes"], list(modes)), (["kernel"], "host")])


def test_validate_only_worker_on_the_host(tmp_path):
    """`kpbench validate`'s mechanism: a validate-only worker job builds its own lab and reports."""
    import harness.pointloop.worker  # noqa: F401  (the worker a validate-only job runs)
    from harness.commands import validate_cmd

    events: list[dict] = []
    res = validate_cmd.validate_on_kernel(
        _host_scenario(["iptables"]), "host", ["iptables"], tmp_path, on_event=events.append
    )
    assert len(res) == 1, {k: (v.get("error"), v.get("failed_cells")) for k, v in res.items()}
    ((key, r),) = res.items()
    assert key.endswith("/iptables") and key.startswith("host-")
    assert r["cells"], r.get("error")
    assert r["passed"], _explain(r)
    assert json.loads((tmp_path / "validation-host.json").read_text())[key]["passed"] is True
    assert any(e.get("event") == "validation" for e in events)
    tag = json.loads((tmp_path / ".jobs" / "validate-host.json").read_text())["tag"]
    assert not netns.list_namespaces(f"kpb-{tag}-"), "the worker left namespaces behind"


# ------------------------------------------------------------------------------------ IPVS in UML

# Runs inside the guest: the matrix unbroken, with one Service deleted on both nodes, and with the
# hairpin's KUBE-LOOP-BACK member removed on node a. One guest boot for all three.
GUEST_SCRIPT = r"""
import json
from dataclasses import replace
from harness import validate as V
from harness.dataplane.base import Change, DataplaneSettings
from harness.lab import netns
from harness.lab.topology import Lab
from harness.measure.agent import Agent
from harness.model import ModelSpec, build_model
try:
    from harness.dataplane import make_dataplane
except ImportError:
    make_dataplane = None
from harness.dataplane.ipvs import IpvsDataplane

class Broken:
    def __init__(self, dp, breaker=None):
        self.dp, self.breaker, self.mode = dp, breaker, dp.mode
    def full_sync(self, services):
        self.dp.full_sync(services)
        if self.breaker:
            self.breaker(self.dp, list(services))
    def __getattr__(self, name):
        return getattr(self.dp, name)

model = build_model(ModelSpec(n_services=0, endpoints=1))
with Lab(model, tag="vuml") as lab, Agent(lab.client_ns) as agent:
    settings = DataplaneSettings(node_ips=tuple(lab.node_ip(n) for n in model.spec.nodes))
    nodes = model.spec.nodes
    own = {n: replace(settings, node_ips=(lab.node_ip(n),)) for n in nodes}  # NodePorts: own address
    dps = {n: (make_dataplane("ipvs", lab.node_ns(n), own[n], node=n) if make_dataplane
               else IpvsDataplane(lab.node_ns(n), own[n], node=n)) for n in nodes}
    svcs = V.validation_services(model, lab.client_ip)
    victim = svcs[V.SAME]
    hp = svcs[V.HAIRPIN].endpoints[0]

    def delete(dp, services):
        dp.apply([s for s in services if s.name != victim.name],
                 Change("delete", next(s for s in services if s.name == victim.name)))

    def no_loopback(dp, services):
        netns.run(dp.ns, ["ipset", "del", "KUBE-LOOP-BACK", f"{hp.ip},tcp:{hp.port},{hp.ip}"])

    for name, breakers in (("baseline", {}), ("deleted", {n: delete for n in nodes}),
                           ("no-loopback", {nodes[0]: no_loopback})):
        wrapped = {n: Broken(dps[n], breakers.get(n)) for n in nodes}
        res = V.validate_mode(lab, agent, wrapped, model, settings)
        print("RESULT " + name + " " + json.dumps(res), flush=True)
"""


def _ipvs_ready() -> str:
    """'' when the IPVS validation can run in a UML guest, else why not."""
    try:
        from harness.lab import uml
    except ImportError as e:
        return f"harness.lab.uml not importable: {e}"
    ok, why = uml.available()
    if not ok:
        return f"no UML guest: {why}"
    try:
        import harness.dataplane.ipvs  # noqa: F401
    except ImportError as e:
        return f"the IPVS dataplane is not there yet: {e}"
    return ""


@pytest.mark.uml
def test_ipvs_matrix_in_the_uml_guest(tmp_path):
    why = _ipvs_ready()
    if why:
        pytest.skip(why)
    from harness.lab import uml

    lines: list[str] = []
    res = uml.run_guest(
        tmp_path,
        [uml.default_command("x")[0], "-c", GUEST_SCRIPT],
        mem="1G",
        timeout=400,
        on_line=lines.append,
        name="validate",
    )
    got = {}
    for line in lines:
        if line.startswith("RESULT "):
            _, name, body = line.split(" ", 2)
            got[name] = json.loads(body)
    assert res.status == 0 and set(got) == {"baseline", "deleted", "no-loopback"}, (
        res.status,
        res.stderr_tail[-3000:],
        lines[-20:],
    )
    base = got["baseline"]
    assert base["mode"] == "ipvs"
    assert base["passed"], f"ipvs in UML: failing cells:\n{_explain(base)}"
    # kube-proxy ipvs: a virtual server without real servers; the kernel answers ICMP port
    # unreachable (ip_vs_leave), i.e. the connection is refused
    assert base["no_endpoints_behaviour"] == "reject"
    _assert_exactly(None, "ipvs", got["deleted"], _cells_of(got["deleted"], V.SAME), base)
    _assert_exactly(None, "ipvs", got["no-loopback"], {"pod->svc->same pod (hairpin)"}, base)
