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
  (`in_netns`: setns(2) is per thread), so the official kubernetes Python client works unchanged.

`LocalCluster` is a context manager; `stop()` (also run at interpreter exit and on SIGTERM)
kills every process it started, deletes its namespaces and removes its temp dir.
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
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
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.lab import netns as lab_netns
from harness.lab import registry
from harness.modes import MODES, SectionOptions, all_modes

REPO = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO / "kube"
CLONE_NEWNET = 0x40000000

DEFAULT_API_CIDR = "10.254.0.0/24"  # the API namespace's bridge; clear of pod, service and underlay CIDRs
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
API_PORT = 6443
ETCD_PORT = 2379
METRICS_PORT = 10249
HEALTHZ_PORT = 10256
MANAGED_BY = "kpbench"


class LocalClusterError(lab_netns.LabError):
    """The local control plane could not be built, started or used; the message says why."""


# --------------------------------------------------------------------------------------------
# binaries


def kube_version() -> str:
    """$KUBE_VERSION if set (as `make kube KUBE_VERSION=...` builds it), else the
    k8s.io/kubernetes version pinned in kube/go.mod (e.g. "v1.34.12")."""
    env = os.environ.get("KUBE_VERSION", "").strip()
    if env:
        return env if env.startswith("v") else f"v{env}"
    return pinned_kube_version()


def pinned_kube_version() -> str:
    try:
        text = (KUBE_DIR / "go.mod").read_text()
    except OSError as e:
        raise LocalClusterError(f"cannot read {KUBE_DIR / 'go.mod'}: {e}") from None
    m = re.search(r"^\s*k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    if not m:
        raise LocalClusterError("kube/go.mod does not require k8s.io/kubernetes")
    return m.group(1)


CACHE_ROOT = Path(os.environ.get("KPBENCH_CACHE")
                  or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpbench")


def default_bin_dir() -> Path:
    """Where `make kube` puts the binaries: outside the work tree, so fresh clones reuse them."""
    return CACHE_ROOT / "kube" / kube_version() / "bin"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_proxy: Path

    def version(self, which: str) -> str:
        exe = {"etcd": self.etcd, "kube-apiserver": self.kube_apiserver, "kube-proxy": self.kube_proxy}[which]
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""


def find_binaries(bin_dir: str | Path | None = None) -> Binaries:
    """Locate etcd, kube-apiserver and kube-proxy.

    Order: `bin_dir`, then $KUBE_BIN_DIR, then the `make kube` cache. etcd may also come from
    $KUBE_ETCD or PATH (e.g. Debian's etcd-server) when none of those has it.
    """
    dirs = [Path(d) for d in (bin_dir, os.environ.get("KUBE_BIN_DIR")) if d]
    dirs.append(default_bin_dir())

    def pick(name: str) -> Path | None:
        for d in dirs:
            p = d / name
            if p.is_file() and os.access(p, os.X_OK):
                return p
        return None

    api, proxy = pick("kube-apiserver"), pick("kube-proxy")
    etcd = Path(os.environ["KUBE_ETCD"]) if os.environ.get("KUBE_ETCD") else pick("etcd")
    if etcd is None and shutil.which("etcd"):
        etcd = Path(shutil.which("etcd"))  # type: ignore[arg-type]
    missing = [n for n, p in (("etcd", etcd), ("kube-apiserver", api), ("kube-proxy", proxy)) if p is None]
    if missing:
        built = sorted(p.parent.parent.name for p in (CACHE_ROOT / "kube").glob("v*/bin/kube-apiserver"))
        hint = f" (built here: {', '.join(built)}; select one with KUBE_VERSION)" if built else ""
        raise LocalClusterError(
            f"{', '.join(missing)} not found in {', '.join(str(d) for d in dirs)}: run `make kube` "
            f"(kube/build.sh) or point KUBE_BIN_DIR at official release binaries{hint}")
    return Binaries(etcd=etcd, kube_apiserver=api, kube_proxy=proxy)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# per-thread network namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def in_netns(name: str | None):
    """Run the body with *this thread* in network namespace `name` (None: stay where we are).

    Sockets opened inside keep living in that namespace after the thread comes back, so a
    connection pool filled here can be used from anywhere.
    """
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(f"{lab_netns.NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LocalClusterError(f"network namespace {name} does not exist") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _enter_netns_forever(name: str | None) -> None:
    """ThreadPoolExecutor initializer: the worker thread lives in `name` for good."""
    if name is None:
        return
    fd = os.open(f"{lab_netns.NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# certificates and tokens


def _openssl(args: Sequence[str], cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise LocalClusterError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()[:1000]}")


def make_pki(d: Path, *, san_ips: Sequence[str], san_dns: Sequence[str]) -> dict[str, Path]:
    """CA, apiserver serving cert/key, service-account key pair: PEM files in `d` (mode 0600)."""
    d.mkdir(parents=True, exist_ok=True)
    files = {k: d / v for k, v in {
        "ca_key": "ca.key", "ca_crt": "ca.crt", "key": "apiserver.key", "crt": "apiserver.crt",
        "sa_key": "sa.key", "sa_pub": "sa.pub"}.items()}
    try:
        _make_pki_cryptography(files, san_ips, san_dns)
    except ImportError:
        _make_pki_openssl(d, files, san_ips, san_dns)
    for p in files.values():
        os.chmod(p, 0o600)
    return files


def _make_pki_openssl(d: Path, f: dict[str, Path], san_ips: Sequence[str], san_dns: Sequence[str]) -> None:
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", str(f["ca_key"]), "-out", str(f["ca_crt"]), "-days", "7",
              "-subj", "/CN=kpbench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    san = ",".join([f"IP:{ip}" for ip in san_ips] + [f"DNS:{n}" for n in san_dns])
    ext = d / "apiserver.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n")
    csr = d / "apiserver.csr"
    _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", str(f["key"]), "-out", str(csr), "-subj", "/CN=kube-apiserver"], d)
    _openssl(["x509", "-req", "-in", str(csr), "-CA", str(f["ca_crt"]), "-CAkey", str(f["ca_key"]),
              "-CAcreateserial", "-out", str(f["crt"]), "-days", "7", "-extfile", str(ext)], d)
    _openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(f["sa_key"])], d)
    _openssl(["pkey", "-in", str(f["sa_key"]), "-pubout", "-out", str(f["sa_pub"])], d)


def _make_pki_cryptography(f: dict[str, Path], san_ips: Sequence[str], san_dns: Sequence[str]) -> None:
    import datetime

    from cryptography import x509  # ImportError: the openssl CLI is used instead
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpbench-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips] + [x509.DNSName(n) for n in san_dns]
    crt = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
           .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now).not_valid_after(later)
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    f["ca_key"].write_bytes(pem_key(ca_key))
    f["ca_crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    f["key"].write_bytes(pem_key(key))
    f["crt"].write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    f["sa_key"].write_bytes(pem_key(sa))
    f["sa_pub"].write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "kpbench") -> Path:
    """A kubeconfig (JSON, which is YAML) with one cluster, one token user, one context."""
    import base64

    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kpbench", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kpbench", "context": {"cluster": "kpbench", "user": user}}],
        "current-context": "kpbench",
    }
    path.write_text(json.dumps(cfg, indent=1))
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------------------------
# processes


_CAUSE = re.compile(r"^([EF]\d{4} |Error: |error: |panic: |\{\"level\":\"(error|fatal|panic)\")")


@dataclass
class Proc:
    """A process started inside a namespace, with its log file."""

    name: str
    argv: list[str]
    netns: str | None
    log: Path
    popen: subprocess.Popen

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log.read_bytes()[-64 * 1024:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def failure(self, tail: int = 5) -> str:
        """The lines of the log that say why (klog E/F lines, `Error:`), then its last lines; a
        component's start-up flag dump would otherwise bury the cause. The whole log stays in
        `self.log` (a run keeps it in local-logs/)."""
        lines = self.log_tail(400).splitlines()
        why = [l for l in lines if _CAUSE.match(l)][:6]
        last = [l for l in lines[-tail:] if l not in why]
        return "\n".join(why + last)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        return self.popen.returncode


def spawn(name: str, argv: Sequence[str], netns: str | None, log: Path, env: dict | None = None) -> Proc:
    full = (lab_netns.exec_prefix(netns) if netns else []) + [str(a) for a in argv]
    logf = open(log, "ab", buffering=0)
    try:
        popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=env, close_fds=True)
    finally:
        logf.close()
    return Proc(name=name, argv=list(full), netns=netns, log=log, popen=popen)


def _http_get(netns: str | None, host: str, port: int, path: str, *, tls: ssl.SSLContext | None = None,
              token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    with in_netns(netns):
        if tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()  # the socket is created here, inside the namespace
        except BaseException:
            conn.close()
            raise
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# the API endpoint, as the harness sees it


@dataclass
class ApiEndpoint:
    """How to reach an apiserver: URL, CA, bearer token, and the namespace to connect from."""

    host: str
    ca_file: str
    token: str
    netns: str | None = None

    def configuration(self):
        from kubernetes import client

        c = client.Configuration()
        c.host = self.host
        c.ssl_ca_cert = self.ca_file
        c.verify_ssl = True
        c.api_key = {"authorization": self.token}
        c.api_key_prefix = {"authorization": "Bearer"}
        c.connection_pool_maxsize = 4
        return c

    def client(self):
        """A new kubernetes.client.ApiClient. Use it inside `with in_netns(endpoint.netns):`
        (or from a thread started by `executor()`), since it connects lazily."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

    def executor(self, workers: int) -> ThreadPoolExecutor:
        """A thread pool whose threads live in the endpoint's namespace."""
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kpb-api",
                                  initializer=_enter_netns_forever, initargs=(self.netns,))

    def call(self, fn, *args, **kwargs):
        """Run fn(ApiClient, *args, **kwargs) on a fresh client from inside the namespace."""
        with self.executor(1) as ex:
            def run():
                with self.client() as api:
                    return fn(api, *args, **kwargs)
            return ex.submit(run).result()


# --------------------------------------------------------------------------------------------
# the control plane


def _etcd_major_minor(etcd: Path) -> tuple[int, int]:
    p = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"etcd Version:\s*(\d+)\.(\d+)", p.stdout + p.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class LocalCluster:
    """etcd + kube-apiserver inside namespace `kpb-<tag>-api`; see the module docstring."""

    def __init__(self, tag: str | None = None, *, binaries: Binaries | None = None,
                 api_cidr: str = DEFAULT_API_CIDR, service_cidr: str = DEFAULT_SERVICE_CIDR,
                 workdir: str | Path | None = None, keep_workdir: bool = False,
                 etcd_unsafe_no_fsync: bool = True, apiserver_args: Sequence[str] = (),
                 apiserver_verbosity: int = 1, ready_timeout: float = 120.0,
                 gogc: int | None = None):
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

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
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
            except subprocess.TimeoutExpired:  # alive even after SIGKILL: stop the rest; the namespace goes below
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
            registry.register("localcluster", self.tag, namespaces=list(self.namespaces),
                              pids=[p.popen.pid for p in self.procs],
                              paths=[str(self.workdir)] if self.workdir else [])
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
        lab_netns.run(ns, ["ip", "addr", "add", f"{self.bridge_addr}/{self._api_net.prefixlen}", "dev", "kapi0"])
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
        path.write_text(json.dumps({
            "server": self.server, "ca_file": str(self.pki["ca_crt"]), "tokens": self.tokens,
            "api_cidr": str(self._api_net), "service_cidr": self.service_cidr,
            "binaries": {"etcd": str(self.binaries.etcd), "kube_apiserver": str(self.binaries.kube_apiserver),
                         "kube_proxy": str(self.binaries.kube_proxy)}}))
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
        lab_netns.run(self.netns, ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ifname,
                                   "netns", node_netns])
        lab_netns.run(self.netns, ["ip", "link", "set", host_if, "master", "kapi0", "up"])
        lab_netns.run(node_netns, ["ip", "addr", "add", f"{addr}/{self._api_net.prefixlen}", "dev", ifname])
        lab_netns.run(node_netns, ["ip", "link", "set", ifname, "up"])
        self.links[node_netns] = addr
        return addr

    # ---- credentials

    def _make_credentials(self) -> None:
        assert self.workdir
        self.pki = make_pki(self.workdir / "pki",
                            san_ips=[self.api_addr, self.kubernetes_service_ip, "127.0.0.1"],
                            san_dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                     "kubernetes.default.svc.cluster.local", "localhost"])
        self.tokens = {"admin": secrets.token_urlsafe(32), "kube-proxy": secrets.token_urlsafe(32)}
        # token,user,uid,"group1,group2" - admin is in system:masters (RBAC superuser);
        # kube-proxy is the user the bootstrap policy binds to ClusterRole system:node-proxier.
        lines = [f'{self.tokens["admin"]},kpbench-admin,kpbench-admin,"system:masters"',
                 f'{self.tokens["kube-proxy"]},system:kube-proxy,system:kube-proxy,"system:authenticated"']
        tf = self.workdir / "tokens.csv"
        tf.write_text("\n".join(lines) + "\n")
        os.chmod(tf, 0o600)

    def kubeconfig(self, user: str = "admin") -> Path:
        """Write (once) and return a kubeconfig for `user` ("admin" or "kube-proxy")."""
        assert self.workdir
        path = self.workdir / f"kubeconfig-{user}.json"
        if not path.exists():
            write_kubeconfig(path, self.server, self.pki["ca_crt"], self.tokens[user],
                             user="kpbench-admin" if user == "admin" else f"system:{user}")
        return path

    @property
    def api(self) -> ApiEndpoint:
        return ApiEndpoint(host=self.server, ca_file=str(self.pki["ca_crt"]), token=self.tokens["admin"],
                           netns=self.netns)

    # ---- etcd and apiserver

    def _start_etcd(self) -> None:
        assert self.workdir
        data = self.workdir / "etcd"
        url = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        argv = [str(self.binaries.etcd), "--name", "kpb", "--data-dir", str(data),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"kpb={peer}", "--initial-cluster-state", "new",
                "--log-level", "warn", "--quota-backend-bytes", str(8 * 1024 ** 3)]
        major_minor = _etcd_major_minor(self.binaries.etcd)
        if self.etcd_unsafe_no_fsync and major_minor >= (3, 5):
            argv.append("--unsafe-no-fsync")  # throwaway data: fsync would only measure the disk
        self.etcd = self._spawn("etcd", argv)
        deadline = time.monotonic() + 30
        while True:
            if not self.etcd.alive():
                raise LocalClusterError(f"etcd exited with {self.etcd.popen.returncode}:\n{self.etcd.failure()}")
            try:
                status, body = _http_get(self.netns, "127.0.0.1", ETCD_PORT, "/health", timeout=2)
                if status == 200 and b'"health":"true"' in body:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LocalClusterError(f"etcd not healthy after 30 s:\n{self.etcd.failure()}")
            time.sleep(0.2)

    def _start_apiserver(self) -> None:
        assert self.workdir
        pki = self.pki
        argv = [str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
                f"--bind-address={self.api_addr}", f"--advertise-address={self.api_addr}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={pki['crt']}", f"--tls-private-key-file={pki['key']}",
                f"--client-ca-file={pki['ca_crt']}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki['sa_pub']}",
                f"--service-account-signing-key-file={pki['sa_key']}",
                "--allow-privileged=true", "--profiling=false",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount",
                f"--v={self.apiserver_verbosity}",
                *self.apiserver_args]
        self.apiserver = self._spawn("kube-apiserver", argv)

        def alive() -> None:
            if not self.apiserver.alive():
                raise LocalClusterError(f"kube-apiserver exited with {self.apiserver.popen.returncode}:\n"
                                        f"{self.apiserver.failure()}")
        last = self._wait_readyz(self.api_addr, self.ready_timeout, attempt_timeout=3, alive=alive)
        if last is not None:
            raise LocalClusterError(f"kube-apiserver not ready after {self.ready_timeout:.0f} s ({last}); "
                                    f"log:\n{self.apiserver.failure()}")

    def _wait_readyz(self, host: str, timeout: float, attempt_timeout: float, alive=None) -> str | None:
        """Poll https://<host>:6443/readyz from the API namespace until it answers 200 (returns
        None) or `timeout` passes (returns the last answer or error); `alive()` first, each round."""
        tls = ssl.create_default_context(cafile=str(self.pki["ca_crt"]))
        deadline, last = time.monotonic() + timeout, ""
        while True:
            if alive:
                alive()
            try:
                status, body = _http_get(self.netns, host, API_PORT, "/readyz", tls=tls,
                                         token=self.tokens["admin"], timeout=attempt_timeout)
                if status == 200:
                    return None
                last = f"/readyz {status}: {body.decode(errors='replace')[-600:]}"
            except OSError as e:
                last = f"/readyz: {e}"
            if time.monotonic() > deadline:
                return last
            time.sleep(0.25)

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

    def start_kube_proxy(self, node_netns: str, node_name: str, mode: str, **kw) -> "KubeProxy":
        """Attach `node_netns` to the API bridge (once) and run kube-proxy for `node_name` there."""
        assert self.workdir
        self.attach_node(node_netns)
        cfg = self.workdir / f"kube-proxy-{node_name}.json"
        kp = start_kube_proxy(self.kubeconfig("kube-proxy"), mode, node_name, node_netns, cfg,
                              binary=self.binaries.kube_proxy, **kw)
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
        super().__init__(tag, binaries=Binaries(etcd=Path(b["etcd"]), kube_apiserver=Path(b["kube_apiserver"]),
                                                kube_proxy=Path(b["kube_proxy"])),
                         api_cidr=c["api_cidr"], service_cidr=c["service_cidr"])
        self.server = c["server"]
        self.bridge_addr = str(self._api_net.network_address + guest_host)
        self._next_host = guest_host + 1
        self.tokens = dict(c["tokens"])
        self._ca_file = Path(c["ca_file"])

    def start(self, ready_timeout: float = 60.0) -> "GuestCluster":
        _install_cleanup(self)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kpb-{self.tag}-"))
        os.chmod(self.workdir, 0o700)
        self.pki = {"ca_crt": self._ca_file}
        self._register()
        self._make_namespace()
        try:
            lab_netns.run(None, ["ip", "link", "set", GUEST_UPLINK, "netns", self.netns])
        except lab_netns.LabError as e:
            raise LocalClusterError(f"the guest has no {GUEST_UPLINK} (the TAP link to the host's API "
                                    f"namespace): {e}") from None
        lab_netns.run(self.netns, ["ip", "link", "set", GUEST_UPLINK, "master", "kapi0", "up"])
        host = self.server.split("//", 1)[1].rsplit(":", 1)[0]
        last = self._wait_readyz(host, ready_timeout, attempt_timeout=5)
        if last is not None:
            raise LocalClusterError(f"the host's kube-apiserver {self.server} is not reachable from the UML "
                                    f"guest after {ready_timeout:.0f} s ({last})")
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
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def on_term(signum, frame):
            _stop_all()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGTERM, on_term)


def _stop_all() -> None:
    for obj in list(_cleanup_objects):
        try:
            obj.stop()
        except (OSError, subprocess.SubprocessError):  # at exit: stop the others; `kpbench clean` gets the rest
            pass


# --------------------------------------------------------------------------------------------
# kube-proxy


@dataclass
class KubeProxy:
    proc: Proc
    mode: str
    node_name: str
    netns: str
    config_path: Path
    metrics_port: int = METRICS_PORT

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> int | None:
        return self.proc.stop()


def render_kube_proxy_config(*, kubeconfig: str | Path, mode: str, node_name: str,
                             cluster_cidr: str = DEFAULT_CLUSTER_CIDR, sync_period: str = "30s",
                             min_sync_period: str = "1s", ipvs_scheduler: str = "rr",
                             metrics_port: int = METRICS_PORT, healthz_port: int = HEALTHZ_PORT,
                             masquerade_all: bool = False, strict_arp: bool = False,
                             node_port_addresses: Sequence[str] | None = None,
                             verbosity: int = 2, extra: dict | None = None) -> dict:
    """A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) as a dict.

    Conntrack sysctls are left alone (maxPerCore 0 and zero timeouts mean "do not set"), so a
    kube-proxy in a lab namespace never writes the host's global nf_conntrack_max.
    """
    if mode not in MODES:
        raise ValueError(f"kube-proxy mode {mode!r}: use {', '.join(MODES[:-1])} or {MODES[-1]}")
    section = SectionOptions(sync_period=sync_period, min_sync_period=min_sync_period, masquerade_all=masquerade_all,
                             strict_arp=strict_arp, ipvs_scheduler=ipvs_scheduler)
    cfg: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 50, "burst": 100,
                             "contentType": "application/vnd.kubernetes.protobuf"},
        "mode": mode,
        "hostnameOverride": node_name,
        "bindAddress": "0.0.0.0",
        "metricsBindAddress": f"0.0.0.0:{metrics_port}",
        "healthzBindAddress": f"0.0.0.0:{healthz_port}",
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "oomScoreAdj": 0,
        "configSyncPeriod": "15m",
        **{name: spec.kube_proxy_section(section) for name, spec in all_modes().items()},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s", "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        "logging": {"verbosity": verbosity},
    }
    if node_port_addresses is not None:
        cfg["nodePortAddresses"] = list(node_port_addresses)
    if extra:
        cfg.update(extra)
    return cfg


def start_kube_proxy(kubeconfig: str | Path, mode: str, node_name: str, netns: str, config_path: str | Path,
                     *, binary: str | Path | None = None, log_path: str | Path | None = None,
                     wait_ready: float = 60.0, env: dict | None = None, **config) -> KubeProxy:
    """Render a KubeProxyConfiguration into `config_path` and run kube-proxy inside `netns`.

    Waits until /proxyMode answers on the metrics port (or `wait_ready` is 0); a kube-proxy
    that exits meanwhile raises LocalClusterError with its log tail.
    """
    if not netns or not netns.startswith(lab_netns.PREFIX):
        raise LocalClusterError(f"kube-proxy runs only inside a {lab_netns.PREFIX}* namespace, not {netns!r}")
    binary = Path(binary) if binary else find_binaries().kube_proxy
    config_path = Path(config_path)
    cfg = render_kube_proxy_config(kubeconfig=kubeconfig, mode=mode, node_name=node_name, **config)
    config_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    log = Path(log_path) if log_path else config_path.with_suffix(".log")
    # env: e.g. a PATH whose iptables* are one backend's (legacy or nft) binaries
    proc = spawn(f"kube-proxy-{node_name}", [str(binary), f"--config={config_path}"], netns, log, env=env)
    kp = KubeProxy(proc=proc, mode=mode, node_name=node_name, netns=netns, config_path=config_path,
                   metrics_port=int(cfg["metricsBindAddress"].rsplit(":", 1)[1]))
    if wait_ready:
        deadline = time.monotonic() + wait_ready
        while True:
            if not proc.alive():
                raise LocalClusterError(f"kube-proxy ({mode}) in {netns} exited with {proc.popen.returncode}:\n"
                                        f"{proc.failure()}")
            try:
                status, body = _http_get(netns, "127.0.0.1", kp.metrics_port, "/proxyMode", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                proc.stop()
                raise LocalClusterError(f"kube-proxy ({mode}) in {netns}: /proxyMode not answering after "
                                        f"{wait_ready:.0f} s:\n{proc.failure()}")
            time.sleep(0.2)
    return kp


def kube_proxy_cleanup(netns: str, binary: str | Path | None = None, timeout: float = 300,
                       path: str | None = None, log=None) -> str:
    """`kube-proxy --cleanup` inside `netns` (removes iptables, ipvs and nftables state there).

    `path`: the PATH kube-proxy runs with (e.g. one iptables backend's binaries). After IPVS mode
    the first call exits 1 although it cleans up: its iptables pass runs first and cannot delete
    KUBE-MARK-MASQ while IPVS mode's KUBE-LOAD-BALANCER still jumps to it, then its IPVS pass
    removes the rest. So a failed call is repeated once (each failure goes to `log(message)`);
    the second must succeed.
    """
    if not netns or not netns.startswith(lab_netns.PREFIX):
        raise LocalClusterError(f"kube-proxy --cleanup runs only inside a {lab_netns.PREFIX}* namespace")
    binary = Path(binary) if binary else find_binaries().kube_proxy
    argv = (["env", f"PATH={path}"] if path else []) + [str(binary), "--cleanup"]
    for attempt in (1, 2):
        p = lab_netns.run(netns, argv, check=False, timeout=timeout)
        if p.returncode == 0:
            return p.stderr
        if log:
            log(f"kube-proxy --cleanup in {netns} (attempt {attempt}): exit {p.returncode}:\n{p.stderr[-6000:]}")
    errors = [l for l in p.stderr.splitlines() if l.startswith("E")] or p.stderr.strip().splitlines()
    raise LocalClusterError(f"kube-proxy --cleanup in {netns} failed twice (exit {p.returncode}): "
                            f"{' | '.join(errors[:3])[-900:]}")


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments and NaN-unparsable skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        except ValueError:
            continue
    return out


def scrape_metrics(netns: str | None, port: int = METRICS_PORT, host: str = "127.0.0.1",
                   timeout: float = 5.0) -> dict[str, Any]:
    """kube-proxy's /proxyMode and /metrics, read from inside `netns`.

    Returns {"proxy_mode": str, "metrics": {name{labels}: value}, "raw": text}.
    """
    status, mode = _http_get(netns, host, port, "/proxyMode", timeout=timeout)
    if status != 200:
        raise LocalClusterError(f"/proxyMode on {host}:{port} in {netns}: HTTP {status}")
    status, body = _http_get(netns, host, port, "/metrics", timeout=timeout)
    if status != 200:
        raise LocalClusterError(f"/metrics on {host}:{port} in {netns}: HTTP {status}")
    text = body.decode(errors="replace")
    return {"proxy_mode": mode.decode().strip(), "metrics": parse_metrics(text), "raw": text}


# --------------------------------------------------------------------------------------------
# API objects


def service_body(svc, labels: dict | None = None) -> dict:
    """A v1 Service for a model.Service: selector-less, ClusterIP fixed by the model."""
    ports = []
    for p in svc.ports:
        d = {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol.upper()}
        if p.node_port is not None:
            d["nodePort"] = p.node_port
        ports.append(d)
    spec: dict[str, Any] = {
        "type": "NodePort" if any(p.node_port is not None for p in svc.ports) else "ClusterIP",
        "clusterIP": svc.cluster_ip, "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": ports,
    }
    if svc.affinity_timeout:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace,
                         "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, **(labels or {})}},
            "spec": spec}


def endpoint_slice_bodies(svc, node_names: dict[str, str] | None = None) -> list[dict]:
    """discovery.k8s.io/v1 EndpointSlices for a model.Service.

    A slice carries one port list for all its endpoints, so endpoints are grouped by their base
    port (usually a single slice). `node_names` maps model node names ("a") to Node objects.
    """
    groups: dict[int, list] = {}
    for e in svc.endpoints:
        groups.setdefault(e.port, []).append(e)
    base_target = svc.ports[0].target_port
    slices = []
    for k, (base, eps) in enumerate(sorted(groups.items())):
        endpoints = []
        for e in eps:
            d: dict[str, Any] = {"addresses": [e.ip], "conditions": {"ready": True, "serving": True,
                                                                      "terminating": False}}
            if node_names and e.node in node_names:
                d["nodeName"] = node_names[e.node]
            endpoints.append(d)
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc.name}-{k}", "namespace": svc.namespace,
                         "labels": {"kubernetes.io/service-name": svc.name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": p.name, "port": base + (p.target_port - base_target),
                       "protocol": p.protocol.upper()} for p in svc.ports],
        })
    if not slices:  # no endpoints: an empty slice still tells kube-proxy "none" (REJECT rules)
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc.name}-0", "namespace": svc.namespace,
                         "labels": {"kubernetes.io/service-name": svc.name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4", "endpoints": [],
            "ports": [{"name": p.name, "port": p.target_port, "protocol": p.protocol.upper()}
                      for p in svc.ports]})
    return slices


@dataclass
class CreateStats:
    services: int = 0
    slices: int = 0
    existed: int = 0
    retries: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    created_at: dict[str, int] = field(default_factory=dict)  # "ns/name" -> monotonic_ns after its last object

    @property
    def objects(self) -> int:
        return self.services + self.slices

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"services": self.services, "slices": self.slices, "objects": self.objects,
                "existed": self.existed, "retries": self.retries, "seconds": round(self.seconds, 3),
                "objects_per_s": round(self.objects_per_s, 1), "errors": self.errors[:20],
                "n_errors": len(self.errors)}


class _RateLimiter:
    """A shared token bucket: at most `qps` acquisitions per second (None/0: unlimited)."""

    def __init__(self, qps: float | None, burst: int | None = None):
        self.qps = qps or 0
        self.burst = burst or max(1, int(self.qps // 10) or 1)
        self.tokens = float(self.burst)
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.qps <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.qps)
                self.t = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.qps
            time.sleep(wait)


def ensure_namespaces(api: ApiEndpoint, names: Iterable[str]) -> None:
    """Create the namespaces that do not exist yet."""
    wanted = sorted(set(names))

    def run(client):
        for n in wanted:
            status, data = _post(client, "/api/v1/namespaces",
                                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
            if status not in (200, 201, 202, 409):
                raise LocalClusterError(f"creating namespace {n}: HTTP {status}: {data[:300]!r}")
    api.call(run)


def _post(client, path: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    """POST a JSON body through the official client (ApiClient.param_serialize + call_api, the
    path its typed methods take, minus pydantic model validation and response deserialization,
    which cost more client CPU than the request). Returns (HTTP status, body)."""
    method, url, headers, data, post_params = client.param_serialize(
        "POST", path, body=body,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"])
    r = client.call_api(method, url, header_params=headers, body=data, post_params=post_params,
                        _request_timeout=timeout)
    r.read()
    return r.status, r.data


def _post_typed(client, path: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    """The same through the typed methods (CoreV1Api / DiscoveryV1Api with model objects)."""
    from kubernetes import client as k
    from kubernetes.client.rest import ApiException

    ns = body["metadata"]["namespace"]
    try:
        if body["kind"] == "Service":
            k.CoreV1Api(client).create_namespaced_service(ns, k.V1Service.from_dict(body),
                                                          _request_timeout=timeout)
        else:
            k.DiscoveryV1Api(client).create_namespaced_endpoint_slice(
                ns, k.V1EndpointSlice.from_dict(body), _request_timeout=timeout)
    except ApiException as e:
        return e.status, (e.body or "").encode() if isinstance(e.body, str) else (e.body or b"")
    return 201, b""


def _service_has_ip(client, body: dict) -> bool:
    md = body["metadata"]
    method, url, headers, _, _ = client.param_serialize(
        "GET", f"/api/v1/namespaces/{md['namespace']}/services/{md['name']}",
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    r = client.call_api(method, url, header_params=headers, _request_timeout=30)
    r.read()
    if r.status != 200:
        return False
    return json.loads(r.data).get("spec", {}).get("clusterIP") == body["spec"]["clusterIP"]


def create_services(api: "ApiEndpoint | LocalCluster", model_services: Sequence, qps: float | None = None,
                    concurrency: int = 8, *, node_names: dict[str, str] | None = None,
                    create_namespaces: bool = True, max_retries: int = 5, strict: bool = True,
                    typed: bool = False, progress=None) -> CreateStats:
    """Create one Service (ClusterIP from the model) plus its selector-less EndpointSlice(s) per
    model Service through the official kubernetes client, `concurrency` threads each with its
    own ApiClient, at most `qps` objects per second in total (None: as fast as it goes).

    Objects that already exist (409) count as `existed`, so growing a sweep is idempotent.
    429/5xx and connection errors are retried with backoff. `strict`: raise LocalClusterError
    at the end if anything failed. `created_at` gives, per Service, the monotonic_ns right after
    its last object was created (the start of network-programming latency).
    `typed`: go through CoreV1Api/DiscoveryV1Api model objects instead of raw JSON bodies.
    """
    if isinstance(api, LocalCluster):
        api = api.api
    stats = CreateStats()
    if create_namespaces:
        ensure_namespaces(api, (s.namespace for s in model_services))
    limiter = _RateLimiter(qps)
    lock = threading.Lock()
    local = threading.local()
    clients: list = []
    poster = _post_typed if typed else _post

    def client():
        c = getattr(local, "client", None)
        if c is None:  # one ApiClient (and so one connection pool) per worker thread
            c = local.client = api.client()
            with lock:
                clients.append(c)
        return c

    def post(path: str, body: dict) -> str:
        delay = 0.05
        for attempt in range(max_retries + 1):
            limiter.acquire()
            try:
                status, data = poster(client(), path, body)
            except Exception as e:  # ApiException (non-2xx), urllib3 errors
                status = getattr(e, "status", None)
                data = getattr(e, "body", None) or str(e)
            if isinstance(data, str):
                data = data.encode()
            if status in (200, 201, 202):
                return "created"
            if status == 409:
                return "existed"
            if status == 422 and body.get("kind") == "Service" and b"already allocated" in (data or b""):
                # the ClusterIP allocator answers before the name check: existed, if it is ours
                if _service_has_ip(client(), body):
                    return "existed"
            retryable = status is None or status == 0 or status == 429 or (status and status >= 500)
            if not retryable or attempt == max_retries:
                msg = data.decode(errors="replace")
                raise LocalClusterError(f"POST {path} {body['metadata']['name']}: HTTP {status}: {msg[:300]}")
            with lock:
                stats.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def one(svc) -> None:
        ns = svc.namespace
        try:
            r = post(f"/api/v1/namespaces/{ns}/services", service_body(svc))
            n_sl, n_ex = 0, int(r == "existed")
            for sl in endpoint_slice_bodies(svc, node_names):
                r = post(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", sl)
                n_sl += 1
                n_ex += int(r == "existed")
            t = time.monotonic_ns()
            with lock:
                stats.services += 1
                stats.slices += n_sl
                stats.existed += n_ex
                stats.created_at[f"{ns}/{svc.name}"] = t
                if progress and stats.services % 1000 == 0:
                    progress(stats)
        except Exception as e:
            with lock:
                stats.errors.append(f"{ns}/{svc.name}: {e}")

    t0 = time.perf_counter()
    with api.executor(max(1, concurrency)) as ex:
        list(ex.map(one, model_services))
    stats.seconds = time.perf_counter() - t0
    for c in clients:
        c.close()
    if strict and stats.errors:
        raise LocalClusterError(f"{len(stats.errors)} of {len(model_services)} Services failed; first: "
                                f"{stats.errors[0]}")
    return stats


def create_node(api: "ApiEndpoint | LocalCluster", name: str, internal_ip: str,
                pod_cidr: str | None = None) -> None:
    """A Node object for a lab node (status addresses set on create, as the kubelet does)."""
    if isinstance(api, LocalCluster):
        api = api.api
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              "app.kubernetes.io/managed-by": MANAGED_BY}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                 {"type": "Hostname", "address": name}]},
    }

    status, data = api.call(_post, "/api/v1/nodes", body)
    if status not in (200, 201, 202, 409):
        raise LocalClusterError(f"creating Node {name}: HTTP {status}: {data[:500]!r}")


def list_names(api: "ApiEndpoint | LocalCluster", namespace: str, kind: str = "services") -> list[str]:
    """Names of Services or EndpointSlices in `namespace` (paged list through the typed client)."""
    if isinstance(api, LocalCluster):
        api = api.api

    def run(client):
        from kubernetes import client as k

        names: list[str] = []
        token = None
        while True:
            if kind == "services":
                r = k.CoreV1Api(client).list_namespaced_service(namespace, limit=5000, _continue=token)
            else:
                r = k.DiscoveryV1Api(client).list_namespaced_endpoint_slice(namespace, limit=5000,
                                                                           _continue=token)
            names += [i.metadata.name for i in r.items]
            token = r.metadata._continue
            if not token:
                return names
    return api.call(run)


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
