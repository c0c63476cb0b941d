"""Rendering of the three proxy modes: kube-proxy's names, rule counts, golden outputs.

Goldens live in tests/golden/dataplane_<mode>.txt for the family of v1.34 (the release these
tests were written for) and dataplane_<mode>_<family>.txt for the other families; regenerate
(after checking the diff by hand against /work/shared/reference/kube-proxy-dataplane.md and the
release's pkg/proxy/<mode>/proxier.go) with KPB_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from harness import releases as versions
from harness.dataplane import make_dataplane, names, render
from harness.dataplane.base import DataplaneSettings
from harness.dataplane.iptables import IptablesDataplane
from harness.model import Endpoint, ModelSpec, Service, ServicePort, build_model
from harness.modes import MODES

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
V134 = "v1.34.12"  # the shape tests below describe this release (nftables changed in v1.36 and v1.37)
SETTINGS = DataplaneSettings(node_ips=("10.255.0.1",), kube_version=V134)


def small_services() -> list[Service]:
    """3 Services x 2 endpoints: #0 ClientIP affinity + NodePort, #1 NodePort + an external IP,
    #2 without endpoints."""
    m = build_model(ModelSpec(n_services=3, endpoints=2, node_ports=2, affinity=1))
    s = list(m.services)
    s[1] = dataclasses.replace(s[1], external_ips=("192.0.2.10",))
    s[2] = s[2].with_endpoints(())
    return s


def nat_rules(text: str) -> list[str]:
    nat = text.split("*nat\n", 1)[1].split("COMMIT\n", 1)[0]
    return [line for line in nat.splitlines() if line.startswith("-A ")]


# --------------------------------------------------------------------------- names
def test_iptables_chain_names_match_kube_proxy():
    assert names.svc_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert names.sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert names.iptables_hash("default/kubernetes:https", "tcp") == "NPX46M4PTMTKRN6Y"
    assert names.iptables_hash("kube-system/kube-dns:dns", "udp") == "TCOU7JCQXEZGVUNU"


def test_nftables_chain_names_match_kube_proxy():
    assert names.nft_service_chain("ns1", "svc1", "tcp", "p80") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        names.nft_endpoint_chain("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80)
        == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )


def test_bulk_hash_equals_single_hash():
    keys = [f"kpbench/svc-{i:05d}:httptcp10.244.0.{i % 250}:80" for i in range(300)]
    assert names.bulk_hash(keys, 16) == [names._h(k, 16) for k in keys]
    assert names.bulk_hash(keys, 8) == [names._h(k, 8) for k in keys]


def test_rendered_names_use_the_model_port_string():
    svc = Service(
        index=0,
        namespace="ns1",
        name="svc1",
        cluster_ip="172.30.0.41",
        ports=(ServicePort(name="p80", port=80, target_port=80),),
        endpoints=(Endpoint("10.180.0.1", 80, "a"),),
    )
    ipt = render("iptables", [svc])
    assert ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]" in ipt
    assert (
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ"
        in ipt
    )
    nft = render("nftables", [svc], DataplaneSettings(kube_version=V134))
    assert "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80\n" in nft
    assert "numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }" in nft


# --------------------------------------------------------------------------- iptables shape
@pytest.mark.parametrize("endpoints", [1, 2, 4, 10])
def test_iptables_3e_plus_2_nat_rules_per_clusterip_port(endpoints):
    n = 25
    services = build_model(ModelSpec(n_services=n, endpoints=endpoints)).services
    rules = nat_rules(IptablesDataplane(None, DataplaneSettings()).render(services))
    kube = [r for r in rules if r.split()[1].startswith("KUBE-")]
    assert len(kube) == 5 + n * (3 * endpoints + 2)  # 5 fixed: upstream's 10 x 10 -> 325


def test_iptables_counts_for_affinity_nodeport_and_no_endpoints():
    dp = IptablesDataplane(None, DataplaneSettings())
    base = build_model(ModelSpec(n_services=1, endpoints=3)).services
    aff = build_model(ModelSpec(n_services=1, endpoints=3, affinity=1)).services
    np_ = build_model(ModelSpec(n_services=1, endpoints=3, node_ports=1)).services
    fixed = 5
    assert len(nat_rules(dp.render(base))) - fixed == 3 * 3 + 2
    assert len(nat_rules(dp.render(aff))) - fixed == 4 * 3 + 2
    assert len(nat_rules(dp.render(np_))) - fixed == 3 * 3 + 5
    empty = [base[0].with_endpoints(())]
    text = dp.render(empty)
    assert len(nat_rules(text)) - fixed == 0
    assert '-A KUBE-SERVICES -m comment --comment "kpbench/svc-00000:http has no endpoints"' in text
    assert "-j REJECT" in text.split("*nat")[0]


def test_iptables_probabilities_and_final_rule():
    svc = build_model(ModelSpec(n_services=1, endpoints=4)).services
    text = IptablesDataplane(None).render(svc)
    probs = re.findall(r"--probability (\S+)", text)
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]
    svc_rules = [r for r in nat_rules(text) if r.startswith("-A KUBE-SVC-")]
    assert "statistic" not in svc_rules[-1] and "-j KUBE-SEP-" in svc_rules[-1]


def test_iptables_large_cluster_mode_drops_endpoint_comments():
    small = IptablesDataplane(None).render(build_model(ModelSpec(n_services=10, endpoints=100)).services)
    large = IptablesDataplane(None).render(build_model(ModelSpec(n_services=11, endpoints=100)).services)
    assert any(r.startswith("-A KUBE-SEP-") and "--comment" in r for r in nat_rules(small))  # 1000 endpoints
    assert not any(r.startswith("-A KUBE-SEP-") and "--comment" in r for r in nat_rules(large))  # 1100
    assert not any(r.startswith("-A KUBE-SVC-") and " -> " in r for r in nat_rules(large))


def test_iptables_masquerade_and_affinity_rules():
    text = IptablesDataplane(None, DataplaneSettings(cluster_cidr="10.0.0.0/8")).render(small_services())
    assert re.search(r"-A KUBE-SVC-\w+ .* ! -s 10\.0\.0\.0/8 -j KUBE-MARK-MASQ", text)
    assert re.search(r"-m recent --name (KUBE-SEP-\w+) --rcheck --seconds 10800 --reap -j \1", text)
    assert re.search(r"-m recent --name (KUBE-SEP-\w+) --set -m tcp -p tcp -j DNAT", text)
    assert "-A KUBE-NODEPORTS -m comment --comment kpbench/svc-00001:http -m tcp -p tcp --dport 30001" in text


def test_partial_sync_payload_rewrites_only_the_changed_service():
    dp = IptablesDataplane(None)
    services = build_model(ModelSpec(n_services=50, endpoints=2)).services
    changed = services[7]
    text = "".join(dp._partial_chunks(services, changed, {"KUBE-SEP-STALESTALESTALE1"}))
    own = dp.chain_set(changed)
    declared = set(re.findall(r"^:(KUBE-(?:SVC|SEP|EXT)-\w+)", text, re.M))
    assert declared == own | {"KUBE-SEP-STALESTALESTALE1"}
    assert "-X KUBE-SEP-STALESTALESTALE1" in text
    assert len(re.findall(r"^-A KUBE-SERVICES .*cluster IP", text, re.M)) == 50
    assert "-I " not in text  # jumps from built-in chains are ensured on full syncs only


# --------------------------------------------------------------------------- nftables / ipvs shape
def test_nftables_rules_per_service_port():
    dp = make_dataplane("nftables", None, DataplaneSettings(kube_version=V134))
    one = dp.render(build_model(ModelSpec(n_services=1, endpoints=3)).services)
    two = dp.render(build_model(ModelSpec(n_services=2, endpoints=3)).services)
    per = [line for line in two.splitlines() if line not in set(one.splitlines())]
    assert sum(line.startswith("add rule") for line in per) == 2 * 3 + 2
    assert sum(line.startswith("add chain") for line in per) == 1 + 3
    assert sum(line.startswith("add element") for line in per) == 2


def test_ipvs_render_sections():
    text = make_dataplane("ipvs", None, SETTINGS).render(small_services())
    sections = re.findall(r"^# (.*)$", text, re.M)
    assert sections == ["ipvsadm-restore", "ipset restore", "iptables-legacy-restore --noflush"]
    assert re.search(r"^-A -t \S+:80 -s rr -p 10800$", text, re.M)
    assert re.search(r"^-a -t \S+:80 -r 10\.244\.\d+\.\d+:80 -m -w 1$", text, re.M)
    assert "add KUBE-CLUSTER-IP " in text and "add KUBE-NODE-PORT-TCP 30000" in text


# --------------------------------------------------------------------------- goldens
# every registered mode needs its goldens, one per ruleset family
GOLDEN_CASES = [(mode, fam) for mode in MODES for fam in versions.families(mode)]


@pytest.mark.parametrize("mode,family", GOLDEN_CASES)
def test_golden(mode, family):
    release = versions.representative(mode, family)
    text = render(mode, small_services(), dataclasses.replace(SETTINGS, kube_version=release))
    own = versions.family(mode, V134) == family
    path = GOLDEN / (f"dataplane_{mode}.txt" if own else f"dataplane_{mode}_{family}.txt")
    if os.environ.get("KPB_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path}: run with KPB_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()
