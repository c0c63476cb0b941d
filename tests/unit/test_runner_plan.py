"""The sweep plan: every cell once, modes interleaved and rotated between repetitions."""

from harness.runner import plan_points
from harness.scenario import load_scenario, parse_override


def test_points_interleave_modes_and_rotate_per_rep():
    s = load_scenario("quick", [parse_override("repetitions=2")])
    plan = {"iptables": ["host"], "ipvs": ["uml"], "nftables": ["host"]}
    pts = plan_points(s, plan)
    assert len(pts) == 2 * 2 * 3
    first = [p.mode for p in pts if p.n_services == 50 and p.rep == 1]
    second = [p.mode for p in pts if p.n_services == 50 and p.rep == 2]
    assert first == ["iptables", "ipvs", "nftables"]
    assert second == ["ipvs", "nftables", "iptables"]
    assert len({p.point_id for p in pts}) == len(pts)
    # counts ascend, so a target can grow the Service set from one count to the next
    ns = [p.n_services for p in pts]
    assert ns == sorted(ns)


def test_bridge_mode_measured_on_every_kernel():
    s = load_scenario("quick")
    pts = plan_points(s, {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]})
    assert {p.kernel for p in pts if p.mode == "iptables"} == {"host", "uml"}
