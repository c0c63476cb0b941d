"""kube/build.sh's target sets and the build scripts' bad-input errors (no build runs here: every
binary asked for is already in the output folder, or the input is refused before Go is called)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

KUBE = Path(__file__).resolve().parents[2] / "kube"
GO = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
pytestmark = pytest.mark.skipif(GO is None, reason="no Go toolchain (the scripts need one to start)")

DEFAULT = ["etcd", "kube-apiserver", "kube-proxy"]
CLUSTER = ["kubelet", "kube-controller-manager", "kube-scheduler"]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, GO=str(GO), **(env or {}))
    full.pop("KUBE_BIN_DIR", None)
    return subprocess.run(
        ["bash", str(KUBE / script), *args], capture_output=True, text=True, env=full, timeout=60
    )


def _fill(out: Path, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        (out / n).write_text("#!/bin/sh\n")
        (out / n).chmod(0o755)


def _skipped(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln.split("/")[-1].split()[0] for ln in p.stdout.splitlines() if ln.endswith("present, skipped")]


def test_the_default_set_is_etcd_apiserver_proxy_and_cluster_adds_three(tmp_path):
    out = tmp_path / "bin"
    _fill(out, DEFAULT + CLUSTER)
    p = _run("build.sh", "v1.37.2", str(out))
    assert p.returncode == 0 and _skipped(p) == DEFAULT, p.stdout + p.stderr
    p = _run("build.sh", "--cluster", "v1.37.2", str(out))
    assert p.returncode == 0 and _skipped(p) == DEFAULT + CLUSTER, p.stdout + p.stderr
    p = _run("build.sh", "v1.37.2", str(out), env={"KUBE_TARGETS": "kube-scheduler kubelet"})
    assert p.returncode == 0 and _skipped(p) == ["kube-scheduler", "kubelet"], p.stdout + p.stderr


def test_an_unknown_target_is_one_line_exit_2(tmp_path):
    p = _run("build.sh", "v1.37.2", str(tmp_path / "bin"), env={"KUBE_TARGETS": "kubelet kube-dns"})
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "KUBE_TARGETS names kube-dns" in p.stderr and "kube-scheduler" in p.stderr


@pytest.mark.parametrize("version", ["1.7.28", "v2.4", "latest"])
def test_containerd_other_than_a_v2_release_is_one_line_exit_2(tmp_path, version):
    p = _run("build_containerd.sh", version, str(tmp_path / "bin"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"{version} is not a containerd v2 release" in p.stderr
    assert not (tmp_path / "bin").exists()


def test_containerd_present_is_not_rebuilt(tmp_path):
    out = tmp_path / "bin"
    _fill(out, ["containerd", "containerd-shim-runc-v2", "ctr"])
    p = _run("build_containerd.sh", "v2.4.2", str(out))
    assert p.returncode == 0 and _skipped(p) == ["containerd", "containerd-shim-runc-v2", "ctr"], p.stderr
