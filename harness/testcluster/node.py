"""One test cluster node: its cgroup root, a private mount namespace, its own containerd and its
own kubelet, all inside the node's network namespace.

Why a mount namespace per node: kubelet's device-plugin socket path is fixed
(/var/lib/kubelet/device-plugins/kubelet.sock), kubelet links container logs into
/var/log/containers, libcni caches results in /var/lib/cni and containerd's shims put their
sockets in /run/containerd/s: two nodes would collide there, and all would write on the host. A
holder process (`sleep infinity`, started under `unshare --mount` in the node's network
namespace) bind-mounts a per-node directory over each of those; containerd and kubelet join its
mount namespace, so the mounts they make (overlay rootfs, volumes, pod network namespaces) stay
there and vanish with it at `cluster down`. The host only gets the empty mount points
(HOST_DIRS), made if missing and removed if they were.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

from harness.lab import netns as lab_netns
from harness.polling import wait_until
from harness.targets.local_procs import LocalClusterError, Proc, spawn
from harness.testcluster.plan import ClusterPlan, Names, NodePlan

# host path -> the node directory's subdirectory bind-mounted over it in the node's mount namespace
HOST_DIRS: dict[str, str] = {
    "/var/lib/kubelet/device-plugins": "device-plugins",
    "/var/log/containers": "container-logs",
    "/var/lib/cni": "cni-cache",
    "/run/containerd": "run-containerd",
}
# hostPath volumes of kubeadm's kube-proxy DaemonSet that must exist (read-only, empty is fine)
LIB_MODULES = "/lib/modules"
KUBELET_HEALTHZ_PORT = 10248


def cgroup_mounts(mountinfo: str | None = None, *, v2: bool = False) -> list[Path]:
    """Mount points of the cgroup v1 hierarchies (cpu, memory, ..., name=systemd); with `v2` also
    the cgroup2 mount (hybrid here: runc creates each container's cgroup there too)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    kinds = ("cgroup", "cgroup2") if v2 else ("cgroup",)
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] and right.split()[0] in kinds:
            out.append(Path(left.split()[4]))
    return out


def make_cgroups(node: NodePlan) -> None:
    """kubelet's cgroupRoot in every v1 hierarchy; cpuset's cpus and mems copied from the
    parent at each level (a new cpuset cgroup starts empty and takes no tasks)."""
    for mount in cgroup_mounts():
        level = mount
        for part in node.cgroup_root.strip("/").split("/"):
            parent, level = level, level / part
            level.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):
                src, dst = parent / f, level / f
                if src.exists() and not dst.read_text().strip():
                    dst.write_text(src.read_text().strip() or "\n")


def render_containerd_config(node: NodePlan, *, pause_image: str, runc: Path, cni_bin_dir: Path) -> str:
    """containerd v2 config (version 3): own root, state, sockets, runc root, CNI conf dir; CRI as
    this machine allows (cgroupfs, no AppArmor, no lowering of oom_score_adj); NRI off (its
    socket path is fixed)."""
    d = node.dir
    q = json.dumps  # a TOML basic string is a JSON string
    return f"""version = 3
root = {q(str(containerd_root(node)))}
state = {q(str(d / "containerd" / "state"))}

[grpc]
  address = {q(str(node.containerd_socket))}

[ttrpc]
  address = {q(str(node.containerd_socket) + ".ttrpc")}

[plugins."io.containerd.internal.v1.opt"]
  path = {q(str(d / "containerd" / "opt"))}

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {q(pause_image)}

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {q(str(runc))}
        Root = {q(str(d / "runc"))}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{q(str(cni_bin_dir))}]
    conf_dir = {q(str(d / "cni" / "net.d"))}
    max_conf_num = 1
"""


def render_cni_config(node: NodePlan) -> dict:
    """The node's pod network: a bridge `cni0` with the pod gateway, host-local addresses from the
    node's pod CIDR (state in the node directory), portmap for hostPorts."""
    return {
        "cniVersion": "1.0.0",
        "name": "kpbtc",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.dir / "cni" / "ipam"),
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def render_kubelet_config(node: NodePlan, *, ca_file: Path) -> dict:
    """KubeletConfiguration for this machine: cgroup v1 with the cgroupfs driver, the node's
    cgroup root, pod logs and volume plugins in the node directory, kernel defaults left to
    kubelet (the sysctls it sets are restored at down), x509 + webhook auth for the apiserver,
    image GC off (the images cannot be pulled again), evictions only when nearly full."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "podLogsDir": str(node.short_dir / "pod-logs"),
        "volumePluginDir": str(node.short_dir / "volume-plugins"),
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": False,
    }


def holder_script(node: NodePlan) -> str:
    """The shell line the mount-namespace holder runs: a tmpfs for containerd's root, the node's
    directories bound over the shared host paths and on its short path, then sleep."""
    pairs = [(node.dir / sub, host) for host, sub in HOST_DIRS.items()] + [(node.dir, str(node.short_dir))]
    binds = [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in pairs]
    ram = f"mount -t tmpfs -o mode=0700 kpbtc-images {shlex.quote(str(containerd_root(node)))}"
    return " && ".join([ram, *binds, "exec sleep infinity"])


def containerd_root(node: NodePlan) -> Path:
    """containerd's root (content store, unpacked images): a tmpfs in the node's mount namespace,
    so the images vanish with the node; deleting them from this disk (mounted with online
    discard) took over a minute per cluster."""
    return node.dir / "containerd" / "root"


class Node:
    """The processes of one node; every pid goes to the cluster's state file via `record`."""

    def __init__(self, plan: ClusterPlan, node: NodePlan, binaries, record):
        self.plan = plan
        self.node = node
        self.binaries = binaries
        self.record = record  # record(name, pid)
        self.holder: Proc | None = None
        self.containerd: Proc | None = None
        self.kubelet: Proc | None = None

    def prepare(self, *, pause_image: str, ca_file: Path, kubeconfig: Path) -> None:
        """Directories and configuration files of the node (nothing started)."""
        d = self.node.dir
        for sub in (
            *HOST_DIRS.values(),
            "containerd/root",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "kubelet-certs",
            "pod-logs",
            "volume-plugins",
            "logs",
        ):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.node.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
        self.node.short_dir.mkdir(parents=True, exist_ok=True)
        (d / "containerd" / "config.toml").write_text(
            render_containerd_config(
                self.node,
                pause_image=pause_image,
                runc=self.binaries.runc,
                cni_bin_dir=self.binaries.cni_bin_dir,
            )
        )
        (d / "cni" / "net.d" / "10-kpbtc.conflist").write_text(
            json.dumps(render_cni_config(self.node), indent=1)
        )
        (d / "kubelet-config.yaml").write_text(
            json.dumps(render_kubelet_config(self.node, ca_file=ca_file), indent=1)
        )
        self.kubeconfig = kubeconfig
        make_cgroups(self.node)

    def _log(self, name: str) -> Path:
        return self.node.dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        p = spawn(name, argv, None, self._log(name), env=env)
        self.record(f"{self.node.name}/{name}", p.popen.pid)
        return p

    def _enter(self) -> list[str]:
        assert self.holder is not None
        return [
            "nsenter",
            f"--net={lab_netns.NETNS_DIR}/{self.node.netns}",
            f"--mount=/proc/{self.holder.popen.pid}/ns/mnt",
            "--",
        ]

    def start_holder(self) -> None:
        argv = [
            "nsenter",
            f"--net={lab_netns.NETNS_DIR}/{self.node.netns}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            holder_script(self.node),
        ]
        self.holder = self._spawn("mount-holder", argv)

        def alive() -> None:
            assert self.holder is not None
            if not self.holder.alive():
                raise LocalClusterError(
                    f"{self.node.name}: the mount namespace holder exited:\n{self.holder.log_tail(10)}"
                )

        def started() -> bool:
            assert self.holder is not None
            return Path(f"/proc/{self.holder.popen.pid}/cmdline").read_bytes().startswith(b"sleep")

        if not wait_until(started, 10, 0.05, alive=alive):
            raise LocalClusterError(f"{self.node.name}: the mount namespace holder did not start")

    def start_containerd(self, timeout: float = 60.0) -> None:
        b = self.binaries
        env = {**os.environ, "PATH": f"{b.containerd.parent}:{b.runc.parent}:/usr/sbin:/usr/bin:/sbin:/bin"}
        cfg = self.node.dir / "containerd" / "config.toml"
        self.containerd = self._spawn(
            "containerd", [*self._enter(), str(b.containerd), "--config", str(cfg)], env
        )

        def alive() -> None:
            assert self.containerd is not None
            if not self.containerd.alive():
                raise LocalClusterError(
                    f"{self.node.name}: containerd exited with {self.containerd.popen.returncode}:\n"
                    f"{self.containerd.failure()}"
                )

        def answering() -> bool:
            return self.node.containerd_socket.exists() and self.ctr(["version"], check=False).returncode == 0

        if not wait_until(answering, timeout, 0.2, alive=alive):
            raise LocalClusterError(
                f"{self.node.name}: containerd not answering after {timeout:.0f} s:\n{self.containerd.failure()}"
            )

    def ctr(
        self, args: list[str], *, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [
                str(self.binaries.ctr),
                "--address",
                str(self.node.containerd_socket),
                "--namespace",
                "k8s.io",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise LocalClusterError(
                f"{self.node.name}: ctr {' '.join(args[:2])} failed: {p.stderr.strip()[-800:]}"
            )
        return p

    def import_image(self, archive: Path) -> None:
        self.ctr(["images", "import", str(archive)])

    def start_kubelet(self) -> None:
        n = self.node
        argv = [
            *self._enter(),
            str(self.binaries.kubelet),
            f"--config={n.dir / 'kubelet-config.yaml'}",
            f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={n.short_dir / 'kubelet'}",  # paths as seen in the node's mount namespace
            f"--cert-dir={n.short_dir / 'kubelet-certs'}",
            f"--hostname-override={n.name}",
            f"--node-ip={n.ip}",
            "--v=1",
        ]
        self.kubelet = self._spawn("kubelet", argv)

    def check_alive(self) -> None:
        for p in (self.holder, self.containerd, self.kubelet):
            if p is not None and not p.alive():
                raise LocalClusterError(
                    f"{self.node.name}: {p.name} exited with {p.popen.returncode}:\n{p.failure()}"
                )


def cgroup_dirs(names: Names) -> list[Path]:
    """The test cluster's cgroup directory in every hierarchy (v1 and v2) that has one."""
    parent = names.cgroup_parent
    return [m / parent for m in cgroup_mounts(v2=True) if (m / parent).is_dir()]
