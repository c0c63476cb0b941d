"""kube-proxy releases: release -> ruleset family per mode, bad versions, the per-family differences."""

from __future__ import annotations

import dataclasses

import pytest

from harness import releases as versions
from harness.cli import main
from harness.dataplane import make_dataplane, render
from harness.dataplane.base import DataplaneSettings
from harness.model import ModelSpec, build_model
from harness.scenario import ScenarioError, load_scenario


@pytest.mark.parametrize(
    "mode,release,family",
    [
        ("nftables", "v1.33.0", "v1.33"),
        ("nftables", "v1.33.13", "v1.33"),
        ("nftables", "v1.34.12", "v1.34"),
        ("nftables", "v1.35.4", "v1.34"),
        ("nftables", "v1.36.0", "v1.36"),
        ("nftables", "v1.36.3", "v1.36"),
        ("nftables", "v1.37.2", "v1.37"),
        ("nftables", "1.37.1", "v1.37"),
        ("iptables", "v1.33.13", "v1.33"),
        ("iptables", "v1.37.2", "v1.33"),
        ("ipvs", "v1.34.12", "v1.33"),
        ("ipvs", "v1.37.2", "v1.33"),
    ],
)
def test_release_maps_to_its_family(mode, release, family):
    assert versions.family(mode, release) == family


@pytest.mark.parametrize(
    "release", ["v1.32.9", "v1.38.0", "v1.37.3", "v1.36.4", "v2.37.2", "latest", "1.37", ""]
)
@pytest.mark.parametrize("mode", ["iptables", "ipvs", "nftables"])
def test_unknown_release_is_refused_naming_it_and_the_known_ones(mode, release):
    with pytest.raises(versions.UnknownRelease) as e:
        versions.family(mode, release)
    msg = str(e.value)
    assert "\n" not in msg
    assert release.lstrip("v") in msg and "v1.33.0-v1.33.13" in msg and "v1.37.0-v1.37.2" in msg


def test_default_release_is_known_and_pinned_by_kube_go_mod():
    from harness.targets import localcluster as lc

    assert lc.pinned_kube_version() == versions.DEFAULT_KUBE_VERSION
    for mode in versions.FAMILIES:
        versions.family(mode, versions.DEFAULT_KUBE_VERSION)
    assert DataplaneSettings().kube_version == versions.DEFAULT_KUBE_VERSION
    assert versions.known_releases()[-1] == versions.DEFAULT_KUBE_VERSION


def test_every_family_has_a_representative_release():
    for mode in versions.FAMILIES:
        for fam in versions.families(mode):
            assert versions.family(mode, versions.representative(mode, fam)) == fam


def test_a_dataplane_refuses_an_unknown_release():
    for mode in versions.FAMILIES:
        with pytest.raises(versions.UnknownRelease):
            make_dataplane(mode, None, DataplaneSettings(kube_version="v1.38.0"))


# --------------------------------------------------------------------------- scenario and CLI
def test_scenario_kube_proxy_version_and_its_old_name():
    assert load_scenario("quick").kube_proxy_version == versions.DEFAULT_KUBE_VERSION
    s = load_scenario("quick", [(["kube_proxy_version"], "1.36.3")])
    assert (s.kube_proxy_version, s.local.kube_version) == ("v1.36.3", "v1.36.3")
    s = load_scenario("quick", [(["local", "kube_version"], "v1.34.12")])  # the old knob still works
    assert (s.kube_proxy_version, s.local.kube_version) == ("v1.34.12", "v1.34.12")
    assert (
        load_scenario(
            "quick", [(["local", "kube_version"], "v1.34.12"), (["kube_proxy_version"], "v1.34.12")]
        ).kube_proxy_version
        == "v1.34.12"
    )
    again = load_scenario("quick", data=s.resolved(), source="resolved")  # a saved scenario reloads
    assert again.kube_proxy_version == "v1.34.12"


@pytest.mark.parametrize(
    "overrides,words",
    [
        ([(["kube_proxy_version"], "v1.38.0")], ["v1.38.0", "v1.37.0-v1.37.2"]),
        ([(["kube_proxy_version"], "newest")], ["'newest'", "v1.33.0-v1.33.13"]),
        ([(["local", "kube_version"], "v1.31.2")], ["v1.31.2", "v1.33.0-v1.33.13"]),
        ([(["kube_proxy_version"], "v1.36.3"), (["local", "kube_version"], "v1.34.12")], ["differ"]),
    ],
)
def test_bad_scenario_versions_are_one_line_errors(overrides, words):
    with pytest.raises(ScenarioError) as e:
        load_scenario("quick", overrides)
    msg = str(e.value)
    assert "\n" not in msg and "Value error" not in msg
    for w in words:
        assert w in msg


def test_cli_exits_2_on_an_unknown_release(capsys):
    assert main(["render", "--mode", "nftables", "--services", "1", "--kube-version", "v1.38.0"]) == 2
    err = capsys.readouterr().err
    assert "v1.38.0" in err and "v1.37.0-v1.37.2" in err and "Traceback" not in err
    assert main(["run", "quick", "--set", "kube_proxy_version=v1.32.0"]) == 2
    err = capsys.readouterr().err
    assert "v1.32.0" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- what each nftables family renders
def _nft(release: str, endpoints: int, **spec) -> str:
    services = build_model(ModelSpec(n_services=1, endpoints=endpoints, **spec)).services
    return render("nftables", services, DataplaneSettings(kube_version=release))


def _service_rules(text: str) -> list[str]:
    return [
        line.split(" ", 5)[5]
        for line in text.splitlines()
        if line.startswith("add rule ip kube-proxy service-") and " service-endpoints-check " not in line
    ]


def test_nftables_masquerade_rule_per_family():
    v133, v134, v137 = _nft("v1.33.13", 2), _nft("v1.35.4", 2), _nft("v1.37.2", 2)
    assert any(
        " tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in r for r in _service_rules(v133)
    )
    assert any(
        r.endswith("ip saddr != 10.244.0.0/16 jump mark-for-masquerade") and "dport" not in r
        for r in _service_rules(v134)
    )
    assert not any("masquerade" in r for r in _service_rules(v137))
    assert (
        "add rule ip kube-proxy services ip daddr @cluster-ips ip saddr != 10.244.0.0/16 mark set mark or "
        '0x00004000 comment "masquerade clusterIP traffic from outside cluster"'
    ) in v137
    assert "mark-for-masquerade" not in v137 and "mark-for-masquerade" in v134


@pytest.mark.parametrize("endpoints", [1, 2, 3])
def test_nftables_dispatch_per_family(endpoints):
    vmap = [r for r in _service_rules(_nft("v1.34.12", endpoints)) if "numgen" in r]
    assert len(vmap) == 1 and vmap[0].startswith(f"numgen random mod {endpoints} vmap {{ 0 : goto endpoint-")
    v136 = _nft("v1.36.3", endpoints)
    assert "add chain ip kube-proxy endpoint-" not in v136  # no endpoint chains without affinity
    assert _service_rules(v136)[-1].startswith(
        f"meta l4proto tcp dnat ip addr . port to numgen random mod {endpoints} map {{ 0 : 10.244."
    )
    last = _service_rules(_nft("v1.37.2", endpoints))[-1]
    if endpoints == 1:  # PR #140723: no anonymous map for one endpoint
        assert last.startswith("meta l4proto tcp dnat to 10.244.") and "numgen" not in last
    else:
        assert last == _service_rules(v136)[-1]


def test_nftables_affinity_keeps_endpoint_chains_in_every_family():
    for release in ("v1.34.12", "v1.37.2"):
        text = _nft(release, 1, affinity=1)
        assert "add chain ip kube-proxy endpoint-" in text
        assert any(
            r.startswith("numgen random mod 1 vmap { 0 : goto endpoint-") for r in _service_rules(text)
        )
    v137 = _nft("v1.37.2", 1, affinity=1)
    ep_rules = [line for line in v137.splitlines() if line.startswith("add rule ip kube-proxy endpoint-")]
    assert len(ep_rules) == 2 and "update @affinity-" in ep_rules[0] and "dnat to" in ep_rules[1]


def test_nftables_hairpin_set_counts_the_services_sharing_an_endpoint():
    services = build_model(ModelSpec(n_services=4, endpoints=1)).services
    shared = dataclasses.replace(services[1], endpoints=services[0].endpoints)
    services = [services[0], shared]
    dp = make_dataplane("nftables", None, DataplaneSettings(kube_version="v1.37.2"))
    users: dict[str, int] = {}
    text = "".join(dp._full_chunks(services, {}, users))
    key = f"{services[0].endpoints[0].ip} . {services[0].endpoints[0].ip} . tcp . 80"
    assert text.count(f"hairpin-connections {{ {key} }}") == 1 and users == {key: 2}
    dp._hairpin = users
    old = dp.objects(services[0])
    assert dp._hairpin_text(old, None) == ""  # the other Service still uses it
    assert (
        dp._hairpin_text(dp.objects(shared), None)
        == f"delete element ip kube-proxy hairpin-connections {{ {key} }}\n"
    )


def test_nftables_hairpin_set_holds_only_this_nodes_endpoints():
    services = build_model(ModelSpec(n_services=20, endpoints=2)).services
    nodes = {e.node for s in services for e in s.endpoints}
    assert len(nodes) == 2
    node = sorted(nodes)[0]
    o = make_dataplane("nftables", None, DataplaneSettings(kube_version="v1.36.3"), node=node).objects_bulk(
        services
    )
    keys = {k for x in o for k in x.hairpin}
    local = {e.ip for s in services for e in s.endpoints if e.node == node}
    assert keys and {k.split(" . ")[0] for k in keys} == local


# --------------------------------------------------------------------------- the local target's release
def test_apiserver_flags_follow_the_release():
    from harness.scenario import FLAT_ALLOCATOR_ARGS, default_apiserver_args

    assert default_apiserver_args("v1.34.12") == FLAT_ALLOCATOR_ARGS == default_apiserver_args("v1.36.3")
    assert default_apiserver_args("v1.37.2") == []  # "emulation version 1.33 is not between [1.34, 1.37.0]"
    assert load_scenario("local-quick").local.apiserver_args == default_apiserver_args(
        versions.DEFAULT_KUBE_VERSION
    )
    assert (
        load_scenario("local-quick", [(["kube_proxy_version"], "v1.34.12")]).local.apiserver_args
        == FLAT_ALLOCATOR_ARGS
    )
    own = load_scenario("local-quick", [(["local", "apiserver_args"], ["--v=2"])])
    assert own.local.apiserver_args == ["--v=2"]  # given: kept


def test_a_release_that_is_not_built_is_one_line_naming_it(tmp_path, monkeypatch):
    from harness.targets import local_binaries as kube_binaries, localcluster as lc

    monkeypatch.setattr(kube_binaries, "CACHE_ROOT", tmp_path)
    monkeypatch.delenv("KUBE_BIN_DIR", raising=False)
    built = tmp_path / "kube" / "v1.34.12" / "bin"
    built.mkdir(parents=True)
    for name in ("etcd", "kube-apiserver", "kube-proxy"):
        (built / name).write_text("#!/bin/sh\necho Kubernetes v1.34.12\n")
        (built / name).chmod(0o755)
    assert kube_binaries.built_releases() == ["v1.34.12"]
    assert kube_binaries.binaries_for("v1.34.12").kube_proxy == built / "kube-proxy"
    with pytest.raises(lc.LocalClusterError) as e:
        kube_binaries.binaries_for("v1.36.3")  # never v1.34.12's binaries instead
    msg = str(e.value)
    assert (
        "\n" not in msg and "v1.36.3" in msg and "make kube KUBE_VERSION=v1.36.3" in msg and "v1.34.12" in msg
    )
    monkeypatch.setenv("KUBE_BIN_DIR", str(built))
    with pytest.raises(lc.LocalClusterError, match="not v1.36.3"):
        kube_binaries.binaries_for("v1.36.3")
