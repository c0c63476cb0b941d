"""Which host CPU a UML guest is pinned to (harness.lab.uml.host_cpu)."""

import os

import pytest

from harness.lab import uml
from harness.lab.netns import LabError


def test_auto_is_the_last_cpu_allowed_or_none_with_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 3})
    assert uml.host_cpu("auto") == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2})
    assert uml.host_cpu("auto") is None


def test_environment_chooses_when_no_argument(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("KPBENCH_UML_CPU", "0")
    assert uml.host_cpu() == 0
    monkeypatch.setenv("KPBENCH_UML_CPU", "none")
    assert uml.host_cpu() is None
    monkeypatch.delenv("KPBENCH_UML_CPU")
    assert uml.host_cpu() == 1


@pytest.mark.parametrize("bad", ["7", "one", "-1"])
def test_a_cpu_not_allowed_is_a_one_line_error(monkeypatch, bad):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(LabError, match=r"KPBENCH_UML_CPU=.* is not a CPU this process may use \(0, 1\)"):
        uml.host_cpu(bad)
