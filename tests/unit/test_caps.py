"""plan_kernels: ARCHITECTURE.md's kernel rule, with injected capabilities (no probing, no boot)."""

from __future__ import annotations

import pytest

from harness.lab.caps import (
    FEATURE_TEXT,
    FEATURES,
    KNOWN_UML_CAPS,
    mode_requirements,
    plan_kernels,
    unsupported,
)
from harness.lab.netns import LabError
from harness.modes import MODES

HOST = {  # the host here: 6.18 without IPVS and dummy
    "kernel": "host",
    "ipvs": False,
    "dummy": False,
    "nft_nat": True,
    "iptables_legacy": True,
    "iptables_nft": True,
    "ipset": True,
    "br_netfilter": True,
    "why": {"ipvs": "the host kernel has no CONFIG_IP_VS (no /proc/net/ip_vs)"},
}
FULL = {**HOST, "ipvs": True, "dummy": True, "why": {}}
UML = KNOWN_UML_CAPS
ALL = ["iptables", "ipvs", "nftables"]


def test_auto_one_kernel_when_it_runs_everything():
    assert plan_kernels(ALL, uml_=UML, host=FULL) == {m: ["host"] for m in ALL}
    assert plan_kernels(["iptables", "nftables"], host=HOST, uml_=UML) == {
        "iptables": ["host"],
        "nftables": ["host"],
    }


def test_auto_prefers_one_kernel_for_all_even_if_not_the_host():
    assert plan_kernels(["iptables", "ipvs"], host=HOST, uml_=UML) == {"iptables": ["uml"], "ipvs": ["uml"]}


def test_spread_keeps_on_the_host_what_the_host_runs():
    full_uml = {**FULL, "kernel": "uml"}
    assert plan_kernels(ALL, host=HOST, uml_=full_uml) == {m: ["uml"] for m in ALL}
    plan = plan_kernels(ALL, host=HOST, uml_=full_uml, spread=True)
    assert plan == {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}
    assert plan_kernels(["nftables"], host=HOST, uml_=full_uml, spread=True) == {"nftables": ["host"]}
    assert plan_kernels(ALL, host=HOST, uml_=full_uml, choice="uml", spread=True) == {m: ["uml"] for m in ALL}


def test_auto_splits_and_bridges_with_iptables_on_every_kernel_used():
    plan = plan_kernels(ALL, host=HOST, uml_=UML)
    assert plan == {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}


def test_auto_split_adds_the_iptables_bridge_when_not_asked_for():
    plan = plan_kernels(["ipvs", "nftables"], host=HOST, uml_=UML)
    assert plan == {"ipvs": ["uml"], "nftables": ["host"], "iptables": ["host", "uml"]}


def test_auto_without_uml_names_mode_and_reason():
    with pytest.raises(LabError) as e:
        plan_kernels(["iptables", "ipvs"], host=HOST, uml_=None)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("mode ipvs needs IPVS: the host kernel has no CONFIG_IP_VS")
    assert "no UML guest is available" in msg and "user-mode-linux" in msg


def test_forced_host_and_uml():
    assert plan_kernels(["iptables", "nftables"], choice="host", host=HOST, uml_=UML) == {
        "iptables": ["host"],
        "nftables": ["host"],
    }
    with pytest.raises(LabError, match=r"^mode ipvs cannot run on the host kernel: .*CONFIG_IP_VS"):
        plan_kernels(ALL, choice="host", host=HOST, uml_=UML)
    assert plan_kernels(["ipvs", "iptables"], choice="uml", host=HOST, uml_=UML) == {
        "ipvs": ["uml"],
        "iptables": ["uml"],
    }
    with pytest.raises(LabError, match=r"^mode nftables cannot run on the UML kernel: .*nft_chain_nat"):
        plan_kernels(ALL, choice="uml", host=HOST, uml_=UML)
    with pytest.raises(LabError, match="no UML guest is available"):
        plan_kernels(["iptables"], choice="uml", host=HOST, uml_=None)


def test_nft_backend_is_host_only_here():
    assert plan_kernels(["iptables"], "nft", host=HOST, uml_=UML) == {"iptables": ["host"]}
    with pytest.raises(LabError, match="^mode iptables cannot run on the UML kernel"):
        plan_kernels(["iptables"], "nft", choice="uml", host=HOST, uml_=UML)
    # ipvs mode programs iptables with the same backend: nowhere here
    with pytest.raises(LabError, match="^mode ipvs runs on no kernel here"):
        plan_kernels(["ipvs"], "nft", host=HOST, uml_=UML)


def test_mode_nobody_supports():
    none = {**UML, "kernel": "uml", "ipvs": False, "why": {}}
    with pytest.raises(LabError, match="^mode ipvs runs on no kernel here: host: .*; uml: .*IPVS"):
        plan_kernels(["ipvs"], host=HOST, uml_=none)


def test_bad_inputs():
    with pytest.raises(LabError, match="unknown proxy mode"):
        plan_kernels(["userspace"], host=HOST, uml_=UML)
    with pytest.raises(LabError, match="--kernel"):
        plan_kernels(["iptables"], choice="qemu", host=HOST, uml_=UML)
    with pytest.raises(LabError):
        plan_kernels([], host=HOST, uml_=UML)


def test_unsupported_reasons():
    assert unsupported(HOST, "iptables") is None
    assert "CONFIG_IP_VS" in unsupported(HOST, "ipvs")
    assert unsupported(UML, "ipvs") is None
    assert "nft" in unsupported(UML, "nftables")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_every_registered_mode_needs_known_features_and_names_the_missing_one(mode, backend):
    needs = mode_requirements(mode, backend)
    assert needs and set(needs) <= set(FEATURES)
    everything = {"kernel": "test", **{f: True for f in FEATURES}, "why": {}}
    assert unsupported(everything, mode, backend) is None
    for feat in needs:
        why = unsupported({**everything, feat: False}, mode, backend)
        assert why and FEATURE_TEXT[feat] in why
    assert plan_kernels([mode], iptables_backend=backend, host=everything, uml_=None) == {mode: ["host"]}
