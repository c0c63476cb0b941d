"""The proxy-mode registry: every registered mode declares what the harness needs, and an
unknown mode is an error everywhere a mode name enters (never a silent fallback)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from pydantic import ValidationError

from harness import modes
from harness.cluster import ClusterError, kubeproxy_config as kpc
from harness.dataplane import make_dataplane, render
from harness.dataplane.base import DataplaneSettings
from harness.k8s.kubeproxy_config import render as render_kube_proxy_config
from harness.lab.caps import FEATURES, mode_requirements
from harness.lab.netns import LabError
from harness.model import ModelSpec, build_model
from harness.modes import MODES, ModeSpec, SectionOptions, UnknownModeError
from harness.scenario import Scenario

DATAPLANE_METHODS = ("render", "full_sync", "apply", "counts", "cleanup")
OPTIONS = SectionOptions(
    sync_period="30s", min_sync_period="1ms", masquerade_all=True, strict_arp=True, ipvs_scheduler="wrr"
)


def test_registry_lists_the_modes_in_registration_order():
    assert MODES == tuple(modes.all_modes())
    assert MODES[:3] == ("iptables", "ipvs", "nftables")
    assert modes.BRIDGE_MODE in MODES and modes.mode(modes.BRIDGE_MODE).iptables_based


@pytest.mark.parametrize("name", MODES)
def test_every_registered_mode_declares_every_field(name):
    spec = modes.mode(name)
    assert spec.name == name
    for f in dataclasses.fields(ModeSpec):
        if f.default is dataclasses.MISSING:
            assert getattr(spec, f.name) is not None, f.name
    # dataplane: a class implementing the Dataplane protocol, named after the mode
    cls = spec.dataplane_class()
    assert all(callable(getattr(cls, m, None)) for m in DATAPLANE_METHODS), cls
    assert getattr(cls, "mode", None) == name
    # kernel needs: known lab/caps.py features, with either iptables backend
    for backend in ("legacy", "nft"):
        assert spec.kernel_needs(backend) and set(spec.kernel_needs(backend)) <= set(FEATURES)
        assert mode_requirements(name, backend) == spec.kernel_needs(backend)
    # kube-proxy: the local target's section carries the sync periods
    section = spec.kube_proxy_section(OPTIONS)
    assert section["syncPeriod"] == "30s" and section["minSyncPeriod"] == "1ms"
    assert isinstance(spec.takes_scheduler, bool) and isinstance(spec.iptables_based, bool)
    # validation: the outcomes accepted for a Service without endpoints
    assert spec.no_endpoints and spec.no_endpoints <= {"reject", "drop"}
    # plot style
    assert re.fullmatch(r"#[0-9a-f]{6}", spec.color) and spec.marker
    # read-back: one command listing the ClusterIPs (one capture group), commands for the full dump
    rb = spec.read_back
    assert rb.service_ips_argv("legacy") and rb.ip_pattern.groups == 1
    assert rb.dump_argvs("nft") and all(argv for argv in rb.dump_argvs("nft"))
    assert spec.min_node_kernel is None or len(spec.min_node_kernel) == 2


def test_plot_styles_tell_the_modes_apart():
    specs = modes.all_modes().values()
    assert len({(s.color, s.marker) for s in specs}) == len(specs)
    assert len({s.color for s in specs}) == len(specs)


@pytest.mark.parametrize("name", MODES)
def test_every_registered_mode_renders_and_configures(name):
    services = build_model(ModelSpec(n_services=3, endpoints=2)).services
    dp = make_dataplane(name, None, DataplaneSettings(node_ips=("10.255.0.1",)), node="a")
    assert dp.mode == name
    assert render(name, services).strip()
    cfg = render_kube_proxy_config(kubeconfig="/k", mode=name, node_name="n")
    assert cfg["mode"] == name
    assert set(MODES) <= set(cfg)  # every registered mode's section is written
    doc = kpc.with_mode({"kind": kpc.KIND}, name, kpc.SyncSettings(ipvs_scheduler="wrr"))
    assert doc["mode"] == name and doc[name]["minSyncPeriod"] == "1ms"
    assert ("scheduler" in doc[name]) == modes.mode(name).takes_scheduler
    assert kpc.configured_mode({"mode": name}) == name
    assert Scenario(modes=[name]).modes == [name]


def test_unknown_modes_raise_everywhere():
    with pytest.raises(
        UnknownModeError, match="unknown proxy mode 'ebpf': use one of iptables, ipvs, nftables"
    ):
        modes.mode("ebpf")
    with pytest.raises(ValueError, match="unknown proxy mode"):
        make_dataplane("ebpf", None)
    with pytest.raises(LabError, match="unknown proxy mode"):
        mode_requirements("ebpf")
    with pytest.raises(ValidationError):
        Scenario(modes=["ebpf"])
    with pytest.raises(ClusterError):
        kpc.with_mode({}, "ebpf")
    with pytest.raises(ClusterError, match="only handles"):
        kpc.configured_mode({"mode": "ebpf"})
    with pytest.raises(ValueError, match="kube-proxy mode 'ebpf'"):
        render_kube_proxy_config(kubeconfig="/k", mode="ebpf", node_name="n")


def test_a_mode_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        modes.register(modes.mode("iptables"))
