"""Functional validation matrix of one proxy mode (issue 8): every traffic path works first.

    result = validate_mode(lab, agent, dataplanes, model, settings)

Programs a small dedicated set of validation Services (indices 900000+ of the model's sequence,
so their ClusterIPs never collide with the Services being measured) with
``dataplanes[node].full_sync(...)`` on every node, then checks each cell of the matrix with a
real HTTP GET answered by the expected backend (the nginx body ``"<pod> <ip>:<port>"`` names it):

1. ClusterIP: pod -> Service -> pod on the same node / on the other node, hairpin (the client pod
   is the Service's only endpoint), node -> Service -> pod on the same / the other node (from
   both nodes);
2. NodePort on each node's address, from the client pod and from the other node;
3. an external IP assigned to a Service, from the client pod and from node b;
4. no Service: pod -> pod (same pod, same node, cross node), node -> pod (same / cross node),
   pod -> node (same / cross node);
5. sessionAffinity ClientIP: 50 requests from the client all reach one of 4 endpoints; the same
   Service without affinity spreads over all 4;
6. a Service without endpoints is refused or dropped, as kube-proxy does in that mode (recorded
   in ``no_endpoints_behaviour``).

Requests from the client pod go through the probe agent (when given), requests from other
namespaces run in a thread that entered the namespace (harness.lab.netns.call_in, no fork).
Where a cell needs a server that the lab does not have (the client pod for the hairpin cell, the
nodes for pod -> node), a tiny HTTP server runs in a thread of this process with its listening
socket created inside that namespace, answering like the nginx backends; it is stopped before
``validate_mode`` returns. The validation Services stay programmed: the caller (the worker)
cleans the dataplanes up.

Standard library only (the worker imports this inside UML); ``format_table`` imports rich lazily.
"""

from __future__ import annotations

import platform
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from harness.lab import netns
from harness.model import Endpoint, Model, Service, ServicePort
from harness.modes import mode as mode_spec

VALIDATION_INDEX = 900_000  # model.service(VALIDATION_INDEX + k): far beyond any measured count
HAIRPIN_PORT = 8090  # the client pod's own server (hairpin cell)
NODE_HTTP_PORT = 18080  # node servers (pod -> node cells)
NODE_PORT = 32700  # the validation NodePort
EXTERNAL_IP = "198.51.100.10"  # TEST-NET-2: never a real address; only inside the lab
AFFINITY_REQUESTS = 50
AFFINITY_TIMEOUT_S = 600
DEFAULT_TIMEOUT_S = 1.5


# keys of the validation Services
SAME, CROSS, HAIRPIN, NODEPORT, EXTERNAL, AFFINITY, SPREAD, NOEP = (
    "same-node",
    "cross-node",
    "hairpin",
    "nodeport",
    "external-ip",
    "affinity",
    "no-affinity",
    "no-endpoints",
)
SERVICE_KEYS = (SAME, CROSS, HAIRPIN, NODEPORT, EXTERNAL, AFFINITY, SPREAD, NOEP)


# ---------------------------------------------------------------- the validation Services


def _base_index(model: Model) -> int:
    size = model._ips.size if model._ips is not None else VALIDATION_INDEX + 64
    base = VALIDATION_INDEX if VALIDATION_INDEX + len(SERVICE_KEYS) <= size else size - len(SERVICE_KEYS)
    if base < model.spec.n_services:
        base = max(model.spec.n_services, 0)  # small service CIDR: right after the measured ones
    return base


def _pod_endpoints(model: Model, node: str | None = None) -> list[Endpoint]:
    return [Endpoint(p.ip, p.ports[0], p.node) for p in model.pods if node is None or p.node == node]


def _distinct_endpoints(model: Model, n: int) -> list[Endpoint]:
    """n distinct ip:port endpoints, spread over different pods first (then more ports per pod)."""
    out: list[Endpoint] = []
    depth = max(len(p.ports) for p in model.pods)
    for k in range(depth):
        for p in model.pods:
            if k < len(p.ports):
                out.append(Endpoint(p.ip, p.ports[k], p.node))
                if len(out) == n:
                    return out
    return out


def validation_services(model: Model, client_ip: str | None = None) -> dict[str, Service]:
    """The validation Services by key (see SERVICE_KEYS), built from model.service(900000+)."""
    client_ip = client_ip or model.client_ip
    nodes = model.spec.nodes
    a, b = nodes[0], nodes[1]
    base = _base_index(model)
    port = model.spec.port

    def make(k: int, key: str, endpoints: Sequence[Endpoint], **kw: Any) -> Service:
        s = model.service(base + k)
        tp = endpoints[0].port if endpoints else model.spec.target_port
        sp = ServicePort(name="http", port=port, target_port=tp, node_port=kw.pop("node_port", None))
        return replace(
            s,
            name=f"kpbv-{key}",
            ports=(sp,),
            endpoints=tuple(endpoints),
            affinity_timeout=kw.pop("affinity_timeout", None),
            external_ips=tuple(kw.pop("external_ips", ())),
        )

    on_a, on_b = _pod_endpoints(model, a), _pod_endpoints(model, b)
    four = _distinct_endpoints(model, 4)
    return {
        SAME: make(0, SAME, on_a),
        CROSS: make(1, CROSS, on_b),
        HAIRPIN: make(2, HAIRPIN, [Endpoint(client_ip, HAIRPIN_PORT, a)]),
        NODEPORT: make(3, NODEPORT, [on_a[0], on_b[0]], node_port=NODE_PORT),
        EXTERNAL: make(4, EXTERNAL, [on_b[0]], external_ips=(EXTERNAL_IP,)),
        AFFINITY: make(5, AFFINITY, four, affinity_timeout=AFFINITY_TIMEOUT_S),
        SPREAD: make(6, SPREAD, four),
        NOEP: make(7, NOEP, []),
    }


# ---------------------------------------------------------------- tiny HTTP servers


class TinyHTTPServer:
    """Answers GET with "<name> <server_addr>:<port>" (like the nginx backends), in a thread.

    The listening socket is created inside namespace `ns` (it stays there); accepted sockets
    belong to the same namespace. Requests are served one at a time: enough for validation.
    """

    def __init__(self, ns: str, ip: str, port: int, name: str):
        self.ns, self.ip, self.port, self.name = ns, ip, port, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sock: socket.socket | None = None
        self.served = 0

    def start(self) -> TinyHTTPServer:
        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.ip, self.port))
            s.listen(128)
            s.setblocking(False)
            return s

        self.sock = netns.call_in(self.ns, listen)
        self._thread = threading.Thread(target=self._serve, name=f"kpbv-http-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        sock = self.sock
        assert sock is not None  # start() binds it before it starts this thread
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, OSError):
                    continue
                with conn:
                    self._answer(conn)
        finally:
            sel.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(1.0)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
            addr, port = conn.getsockname()[:2]
            body = f"{self.name} {addr}:{port}\n".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            self.served += 1
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# ---------------------------------------------------------------- requests


def _http_get_here(ip: str, port: int, timeout: float) -> dict:
    from harness.measure.agent import http_get

    return http_get(ip, port, "/", timeout)


class Requester:
    """HTTP GET from a namespace: the probe agent for its own namespace, call_in otherwise."""

    def __init__(self, agent: Any = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.agent = agent
        self.timeout = timeout

    def get(self, ns: str, ip: str, port: int) -> dict:
        """-> {"ok", "status", "body", "us"} or {"ok": False, "error", "us"}."""
        t0 = time.perf_counter_ns()
        try:
            if self.agent is not None and getattr(self.agent, "ns", None) == ns:
                try:
                    r = self.agent.http_get(ip, port, timeout=self.timeout)
                    r = dict(r, ok=True)
                except Exception as e:  # noqa: BLE001 - AgentError: the agent's own error name ("refused", ...)
                    r = {"ok": False, "error": str(e) or type(e).__name__}
            else:
                r = netns.call_in(ns, _http_get_here, ip, port, self.timeout)
        except Exception as e:  # noqa: BLE001 - a failed probe is a recorded cell result, not a crash
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r.setdefault("us", (time.perf_counter_ns() - t0) / 1000.0)
        return r


def _first_line(body: str) -> str:
    return body.split("\n", 1)[0].strip()


def _backend_name(line: str) -> str:
    return line.split()[0] if line.split() else ""


# ---------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class CellSpec:
    path: str
    src: str  # label: "pod client", "node a", ...
    ns: str
    ip: str
    port: int
    expected: tuple[str, ...]  # backend names that may answer
    service: str | None = None  # validation Service key (None: no Service on the path)
    group: int = 0  # issue 8 cell group 1..6


def matrix(lab: Any, model: Model, services: Mapping[str, Service]) -> list[CellSpec]:
    """The single-request cells (groups 1-4) for this lab and these validation Services."""
    a, b = model.spec.nodes[0], model.spec.nodes[1]
    cns = lab.client_ns
    na, nb = lab.node_ns(a), lab.node_ns(b)
    ip_a, ip_b = lab.node_ip(a), lab.node_ip(b)

    def names(svc: Service) -> tuple[str, ...]:
        by_ip = {p.ip: p.name for p in model.pods}
        by_ip[lab.client_ip] = "client"
        return tuple(dict.fromkeys(by_ip.get(e.ip, e.ip) for e in svc.endpoints))

    def vip(key: str) -> tuple[str, int]:
        s = services[key]
        return s.cluster_ip, s.ports[0].port

    pa = next(p for p in model.pods if p.node == a)
    pb = next(p for p in model.pods if p.node == b)
    np_ = services[NODEPORT].ports[0].node_port
    assert np_ is not None  # the NODEPORT Service is made with node_port=NODE_PORT
    ext = services[EXTERNAL].external_ips[0]
    pc, nc = f"pod client (node {a})", f"node {a}"
    nbl = f"node {b}"
    S, C, H, N, E = SAME, CROSS, HAIRPIN, NODEPORT, EXTERNAL
    return [
        CellSpec("pod->svc->pod same node", pc, cns, *vip(S), names(services[S]), S, 1),
        CellSpec("pod->svc->pod cross node", pc, cns, *vip(C), names(services[C]), C, 1),
        CellSpec("pod->svc->same pod (hairpin)", pc, cns, *vip(H), ("client",), H, 1),
        CellSpec(f"node->svc->pod same node ({a})", nc, na, *vip(S), names(services[S]), S, 1),
        CellSpec(f"node->svc->pod cross node ({a})", nc, na, *vip(C), names(services[C]), C, 1),
        CellSpec(f"node->svc->pod same node ({b})", nbl, nb, *vip(C), names(services[C]), C, 1),
        CellSpec(f"node->svc->pod cross node ({b})", nbl, nb, *vip(S), names(services[S]), S, 1),
        CellSpec(f"pod->nodeport node {a}", pc, cns, ip_a, np_, names(services[N]), N, 2),
        CellSpec(f"pod->nodeport node {b}", pc, cns, ip_b, np_, names(services[N]), N, 2),
        CellSpec(f"node {b}->nodeport node {a}", nbl, nb, ip_a, np_, names(services[N]), N, 2),
        CellSpec(f"node {a}->nodeport node {b}", nc, na, ip_b, np_, names(services[N]), N, 2),
        CellSpec("pod->external ip", pc, cns, ext, services[E].ports[0].port, names(services[E]), E, 3),
        CellSpec(f"node {b}->external ip", nbl, nb, ext, services[E].ports[0].port, names(services[E]), E, 3),
        CellSpec("pod->pod same pod", pc, cns, lab.client_ip, HAIRPIN_PORT, ("client",), None, 4),
        CellSpec("pod->pod same node", pc, cns, pa.ip, pa.ports[0], (pa.name,), None, 4),
        CellSpec("pod->pod cross node", pc, cns, pb.ip, pb.ports[0], (pb.name,), None, 4),
        CellSpec("node->pod same node", nc, na, pa.ip, pa.ports[0], (pa.name,), None, 4),
        CellSpec("node->pod cross node", nc, na, pb.ip, pb.ports[0], (pb.name,), None, 4),
        CellSpec("pod->node same node", pc, cns, ip_a, NODE_HTTP_PORT, (f"node-{a}",), None, 4),
        CellSpec("pod->node cross node", pc, cns, ip_b, NODE_HTTP_PORT, (f"node-{b}",), None, 4),
    ]


def _cell(spec: CellSpec, **kw: Any) -> dict[str, Any]:
    c = {
        "path": spec.path,
        "from": spec.src,
        "to": f"{spec.ip}:{spec.port}",
        "expected_backend": "|".join(spec.expected),
        "observed_backend": None,
        "latency_ms": None,
        "passed": False,
        "note": "",
        "service": spec.service,
        "group": spec.group,
    }
    c.update(kw)
    return c


def check_cell(req: Requester, spec: CellSpec) -> dict[str, Any]:
    r = req.get(spec.ns, spec.ip, spec.port)
    ms = round(r["us"] / 1000.0, 3)
    if not r.get("ok"):
        return _cell(spec, latency_ms=ms, note=f"no answer: {r.get('error')}")
    line = _first_line(r.get("body", ""))
    name = _backend_name(line)
    if r.get("status") != 200:
        return _cell(spec, observed_backend=line or None, latency_ms=ms, note=f"HTTP {r.get('status')}")
    ok = name in spec.expected
    return _cell(
        spec,
        observed_backend=line,
        latency_ms=ms,
        passed=ok,
        note="" if ok else f"answered by {name!r}, expected {'|'.join(spec.expected)}",
    )


def check_affinity(
    req: Requester, lab: Any, services: Mapping[str, Service], key: str, n: int = AFFINITY_REQUESTS
) -> dict[str, Any]:
    """50 requests from the client: affinity -> one backend; no affinity -> all 4 backends."""
    svc = services[key]
    want = {f"{e.ip}:{e.port}" for e in svc.endpoints}
    sticky = svc.affinity_timeout is not None
    path = (
        f"affinity ClientIP: {n} req -> 1 of {len(want)}"
        if sticky
        else f"no affinity: {n} req -> all {len(want)}"
    )
    spec = CellSpec(
        path, "pod client", lab.client_ns, svc.cluster_ip, svc.ports[0].port, tuple(sorted(want)), key, 5
    )
    seen: Counter[str] = Counter()
    lat: list[float] = []
    errors: Counter[str] = Counter()
    for _ in range(n):
        r = req.get(spec.ns, spec.ip, spec.port)
        lat.append(r["us"] / 1000.0)
        if not r.get("ok") or r.get("status") != 200:
            errors[str(r.get("error") or f"HTTP {r.get('status')}")] += 1
            continue
        line = _first_line(r["body"])
        toks = line.split()
        seen[toks[1] if len(toks) > 1 else line] += 1
    if len(seen) <= 1:
        observed = " ".join(f"{k} x{v}" for k, v in seen.items()) or None
    else:
        observed = f"{len(seen)} backends (" + " ".join(str(v) for _, v in sorted(seen.items())) + ")"
    ms = round(statistics.median(lat), 3) if lat else None
    notes = []
    if errors:
        notes.append("failed requests: " + ", ".join(f"{k} x{v}" for k, v in errors.items()))
    stray = set(seen) - want
    if len(seen) > 1:
        notes.append("backends: " + ", ".join(f"{k} x{v}" for k, v in sorted(seen.items())))
    if stray:
        notes.append(f"answered by non-endpoints {sorted(stray)}")
    if sticky:
        ok = not errors and not stray and len(seen) == 1
        if len(seen) > 1:
            notes.append(f"spread over {len(seen)} endpoints: no persistence")
    else:
        ok = not errors and not stray and set(seen) == want
        if not errors and set(seen) != want:
            notes.append(f"reached {len(set(seen) & want)} of {len(want)} endpoints")
    if len(want) < 4:
        notes.append(f"only {len(want)} distinct endpoints in this lab")
    return _cell(spec, observed_backend=observed, latency_ms=ms, passed=ok, note="; ".join(notes))


def _no_answer_kind(error: str) -> str:
    e = (error or "").lower()
    if "refused" in e:
        return "reject"
    if "unreachable" in e:
        return "reject (icmp unreachable)"
    if "timeout" in e or "timed out" in e:
        return "drop"
    return e or "error"


def check_no_endpoints(req: Requester, mode: str, spec: CellSpec) -> tuple[dict[str, Any], str]:
    r = req.get(spec.ns, spec.ip, spec.port)
    ms = round(r["us"] / 1000.0, 3)
    allowed = mode_spec(mode).no_endpoints  # what kube-proxy does in that mode (cell 6)
    if r.get("ok"):
        line = _first_line(r.get("body", ""))
        return _cell(
            spec,
            observed_backend=line,
            latency_ms=ms,
            note=f"answered (HTTP {r.get('status')}) although the Service has no endpoints",
        ), "answered"
    kind = _no_answer_kind(str(r.get("error")))
    ok = kind in allowed
    note = f"{kind} ({r.get('error')})"
    if not ok:
        note += f"; kube-proxy {mode} mode: {'/'.join(sorted(allowed))}"
    return _cell(spec, observed_backend=kind, latency_ms=ms, passed=ok, note=note), kind


# ---------------------------------------------------------------- entry point


def validate_mode(
    lab: Any,
    agent: Any,
    dataplanes: Mapping[str, Any],
    model: Model,
    settings: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Program the validation Services on every node and run the matrix; see the module docstring.

    Returns {"mode", "passed", "failed_cells", "cells", "no_endpoints_behaviour", "kernel",
    "services", "seconds"} (and "error" when the Services could not be programmed).
    """
    t0 = time.monotonic()
    mode = next(iter(dataplanes.values())).mode if dataplanes else "?"
    services = validation_services(model, lab.client_ip)
    svc_list = list(services.values())
    result: dict[str, Any] = {
        "mode": mode,
        "kernel": platform.release(),
        "passed": False,
        "failed_cells": [],
        "cells": [],
        "no_endpoints_behaviour": None,
        "services": {
            k: {
                "name": s.name,
                "cluster_ip": s.cluster_ip,
                "port": s.ports[0].port,
                "node_port": s.ports[0].node_port,
                "external_ips": list(s.external_ips),
                "affinity_timeout": s.affinity_timeout,
                "endpoints": [e.addr for e in s.endpoints],
            }
            for k, s in services.items()
        },
    }
    try:
        for dp in dataplanes.values():
            dp.full_sync(svc_list)
    except Exception as e:  # noqa: BLE001 - recorded as the validation's error and failed cell
        err = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        result.update(
            error=f"programming the validation Services failed: {err}",
            failed_cells=["program validation Services"],
            cells=[
                {
                    "path": "program validation Services",
                    "from": "",
                    "to": "",
                    "expected_backend": None,
                    "observed_backend": None,
                    "latency_ms": None,
                    "passed": False,
                    "note": err,
                    "service": None,
                    "group": 0,
                }
            ],
            seconds=round(time.monotonic() - t0, 2),
        )
        return result

    a, b = model.spec.nodes[0], model.spec.nodes[1]
    servers = [
        TinyHTTPServer(lab.client_ns, lab.client_ip, HAIRPIN_PORT, "client"),
        TinyHTTPServer(lab.node_ns(a), lab.node_ip(a), NODE_HTTP_PORT, f"node-{a}"),
        TinyHTTPServer(lab.node_ns(b), lab.node_ip(b), NODE_HTTP_PORT, f"node-{b}"),
    ]
    req = Requester(agent, timeout)
    cells: list[dict[str, Any]] = []
    try:
        for s in servers:
            s.start()
        for spec in matrix(lab, model, services):
            cells.append(check_cell(req, spec))
        cells.append(check_affinity(req, lab, services, AFFINITY))
        cells.append(check_affinity(req, lab, services, SPREAD))
        noep = services[NOEP]
        pod_cell, kind = check_no_endpoints(
            req,
            mode,
            CellSpec(
                "pod->svc without endpoints",
                f"pod client (node {a})",
                lab.client_ns,
                noep.cluster_ip,
                noep.ports[0].port,
                ("(refused or dropped)",),
                NOEP,
                6,
            ),
        )
        node_cell, node_kind = check_no_endpoints(
            req,
            mode,
            CellSpec(
                f"node->svc without endpoints ({a})",
                f"node {a}",
                lab.node_ns(a),
                noep.cluster_ip,
                noep.ports[0].port,
                ("(refused or dropped)",),
                NOEP,
                6,
            ),
        )
        cells += [pod_cell, node_cell]
        result["no_endpoints_behaviour"] = kind if kind == node_kind else f"{kind} (from a node: {node_kind})"
    finally:
        for s in servers:
            s.stop()
    result["cells"] = cells
    result["failed_cells"] = [c["path"] for c in cells if not c["passed"]]
    result["passed"] = not result["failed_cells"]
    result["seconds"] = round(time.monotonic() - t0, 2)
    return result


# ---------------------------------------------------------------- table


def _cell_text(c: dict[str, Any] | None) -> tuple[str, bool | None]:
    if c is None:
        return "-", None
    lat = f" {c['latency_ms']:.1f} ms" if c.get("latency_ms") is not None else ""
    obs = c.get("observed_backend") or ""
    if c["passed"]:
        return f"pass {obs}{lat}".strip(), True
    why = obs or c.get("note") or ""
    return f"FAIL {why}{lat}".strip(), False


def format_table(
    results_by_mode: Mapping[str, Mapping[str, Any] | None], *, color: bool = False, width: int = 200
) -> str:
    """A rich table, path x mode -> pass/fail with the observed backend and latency.

    `results_by_mode` maps a column label (a mode, or "kernel/mode") to a validate_mode result
    (None: not validated). Plain text unless color=True (ANSI colours for a terminal).
    """
    cols = list(results_by_mode)
    paths: list[str] = []
    by: dict[str, dict[str, dict]] = {}
    for k, res in results_by_mode.items():
        for c in (res or {}).get("cells", []):
            if c["path"] not in paths:
                paths.append(c["path"])
            by.setdefault(c["path"], {})[k] = c
    footer = []
    for k in cols:
        res = results_by_mode[k]
        if not res:
            footer.append("not run")
        else:
            nf = len(res.get("failed_cells", []))
            footer.append(
                ("PASSED" if res.get("passed") else f"FAILED ({nf})")
                + (
                    f", no endpoints: {res.get('no_endpoints_behaviour')}"
                    if res.get("no_endpoints_behaviour")
                    else ""
                )
            )
    try:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback (e.g. inside UML without rich)
        rows = [["path", *cols]] + [[p, *(_cell_text(by[p].get(k))[0] for k in cols)] for p in paths]
        rows.append(["result", *footer])
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w[i]) for i, v in enumerate(r)) for r in rows) + "\n"
    t = Table(title="functional validation (issue 8 matrix)", show_lines=False)
    t.add_column("path", no_wrap=True)
    for k in cols:
        t.add_column(k)
    for p in paths:
        row = [p]
        for k in cols:
            text, ok = _cell_text(by[p].get(k))
            style = "green" if ok else ("bold red" if ok is False else "dim")
            row.append(f"[{style}]{_escape(text)}[/{style}]")
        t.add_row(*row)
    t.add_section()
    t.add_row(
        "[bold]result[/bold]",
        *(
            f"[{'green' if (results_by_mode[k] or {}).get('passed') else 'bold red'}]{_escape(f)}[/]"
            for k, f in zip(cols, footer, strict=True)
        ),
    )
    buf = StringIO()
    Console(
        file=buf,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
    ).print(t)
    return buf.getvalue()


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)
