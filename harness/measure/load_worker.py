"""The load generator process: locust as a library, open-loop, raw per-request timings.

    ip netns exec NS <python> -m harness.measure.load_worker --users U --rate R --duration D \
        [--min-duration F] --timeout T --keepalive false,true [--seed S] [--keepalive-targets K] \
        < targets.json

stdin: a JSON list of [ip, port] targets (the ClusterIPs of the N Services). stdout: JSON lines,
``{"t": "req", "r": [seq, user, intended_ns, start_ns, end_ns, ok, err, new_conn]}`` per request
(perf_counter_ns; err "" when ok; ``"k"``: 1 in a keepalive phase) and one ``{"t": "summary", ...}``
per phase. ``--keepalive false,true`` runs both phases one after the other in this one process
(``import locust`` costs ~3.4 s inside the UML guest: paid once per point, not per phase).

Adaptive (``--min-duration F``): D is a cap. From F seconds on, every CHECK_S, the phase stops
once the order-statistic 95% CI of the median of request_us and of request_corrected_us is
within +-5% (harness.measure.adaptive.load_stop_rule; never below F seconds' requests nor the
report's floor): the schedule is cut at the slots already due, so the phase is exactly as if its
duration had been that shorter one (its summary's ``duration_s``; ``duration_cap_s`` is D).

Why its own process: ``import locust`` monkey-patches the whole process with gevent.
``load_worker --serve`` keeps one such process for many requests (harness.measure.load
.LoadGenerator: one per worker, so ``import locust`` is paid once per kernel group, not per point):
each stdin line ``{"args": [the command line above], "targets": [...]}`` is answered by its
phases' lines and ``{"t": "done", "rc": N}``; EOF ends it.

Schedule (open loop, so coordinated omission is visible): request g (g = 0, 1, ...) is intended to
start at t_start + g / rate and belongs to user g mod U; each user waits for its next intended
start (or starts at once when it is late) and never skips one. The wait sleeps to 2 ms before the
intended start and yield-spins the rest (wait_until): a plain gevent.sleep wakes ~1 ms late, and
that would be charged to the dataplane. Each record keeps intended_ns and start_ns, so the
generator's own lateness (start - intended) is reported per request (request_lateness_us). A user stops when the phase
(duration) is over; requests intended but not started by then are counted as ``missed``. Latency
is kept per request as perf_counter floats (locust's own statistics round to whole ms: unused).
The events.request hook receives every request (response_time in float ms) with its timestamps in
``context``; that listener is what records the rows.

keepalive=false: every request opens a new TCP connection, sends ``Connection: close`` and reads
to EOF; the server closes first. keepalive=true: each user opens one persistent HTTP/1.1
connection to each of its K targets (drawn at random from the N) before the phase; requests pick
one of them at random. A connection the server closed is reopened (and counted).
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching)

# isort: split
import argparse
import json
import os
import random
import socket
import sys
import time

import gevent
from gevent.event import Event
from locust import User, task
from locust.env import Environment
from locust.exception import StopUser

from harness.measure.adaptive import load_stop_rule, schedule_cut
from harness.measure.cpu import snapshot

_pc = time.perf_counter_ns
# How long before a request's intended start the worker stops sleeping and yield-spins instead:
# gevent.sleep wakes on an epoll timeout of whole milliseconds measured from the loop's cached
# time, so a plain sleep to the intended start runs late (measured in the lab at 50/s: p50 645 us
# before, 4.7 us with this wait), and request_corrected_us would count that as dataplane latency.
SPIN_NS = 2_000_000
# adaptive phases: how often the stop rule is asked once the minimum duration has passed (each
# check sorts the latencies so far: ~1-3 ms at 600-2,000 requests, within one request's slot)
CHECK_S = 0.5


def wait_until(t_ns: int) -> None:
    """Return at perf_counter_ns() >= t_ns (or at once if past): sleep coarsely to SPIN_NS before
    it, then yield to the other greenlets (their I/O goes on) until the clock reaches it."""
    while True:
        left = t_ns - _pc()
        if left <= 0:
            return
        gevent.sleep((left - SPIN_NS) / 1e9 if left > SPIN_NS else 0)


class _State:
    users = 1
    rate = 1.0
    duration = 1.0
    timeout = 1.0
    keepalive = False
    ka_targets = 1
    seed = 0
    targets: list = []
    t_start_ns = 0
    t_end_ns = 0
    go = Event()
    ready = 0
    done = 0
    all_done = Event()
    next_index = 0
    records: list = []
    connections = 0
    missed = 0
    n_slots = 0
    stopped_early = False


S = _State()


def _errname(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError, gevent.Timeout)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, OSError) and e.errno is not None:
        import errno

        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__ if not str(e) else str(e)[:80]


class HttpError(Exception):
    pass


def _read_response(sock: socket.socket, to_eof: bool) -> tuple[int, int, bool]:
    """-> (status, body length, server wants close). Raises on a malformed or cut response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("closed before headers" if not buf else "truncated headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    close = False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    if length is None or to_eof:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, len(body), True
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("truncated body")
        body += chunk
    return status, len(body), close


def _open(addr, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect(addr)
    S.connections += 1
    return s


class ProbeUser(User):
    """One open-loop request stream (see the module docstring)."""

    def on_start(self):
        self.idx = S.next_index
        S.next_index += 1
        self.rng = random.Random(S.seed * 1000003 + self.idx)
        self.conns: dict[tuple[str, int], socket.socket] = {}  # (ip, port) -> open keep-alive connection
        if S.keepalive:
            k = min(S.ka_targets, len(S.targets))
            self.mine = self.rng.sample(S.targets, k)
            for t in self.mine:
                try:
                    self.conns[t] = _open(t, S.timeout)
                except OSError:
                    pass  # reopened (and timed) at first use
        S.ready += 1

    def _request(self, addr) -> tuple[int, bool]:
        """One GET /; returns (response length, whether a new connection was opened)."""
        ip = addr[0]
        if not S.keepalive:
            s = _open(addr, S.timeout)
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % ip.encode())
                status, n, _ = _read_response(s, to_eof=True)
            finally:
                s.close()
            if status != 200:
                raise HttpError(f"http {status}")
            return n, True
        req = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % ip.encode()
        new = False
        cached = self.conns.get(addr)
        if cached is None:
            cached, new = _open(addr, S.timeout), True
            self.conns[addr] = cached
        s = cached
        try:
            s.sendall(req)
            status, n, close = _read_response(s, to_eof=False)
        except (HttpError, ConnectionResetError, BrokenPipeError) as e:
            s.close()
            self.conns.pop(addr, None)
            if new or (isinstance(e, HttpError) and str(e) != "closed before headers"):
                raise
            # the server closed an idle kept-alive connection: retry once on a new one
            s, new = _open(addr, S.timeout), True
            self.conns[addr] = s
            s.sendall(req)
            status, n, close = _read_response(s, to_eof=False)
        if close:
            s.close()
            self.conns.pop(addr, None)
        if status != 200:
            raise HttpError(f"http {status}")
        return n, new

    @task
    def stream(self):
        S.go.wait()
        period = 1e9 / S.rate
        g = self.idx
        fire = self.environment.events.request.fire
        try:
            while True:
                if g >= S.n_slots:
                    break
                intended = S.t_start_ns + int(g * period)
                now = _pc()
                if now >= S.t_end_ns:  # behind schedule at the end of the phase
                    S.missed += len(range(g, S.n_slots, S.users))
                    break
                if intended > now:
                    wait_until(intended)
                    if g >= S.n_slots:  # the phase stopped early (adaptive) while this user waited
                        break
                addr = self.rng.choice(self.mine) if S.keepalive else self.rng.choice(S.targets)
                start = _pc()
                exc = None
                n = 0
                new = False
                try:
                    with gevent.Timeout(S.timeout):
                        n, new = self._request(addr)
                except BaseException as e:  # noqa: BLE001 - every failure is a sample
                    if isinstance(e, gevent.GreenletExit):
                        raise
                    exc = e
                    new = not S.keepalive
                    if S.keepalive:
                        s = self.conns.pop(addr, None)
                        if s is not None:
                            s.close()
                end = _pc()
                fire(
                    request_type="GET",
                    name=f"{addr[0]}:{addr[1]}",
                    response_time=(end - start) / 1e6,
                    response_length=n,
                    exception=exc,
                    context={
                        "seq": g,
                        "user": self.idx,
                        "intended_ns": intended,
                        "start_ns": start,
                        "end_ns": end,
                        "new_conn": new,
                    },
                )
                g += S.users
        finally:
            for s in self.conns.values():
                s.close()
            self.conns.clear()
            S.done += 1
            if S.done >= S.users:
                S.all_done.set()
        raise StopUser()


def on_request(request_type, name, response_time, response_length, exception, context, **kw):
    c = context
    S.records.append(
        [
            c["seq"],
            c["user"],
            c["intended_ns"],
            c["start_ns"],
            c["end_ns"],
            0 if exception else 1,
            _errname(exception) if exception else "",
            1 if c["new_conn"] else 0,
        ]
    )


def reset(keepalive: bool) -> None:
    """A fresh phase state (the targets and the arguments stay)."""
    S.keepalive = keepalive
    S.go, S.all_done = Event(), Event()
    S.ready = S.done = S.next_index = S.connections = S.missed = S.n_slots = 0
    S.records = []
    S.t_start_ns = S.t_end_ns = 0


def latencies(records: list) -> tuple[list[float], list[float]]:
    """(request_us, request_corrected_us) of the records so far, as load.py writes them (a failed
    request counts as the timeout)."""
    t_us = S.timeout * 1e6
    req, corr = [], []
    for r in records:
        if r[5]:
            req.append((r[4] - r[3]) / 1000.0)
            corr.append((r[4] - r[2]) / 1000.0)
        else:
            req.append(t_us)
            corr.append(t_us)
    return req, corr


def watch(rule, min_duration: float, period: float) -> None:
    """Stop the phase early once `rule` holds for the request latencies (asked every CHECK_S from
    min_duration on): the schedule is cut at the slots already due, and the phase's end moves to
    the end of the last kept slot's period, as if the phase had been that long."""
    gevent.sleep(max(0.0, (S.t_start_ns - _pc()) / 1e9 + min_duration))
    while not S.all_done.is_set() and _pc() < S.t_end_ns:
        rule.series = dict(zip(("request_us", "request_corrected_us"), latencies(S.records), strict=True))
        if rule.done():
            cut = schedule_cut(S.t_start_ns, period, _pc(), S.n_slots)
            if cut < S.n_slots:
                S.n_slots = cut
                S.t_end_ns = S.t_start_ns + int(cut * period)
                S.stopped_early = True
            return
        gevent.sleep(CHECK_S)


def run_phase(a, keepalive: bool, out) -> int:
    """One load phase (one keepalive variant): its records and summary lines on `out`."""
    reset(keepalive)
    S.stopped_early = False
    env = Environment(user_classes=[ProbeUser])
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(a.users, spawn_rate=a.users)
    deadline = time.monotonic() + 30 + a.users * 0.05
    while S.ready < a.users:
        if time.monotonic() > deadline:
            print(json.dumps({"t": "error", "error": f"only {S.ready}/{a.users} users started"}), flush=True)
            runner.quit()
            return 2
        gevent.sleep(0.005)
    conns_setup = S.connections
    cpu0 = snapshot()
    t0 = os.times()
    S.t_start_ns = _pc() + 20_000_000
    S.t_end_ns = S.t_start_ns + int(a.duration * 1e9)
    period = 1e9 / a.rate
    S.n_slots = int(a.duration * 1e9 / period) + 1
    while S.n_slots > 0 and int((S.n_slots - 1) * period) >= S.t_end_ns - S.t_start_ns:
        S.n_slots -= 1
    cap = S.n_slots
    rule = None
    if a.min_duration is not None and a.min_duration < a.duration:
        rule = load_stop_rule(cap, int(a.min_duration * a.rate))
        watcher = gevent.spawn(watch, rule, a.min_duration, period)
    S.go.set()
    S.all_done.wait(timeout=a.duration + a.timeout + 30)
    t_stop = _pc()
    t1 = os.times()
    cpu1 = snapshot()
    runner.quit()
    if rule is not None:
        watcher.kill()
        rule.series = dict(zip(("request_us", "request_corrected_us"), latencies(S.records), strict=True))
    wall = (t_stop - S.t_start_ns) / 1e9
    duration = (S.t_end_ns - S.t_start_ns) / 1e9  # the phase's length (shorter when it stopped early)
    cpu_s = (t1.user - t0.user) + (t1.system - t0.system)
    head = '{"t":"req","k":1,"r":' if keepalive else '{"t":"req","k":0,"r":'
    for r in S.records:
        out.write(head + json.dumps(r, separators=(",", ":")) + "}\n")
    issued = len(S.records)
    summary = {
        "t": "summary",
        "keepalive": keepalive,
        "users": a.users,
        "target_rps": a.rate,
        "duration_s": duration,
        "duration_cap_s": a.duration,
        "stopped_early": S.stopped_early,
        "adaptive": rule.summary() if rule is not None else None,
        "wall_s": wall,
        "requests": issued,
        "failures": sum(1 for r in S.records if not r[5]),
        "achieved_rps": issued / duration,
        "missed": S.missed,
        "scheduled": S.n_slots,
        "scheduled_cap": cap,
        "connections": S.connections,
        "connections_setup": conns_setup,
        "cpu_s": cpu_s,
        "client_cpu_pct": 100.0 * cpu_s / wall if wall > 0 else 0.0,
        "t_start_ns": S.t_start_ns,
        "t_end_ns": S.t_end_ns,
        "finished": S.all_done.is_set(),
        "proc_stat": [list(cpu0.__dict__.values()), list(cpu1.__dict__.values())],
        "pid": os.getpid(),
    }
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="load_worker")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="target requests per second (all users)")
    ap.add_argument("--duration", type=float, required=True, help="phase length (the cap), seconds")
    ap.add_argument(
        "--min-duration",
        type=float,
        default=None,
        help="adaptive: stop once the median's 95%% CI is within +-5%%, not before this (seconds)",
    )
    ap.add_argument("--timeout", type=float, default=1.0, help="per request, seconds")
    ap.add_argument(
        "--keepalive",
        required=True,
        help="true, false, or a comma list: one phase per value, in order, in this process",
    )
    ap.add_argument("--keepalive-targets", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets-file", default="-")
    return ap


def run_request(argv: list[str], targets: list | None, out) -> int:
    """The phases one command line asks for (targets: from it, or read from --targets-file / stdin)."""
    ap = parser()
    a = ap.parse_args(argv)
    if a.users < 1 or a.rate <= 0 or a.duration <= 0:
        ap.error("users >= 1, rate > 0, duration > 0")
    phases = [v.strip() for v in a.keepalive.split(",")]
    if not phases or any(v not in ("true", "false") for v in phases):
        ap.error("--keepalive: true, false or a comma list of them")
    if targets is None:
        targets = json.loads(sys.stdin.read() if a.targets_file == "-" else open(a.targets_file).read())
    S.targets = [(str(ip), int(port)) for ip, port in targets]
    if not S.targets:
        ap.error("no targets")
    S.users, S.rate, S.duration, S.timeout = a.users, a.rate, a.duration, a.timeout
    S.ka_targets, S.seed = max(1, a.keepalive_targets), a.seed
    for v in phases:
        rc = run_phase(a, v == "true", out)
        if rc:
            return rc
    return 0


def serve(inp, out) -> int:
    """Requests as JSON lines on `inp` ({"args": [command line], "targets": [[ip, port], ...]}),
    each answered by its phases' lines and {"t": "done", "rc": ...}; ends at EOF. Between requests
    the process only waits in a blocking read (no greenlet runs): it costs nothing while the
    other phases of a point are measured."""
    while True:
        line = inp.readline()
        if not line:
            return 0
        req = json.loads(line)
        try:
            rc = run_request(req["args"], req["targets"], out)
        except SystemExit as e:  # argparse's error: reported, the process goes on
            rc = e.code if isinstance(e.code, int) else 2
        out.write(
            json.dumps({"t": "done", "rc": rc}, separators=(",", ":")) + "\n"
        )  # as the reader looks for it
        out.flush()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # one fd per connection: raise the soft limit
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    if argv == ["--serve"]:
        return serve(sys.stdin, sys.stdout)
    return run_request(argv, None, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
