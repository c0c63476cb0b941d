"""What a run records about where and how it ran: versions, machine, kernel, status."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import harness
from harness import jsonfile

SCHEMA_VERSION = 1
# Schema history: 1 - first version (samples.parquet long format, metadata.json, points/).

REPO = Path(__file__).resolve().parent.parent


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_sha() -> str:
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        sha = p.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _package_version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "hostname": platform.node(),
        "host_kernel": platform.release(),
    }


def python_packages() -> dict[str, str | None]:
    return {
        name: _package_version(name)
        for name in ("locust", "pyroute2", "pandas", "pyarrow", "matplotlib", "kubernetes", "pydantic")
    }


def base_metadata(run_id: str, scenario: dict, target: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "harness": {"version": harness.__version__, "git_sha": git_sha()},
        "target": target,
        "scenario": scenario,
        "machine": machine(),
        "python": {"version": sys.version.split()[0], "packages": python_packages()},
        "kernels": [],
        "tools": {},
        "started": utcnow(),
        "ended": None,
        "status": "incomplete",
        "points": [],
        "validation": {},
    }


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a run killed mid-write still leaves the previous readable file."""
    jsonfile.write_json(path, data, indent=2, newline=True)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
