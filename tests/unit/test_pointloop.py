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
