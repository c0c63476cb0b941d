"""The offline images import into a real containerd and run there (harness/testcluster/images.py).

A throwaway containerd (the v2 one `make cluster-bins` builds, else Debian's 1.6) with its own root,
state and socket in a temp dir imports each archive with `ctr -n k8s.io images import`; the pause
image runs as 65535 and stops on SIGTERM, the kube-proxy image's binary reports its release and its
iptables is legacy, the harness image imports the modules its pods run. Containers get their own
network namespace (ctr's default) and their own cgroup parent, all removed afterwards with the
containerd, its mounts and its directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import releases
from harness.errors import UserError
from harness.targets.local_binaries import CACHE_ROOT
from harness.testcluster import images

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

VERSION = releases.DEFAULT_KUBE_VERSION


def containerd_bin_dir() -> Path | None:
    built = sorted(CACHE_ROOT.glob("containerd/*/bin/containerd"))
    if built:
        return built[-1].parent
    return Path("/usr/bin") if Path("/usr/bin/containerd").is_file() else None


@pytest.fixture(scope="module")
def archives():
    try:
        out = images.ensure_images(VERSION)
    except UserError as e:
        pytest.skip(f"images cannot be built here: {e}")
    return {a.name: a for a in out}


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    """`ctr` bound to a throwaway containerd; everything it started is removed at the end."""
    bin_dir = containerd_bin_dir()
    if bin_dir is None or not shutil.which("runc"):
        pytest.skip("no containerd (make cluster-bins, or apt install containerd) or no runc")
    top = tmp_path_factory.mktemp("containerd")
    sock = top / "containerd.sock"
    cgroup_parent = f"kpbench-images-test-{os.getpid()}"
    # CRI on (it marks imported images managed), NRI off (its socket is a fixed host path); the
    # daemon in a network namespace of its own, where CRI's stream server listens
    (top / "config.toml").write_text(
        f"""version = 2
root = "{top}/root"
state = "{top}/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{top}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{top}/cni-bin"
    conf_dir = "{top}/cni-conf"
"""
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    log = (top / "containerd.log").open("w")
    proc = subprocess.Popen(
        ["unshare", "--net", str(bin_dir / "containerd"), "--config", str(top / "config.toml")],
        stdout=log,
        stderr=log,
        env=env,
    )
    ctr_bin = str(bin_dir / "ctr")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [ctr_bin, "--address", str(sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {p.stderr.strip()}")
        return p

    def run_in(image: str, cid: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """A container of `image` running argv to its end, in its own netns and cgroup."""
        return run("run", "--rm", "--cgroup", f"/{cgroup_parent}/{cid}", image, cid, *argv)

    run.cgroup = lambda cid: f"/{cgroup_parent}/{cid}"  # type: ignore[attr-defined]
    run.run_in = run_in  # type: ignore[attr-defined]
    try:
        for _ in range(100):
            if sock.exists() and run("version", check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"containerd did not start: {(top / 'containerd.log').read_text()[-2000:]}")
        yield run
    finally:
        for line in run("tasks", "ls", "-q", check=False).stdout.split():
            run("tasks", "kill", "-s", "SIGKILL", line, check=False)
            time.sleep(0.5)
            run("tasks", "rm", "-f", line, check=False)
        for line in run("containers", "ls", "-q", check=False).stdout.split():
            run("containers", "rm", line, check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines() if str(top) in ln]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        for d in Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}"):
            d.rmdir()
        shutil.rmtree(top, ignore_errors=True)
        assert not mounts, f"containerd left mounts behind: {mounts}"


def test_every_archive_imports_under_its_name(archives, ctr):
    for a in archives.values():
        ctr("images", "import", str(a.path))
    listed = ctr("images", "ls", "-q").stdout.split()
    assert set(archives) <= set(listed), listed
    assert images.PAUSE_IMAGE in listed
    assert images.kube_proxy_image(VERSION) in listed
    assert "docker.io/library/kpbench:latest" in listed  # what the pods' "kpbench:latest" resolves to
    for name in archives:
        ctr("images", "check", f"name=={name}")
    # CRI saw each import (its ImageCreate event) and made the image its own
    for _ in range(50):
        rows = [ln.split() for ln in ctr("images", "ls").stdout.splitlines()[1:]]
        managed = {r[0] for r in rows if "io.cri-containerd.image=managed" in r[-1]}
        if set(archives) <= managed:
            break
        time.sleep(0.2)
    assert set(archives) <= managed, ctr("images", "ls").stdout


def test_pause_runs_as_65535_and_stops_on_sigterm(archives, ctr):
    ctr("images", "import", str(archives[images.PAUSE_IMAGE].path))
    ctr("run", "-d", "--cgroup", ctr.cgroup("kpb-pause"), images.PAUSE_IMAGE, "kpb-pause")
    try:
        pid = int(ctr("tasks", "ls").stdout.splitlines()[1].split()[1])
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()
        assert uid[1:3] == ["65535", "65535"], status
        ctr("tasks", "kill", "-s", "SIGTERM", "kpb-pause")
        for _ in range(50):
            if "STOPPED" in ctr("tasks", "ls").stdout:
                break
            time.sleep(0.1)
        assert "STOPPED" in ctr("tasks", "ls").stdout
    finally:
        ctr("tasks", "rm", "-f", "kpb-pause", check=False)
        ctr("containers", "rm", "kpb-pause", check=False)


def test_kube_proxy_image_runs_the_release_with_iptables_legacy(archives, ctr):
    name = images.kube_proxy_image(VERSION)
    ctr("images", "import", str(archives[name].path))
    out = ctr.run_in(name, "kpb-kp", "/usr/local/bin/kube-proxy", "--version")
    assert VERSION in out.stdout, out.stdout
    out = ctr.run_in(name, "kpb-ipt", "iptables", "--version")
    assert "(legacy)" in out.stdout, out.stdout
    out = ctr.run_in(
        name, "kpb-tools", "sh", "-c", "for t in nft ipset conntrack ip modprobe; do command -v $t; done"
    )
    assert len(out.stdout.split()) == 5, out.stdout


def test_harness_image_imports_what_its_pods_run(archives, ctr):
    name = "docker.io/library/kpbench:latest"
    ctr("images", "import", str(archives[name].path))
    code = (
        "import harness.measure.agent, harness.cluster.backend, harness.cluster.locust_main, locust, harness;"
        " print(harness.__file__)"
    )
    out = ctr.run_in(name, "kpb-harness", "python", "-c", code)
    assert out.stdout.strip().startswith("/opt/"), out.stdout
    # the locustfile harness.cluster.locust_main hands to locust, where the image installs the source
    locustfile = "/opt/kpbench/harness/cluster/locustfile.py"
    tools = "locust ipvsadm ipset nft iptables-legacy-save conntrack ps ip"
    out = ctr.run_in(
        name, "kpb-tools", "sh", "-c", f"ls {locustfile} && for t in {tools}; do command -v $t; done"
    )
    assert len(out.stdout.split()) == 1 + len(tools.split()), out.stdout


def test_a_work_dir_with_a_leftover_mount_is_removed_without_entering_it(tmp_path):
    """What a killed mmdebstrap leaves (a file system mounted inside its rootfs) is unmounted, and
    what that file system holds is not deleted through the mount."""
    from harness.testcluster import debian

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    work = tmp_path / "work"
    (work / "rootfs" / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(work / "rootfs" / "dev")], check=True)
    try:
        debian.remove_tree(work)
    finally:
        if str(work) in Path("/proc/mounts").read_text():
            subprocess.run(["umount", "-l", str(work / "rootfs" / "dev")], check=False)
    assert not work.exists()
    assert (outside / "keep").read_text() == "host file"
    assert str(work) not in Path("/proc/mounts").read_text()
