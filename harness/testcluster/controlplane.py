"""The test cluster's control plane: etcd and kube-apiserver exactly as the local target starts
them (targets.localcluster.LocalCluster, in namespace kpbtc-api on bridge kapi0), plus
kube-controller-manager and kube-scheduler, each with its own identity.

What differs from the local target: the processes outlive the command that started them (no
exit handler stops them; `kpbench cluster down` does, from the state file), every pid is recorded
in that file, there are tokens for the controllers and one per node (group system:nodes, bound to
ClusterRole system:node), and the apiserver has a client certificate kubelets accept (exec, logs,
node proxy)."""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.lab import netns as lab_netns, registry
from harness.polling import wait_until
from harness.targets.local_binaries import Binaries
from harness.targets.local_procs import LocalClusterError, Proc, http_get
from harness.targets.localcluster import LocalCluster
from harness.testcluster.plan import ClusterPlan
from harness.testcluster.state import StateFile

if TYPE_CHECKING:
    from harness.testcluster.artifacts import ClusterBinaries

KCM_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"
NODES_BINDING = "kpbench:nodes"  # ClusterRoleBinding: group system:nodes -> ClusterRole system:node


def node_user(node: str) -> str:
    """The token user key of a node's kubelet (kubeconfig(user) names it system:<key>)."""
    return f"node:{node}"


class ControlPlane(LocalCluster):
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler in `plan.api_netns`."""

    def __init__(self, plan: ClusterPlan, binaries: ClusterBinaries, state: StateFile):
        super().__init__(
            "testcluster",
            binaries=Binaries(
                etcd=binaries.etcd, kube_apiserver=binaries.kube_apiserver, kube_proxy=binaries.kube_proxy
            ),
            api_cidr=plan.underlay_cidr,
            service_cidr=plan.service_cidr,
            workdir=plan.dir,
            keep_workdir=True,
            apiserver_args=["--kubelet-preferred-address-types=InternalIP"],
        )
        self.netns = plan.api_netns
        self.plan = plan
        self.cluster_binaries = binaries
        self.state = state
        self.kcm: Proc | None = None
        self.scheduler: Proc | None = None

    def start(self) -> ControlPlane:
        """Namespace, credentials, etcd, kube-apiserver, then the controllers. Unlike
        LocalCluster.start, no exit handler: the cluster stays up until `cluster down`."""
        self.workdir = Path(tempfile.mkdtemp(prefix="controlplane-", dir=self.plan.dir))
        os.chmod(self.workdir, 0o700)
        self._make_namespace()
        self._make_credentials()
        self._start_etcd()
        self._start_apiserver()
        self._start_controllers()
        return self

    # ---- LocalCluster hooks

    def _register(self) -> None:
        """Nothing in kpbench's run registry: `kpbench clean` would remove the work dir of a
        cluster whose starting command has exited. The state file records everything."""

    def _make_namespace(self) -> None:
        if os.path.exists(f"{lab_netns.NETNS_DIR}/{self.netns}"):  # not ours: never recorded, never removed
            raise LocalClusterError(f"namespace {self.netns} already exists: another test cluster is up")
        self.state.add("namespaces", self.netns)
        super()._make_namespace()
        registry.unregister("netns", self.netns)

    def _make_credentials(self) -> None:
        super()._make_credentials()
        assert self.workdir
        extra = {"kube-controller-manager": "", "kube-scheduler": ""}
        extra.update({node_user(n.name): "system:nodes" for n in self.plan.nodes})
        lines = []
        for user, group in extra.items():
            token = secrets.token_urlsafe(32)
            self.tokens[user] = token
            lines.append(
                f'{token},system:{user},system:{user},"{group}"'
                if group
                else f"{token},system:{user},system:{user}"
            )
        with open(self.workdir / "tokens.csv", "a") as f:
            f.write("\n".join(lines) + "\n")
        crt, key = client_cert(
            self.workdir / "pki", self.pki["ca_crt"], self.pki["ca_key"], KUBELET_CLIENT_CN, "system:masters"
        )
        self.pki["kubelet_client_crt"], self.pki["kubelet_client_key"] = crt, key
        self.apiserver_args += [f"--kubelet-client-certificate={crt}", f"--kubelet-client-key={key}"]

    def _spawn(self, name: str, argv: Sequence[str], netns: str | None = None) -> Proc:
        p = super()._spawn(name, argv, netns)
        self.state.add_proc(name, p.popen.pid)
        return p

    # ---- controllers

    def _start_controllers(self) -> None:
        assert self.workdir
        b, pki = self.cluster_binaries, self.pki
        self.kcm = self._spawn(
            "kube-controller-manager",
            [
                str(b.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig('kube-controller-manager')}",
                f"--service-account-private-key-file={pki['sa_key']}",
                f"--root-ca-file={pki['ca_crt']}",
                "--use-service-account-credentials=true",
                "--allocate-node-cidrs=false",  # each node's podCIDR is set when its Node is created
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.scheduler = self._spawn(
            "kube-scheduler",
            [
                str(b.kube_scheduler),
                f"--kubeconfig={self.kubeconfig('kube-scheduler')}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for proc, port in ((self.kcm, KCM_PORT), (self.scheduler, SCHEDULER_PORT)):

            def healthy(port: int = port) -> bool:
                status, _ = http_get(self.netns, "127.0.0.1", port, "/healthz", tls=insecure, timeout=2)
                return status == 200

            def alive(proc: Proc = proc) -> None:
                if not proc.alive():
                    raise LocalClusterError(
                        f"{proc.name} exited with {proc.popen.returncode}:\n{proc.failure()}"
                    )

            if not wait_until(healthy, 60, 0.3, alive=alive):
                raise LocalClusterError(f"{proc.name} not healthy after 60 s:\n{proc.failure()}")

    def check_alive(self) -> None:
        for p in (self.etcd, self.apiserver, self.kcm, self.scheduler):
            if p is not None and not p.alive():
                raise LocalClusterError(f"{p.name} died (exit {p.popen.returncode}):\n{p.failure()}")


def client_cert(d: Path, ca_crt: Path, ca_key: Path, cn: str, org: str) -> tuple[Path, Path]:
    """A client certificate (CN=`cn`, O=`org`) signed by the cluster's CA (openssl CLI)."""
    key, csr, crt, ext = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.crt", d / f"{cn}.ext"
    ext.write_text("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    for argv in (
        ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/O={org}/CN={cn}"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(crt), "-days", "365", "-extfile", str(ext)],
    ):  # fmt: skip
        p = subprocess.run(["openssl", *argv], cwd=d, capture_output=True, text=True)
        if p.returncode != 0:
            raise LocalClusterError(f"openssl {argv[0]} for {cn} failed: {p.stderr.strip()[:500]}")
    os.chmod(key, 0o600)
    return crt, key


def bind_nodes_role(rest) -> None:
    """Let kubelets (group system:nodes) act as nodes: RBAC's system:node role, as clusters did
    before the Node authorizer (this cluster has one kubelet per node and no untrusted nodes)."""
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NODES_BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
    }
    rest.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body)
