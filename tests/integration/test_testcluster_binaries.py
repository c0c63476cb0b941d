"""The test cluster's binaries, for real (`make cluster-bins`): the Kubernetes ones report the
release they were built from, and the built containerd v2 serves its own socket from a private
root and state folder in a network namespace of its own, where `ctr` runs a container with
Debian's runc. Everything it started and mounted is gone afterwards. Skipped, saying why, when
the binaries are not built or the test is not root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.targets import local_binaries
from harness.testcluster import artifacts

pytestmark = [pytest.mark.kube, pytest.mark.kernel]

KUBE_VERSION = local_binaries.kube_version()


def _binaries() -> artifacts.ClusterBinaries | str:
    if os.geteuid() != 0:
        return "needs root (network namespace, mounts, cgroups)"
    if not shutil.which("unshare"):
        return "unshare not installed"
    try:
        return artifacts.cluster_binaries(KUBE_VERSION)
    except UserError as e:
        return f"test cluster binaries not built: {e}"


_found = _binaries()
if isinstance(_found, str):
    pytestmark.append(pytest.mark.skip(reason=_found))


@pytest.fixture(scope="module")
def binaries() -> artifacts.ClusterBinaries:
    assert not isinstance(_found, str)
    return _found


@pytest.mark.parametrize("field", ["kubelet", "kube_controller_manager", "kube_scheduler"])
def test_kubernetes_binaries_report_their_release(binaries, field):
    exe = getattr(binaries, field)
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Kubernetes", KUBE_VERSION]


# containerd 2.4's config format (version 4); NRI off (its socket is a fixed host path that two
# containerds would share) and the opt plugin's folder under the node's own, not /opt/containerd
CONFIG = """\
version = 4
root = "{d}/root"
state = "{d}/state"
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = "{d}/containerd.sock"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "{d}/containerd.sock.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/opt"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni}"]
    conf_dir = "{d}/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = false
    BinaryName = "{runc}"
"""
# where containerd's defaults would write on the host: the config above must keep it out of them
HOST_DEFAULTS = [Path(p) for p in ("/var/lib/containerd", "/opt/containerd", "/var/run/nri", "/run/nri")]


def _mounts_under(d: Path) -> list[str]:
    return [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines() if str(d) in ln]


def _procs_mentioning(d: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(d).encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _tree(d: Path) -> set[Path]:
    return {d, *d.rglob("*")} if d.exists() else set()


def test_containerd_serves_its_own_socket_and_runs_a_container_with_runc(binaries, tmp_path):
    # containerd puts every shim's socket under /run/containerd/s whatever its state dir says
    shim_run = Path("/run/containerd")
    run_before = _tree(shim_run)
    host_before = {p: p.exists() for p in HOST_DEFAULTS}
    d = tmp_path / "containerd"
    d.mkdir()
    (d / "config.toml").write_text(CONFIG.format(d=d, cni=binaries.cni_bin_dir, runc=binaries.runc))
    rootfs = d / "rootfs"
    rootfs.mkdir()
    shutil.copy(binaries.ctr, rootfs / "hello")  # a static binary: the rootfs needs nothing else
    sock = d / "containerd.sock"
    env = dict(os.environ, PATH=f"{binaries.containerd.parent}:{os.environ.get('PATH', '')}")
    log = (d / "containerd.log").open("w")
    # its own network namespace (loopback up for the CRI streaming server), never the host's
    proc = subprocess.Popen(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" --config "$1"',
            binaries.containerd,
            d / "config.toml",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ctr = [str(binaries.ctr), "--address", str(sock), "--namespace", "kpbench-test"]
    cgroup = f"kpbench-test-{os.getpid()}"
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, (d / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd socket did not appear in 60 s"
            time.sleep(0.2)
        version = subprocess.run([*ctr, "version"], capture_output=True, text=True, timeout=60)
        assert version.returncode == 0, version.stderr
        server = version.stdout.split("Server:", 1)[1]
        assert f"Version:  {artifacts.containerd_version()}" in server, version.stdout
        plugins = subprocess.run([*ctr, "plugins", "ls"], capture_output=True, text=True, timeout=60).stdout
        cri = [ln for ln in plugins.splitlines() if "io.containerd.grpc.v1" in ln and " cri " in f" {ln} "]
        assert cri and cri[0].split()[-1] == "ok", plugins

        run = subprocess.run(
            [
                *ctr,
                "run",
                "--rm",
                "--cgroup",
                f"/{cgroup}",
                "--runc-binary",
                str(binaries.runc),
                "--runc-root",
                str(d / "runc"),
                "--fifo-dir",
                str(d / "fifo"),
                "--rootfs",
                str(rootfs),
                "kpbench-hello",
                "/hello",
                "--version",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr + (d / "containerd.log").read_text()[-2000:]
        assert run.stdout.split() == [
            "ctr",
            "github.com/containerd/containerd/v2",
            artifacts.containerd_version(),
        ]
        assert (
            subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.strip() == ""
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    deadline = time.monotonic() + 10
    while (_procs_mentioning(d) or _mounts_under(d)) and time.monotonic() < deadline:
        time.sleep(0.2)
    # what outlived it is removed (it is ours: it names our folder), then reported
    procs, mounts = _procs_mentioning(d), _mounts_under(d)
    cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{cgroup}"))
    for pid in procs:
        os.kill(pid, signal.SIGKILL)
    for m in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    for c in cgroups:
        c.rmdir()
    created = sorted(_tree(shim_run) - run_before, reverse=True)
    for path in created:  # the shim socket folder containerd creates on the host, if left empty
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    assert _tree(shim_run) == run_before, "containerd left files in /run/containerd"
    assert {p: p.exists() for p in HOST_DEFAULTS} == host_before, "containerd wrote to a host default path"
    assert not procs, f"containerd or a shim outlived the test: {procs}"
    assert not mounts, f"containerd left mounts behind: {mounts}"
    assert not cgroups, f"the container's cgroup outlived it: {cgroups}"
