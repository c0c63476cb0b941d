"""A real single-node Kubernetes control plane on this machine: etcd + kube-apiserver, and kube-proxy.

Everything runs from upstream binaries built by `make kube` (kube/build.sh, into
~/.cache/kpbench/kube/<version>/bin) or from KUBE_BIN_DIR (official release binaries). Nothing listens in
the host's root network namespace:

* `LocalCluster` creates a namespace `kpb-<tag>-api` with a bridge `kapi0` (10.254.0.1/24 by
  default). etcd listens on 127.0.0.1 there, kube-apiserver on the bridge address. Per-run CA,
  serving certificate, service-account keys and bearer tokens are made with the openssl CLI (or
  the `cryptography` package when it is installed) in a private temp dir.
* Node namespaces (the lab's `kpb-<tag>-node-a`, ...) reach the apiserver through a veth pair
  into that bridge: `LocalCluster.attach_node(netns)`; the veth is created from inside the API
  namespace, so the root namespace never sees it.
* The harness itself talks to the apiserver from threads that have entered the API namespace
  (harness.lab.netns: setns(2) is per thread), so the official kubernetes Python client works
  unchanged (harness.k8s: the endpoint, bulk creation, kube-proxy's config and metrics).

The jobs around it are modules of their own: local_binaries (where the binaries are), local_pki
(certificates), local_procs (processes and health GETs), local_kubeproxy (kube-proxy).

`LocalCluster` is a context manager; `stop()` (also run at interpreter exit and on SIGTERM)
kills every process it started, deletes its namespaces and removes its temp dir.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from harness.k8s.endpoint import ApiEndpoint, write_kubeconfig
from harness.k8s.kubeproxy_config import DEFAULT_CLUSTER_CIDR, HEALTHZ_PORT, METRICS_PORT
from harness.k8s.objects import (
    MANAGED_BY,
    CreateStats,
    create_node,
    create_services,
    endpoint_slice_bodies,
    ensure_namespaces,
    list_names,
    service_body,
)
from harness.lab import netns as lab_netns, registry
from harness.polling import wait_until
from harness.targets.local_binaries import (
    CACHE_ROOT,
    REPO,
    Binaries,
    default_bin_dir,
    find_binaries,
    kube_version,
    pinned_kube_version,
)
from harness.targets.local_kubeproxy import KubeProxy, kube_proxy_cleanup, scrape_metrics, start_kube_proxy
from harness.targets.local_pki import make_pki
from harness.targets.local_procs import LocalClusterError, Proc, http_get, spawn

# what callers of the local target use from here (tests, local_worker, benchmarks)
__all__ = [
    "API_PORT",
    "CACHE_ROOT",
    "DEFAULT_API_CIDR",
    "DEFAULT_CLUSTER_CIDR",
    "ETCD_PORT",
    "GUEST_UPLINK",
    "HEALTHZ_PORT",
    "MANAGED_BY",
    "METRICS_PORT",
    "REPO",
    "ApiEndpoint",
    "Binaries",
    "CreateStats",
    "GuestCluster",
    "KubeProxy",
    "LocalCluster",
    "LocalClusterError",
    "Proc",
    "create_node",
    "create_services",
    "default_bin_dir",
    "endpoint_slice_bodies",
    "ensure_namespaces",
    "find_binaries",
    "http_get",
    "kube_proxy_cleanup",
    "kube_version",
    "list_names",
    "netns_listening",
    "pinned_kube_version",
    "scrape_metrics",
    "service_body",
    "spawn",
    "start_kube_proxy",
]

DEFAULT_API_CIDR = "10.254.0.0/24"  # the API namespace's bridge; clear of pod, service and underlay CIDRs
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
API_PORT = 6443
ETCD_PORT = 2379


def _etcd_major_minor(etcd: Path) -> tuple[int, int]:
    p = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"etcd Version:\s*(\d+)\.(\d+)", p.stdout + p.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class LocalCluster:
    """etcd + kube-apiserver inside namespace `kpb-<tag>-api`; see the module docstring."""

    def __init__(
        self,
        tag: str | None = None,
        *,
        binaries: Binaries | None = None,
        api_cidr: str = DEFAULT_API_CIDR,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        workdir: str | Path | None = None,
        keep_workdir: bool = False,
        etcd_unsafe_no_fsync: bool = True,
        apiserver_args: Sequence[str] = (),
        apiserver_verbosity: int = 1,
        ready_timeout: float = 120.0,
        gogc: int | None = None,
    ):
        self.tag = tag or f"lc{secrets.token_hex(3)}"
        self.binaries = binaries or find_binaries()
        self.netns = lab_netns.ns_name(self.tag, "api")
        net = ipaddress.ip_network(api_cidr)
        self._api_net = net
        self.api_addr = str(net.network_address + 1)
        self.bridge_addr = self.api_addr  # the API bridge's own address (a guest's differs)
        self._next_host = 2
        self.service_cidr = service_cidr
        self.kubernetes_service_ip = str(ipaddress.ip_network(service_cidr).network_address + 1)
        self.server = f"https://{self.api_addr}:{API_PORT}"
        self._workdir_arg = Path(workdir) if workdir else None
        self.keep_workdir = keep_workdir
        self.etcd_unsafe_no_fsync = etcd_unsafe_no_fsync
        self.apiserver_args = list(apiserver_args)
        self.apiserver_verbosity = apiserver_verbosity
        self.ready_timeout = ready_timeout
        # GOGC for etcd and kube-apiserver: memory is cheap here, CPU is not (None: Go's 100)
        self.gogc = gogc if gogc is not None else int(os.environ.get("KPB_KUBE_GOGC", "0")) or None
        self.workdir: Path | None = None
        self.procs: list[Proc] = []
        self.namespaces: list[str] = []  # namespaces this object created (and deletes)
        self.links: dict[str, str] = {}  # node netns -> its address on the API bridge
        self.tokens: dict[str, str] = {}
        self.pki: dict[str, Path] = {}
        self.etcd: Proc | None = None
        self.apiserver: Proc | None = None
        self._stopped = False
        self._lock = threading.Lock()

    # ---- lifecycle

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        _install_cleanup(self)
        if self._workdir_arg:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix=f"kpb-{self.tag}-", dir=self._workdir_arg))
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"kpb-{self.tag}-"))
        os.chmod(self.workdir, 0o700)
        self._register()
        self._make_namespace()
        self._make_credentials()
        self._start_etcd()
        self._start_apiserver()
        self._register()
        return self

    def stop(self) -> None:
        """Kill every process, delete every namespace, remove the temp dir. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for p in reversed(self.procs):
            try:
                p.stop()
            except (
                subprocess.TimeoutExpired
            ):  # alive even after SIGKILL: stop the rest; the namespace goes below
                pass
        for ns in reversed(self.namespaces):
            lab_netns.delete(ns)  # also kills anything still inside
        # the veth peers in node namespaces vanish with the API namespace
        if self.workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        registry.unregister("localcluster", self.tag)
        _cleanup_objects.discard(self)

    def keep_logs(self, dest: Path, prefix: str = "") -> None:
        """Copy the work dir's logs (etcd, kube-apiserver, kube-proxy) to `dest` before stop()
        removes them; a failure to copy is not worth an error."""
        if self.workdir is None:
            return
        try:
            dest.mkdir(exist_ok=True)
            for f in self.workdir.glob("*.log"):
                shutil.copy(f, dest / f"{prefix}{f.name}")
        except OSError:
            pass

    def _register(self) -> None:
        try:
            registry.register(
                "localcluster",
                self.tag,
                namespaces=list(self.namespaces),
                pids=[p.popen.pid for p in self.procs],
                paths=[str(self.workdir)] if self.workdir else [],
            )
        except OSError:
            pass

    # ---- namespace and links

    def _make_namespace(self) -> None:
        if self.netns in lab_netns.list_namespaces():
            raise LocalClusterError(f"namespace {self.netns} already exists (a leftover? `kpbench clean`)")
        lab_netns.create(self.netns)
        self.namespaces.append(self.netns)
        ns = self.netns
        lab_netns.run(ns, ["ip", "link", "add", "kapi0", "type", "bridge"])
        lab_netns.run(
            ns, ["ip", "addr", "add", f"{self.bridge_addr}/{self._api_net.prefixlen}", "dev", "kapi0"]
        )
        lab_netns.run(ns, ["ip", "link", "set", "kapi0", "up"])

    def add_tap(self, name: str = "kt0") -> str:
        """A TAP device `name` on the API bridge, for a UML guest started inside this namespace
        (kernel argument `vec0:transport=tap,ifname=<name>`); it goes with the namespace."""
        lab_netns.run(self.netns, ["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        lab_netns.run(self.netns, ["ip", "link", "set", name, "master", "kapi0", "up"])
        return name

    def write_connection(self) -> Path:
        """What a guest needs to use this control plane (see GuestCluster), as a JSON file in the
        work dir: it holds the tokens, and goes with the work dir."""
        assert self.workdir
        path = self.workdir / "connection.json"
        path.write_text(
            json.dumps(
                {
                    "server": self.server,
                    "ca_file": str(self.pki["ca_crt"]),
                    "tokens": self.tokens,
                    "api_cidr": str(self._api_net),
                    "service_cidr": self.service_cidr,
                    "binaries": {
                        "etcd": str(self.binaries.etcd),
                        "kube_apiserver": str(self.binaries.kube_apiserver),
                        "kube_proxy": str(self.binaries.kube_proxy),
                    },
                }
            )
        )
        os.chmod(path, 0o600)
        return path

    def attach_node(self, node_netns: str, addr: str | None = None, ifname: str = "kapi0") -> str:
        """Give namespace `node_netns` a veth `ifname` on the API bridge; returns its address.

        The pair is created from inside the API namespace with its peer moved straight into the
        node namespace, so nothing appears in the root namespace even for an instant.
        """
        if node_netns in self.links:
            return self.links[node_netns]
        if addr is None:
            addr = str(self._api_net.network_address + self._next_host)
            self._next_host += 1
        idx = len(self.links)
        host_if = f"kn{idx}"
        lab_netns.run(
            self.netns,
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ifname, "netns", node_netns],
        )
        lab_netns.run(self.netns, ["ip", "link", "set", host_if, "master", "kapi0", "up"])
        lab_netns.run(node_netns, ["ip", "addr", "add", f"{addr}/{self._api_net.prefixlen}", "dev", ifname])
        lab_netns.run(node_netns, ["ip", "link", "set", ifname, "up"])
        self.links[node_netns] = addr
        return addr

    # ---- credentials

    def _make_credentials(self) -> None:
        assert self.workdir
        self.pki = make_pki(
            self.workdir / "pki",
            san_ips=[self.api_addr, self.kubernetes_service_ip, "127.0.0.1"],
            san_dns=[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ],
        )
        self.tokens = {"admin": secrets.token_urlsafe(32), "kube-proxy": secrets.token_urlsafe(32)}
        # token,user,uid,"group1,group2" - admin is in system:masters (RBAC superuser);
        # kube-proxy is the user the bootstrap policy binds to ClusterRole system:node-proxier.
        lines = [
            f'{self.tokens["admin"]},kpbench-admin,kpbench-admin,"system:masters"',
            f'{self.tokens["kube-proxy"]},system:kube-proxy,system:kube-proxy,"system:authenticated"',
        ]
        tf = self.workdir / "tokens.csv"
        tf.write_text("\n".join(lines) + "\n")
        os.chmod(tf, 0o600)

    def kubeconfig(self, user: str = "admin") -> Path:
        """Write (once) and return a kubeconfig for `user` ("admin" or "kube-proxy")."""
        assert self.workdir
        path = self.workdir / f"kubeconfig-{user}.json"
        if not path.exists():
            write_kubeconfig(
                path,
                self.server,
                self.pki["ca_crt"],
                self.tokens[user],
                user="kpbench-admin" if user == "admin" else f"system:{user}",
            )
        return path

    @property
    def api(self) -> ApiEndpoint:
        return ApiEndpoint(
            host=self.server, ca_file=str(self.pki["ca_crt"]), token=self.tokens["admin"], netns=self.netns
        )

    # ---- etcd and apiserver

    def _start_etcd(self) -> None:
        assert self.workdir
        data = self.workdir / "etcd"
        url = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        argv = [
            str(self.binaries.etcd),
            "--name",
            "kpb",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"kpb={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
            "--quota-backend-bytes",
            str(8 * 1024**3),
        ]
        major_minor = _etcd_major_minor(self.binaries.etcd)
        if self.etcd_unsafe_no_fsync and major_minor >= (3, 5):
            argv.append("--unsafe-no-fsync")  # throwaway data: fsync would only measure the disk
        self.etcd = self._spawn("etcd", argv)

        def alive() -> None:
            assert self.etcd is not None
            if not self.etcd.alive():
                raise LocalClusterError(
                    f"etcd exited with {self.etcd.popen.returncode}:\n{self.etcd.failure()}"
                )

        def healthy() -> bool:
            status, body = http_get(self.netns, "127.0.0.1", ETCD_PORT, "/health", timeout=2)
            return status == 200 and b'"health":"true"' in body

        if not wait_until(healthy, 30, 0.2, alive=alive):
            raise LocalClusterError(f"etcd not healthy after 30 s:\n{self.etcd.failure()}")

    def _start_apiserver(self) -> None:
        assert self.workdir
        pki = self.pki
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            f"--bind-address={self.api_addr}",
            f"--advertise-address={self.api_addr}",
            f"--secure-port={API_PORT}",
            f"--tls-cert-file={pki['crt']}",
            f"--tls-private-key-file={pki['key']}",
            f"--client-ca-file={pki['ca_crt']}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount",
            f"--v={self.apiserver_verbosity}",
            *self.apiserver_args,
        ]
        self.apiserver = apiserver = self._spawn("kube-apiserver", argv)

        def alive() -> None:
            if not apiserver.alive():
                raise LocalClusterError(
                    f"kube-apiserver exited with {apiserver.popen.returncode}:\n{apiserver.failure()}"
                )

        last = self._wait_readyz(self.api_addr, self.ready_timeout, attempt_timeout=3, alive=alive)
        if last is not None:
            raise LocalClusterError(
                f"kube-apiserver not ready after {self.ready_timeout:.0f} s ({last}); "
                f"log:\n{self.apiserver.failure()}"
            )

    def _wait_readyz(self, host: str, timeout: float, attempt_timeout: float, alive=None) -> str | None:
        """Poll https://<host>:6443/readyz from the API namespace until it answers 200 (returns
        None) or `timeout` passes (returns the last answer or error); `alive()` first, each round."""
        tls = ssl.create_default_context(cafile=str(self.pki["ca_crt"]))
        last = ""

        def ready() -> bool:
            nonlocal last
            try:
                status, body = http_get(
                    self.netns,
                    host,
                    API_PORT,
                    "/readyz",
                    tls=tls,
                    token=self.tokens["admin"],
                    timeout=attempt_timeout,
                )
            except OSError as e:
                last = f"/readyz: {e}"
                return False
            last = f"/readyz {status}: {body.decode(errors='replace')[-600:]}"
            return status == 200

        return None if wait_until(ready, timeout, 0.25, alive=alive) else last

    def _spawn(self, name: str, argv: Sequence[str], netns: str | None = None) -> Proc:
        assert self.workdir
        env = None
        if self.gogc:
            env = {**os.environ, "GOGC": str(self.gogc)}
        p = spawn(name, argv, netns or self.netns, self.workdir / f"{name}.log", env=env)
        self.procs.append(p)
        self._register()
        return p

    # ---- kube-proxy on a node of this cluster

    def start_kube_proxy(self, node_netns: str, node_name: str, mode: str, **kw) -> KubeProxy:
        """Attach `node_netns` to the API bridge (once) and run kube-proxy for `node_name` there."""
        assert self.workdir
        self.attach_node(node_netns)
        cfg = self.workdir / f"kube-proxy-{node_name}.json"
        kw.setdefault("binary", self.binaries.kube_proxy)  # a version sweep passes its release's
        kp = start_kube_proxy(self.kubeconfig("kube-proxy"), mode, node_name, node_netns, cfg, **kw)
        self.procs.append(kp.proc)
        self._register()
        return kp

    def check_alive(self) -> None:
        for p in (self.etcd, self.apiserver):
            if p is not None and not p.alive():
                raise LocalClusterError(f"{p.name} died (exit {p.popen.returncode}):\n{p.failure()}")


GUEST_UPLINK = "vec0"  # the UML guest's side of the TAP device (vector transport)


class GuestCluster(LocalCluster):
    """A LocalCluster's control plane seen from inside a UML guest.

    The host runs etcd + kube-apiserver (LocalCluster) and gives its API bridge a TAP device; the
    guest boots inside the API namespace with that TAP as its `vec0`. Here, in the guest, the same
    namespace name `kpb-<tag>-api` holds a bridge `kapi0` with vec0 on it, so node namespaces are
    attached exactly as on the host and reach the apiserver at the host's address. Nothing but
    kube-proxy runs here; stop() removes the guest's namespace, processes and work dir.
    """

    def __init__(self, connection: str | Path, tag: str, *, guest_host: int = 250):
        c = json.loads(Path(connection).read_text())
        b = c["binaries"]
        super().__init__(
            tag,
            binaries=Binaries(
                etcd=Path(b["etcd"]),
                kube_apiserver=Path(b["kube_apiserver"]),
                kube_proxy=Path(b["kube_proxy"]),
            ),
            api_cidr=c["api_cidr"],
            service_cidr=c["service_cidr"],
        )
        self.server = c["server"]
        self.bridge_addr = str(self._api_net.network_address + guest_host)
        self._next_host = guest_host + 1
        self.tokens = dict(c["tokens"])
        self._ca_file = Path(c["ca_file"])

    def start(self, ready_timeout: float = 60.0) -> GuestCluster:
        _install_cleanup(self)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kpb-{self.tag}-"))
        os.chmod(self.workdir, 0o700)
        self.pki = {"ca_crt": self._ca_file}
        self._register()
        self._make_namespace()
        try:
            lab_netns.run(None, ["ip", "link", "set", GUEST_UPLINK, "netns", self.netns])
        except lab_netns.LabError as e:
            raise LocalClusterError(
                f"the guest has no {GUEST_UPLINK} (the TAP link to the host's API namespace): {e}"
            ) from None
        lab_netns.run(self.netns, ["ip", "link", "set", GUEST_UPLINK, "master", "kapi0", "up"])
        host = self.server.split("//", 1)[1].rsplit(":", 1)[0]
        last = self._wait_readyz(host, ready_timeout, attempt_timeout=5)
        if last is not None:
            raise LocalClusterError(
                f"the host's kube-apiserver {self.server} is not reachable from the UML "
                f"guest after {ready_timeout:.0f} s ({last})"
            )
        return self


# --------------------------------------------------------------------------------------------
# cleanup at exit and on SIGTERM

_cleanup_objects: set = set()
_cleanup_installed = False


def _install_cleanup(obj) -> None:
    global _cleanup_installed
    _cleanup_objects.add(obj)
    if _cleanup_installed:
        return
    _cleanup_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):

        def on_term(signum, frame):
            _stop_all()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)


def _stop_all() -> None:
    for obj in list(_cleanup_objects):
        try:
            obj.stop()
        except (
            OSError,
            subprocess.SubprocessError,
        ):  # at exit: stop the others; `kpbench clean` gets the rest
            pass


def netns_listening(netns: str | None) -> set[int]:
    """TCP ports listening in `netns` (for checks that nothing leaked into another namespace)."""
    p = lab_netns.run(netns, ["ss", "-Htln"], check=False)
    ports = set()
    for line in p.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            try:
                ports.add(int(cols[3].rsplit(":", 1)[1]))
            except (ValueError, IndexError):
                pass
    return ports
