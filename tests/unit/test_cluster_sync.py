"""The cluster target's one-change syncs (add, update, delete) against the in-memory API server,
with a probe whose answers come from what the API holds when it is asked: a change the target did
not make between poll_start and poll_result is not seen, and an undo left out shows in the state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.cluster import manifests as m
from harness.cluster.kube import Rest, connect
from harness.cluster.objects import ObjectStore
from harness.cluster.options import ClusterOptions
from harness.samples import PointContext
from harness.scenario import load_scenario
from harness.targets.cluster import _Session
from tests.support.fakeapi import FakeCluster

RUN, NS = "20260101-000000-abcd", "kpbench-test"
EPS = [("10.244.1.5", "n1"), ("10.244.2.5", "n2"), ("10.244.1.6", "n1")]


class StateProbe:
    """poll_start remembers the question; poll_result answers it from the API's state then."""

    def __init__(self, rest: Rest):
        self.rest, self.asked, self.t = rest, [], 0

    def _state(self, ip: str) -> tuple[bool, set[str]]:
        svcs = self.rest.get(f"/api/v1/namespaces/{NS}/services")["items"]
        svc = next((s for s in svcs if s["spec"].get("clusterIP") == ip), None)
        if svc is None:
            return False, set()
        name = svc["metadata"]["name"]
        slices = self.rest.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
            query={"labelSelector": f"kubernetes.io/service-name={name}"},
        )["items"]
        eps = {
            f"{a}:{m.BACKEND_PORT}"
            for sl in slices
            for e in sl.get("endpoints") or []
            for a in e["addresses"]
        }
        return bool(eps), eps

    def _holds(self, ip: str, expect: str) -> bool:
        served, eps = self._state(ip)
        if expect == "served":
            return served
        if expect == "gone":
            return not served
        want = set(expect[len("backend:") :].split(","))
        return served and eps <= want

    def poll_start(self, ip, port, expect, **kw) -> int:
        assert not self._holds(ip, expect), f"{expect} held before the change ({ip})"
        self.asked.append((ip, expect, kw))
        self.t += 1_000_000
        return self.t

    def poll_result(self) -> dict:
        ip, expect, _ = self.asked[-1]
        return {"satisfied": self._holds(ip, expect), "t_ns": self.t + 2_000_000}

    def poll(self, ip, port, expect, **kw) -> dict:
        self.asked.append((ip, expect, kw))
        return {"satisfied": self._holds(ip, expect), "t_ns": self.t}


def _session(fake, tmp_path, n: int, **sync) -> _Session:
    sc = load_scenario(
        "quick",
        [(["target"], "cluster"), (["model", "endpoints"], 2)]
        + [(["measure", "sync", k], v) for k, v in sync.items()],
    )
    rest = Rest(connect(fake.kubeconfig(tmp_path / "kc"), None).api)
    s = _Session.__new__(_Session)
    s.sc, s.rest, s.ns, s.opts = sc, rest, NS, ClusterOptions()
    s.state = SimpleNamespace(run_id=RUN)
    s.store = ObjectStore(rest, NS, RUN, qps=1000, burst=1000)
    s.store.ensure_namespace()
    s.endpoints = EPS
    s.store.create_services(0, n, selector=False, endpoints=EPS, per_service=2)
    s.next_index = n
    s.probe = StateProbe(rest)
    return s


def _ctx(n: int) -> PointContext:
    return PointContext(RUN, f"cluster-iptables-{n}-r1", "cluster", "cluster", "iptables", "", n, 2, 1)


def test_add_update_delete_rows_and_the_set_is_as_before(tmp_path):
    with FakeCluster() as fake:
        s = _session(fake, tmp_path, 40, samples=9, adaptive=False)
        before = [(x.name, s.probe._state(x.cluster_ip)) for x in s.store.services]
        status = {"flags": {}}
        rows = s.sync_one(None, _ctx(40), s.store.services, status)
        # samples per point spread over the kinds: 3 each, interleaved, none timed out
        assert [r["change"] for r in rows] == ["add", "update", "delete"] * 3
        assert all(r["metric"] == "sync_one_s" and r["value"] > 0 and not r["timed_out"] for r in rows)
        assert {r["path"] for r in rows} == {"clusterip"} and status["flags"] == {}
        # every change undone: the same N Services, same names, same endpoints, all served
        after = [(x.name, s.probe._state(x.cluster_ip)) for x in s.store.services]
        assert after == before and len(after) == 40
        live = s.rest.get(f"/api/v1/namespaces/{NS}/services")["items"]
        assert len(live) == 40
        # an update asked for the backend pod the Service did not use; a delete had a control
        asked = [(e, kw) for _, e, kw in s.probe.asked]
        assert any(e.startswith("backend:") and e.count(",") == 0 for e, _ in asked)
        assert all(kw.get("control") for e, kw in asked if e == "gone")
        assert all(kw["max_cpu_share"] == s.sc.measure.sync.poll_max_cpu_share for _, kw in asked)


def test_a_change_not_seen_is_a_timed_out_row(tmp_path):
    with FakeCluster() as fake:
        s = _session(fake, tmp_path, 10, samples=3, adaptive=False, timeout_s=7)
        s.probe.poll_result = lambda: {"satisfied": False}
        rows = s.sync_one(None, _ctx(10), s.store.services, {"flags": {}})
        assert [(r["change"], r["value"], r["timed_out"]) for r in rows] == [
            ("add", 7, True),
            ("update", 7, True),
            ("delete", 7, True),
        ]


def test_adaptive_stops_each_kind_at_its_floor_and_records_it(tmp_path):
    with FakeCluster() as fake:
        s = _session(fake, tmp_path, 20, samples=90, adaptive=True)
        status = {"flags": {}}
        rows = s.sync_one(None, _ctx(20), s.store.services, status)
        # the fake's latencies are constant: each kind's CI is met at the floor, far below the cap
        per_kind = {k: sum(r["change"] == k for r in rows) for k in ("add", "update", "delete")}
        assert len(set(per_kind.values())) == 1 and 6 <= per_kind["add"] < 30
        assert set(status["adaptive"]) == {f"sync_one_s change={k}" for k in per_kind}
        assert all(v["ci_met"] and v["cap"] == 30 for v in status["adaptive"].values())


@pytest.mark.parametrize("why", ["selector", "no spare pod"])
def test_update_needs_a_spare_backend_pod_and_slices(tmp_path, why):
    with FakeCluster() as fake:
        s = _session(fake, tmp_path, 10, samples=3, adaptive=False)
        if why == "selector":
            s.opts = ClusterOptions(endpoints_via="selector")
        else:
            s.endpoints = EPS[:2]
        status = {"flags": {}}
        s.probe.poll_start = lambda *a, **kw: 1
        s.probe.poll_result = lambda: {"satisfied": True, "t_ns": 5}
        s.probe.poll = lambda *a, **kw: {"satisfied": True, "t_ns": 5}
        rows = s.sync_one(None, _ctx(10), s.store.services, status)
        assert [r["change"] for r in rows] == ["add", "delete", "add", "delete"]
        assert "sync_update" in status["flags"]
