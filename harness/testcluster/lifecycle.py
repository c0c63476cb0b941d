"""`kpbench cluster up / down / status`: bring the test cluster up in order, recording each step
in the state file before taking it; take it down from that file (and from what is found under the
cluster's names), so `down` after a crash or Ctrl-C leaves nothing behind."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.k8s.endpoint import ApiEndpoint, write_kubeconfig
from harness.lab import netns, registry
from harness.lab.topology import namespace_pids
from harness.testcluster import addons, network, node as nodemod, sysctls
from harness.testcluster.plan import ClusterPlan, Names, current_instance, default_dir, make_plan
from harness.testcluster.state import ClusterState, StateFile, load

Log = Callable[[str], None]
READY_TIMEOUT = 180.0


class ClusterUpError(UserError):
    """The test cluster could not be brought up; the message quotes the logs that say why."""


class ClusterBusy(UserError):
    """A test cluster is up, or another `cluster up/down` runs: names are machine-wide."""


LOCK_FILE = registry.STATE_DIR / "testcluster.lock"


@contextmanager
def machine_lock(*, wait: bool, log: Log) -> Iterator[None]:
    """One `cluster up` / `cluster down` at a time on this machine (flock on LOCK_FILE, which
    holds the pid of the holder). Not waiting: ClusterBusy naming that pid."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise ClusterBusy(
                    f"another `kpbench cluster up/down` is running (pid {holder}): wait for it to finish"
                ) from None
            log(f"waiting for `kpbench cluster up/down` (pid {holder}) to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class TestCluster:
    """A running test cluster: what `kpbench run --target cluster --kubeconfig` needs."""

    __test__ = False  # not a pytest test class

    kubeconfig: Path
    server: str
    nodes: list[str]
    kube_version: str
    timings: dict[str, float] = field(default_factory=dict)


def _api(plan: ClusterPlan, ca_file: Path, token: str):
    from harness.k8s.rest import Rest

    return Rest(ApiEndpoint(host=plan.server, ca_file=str(ca_file), token=token).client())


def _ensure_host_dir(path: str, sf: StateFile) -> None:
    """Make `path` if missing, recording each directory made (down removes them if still empty)."""
    missing = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        sf.add("created_paths", str(d))
        d.mkdir(exist_ok=True)


def _wait(what: str, check: Callable[[], bool], alive: Callable[[], None], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        if check():
            return
        if time.monotonic() > deadline:
            raise ClusterUpError(f"{what} not reached after {timeout:.0f} s")
        time.sleep(0.5)


def up(
    nodes: int = 2,
    kube_version: str | None = None,
    *,
    directory: Path | None = None,
    log: Log = print,
) -> TestCluster:
    """Bring a test cluster of `nodes` nodes up; on any failure remove everything and raise a
    UserError quoting the failing component's log lines."""
    from harness.targets.local_binaries import pinned_kube_version
    from harness.testcluster.artifacts import cluster_binaries
    from harness.testcluster.images import ensure_images

    version = kube_version or pinned_kube_version()
    try:
        plan = make_plan(nodes, version, directory)
    except ValueError as e:
        raise UserError(str(e)) from None
    binaries = cluster_binaries(version)
    t0 = time.monotonic()
    images = ensure_images(version, log=log)  # before the checks: a first build takes minutes
    timings = {"images_s": time.monotonic() - t0}
    with machine_lock(wait=False, log=log):
        _refuse_if_running(plan)
        existing = load(plan.state_file)
        if existing is not None or network.existing_namespaces(plan.names) or nodemod.cgroup_dirs(plan.names):
            log("removing the leftovers of an earlier test cluster")
            _down(plan.dir, log=log, names=plan.names)
        return _up_locked(plan, binaries, images, timings, log)


def _refuse_if_running(plan: ClusterPlan) -> None:
    """ClusterBusy if a test cluster runs: names are machine-wide, so there is one at a time."""
    existing = load(plan.state_file)
    if existing is not None and existing.state.phase == "up" and _procs_alive(existing.state):
        raise ClusterBusy(
            f"a test cluster is already up ({existing.state.kubeconfig}): `kpbench cluster down` first"
        )
    busy = {ns: pids for ns, pids in namespace_pids(network.existing_namespaces(plan.names)).items() if pids}
    if busy:
        raise ClusterBusy(
            f"a test cluster is running in namespaces {', '.join(sorted(busy))} (started with another --dir?): "
            "`kpbench cluster down --dir DIR` first"
        )


def _up_locked(plan: ClusterPlan, binaries, images, timings: dict[str, float], log: Log) -> TestCluster:
    from harness.testcluster.images import kube_proxy_image, pause_image

    version = plan.kube_version

    plan.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(plan.dir, 0o700)
    sf = StateFile(
        plan.state_file,
        ClusterState(
            kube_version=version,
            instance=plan.names.instance,
            nodes=[n.name for n in plan.nodes],
            kubeconfig=str(plan.kubeconfig),
            sysctls=_sysctls_as_found(plan.names),
        ),
    )
    sf.save()
    try:
        return _bring_up(
            plan, sf, binaries, images, pause_image(version), kube_proxy_image(version), timings, log
        )
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        log(
            "interrupted: removing what was started"
            if interrupted
            else "bring-up failed: removing what was started"
        )
        _keep_logs(plan)
        _down(plan.dir, log=lambda s: None, sweep=False, names=plan.names)
        if interrupted or not isinstance(e, (UserError, OSError)):
            raise
        raise ClusterUpError(f"kpbench cluster up failed: {e} (logs kept in {_logs_dir(plan)})") from None


def _bring_up(plan, sf, binaries, images, pause_image, proxy_image, timings, log) -> TestCluster:
    from harness.testcluster.controlplane import ControlPlane, bind_nodes_role, node_user

    t = time.monotonic()
    for path in (*nodemod.HOST_DIRS, nodemod.LIB_MODULES, str(plan.names.socket_dir)):
        _ensure_host_dir(path, sf)
    cp = ControlPlane(plan, binaries, sf)
    cp.start()
    timings["controlplane_s"] = time.monotonic() - t
    log(
        f"control plane up in {timings['controlplane_s']:.1f} s ({plan.server} in namespace {plan.api_netns})"
    )

    sf.add("host_links", plan.names.host_link)
    network.attach_host(plan)
    rest = _api(plan, cp.pki["ca_crt"], cp.tokens["admin"])
    bind_nodes_role(rest)
    for n in plan.nodes:  # podCIDR is set once, at creation: kubelet registers into these
        rest.create(
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": n.name,
                    "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"},
                },
                "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            },
        )

    t = time.monotonic()
    nodes: list[nodemod.Node] = []
    for n in plan.nodes:
        if n.netns in network.existing_namespaces(plan.names):  # not ours: never recorded, never removed
            raise ClusterBusy(f"namespace {n.netns} already exists: another test cluster is up")
        sf.add("namespaces", n.netns)
        network.create_node(plan, n)
        sf.add("cgroups", plan.names.cgroup_parent)
        nd = nodemod.Node(plan, n, binaries, sf.add_proc)
        nd.prepare(
            pause_image=pause_image, ca_file=cp.pki["ca_crt"], kubeconfig=cp.kubeconfig(node_user(n.name))
        )
        nd.start_holder()
        nd.start_containerd()
        nodes.append(nd)
    timings["containerd_s"] = time.monotonic() - t
    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(nodes)) as ex:
        for f in [ex.submit(_import_all, nd, images) for nd in nodes]:
            f.result()
    timings["image_import_s"] = time.monotonic() - t
    log(
        f"{len(nodes)} node(s): containerd up, {len(images)} image(s) imported in {timings['image_import_s']:.1f} s"
    )

    t = time.monotonic()
    for nd in nodes:
        nd.start_kubelet()

    def alive() -> None:
        cp.check_alive()
        for nd in nodes:
            nd.check_alive()

    names = {n.name for n in plan.nodes}
    _wait("every node Ready", lambda: _ready_nodes(rest) >= names, alive, READY_TIMEOUT)
    timings["nodes_ready_s"] = time.monotonic() - t
    log(f"nodes Ready in {timings['nodes_ready_s']:.1f} s: {', '.join(sorted(names))}")

    t = time.monotonic()
    addons.apply(
        rest,
        addons.render(
            plan.kube_version, server=plan.server, image=proxy_image, cluster_cidr=plan.cluster_cidr
        ),
    )
    _wait("kube-proxy running on every node", lambda: _kube_proxy_ready(rest) >= names, alive, READY_TIMEOUT)
    timings["kube_proxy_s"] = time.monotonic() - t
    log(f"kube-proxy DaemonSet running on every node in {timings['kube_proxy_s']:.1f} s")

    write_kubeconfig(plan.kubeconfig, plan.server, cp.pki["ca_crt"], cp.tokens["admin"], user="kpbench-admin")
    timings["total_s"] = sum(v for k, v in timings.items() if k != "images_s")
    sf.state.timings = {k: round(v, 2) for k, v in timings.items()}
    sf.state.phase = "up"
    sf.save()
    return TestCluster(
        kubeconfig=plan.kubeconfig,
        server=plan.server,
        nodes=[n.name for n in plan.nodes],
        kube_version=plan.kube_version,
        timings=sf.state.timings,
    )


def _import_all(nd: nodemod.Node, images) -> None:
    for img in images:
        nd.import_image(img.path)


def _ready_nodes(rest) -> set[str]:
    out = set()
    for item in rest.get("/api/v1/nodes").get("items", []):
        conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            out.add(item["metadata"]["name"])
    return out


def _kube_proxy_ready(rest) -> set[str]:
    pods = rest.get("/api/v1/namespaces/kube-system/pods", query={"labelSelector": "k8s-app=kube-proxy"})
    out = set()
    for p in pods.get("items", []):
        st = p.get("status", {})
        if st.get("phase") == "Running" and all(c.get("ready") for c in st.get("containerStatuses", [])):
            out.add(p["spec"].get("nodeName", ""))
    return out


# ---- down


def _logs_dir(plan_or_dir) -> Path:
    d = plan_or_dir.dir if isinstance(plan_or_dir, ClusterPlan) else Path(plan_or_dir)
    return d.with_name(d.name + "-logs")


def _keep_logs(plan: ClusterPlan) -> None:
    """Copy the components' logs to <dir>-logs (replacing the previous copy)."""
    dest = _logs_dir(plan)
    shutil.rmtree(dest, ignore_errors=True)
    logs = [*plan.dir.glob("controlplane-*/*.log"), *plan.dir.glob("nodes/*/logs/*.log")]
    if not logs:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in logs:
        prefix = f.parent.parent.name if f.parent.name == "logs" else "controlplane"
        try:
            shutil.copy(f, dest / f"{prefix}-{f.name}")
        except OSError:
            pass


def _other_instances(names: Names) -> list[int]:
    """Other test cluster instances with namespaces on this machine."""
    found = set()
    for n in netns.list_namespaces("kpbtc"):
        tag = n.split("-", 1)[0].removeprefix("kpbtc")
        if tag.isdigit() or tag == "":
            found.add(int(tag or 0))
    found.discard(names.instance)
    return sorted(found)


def _sysctls_as_found(names: Names) -> dict[str, str]:
    """The kernel-wide sysctls before any test cluster changed them: now, or as a running
    instance recorded them (its kubelets have changed them since)."""
    found = sysctls.read()
    for i in _other_instances(names):
        other = load(default_dir(i) / "state.json")
        if other is not None:
            found.update({k: v for k, v in other.state.sysctls.items() if k in found})
            break
    return found


def _procs_alive(state: ClusterState) -> bool:
    return any(registry.alive(p.pid, p.start) for p in state.procs)


def _cgroup_pids(names: Names) -> set[int]:
    pids: set[int] = set()
    for top in nodemod.cgroup_dirs(names):
        for f in top.rglob("cgroup.procs"):
            try:
                pids.update(int(x) for x in f.read_text().split())
            except (OSError, ValueError):
                pass
    return pids


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(directory: Path | None = None, *, log: Log = print) -> list[str]:
    """Remove the test cluster in `directory` (default: the default one) and everything it left:
    processes, namespaces, the root namespace's link, cgroups, containerd state, host dirs it
    made; put back the sysctls it changed. Idempotent; returns one line per thing removed.
    Waits for a `cluster up` in progress to finish first."""
    with machine_lock(wait=True, log=log):
        return _down(directory, log=log)


def _down(directory: Path | None, *, log: Log, sweep: bool = True, names: Names | None = None) -> list[str]:
    """`down` under the lock. `sweep`: also what is found under the cluster's names but not in
    the state file (a crash before it was written); False after a failed up, which removes only
    what it recorded making."""
    d = Path(directory) if directory else default_dir()
    sf = load(d / "state.json")
    st = sf.state if sf else ClusterState(instance=names.instance if names else current_instance())
    names = Names(st.instance)
    done: list[str] = []

    def note(msg: str) -> None:
        done.append(msg)
        log(msg)

    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = time.monotonic() - t0 - sum(phases.values())

    namespaces = sorted(set(st.namespaces) | (set(network.existing_namespaces(names)) if sweep else set()))
    for _ in range(20):  # processes first: the mount namespaces and cgroups go with them
        ours = {p.pid for p in st.procs if registry.alive(p.pid, p.start)}
        ours |= {pid for pids in namespace_pids(namespaces).values() for pid in pids}
        ours |= _cgroup_pids(names) if (sweep or st.cgroups) else set()
        ours.discard(os.getpid())
        if not ours:
            break
        _kill(ours)
        note(f"killed {len(ours)} process(es)")
        time.sleep(0.2)
    lap("processes")
    for what in network.remove(
        namespaces, sorted(set(st.host_links) | ({names.host_link} if sweep else set()))
    ):
        note(f"removed {what}")
    lap("network")
    for top in nodemod.cgroup_dirs(names) if (sweep or st.cgroups) else []:
        if _rmdir_tree(top):
            note(f"removed cgroup {top}")
    lap("cgroups")
    others = _other_instances(names)
    if others and st.sysctls:  # kernel-wide values: the last test cluster down puts them back
        note(f"sysctls left as they are: test cluster instance(s) {', '.join(map(str, others))} still run")
    else:
        for line in sysctls.restore(st.sysctls):
            note(f"sysctl {line}")
    for m in _mounts_under([d, *map(Path, nodemod.HOST_DIRS)]):  # not expected: mounts stay in the nodes'
        subprocess.run(["umount", "-l", m], capture_output=True)
        note(f"unmounted {m}")
    sockets = names.socket_dir
    if sockets.exists() and (sweep or str(sockets) in st.created_paths):
        shutil.rmtree(sockets, ignore_errors=True)  # the nodes' sockets: the directory is ours by name
        note(f"removed {sockets}")
    # another instance's nodes bind-mount over the same host dirs: removing one would detach
    # their mounts, so those dirs stay while any other test cluster runs
    for p in reversed(st.created_paths):
        if others and p != str(sockets):
            note(f"left {p} (test cluster instance {others[0]} uses it)")
            continue
        try:
            os.rmdir(p)
            note(f"removed {p}")
        except FileNotFoundError:
            pass
        except OSError as e:
            note(f"left {p} ({e.strerror})")
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
        note(f"removed {d}")
    lap("files")
    if done:
        log(
            f"down in {time.monotonic() - t0:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
            + ")"
        )
    return done


def _rmdir_tree(top: Path) -> bool:
    for _ in range(50):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
            return True
        except FileNotFoundError:
            return False
        except OSError:
            time.sleep(0.1)
    return False


def _mounts_under(roots: list[Path]) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
            out.append(target)
    return sorted(out, key=len, reverse=True)


# ---- status


def status(directory: Path | None = None) -> list[str]:
    """What the state file says and what is running, one line each."""
    d = Path(directory) if directory else default_dir()
    sf = load(d / "state.json")
    if sf is None:
        left = network.existing_namespaces(Names(current_instance()))
        return [
            f"no test cluster in {d}"
            + (f" (leftover namespaces: {', '.join(left)}: `kpbench cluster down`)" if left else "")
        ]
    st = sf.state
    alive = [p.name for p in st.procs if registry.alive(p.pid, p.start)]
    dead = [p.name for p in st.procs if not registry.alive(p.pid, p.start)]
    out = [
        f"test cluster {st.phase}: Kubernetes {st.kube_version}, nodes {', '.join(st.nodes)}",
        f"kubeconfig: {st.kubeconfig}",
        f"processes: {len(alive)} running" + (f", not running: {', '.join(dead)}" if dead else ""),
    ]
    if st.timings:
        out.append("bring-up: " + ", ".join(f"{k} {v:.1f}" for k, v in st.timings.items()))
    if st.phase == "up" and alive:
        out.append(_node_line(Path(st.kubeconfig)))
    return out


def _node_line(kubeconfig: Path) -> str:
    """ "nodes: name Ready, ..." from the API server (what went wrong, if it does not answer)."""
    import base64
    import json
    import tempfile

    try:
        kc = json.loads(kubeconfig.read_text())
        cluster, user = kc["clusters"][0]["cluster"], kc["users"][0]["user"]
        with tempfile.NamedTemporaryFile(suffix=".crt") as ca:
            ca.write(base64.b64decode(cluster["certificate-authority-data"]))
            ca.flush()
            from harness.k8s.rest import Rest

            rest = Rest(ApiEndpoint(host=cluster["server"], ca_file=ca.name, token=user["token"]).client())
            items = rest.get("/api/v1/nodes")["items"]
    except Exception as e:  # noqa: BLE001 - a status line, not an error
        return f"nodes: the API server did not answer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    parts = []
    for n in items:
        ready = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}.get("Ready")
        parts.append(f"{n['metadata']['name']} {'Ready' if ready == 'True' else 'NotReady'}")
    return "nodes: " + ", ".join(parts)
