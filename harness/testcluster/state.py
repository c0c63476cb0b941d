"""What a test cluster started, on disk (state.json in its directory), written before each thing
is created, so `kpbench cluster down` after a crash or Ctrl-C knows what to remove."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from harness.errors import UserError
from harness.jsonfile import write_json
from harness.lab import registry

VERSION = 1


class ProcRecord(BaseModel):
    name: str
    pid: int
    start: int | None = None  # /proc/PID/stat start time: a reused pid is not ours


class ClusterState(BaseModel):
    """The record of one test cluster (one per directory)."""

    version: int = VERSION
    phase: str = "starting"  # starting -> up; down removes the file last
    instance: int = 0  # plan.Names: which machine-wide names
    kube_version: str = ""
    nodes: list[str] = Field(default_factory=list)
    kubeconfig: str = ""
    namespaces: list[str] = Field(default_factory=list)
    host_links: list[str] = Field(default_factory=list)
    procs: list[ProcRecord] = Field(default_factory=list)
    cgroups: list[str] = Field(default_factory=list)  # names under each /sys/fs/cgroup/<controller>
    created_paths: list[str] = Field(
        default_factory=list
    )  # host dirs made for the cluster (removed if empty)
    sysctls: dict[str, str] = Field(default_factory=dict)  # as found before the cluster started
    timings: dict[str, float] = Field(default_factory=dict)


class StateFile:
    """The state of the cluster in `path`, saved after every change."""

    def __init__(self, path: Path, state: ClusterState | None = None):
        self.path = path
        self.state = state or ClusterState()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.state.model_dump(), indent=1, default=None)

    def add_proc(self, name: str, pid: int) -> None:
        self.state.procs.append(ProcRecord(name=name, pid=pid, start=registry.proc_starttime(pid)))
        self.save()

    def add(self, field: str, value: str) -> None:
        """Append `value` to the list `field` (namespaces, host_links, cgroups, created_paths)."""
        items = getattr(self.state, field)
        if value not in items:
            items.append(value)
        self.save()

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def load(path: Path) -> StateFile | None:
    """The state in `path`, None if there is none; UserError if it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable test cluster state ({e}); delete it and run `kpbench cluster down`"
        ) from None
    if data.get("version") != VERSION:
        raise UserError(
            f"{path}: state version {data.get('version')} is not {VERSION}: delete it and run `kpbench cluster down`"
        )
    return StateFile(path, ClusterState.model_validate(data))
