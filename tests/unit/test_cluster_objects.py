"""Deleting the run's objects by label: one deletecollection per kind, no list first, and a bounded
wait that says how far it got (against the in-memory API server and a stubbed clock)."""

from __future__ import annotations

from harness.cluster import manifests as m
from harness.cluster.kube import Rest, connect
from harness.cluster.objects import ObjectStore
from tests.support.fakeapi import FakeCluster

RUN = "20260101-000000-abcd"
NS = "kpbench-test"


def _store(fake, tmp_path) -> ObjectStore:
    rest = Rest(connect(fake.kubeconfig(tmp_path / "kc"), None).api)
    store = ObjectStore(rest, NS, RUN, qps=1000, burst=1000)
    store.ensure_namespace()
    return store


def test_delete_by_label_is_one_call_per_kind_and_leaves_nothing(tmp_path):
    with FakeCluster() as fake:
        store = _store(fake, tmp_path)
        eps = [("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]
        store.create_services(0, 30, selector=False, endpoints=eps, per_service=2)
        other = m.service(NS, "someone-else", "not-ours", selector=True)
        store.rest.create(f"/api/v1/namespaces/{NS}/services", other)
        assert store.remaining() == {"services": 30, "endpointslices": 30}
        outcome = store.delete_by_label()
        assert outcome["services"] == outcome["endpointslices"] == "deleted"
        assert store.remaining() == {}
        lines: list[str] = []
        assert store.wait_deleted(lines.append) == {} and lines == []
        # an object of another run is not touched
        assert store.rest.get(f"/api/v1/namespaces/{NS}/services/not-ours")


class _Slow(ObjectStore):
    """The API server deletes `per_call` objects per request (its request timeout cuts the rest)."""

    def __init__(self, left: int, per_call: int, clock):
        self.ns, self.left, self.per_call, self.clock, self.calls = NS, left, per_call, clock, 0

    def _paths(self):
        return ["/api/v1/namespaces/x/services"]

    def remaining(self):
        return {"services": self.left} if self.left else {}

    def _delete_collection(self, path):
        self.calls += 1
        self.left = max(0, self.left - self.per_call)
        return "pending" if self.left else "deleted"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_wait_asks_again_until_all_are_gone_and_reports_progress():
    clock = _Clock()
    store = _Slow(10_000, 400, clock)
    lines: list[str] = []
    assert store.wait_deleted(lines.append, every_s=5, clock=clock, sleep=clock.sleep) == {}
    assert store.calls == 25 and store.left == 0
    assert lines and all("services left" in s for s in lines)
    assert "gone in" in lines[-1]


def test_wait_is_bounded_when_nothing_goes():
    clock = _Clock()
    store = _Slow(500, 0, clock)
    lines: list[str] = []
    left = store.wait_deleted(lines.append, stall_s=30, every_s=10, clock=clock, sleep=clock.sleep)
    assert left == {"services": 500}
    assert 30 <= clock.t <= 32 and "no progress for 30s" in lines[-1]


def test_wait_has_a_total_cap_while_progress_is_slow():
    clock = _Clock()
    store = _Slow(10_000, 1, clock)
    left = store.wait_deleted(lambda s: None, stall_s=30, cap_s=100, clock=clock, sleep=clock.sleep)
    assert 9_890 <= left["services"] <= 9_910 and 100 <= clock.t <= 102
