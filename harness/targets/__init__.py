"""Targets: where the Services live. One interface: plan kernels, describe, run points."""

from __future__ import annotations

from typing import Protocol


class Target(Protocol):
    name: str

    def preflight(self, scenario) -> None:
        """Check everything the run needs before anything is created; raise a one-line error."""

    def plan(self, scenario) -> dict[str, list[str]]:
        """mode -> the kernels (or nodes) it is measured on."""

    def environment(self, kernel_plan) -> dict:
        """kernels and tool versions for metadata.json."""

    def run_points(self, run, points, sink) -> None:
        """Measure `points`, writing RUN/points/<id>.jsonl and .json; report events to sink."""


def make_target(scenario, args=None) -> Target:
    if scenario.target == "lab":
        from harness.targets.lab import LabTarget

        return LabTarget()
    if scenario.target == "local":
        from harness.targets.local import LocalTarget

        return LocalTarget()
    from harness.targets.cluster import ClusterTarget

    return ClusterTarget(
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
        yes=getattr(args, "yes", False),
    )
