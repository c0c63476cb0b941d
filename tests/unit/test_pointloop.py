"""The one point loop: its sequence, statuses and failures, on a recording PointTarget (no kernel)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from harness.pointloop.loop import JobPoint, PointLoop
from harness.pointloop.worker import Job
from harness.samples import PointContext
from harness.scenario import load_scenario


class Recording:
    """A PointTarget that records the loop's calls and writes one row per measurement."""

    target_name = "lab"
    kernel = "test-kernel"
    validates = True
    records_phases = True

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def _call(self, what: str, p: JobPoint) -> None:
        self.calls.append((what, p.point_id))
        if self.fail_on == f"{what}:{p.point_id}":
            raise RuntimeError(f"{what} broke")

    def validate(self, mode):
        self.calls.append(("validate", mode))
        return {"passed": mode != "ipvs", "failed_cells": [] if mode != "ipvs" else ["x"]}

    def program(self, p, out, status):
        self._call("program", p)
        ctx = PointContext(
            run_id="r",
            point_id=p.point_id,
            target="lab",
            kernel=self.kernel,
            mode=p.mode,
            iptables_backend="",
            n_services=p.n_services,
            endpoints=1,
            rep=p.rep,
        )
        out.write(ctx.row("sync_full_s", 0.5, "s"))
        status["counts"] = {"rules": p.n_services}
        return ctx, list(range(p.n_services))

    def connect(self, p, ctx, services, status):
        self._call("connect", p)
        return [ctx.row("connect_us", 10.0, "us", seq=0, position="random", path="clusterip")]

    def load_namespace(self):
        return None

    def sync_one(self, p, ctx, services, status):
        self._call("sync_one", p)
        return [ctx.row("sync_one_s", 0.1, "s", seq=0, change="add")]

    def end_point(self, p, ctx, out, status):
        self._call("end_point", p)

    def point_failed(self, p, error):
        return None


def _points(*modes):
    return [JobPoint(f"host-{m}-10-r{i + 1}", "host", m, 10, i + 1, i) for i, m in enumerate(modes)]


def test_sequence_statuses_and_validation_once_per_mode(tmp_path):
    (tmp_path / "points").mkdir()
    events: list[dict] = []
    target = Recording()
    PointLoop(target, load_scenario("quick"), tmp_path, events.append).run(
        _points("iptables", "ipvs", "iptables")
    )
    p0, p1, p2 = (p.point_id for p in _points("iptables", "ipvs", "iptables"))
    assert target.calls == [
        ("validate", "iptables"),
        ("program", p0),
        ("connect", p0),
        ("sync_one", p0),
        ("end_point", p0),
        ("validate", "ipvs"),
        ("program", p1),
        ("connect", p1),
        ("sync_one", p1),
        ("end_point", p1),
        ("program", p2),
        ("connect", p2),
        ("sync_one", p2),
        ("end_point", p2),
    ]
    st = json.loads((tmp_path / "points" / f"{p0}.json").read_text())
    assert st["status"] == "ok" and st["samples"] == 3 and st["counts"] == {"rules": 10}
    assert set(st["phases"]) == {"validate_s", "sync_full_s", "connect_s", "sync_one_s"}
    assert json.loads((tmp_path / "points" / f"{p1}.json").read_text())["status"] == "invalid"
    assert "validate_s" not in json.loads((tmp_path / "points" / f"{p2}.json").read_text())["phases"]
    rows = [json.loads(x) for x in (tmp_path / "points" / f"{p0}.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in rows] == ["sync_full_s", "connect_us", "sync_one_s"]
    kinds = [e["event"] for e in events]
    assert kinds.count("point_start") == 3 and kinds.count("point_done") == 3
    assert {"phase": "sync_full", "point_id": p0, "event": "phase"} in events


def test_a_failing_point_is_recorded_and_the_next_one_runs(tmp_path):
    (tmp_path / "points").mkdir()
    pts = _points("iptables", "nftables")
    target = Recording(fail_on=f"connect:{pts[0].point_id}")
    target.records_phases = False
    events: list[dict] = []
    PointLoop(target, load_scenario("quick"), tmp_path, events.append).run(pts)
    st = json.loads((tmp_path / "points" / f"{pts[0].point_id}.json").read_text())
    assert st["status"] == "failed" and st["error"] == "RuntimeError: connect broke" and "traceback" in st
    assert json.loads((tmp_path / "points" / f"{pts[1].point_id}.json").read_text())["status"] == "ok"
    assert not [e for e in events if e["event"] == "phase"]  # the target times its own phases


def test_the_job_file_scenario_is_validated_again(tmp_path):
    sc = load_scenario("quick")
    data = {
        "run_id": "r",
        "run_dir": str(tmp_path),
        "kernel": "host",
        "tag": "t",
        "scenario": sc.resolved(),
        "points": [
            {"point_id": "p", "kernel": "host", "mode": "iptables", "n_services": 10, "rep": 1, "order": 0}
        ],
    }
    job = Job(json.loads(json.dumps(data)))
    assert job.scenario == sc.model_copy(update={"services": job.scenario.services})
    assert job.scenario.measure.load.users == sc.measure.load.users
    data["scenario"]["measure"]["load"]["users"] = "many"
    with pytest.raises(ValidationError):
        Job(data)


class FakeGenerator:
    """Stands in for harness.measure.load.LoadGenerator: canned phases, its life recorded."""

    made: list[FakeGenerator] = []

    def __init__(self, ns):
        self.ns, self.requests, self.closed = ns, [], False
        FakeGenerator.made.append(self)

    def run(self, targets, keepalives, **kw):
        self.requests.append((list(keepalives), kw))
        out = []
        for ka in keepalives:
            recs = [[g, 0, 1000 * g, 1000 * g + 10, 1000 * g + 510, 1, "", 1] for g in range(600)]
            spent = {"samples": 600, "cap": 2000, "floor": 600, "ci_rel": 0.01, "ci_met": True}
            out.append(
                (
                    recs,
                    {
                        "keepalive": ka,
                        "target_rps": 200.0,
                        "achieved_rps": 200.0,
                        "requests": 600,
                        "failures": 0,
                        "missed": 0,
                        "connections": 600,
                        "client_cpu_pct": 5.0,
                        "duration_s": 3.0,
                        "duration_cap_s": 10.0,
                        "adaptive": {"request_us": spent, "request_corrected_us": spent},
                        "proc_stat": [[0, 1, 0, 1, 10, 0, 0, 0, 0, 2], [10**9, 2, 0, 2, 20, 0, 0, 0, 0, 2]],
                    },
                )
            )
        return out

    def close(self):
        self.closed = True


class Loaded(Recording):
    """Recording, with Services to load and a client namespace."""

    def program(self, p, out, status):
        from harness.model import ModelSpec, build_model

        ctx, _ = super().program(p, out, status)
        return ctx, build_model(ModelSpec(n_services=p.n_services)).services

    def load_namespace(self):
        return "kpb-test-client"


def test_load_phases_share_one_generator_and_record_what_they_spent(tmp_path, monkeypatch):
    from harness.measure import load

    (tmp_path / "points").mkdir()
    FakeGenerator.made = []
    monkeypatch.setattr(load, "LoadGenerator", FakeGenerator)
    target = Loaded()
    sc = load_scenario("default")
    pts = _points("iptables", "nftables")
    PointLoop(target, sc, tmp_path, lambda e: None).run(pts)
    (gen,) = FakeGenerator.made  # one process for both points, ended with the run
    assert gen.ns == "kpb-test-client" and gen.closed
    assert [r[0] for r in gen.requests] == [[False, True], [False, True]]
    kw = gen.requests[0][1]
    assert (
        kw["min_duration"] == sc.measure.load.min_duration_s and kw["duration"] == sc.measure.load.duration_s
    )
    st = json.loads((tmp_path / "points" / f"{pts[0].point_id}.json").read_text())
    assert "load_s" in st["phases"]
    for ka in ("false", "true"):
        spent = st["adaptive"][f"request_us keepalive={ka}"]
        assert spent["samples"] == 600 and spent["ci_met"] and spent["duration_s"] == 3.0
    rows = [
        json.loads(x) for x in (tmp_path / "points" / f"{pts[0].point_id}.jsonl").read_text().splitlines()
    ]
    req = [r for r in rows if r["metric"] == "request_us"]
    assert len(req) == 1200 and {r["keepalive"] for r in req} == {"false", "true"}


def test_fixed_load_phases_ask_for_no_minimum(tmp_path, monkeypatch):
    from harness.measure import load
    from harness.scenario import parse_override

    (tmp_path / "points").mkdir()
    FakeGenerator.made = []
    monkeypatch.setattr(load, "LoadGenerator", FakeGenerator)
    target = Loaded()
    sc = load_scenario("default", [parse_override("measure.load.adaptive=false")])
    PointLoop(target, sc, tmp_path, lambda e: None).run(_points("iptables"))
    assert FakeGenerator.made[0].requests[0][1]["min_duration"] is None
    st = json.loads((tmp_path / "points" / "host-iptables-10-r1.json").read_text())
    assert not any(k.startswith("request_") for k in st.get("adaptive", {}))


def test_a_saturated_load_phase_keeps_its_rows_and_is_flagged_per_keepalive_variant():
    from types import SimpleNamespace

    from harness.pointloop.loop import _record_load

    class Out:
        def __init__(self):
            self.rows = []

        def extend(self, rows):
            self.rows.extend(rows)

    out, status = Out(), {"flags": {}}
    ok = SimpleNamespace(rows=[{"v": 1}], saturated=False, reasons=[], summary={})
    sat = SimpleNamespace(
        rows=[{"v": 2}, {"v": 3}],
        saturated=True,
        reasons=["achieved 310/s of 500/s"],
        summary={"achieved_rps": 310.0, "per_user": {"a": 1}},
    )
    _record_load(True, ok, out, status)
    _record_load(False, sat, out, status)
    assert [r["v"] for r in out.rows] == [1, 2, 3]
    assert status["flags"] == {
        "saturated": {"keepalive=false": {"reasons": ["achieved 310/s of 500/s"], "achieved_rps": 310.0}}
    }
