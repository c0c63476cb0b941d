"""harness.testcluster.artifacts: where the test cluster's binaries are, and the one-line error
naming what is missing and the make command that builds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.targets import local_binaries
from harness.testcluster import artifacts

KUBE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
CONTAINERD = ("containerd", "containerd-shim-runc-v2", "ctr")


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root, a runc and a CNI folder of our own (not this machine's)."""
    monkeypatch.setattr(local_binaries, "CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(artifacts, "RUNC", tmp_path / "sbin" / "runc")
    monkeypatch.setattr(artifacts, "CNI_BIN_DIR", tmp_path / "cni")
    monkeypatch.delenv("CONTAINERD_VERSION", raising=False)
    monkeypatch.delenv("KUBE_BIN_DIR", raising=False)
    return tmp_path


def _build_all(root: Path, kube_version: str, containerd_version: str) -> None:
    for name in KUBE:
        _exe(root / "cache" / "kube" / kube_version / "bin" / name)
    for name in CONTAINERD:
        _exe(root / "cache" / "containerd" / containerd_version / "bin" / name)
    _exe(root / "sbin" / "runc")
    for name in artifacts.CNI_PLUGINS:
        _exe(root / "cni" / name)


def test_containerd_version_is_build_containerd_sh_default(monkeypatch):
    monkeypatch.delenv("CONTAINERD_VERSION", raising=False)
    script = artifacts.BUILD_CONTAINERD.read_text()
    assert f"default_version={artifacts.containerd_version()}\n" in script
    assert re.fullmatch(r"v2\.\d+\.\d+", artifacts.containerd_version())
    monkeypatch.setenv("CONTAINERD_VERSION", "2.3.7")
    assert artifacts.containerd_version() == "v2.3.7"


def test_present_binaries_are_found_in_the_cache(cache):
    v = artifacts.containerd_version()
    _build_all(cache, "v1.37.2", v)
    b = artifacts.cluster_binaries("v1.37.2")
    kube = cache / "cache" / "kube" / "v1.37.2" / "bin"
    ctrd = cache / "cache" / "containerd" / v / "bin"
    assert b.kubelet == kube / "kubelet" and b.kube_scheduler == kube / "kube-scheduler"
    assert b.kube_controller_manager == kube / "kube-controller-manager" and b.etcd == kube / "etcd"
    assert b.kube_apiserver == kube / "kube-apiserver" and b.kube_proxy == kube / "kube-proxy"
    assert (b.containerd, b.containerd_shim, b.ctr) == (
        ctrd / "containerd",
        ctrd / "containerd-shim-runc-v2",
        ctrd / "ctr",
    )
    assert b.runc == cache / "sbin" / "runc" and b.cni_bin_dir == cache / "cni"


def test_a_missing_kubelet_is_one_line_naming_it_and_make_cluster_bins(cache):
    _build_all(cache, "v1.37.2", artifacts.containerd_version())
    kubelet = cache / "cache" / "kube" / "v1.37.2" / "bin" / "kubelet"
    kubelet.unlink()
    with pytest.raises(UserError) as e:
        artifacts.cluster_binaries("v1.37.2")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(kubelet) in msg and "make cluster-bins KUBE_VERSION=v1.37.2" in msg
    assert "kube-scheduler" not in msg  # only what is missing
    assert "built here: v1.37.2" in msg  # kube-apiserver and kube-proxy are there


def test_another_release_is_never_taken_instead(cache):
    _build_all(cache, "v1.37.2", artifacts.containerd_version())
    with pytest.raises(UserError, match=r"v1\.36\.3/bin/kubelet.*make cluster-bins KUBE_VERSION=v1\.36\.3"):
        artifacts.cluster_binaries("v1.36.3")


def test_missing_containerd_runc_and_cni_are_named(cache, monkeypatch):
    _build_all(cache, "v1.37.2", "v2.3.7")
    monkeypatch.setenv("CONTAINERD_VERSION", "v2.3.7")
    (cache / "sbin" / "runc").unlink()
    (cache / "cni" / "bridge").unlink()
    (cache / "cache" / "containerd" / "v2.3.7" / "bin" / "ctr").chmod(0o644)  # not executable
    with pytest.raises(UserError) as e:
        artifacts.cluster_binaries("v1.37.2")
    msg = str(e.value)
    assert "\n" not in msg and "CONTAINERD_VERSION=v2.3.7" in msg
    for path in (
        cache / "sbin" / "runc",
        cache / "cni" / "bridge",
        cache / "cache" / "containerd" / "v2.3.7" / "bin" / "ctr",
    ):
        assert str(path) in msg
    assert "containerd-shim-runc-v2" not in msg
