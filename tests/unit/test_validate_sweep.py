"""`kpbench validate` of a version sweep validates every release's ruleset family, not only the
newest: the job lists each (release, mode), the validate-only worker switches release before each
matrix, and a release the worker never reported is a failed result of its own."""

from __future__ import annotations

import json

from harness.commands import validate_cmd
from harness.pointloop import worker
from harness.scenario import load_scenario, parse_override


def scen(*sets: str):
    return load_scenario("quick", [parse_override(s) for s in sets])


def test_a_sweeps_validation_job_lists_each_mode_for_each_release(tmp_path):
    job = validate_cmd.validation_job(
        scen("kube_proxy_version=v1.34.12,v1.37.2"), "host", ["iptables", "nftables"], tmp_path
    )
    got = [(p["kube_proxy_version"], p["mode"]) for p in job["points"]]
    assert got == [
        ("v1.34.12", "iptables"),
        ("v1.34.12", "nftables"),
        ("v1.37.2", "iptables"),
        ("v1.37.2", "nftables"),
    ]
    assert len({p["point_id"] for p in job["points"]}) == 4
    assert worker.Job(job).points[0].kube_proxy_version == "v1.34.12"  # the worker reads it back


def test_one_release_is_validated_once_per_mode_under_the_old_keys(tmp_path):
    job = validate_cmd.validation_job(scen(), "host", ["iptables", "nftables"], tmp_path)
    assert [(p["kube_proxy_version"], p["mode"]) for p in job["points"]] == [
        ("", "iptables"),
        ("", "nftables"),
    ]
    assert worker.validation_key("host-6.1", "nftables") == "host-6.1/nftables"
    assert worker.validation_key("host-6.1", "nftables", "v1.34.12") == "host-6.1/nftables/v1.34.12"


class SwitchingTarget:
    """A validate-only worker's target that records which release each matrix ran with."""

    kernel = "host-test"

    def __init__(self):
        self.release = "v1.37.2"  # start(): the scenario's (the newest)
        self.ran: list[tuple[str, str]] = []

    def start(self):
        pass

    def use_point(self, p):
        self.release = p.kube_proxy_version or self.release

    def validation_matrix(self, mode):
        self.ran.append((mode, self.release))
        return {"mode": mode, "passed": True, "failed_cells": [], "cells": [], "release": self.release}


def test_the_validate_only_worker_switches_release_before_each_matrix(tmp_path, capsys):
    job = validate_cmd.validation_job(
        scen("kube_proxy_version=v1.34.12,v1.37.2"), "host", ["nftables"], tmp_path
    )
    target = SwitchingTarget()
    assert worker.run_validate_only(target, worker.Job(job)) == 0
    assert target.ran == [("nftables", "v1.34.12"), ("nftables", "v1.37.2")]
    written = json.loads((tmp_path / "validation-host.json").read_text())
    assert {k: r["release"] for k, r in written.items()} == {
        "host-test/nftables/v1.34.12": "v1.34.12",
        "host-test/nftables/v1.37.2": "v1.37.2",
    }


def test_a_release_the_worker_never_reported_fails_on_its_own(tmp_path, monkeypatch):
    """The worker reports v1.34.12 and dies: v1.37.2 is "not validated", v1.34.12 keeps its result
    (before, any key ending in the mode... a sweep's keys end in the release: every one failed)."""

    def worker_dies_after_one(argv, log_path, on_line, tag):
        on_line(json.dumps({"event": "kernel", "name": "host", "label": "host-test"}))
        ok = {"mode": "nftables", "passed": True, "failed_cells": [], "cells": []}
        on_line(json.dumps({"event": "validation", "key": "host-test/nftables/v1.34.12", "result": ok}))
        return 3

    monkeypatch.setattr(validate_cmd, "run_host_worker", worker_dies_after_one)
    res = validate_cmd.validate_on_kernel(
        scen("kube_proxy_version=v1.34.12,v1.37.2"), "host", ["nftables"], tmp_path
    )
    assert set(res) == {"host-test/nftables/v1.34.12", "host-test/nftables/v1.37.2"}
    assert res["host-test/nftables/v1.34.12"]["passed"] is True
    missing = res["host-test/nftables/v1.37.2"]
    assert missing["passed"] is False and missing["failed_cells"] == ["not validated"]
    assert "status 3 before validating nftables v1.37.2" in missing["error"]
