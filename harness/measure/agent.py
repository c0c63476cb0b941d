"""The probe agent: a long-lived process inside the client namespace, and its client handle.

Started as ``ip netns exec NS <python> -m harness.measure.agent``. It imports the standard library
only (it may run inside a UML guest, where imports are slow) and speaks JSON lines: one command
object per line on stdin, one reply object per line on stdout. Every reply has ``ok`` (bool) and,
when ``ok`` is false, ``error``.

Commands (``{"cmd": NAME, ...}``):

``ping``
    -> ``{"ok": true, "pid": ..., "t_ns": perf_counter_ns()}``.
``connect`` ``targets=[[ip, port, tag], ...]``, ``samples`` (attempts per target, default 1),
``timeout`` (s)
    For each round, for each target: a new socket (SO_LINGER 0, so close sends RST and no
    TIME_WAIT piles up; SO_SNDTIMEO = timeout, so the *blocking* connect gives up in time), then
    ``perf_counter_ns`` around the blocking ``connect()``. -> ``{"ok": true, "results": [[i, us,
    err], ...]}`` in attempt order, ``i`` the target index, ``us`` the handshake time in
    microseconds (float), ``err`` "" or "timeout" / "refused" / "unreachable" / errno name. A
    failed or timed-out attempt is reported with its elapsed time, never dropped.
``poll`` ``ip``, ``port``, ``expect`` ("served" | "gone" | "backend:X,Y,..."), ``interval`` (s,
<= 1), ``timeout`` (s), ``attempt_timeout`` (s, default 0.2), ``max_cpu_share`` (optional, (0, 1]),
``control`` (optional ``[ip, port]`` of a Service that stays served)
    Replies twice: first ``{"ok": true, "event": "polling", "t_ns": ...}`` as soon as polling
    starts (the caller then changes the dataplane), then, when done, ``{"ok": true, "event":
    "result", "satisfied": bool, "timed_out": bool, "t_ns": start of the first attempt that
    satisfied the expectation, "t_done_ns": when that attempt completed, "attempts": n,
    "t_first_ns": start of the first attempt, "t_prev_ns": start of the last attempt before the
    satisfying one (or null), "cpu_share": the poller's CPU time / its wall time, "detail": ...}``.
    With ``max_cpu_share`` the attempts are paced so that the poller's own CPU time stays within
    that share of a CPU (``paced_start``): where one attempt is expensive (a UML guest, thousands
    of rules) the spacing grows past ``interval`` (up to 50 ms), and ``t_prev_ns`` says by how much.
    One attempt is started every ``interval`` on a *new* socket (a new source port, so a
    conntrack entry made before the rule existed is never reused); attempts overlap and are
    resolved with poll(2). "served": the TCP connect succeeds. "gone": the connect is refused,
    unreachable, or not answered within ``attempt_timeout`` (with ``control``: and a control attempt
    to that address, started no earlier, was answered: proof that the network was moving). "backend:X": an HTTP GET / is
    answered and the body's first line (``"<podname> <ip>:<port>"``) has a token equal to an
    element of X, or a pod name that starts with one. The reported attempt is the earliest
    started one that satisfied the expectation (attempts started earlier are waited for).
    Timestamps are ``time.perf_counter_ns()`` = CLOCK_MONOTONIC, comparable across processes of
    one kernel.
``http_get`` ``ip``, ``port``, ``path`` (default "/"), ``timeout``
    One request on a new connection (``Connection: close``) -> ``{"ok": true, "status": int,
    "body": str, "us": float}`` (or ok false with error).
``quit``
    -> ``{"ok": true}``, then the agent exits.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from typing import IO, Any

_pc = time.perf_counter_ns
_cpu = time.process_time_ns
_sleep = time.sleep
_LINGER0 = struct.pack("ii", 1, 0)
_SOL, _LINGER, _SNDTIMEO = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_SNDTIMEO
_AF, _ST = socket.AF_INET, socket.SOCK_STREAM
MAX_INTERVAL = 1.0
MAX_PACED_NS = 50_000_000  # the widest spacing pacing may reach (50 ms)
COST_EWMA = 0.2  # weight of the newest attempt's CPU cost in the running estimate
GONE_CONFIRM = 3  # attempts after a silent "gone" that must be gone too (with a control)
DEFAULT_INTERVAL = 0.001


def _timeval(seconds: float) -> bytes:
    sec = int(seconds)
    return struct.pack("ll", sec, int((seconds - sec) * 1e6))


def _errname(code: int) -> str:
    if code in (errno.ECONNREFUSED,):
        return "refused"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if code in (errno.EINPROGRESS, errno.EAGAIN, errno.ETIMEDOUT):
        return "timeout"
    return errno.errorcode.get(code, str(code))


# ---------------------------------------------------------------- connect


def cmd_connect(req: dict) -> dict:
    targets = [(str(t[0]), int(t[1])) for t in req["targets"]]
    rounds = int(req.get("samples", 1))
    tv = _timeval(float(req.get("timeout", 1.0)))
    out: list[list[Any]] = []
    append = out.append
    for _ in range(rounds):
        for i, addr in enumerate(targets):
            s = socket.socket(_AF, _ST)
            s.setsockopt(_SOL, _LINGER, _LINGER0)
            s.setsockopt(_SOL, _SNDTIMEO, tv)
            err = ""
            t0 = _pc()
            try:
                s.connect(addr)
            except OSError as e:  # blocking connect past SO_SNDTIMEO raises EINPROGRESS
                t1 = _pc()
                err = _errname(e.errno or 0) if not isinstance(e, TimeoutError) else "timeout"
            else:
                t1 = _pc()
            s.close()
            append([i, (t1 - t0) / 1000.0, err])
    return {"ok": True, "results": out}


# ---------------------------------------------------------------- poll


class _Attempt:
    __slots__ = ("sock", "t0", "state", "buf")

    def __init__(self, sock, t0):
        self.sock, self.t0, self.state, self.buf = sock, t0, "connecting", b""


def _backend_match(body: bytes, names: frozenset) -> bool:
    line = body.split(b"\n", 1)[0].decode(errors="replace").strip()
    toks = line.split()
    if not toks:
        return False
    if any(t in names for t in toks):
        return True
    return any(toks[0].startswith(n) for n in names)


def paced_start(
    next_start: int,
    now: int,
    interval_ns: int,
    cost_ns: float,
    share: float | None,
    max_ns: int = MAX_PACED_NS,
) -> int:
    """When the attempt after the one due at `next_start` starts (ns): one spacing later, never a
    burst to catch up (a late loop restarts the beat from `now`). The spacing is `interval_ns`; with
    `share`, at least `cost_ns` (the poller's recent CPU time per attempt) / `share`, so that the
    poller takes at most that share of a CPU from the apply it times, and at most `max_ns`, so that
    no sample is timed coarser than that (an attempt costlier than share x max_ns then takes more).
    """
    spacing = interval_ns
    if share:
        spacing = min(max(interval_ns, int(cost_ns / share)), max(interval_ns, max_ns))
    nxt = next_start + spacing
    if nxt < now:
        nxt = now + spacing
    return nxt


def _poll_loop(
    ip: str,
    port: int,
    expect: str,
    interval: float,
    timeout: float,
    attempt_timeout: float,
    max_cpu_share: float | None = None,
    control: tuple[str, int] | None = None,
) -> dict:
    """Start an attempt every `interval`; see the module docstring."""
    http = expect.startswith("backend:")
    names = frozenset(x for x in expect[len("backend:") :].split(",") if x) if http else frozenset()
    if expect not in ("served", "gone") and not http:
        return {"ok": False, "error": f"unknown expect {expect!r}"}
    interval_ns = int(min(interval, MAX_INTERVAL) * 1e9)
    att_ns = int(attempt_timeout * 1e9)
    poller = select.poll()
    live: dict[int, _Attempt] = {}
    request = f"GET / HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode()
    t_begin = _pc()
    deadline = t_begin + int(timeout * 1e9)
    next_start = t_begin
    attempts = 0
    starts: list[int] = []
    cpu0 = cpu_last = _cpu()
    cost = 0.0  # running estimate of the poller's CPU time per attempt (ns)
    # "gone" by silence only once a control attempt (to a Service that stays served) started no
    # earlier was answered: in a one-CPU guest a served SYN can wait seconds behind the apply. A
    # control starts when a silent attempt expires and none started since it is in flight.
    ctrl: dict[int, Any] = {}  # fd -> (socket, start)
    ctrl_ok = [-1]  # latest start of an answered control attempt
    # with a control, "gone" also needs CONFIRM later attempts judged gone and none answered after
    # it: an early silent attempt whose successors connect was a lost SYN, not the change
    confirm = GONE_CONFIRM if control is not None and expect == "gone" else 0
    gone_after = [0]  # attempts judged gone that started at or after best_t0
    served_t0 = [-1]  # latest start of an attempt that connected
    best_t0 = None  # start of earliest satisfying attempt
    best_done = None
    detail = ""

    def finish(a: _Attempt, ok: bool, now: int, why: str):
        nonlocal best_t0, best_done, detail
        fd = a.sock.fileno()
        try:
            poller.unregister(fd)
        except (KeyError, ValueError):
            pass
        live.pop(fd, None)
        a.sock.close()
        if confirm:
            if ok and a.t0 < served_t0[0]:
                return  # an attempt started after it was answered: not gone then
            if ok:
                gone_after[0] += 1
            elif why == "connected":
                served_t0[0] = max(served_t0[0], a.t0)
                if best_t0 is not None and a.t0 > best_t0:
                    best_t0, best_done, detail, gone_after[0] = None, None, "", 0  # served after all
        if ok and (best_t0 is None or a.t0 < best_t0):
            best_t0, best_done, detail = a.t0, now, why

    def _control_start() -> None:
        assert control is not None  # called only when a control Service was given
        c = socket.socket(_AF, _ST)
        c.setsockopt(_SOL, _LINGER, _LINGER0)
        c.setblocking(False)
        t = _pc()
        if c.connect_ex(control) in (0, errno.EINPROGRESS):
            ctrl[c.fileno()] = (c, t)
            poller.register(c.fileno(), select.POLLOUT)
        else:
            c.close()

    def _control_end(fd: int, answered: bool) -> None:
        c, t = ctrl.pop(fd)
        poller.unregister(fd)
        if answered and c.getsockopt(_SOL, socket.SO_ERROR) == 0:
            ctrl_ok[0] = max(ctrl_ok[0], t)
        c.close()

    def _handle(events) -> None:
        """Advance the attempts that have events: connected / refused, request sent, answer read."""
        for fd, _ev in events:
            if fd in ctrl:
                _control_end(fd, True)
                continue
            found = live.get(fd)
            if found is None:
                continue
            a = found
            now = _pc()
            if a.state == "connecting":
                code = a.sock.getsockopt(_SOL, socket.SO_ERROR)
                if code:
                    finish(a, expect == "gone", now, _errname(code))
                elif not http:
                    finish(a, expect == "served", now, "connected")
                else:
                    try:
                        a.sock.send(request)
                    except OSError as e:
                        finish(a, False, now, _errname(e.errno or 0))
                        continue
                    a.state = "reading"
                    poller.modify(fd, select.POLLIN)
            else:
                try:
                    chunk = a.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    finish(a, False, now, _errname(e.errno or 0))
                    continue
                if chunk:
                    a.buf += chunk
                    if len(a.buf) < 65536:
                        continue
                head, _, body = a.buf.partition(b"\r\n\r\n")
                ok = (
                    head.startswith(b"HTTP/1.")
                    and b" 200 " in head.split(b"\r\n", 1)[0] + b" "
                    and _backend_match(body, names)
                )
                finish(a, ok, now, body.split(b"\n", 1)[0].decode(errors="replace").strip())

    while True:
        now = _pc()
        confirming = confirm > 0 and best_t0 is not None and gone_after[0] <= confirm
        if best_t0 is not None and not confirming:
            # done once no attempt started before the best one is still pending
            if not any(a.t0 < best_t0 for a in live.values()):
                break
        elif now >= deadline:  # (an unconfirmed "gone" stands: its silence had a control)
            break
        if (best_t0 is None or confirming) and now >= next_start:
            s = socket.socket(_AF, _ST)
            s.setsockopt(_SOL, _LINGER, _LINGER0)
            s.setblocking(False)
            t0 = _pc()
            code = s.connect_ex((ip, port))
            attempts += 1
            starts.append(t0)
            a = _Attempt(s, t0)
            if code == 0 or code == errno.EINPROGRESS:
                live[s.fileno()] = a
                poller.register(s.fileno(), select.POLLOUT)
                if code == 0:
                    pass  # resolved by the POLLOUT event below
            else:  # immediate failure (unreachable, ...)
                live[s.fileno()] = a
                finish(a, expect == "gone", _pc(), _errname(code))
            cpu_now = _cpu()
            cost += COST_EWMA * (cpu_now - cpu_last - cost)
            cpu_last = cpu_now
            next_start = paced_start(next_start, now, interval_ns, cost, max_cpu_share)
        # collect what happened, then sleep until the next start: poll(2) rounds its timeout
        # up to whole milliseconds, clock_nanosleep (time.sleep) does not. An attempt's result is
        # then seen up to one interval late, but its start time (what is reported) is exact.
        if best_t0 is None or confirming:
            events = poller.poll(0)
            if not events:
                wait_ns = next_start - _pc()
                if wait_ns > 0:
                    _sleep(wait_ns / 1e9)
                events = poller.poll(0)
        else:
            events = poller.poll(1)
        _handle(events)
        # expire attempts, only after their events are collected: an agent that was not scheduled
        # for longer than attempt_timeout (one CPU busy with the apply being timed) must not take a
        # connect that completed meanwhile for "no answer"
        now = _pc()
        expired = []
        for a in live.values():  # in start order: the first one not expired ends the scan
            if now - a.t0 < att_ns:
                break
            expired.append(a)
        if expired:
            _handle(poller.poll(0))
            for a in expired:
                if a.sock.fileno() not in live:
                    continue
                if control is None or expect != "gone":
                    finish(a, expect == "gone", now, "no answer")
                elif ctrl_ok[0] >= a.t0:
                    finish(a, True, now, "no answer (control answered)")
                elif not any(t >= a.t0 for _c, t in ctrl.values()):
                    _control_start()  # one control per silent attempt at most, usually far fewer
        for fd in [fd for fd, (_c, t) in ctrl.items() if now - t >= att_ns]:
            _control_end(fd, False)

    for a in list(live.values()):
        finish(a, False, _pc(), "")
    for a in list(live.values()):
        finish(a, False, _pc(), "")
    for fd in list(ctrl):
        _control_end(fd, False)
    satisfied = best_t0 is not None
    return {
        "ok": True,
        "event": "result",
        "satisfied": satisfied,
        "timed_out": not satisfied,
        "t_ns": best_t0,
        "t_done_ns": best_done,
        "t_first_ns": t_begin,
        "attempts": attempts,
        "detail": detail,
        "t_prev_ns": max((t for t in starts if best_t0 is not None and t < best_t0), default=None),
        "cpu_share": (_cpu() - cpu0) / max(1, _pc() - t_begin),
    }


def cmd_poll(req: dict, send) -> dict:
    interval = float(req.get("interval", DEFAULT_INTERVAL))
    if interval > MAX_INTERVAL or interval <= 0:
        return {"ok": False, "error": f"interval must be in (0, {MAX_INTERVAL}] s, got {interval}"}
    share = req.get("max_cpu_share")
    if share is not None and not 0 < float(share) <= 1:
        return {"ok": False, "error": f"max_cpu_share must be in (0, 1], got {share}"}
    send({"ok": True, "event": "polling", "t_ns": _pc()})
    control = req.get("control")
    return _poll_loop(
        str(req["ip"]),
        int(req["port"]),
        str(req["expect"]),
        interval,
        float(req.get("timeout", 10.0)),
        float(req.get("attempt_timeout", 0.2)),
        float(share) if share is not None else None,
        (str(control[0]), int(control[1])) if control else None,
    )


# ---------------------------------------------------------------- http_get


def http_get(ip: str, port: int, path: str = "/", timeout: float = 2.0) -> dict:
    s = socket.socket(_AF, _ST)
    s.settimeout(timeout)
    t0 = _pc()
    try:
        s.connect((ip, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        us = (_pc() - t0) / 1000.0
        err = "timeout" if isinstance(e, TimeoutError) else _errname(e.errno or 0)
        return {"ok": False, "error": err, "us": us}
    finally:
        s.close()
    us = (_pc() - t0) / 1000.0
    head, _, body = buf.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError):
        return {"ok": False, "error": "bad response", "us": us}
    return {"ok": True, "status": status, "body": body.decode(errors="replace"), "us": us}


# ---------------------------------------------------------------- main loop


def main() -> int:
    out = sys.stdout

    def send(obj):
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        rep: dict[str, Any]
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "ping":
                rep = {"ok": True, "pid": os.getpid(), "t_ns": _pc()}
            elif cmd == "connect":
                rep = cmd_connect(req)
            elif cmd == "poll":
                rep = cmd_poll(req, send)
            elif cmd == "http_get":
                rep = http_get(
                    str(req["ip"]),
                    int(req["port"]),
                    str(req.get("path", "/")),
                    float(req.get("timeout", 2.0)),
                )
            elif cmd == "quit":
                send({"ok": True})
                return 0
            else:
                rep = {"ok": False, "error": f"unknown command {cmd!r}"}
        except Exception as e:  # noqa: BLE001 - keep serving: report, never die on one bad command
            rep = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        send(rep)
    return 0


# ---------------------------------------------------------------- client handle (caller side)


class AgentError(RuntimeError):
    pass


class AgentClient:
    """The client side of the agent's protocol (JSON lines, one request, one answer), over a
    transport its subclass provides: `_send(obj)`, `_read_line(timeout) -> str`, `close()`.
    `Agent` runs the agent as a local subprocess; harness.cluster.probe.RemoteAgent in a pod."""

    error: type[Exception] = AgentError
    _polling = False

    def _send(self, obj: dict) -> None:
        raise NotImplementedError

    def _read_line(self, timeout: float) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _recv(self, timeout: float = 600.0) -> dict:
        rep = json.loads(self._read_line(timeout))
        if not rep.get("ok"):
            raise self.error(rep.get("error", "agent error"))
        return rep

    def request(self, obj: dict, timeout: float = 600.0) -> dict:
        if self._polling:
            raise self.error("a poll is running: call poll_result() first")
        self._send(obj)
        return self._recv(timeout)

    # -- commands
    def ping(self) -> dict:
        return self.request({"cmd": "ping"})

    def connect(self, targets, samples: int = 1, timeout: float = 1.0) -> list[list]:
        """targets: [(ip, port, tag), ...] -> [[target_index, us, err], ...] in attempt order."""
        t = [[ip, int(port), tag] for ip, port, tag in targets]
        return self.request({"cmd": "connect", "targets": t, "samples": samples, "timeout": timeout})[
            "results"
        ]

    def poll_start(
        self,
        ip: str,
        port: int,
        expect: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = 10.0,
        attempt_timeout: float = 0.2,
        max_cpu_share: float | None = None,
        control: tuple[str, int] | None = None,
    ) -> int:
        """Start polling; returns once the agent polls (its perf_counter_ns). Then poll_result()."""
        req: dict[str, Any] = {
            "cmd": "poll",
            "ip": ip,
            "port": port,
            "expect": expect,
            "interval": interval,
            "timeout": timeout,
            "attempt_timeout": attempt_timeout,
        }
        if max_cpu_share is not None:
            req["max_cpu_share"] = max_cpu_share
        if control is not None:
            req["control"] = list(control)
        rep = self.request(req)
        self._polling = True
        return rep["t_ns"]

    def poll_result(self) -> dict:
        if not self._polling:
            raise self.error("no poll running")
        try:
            return self._recv()
        finally:
            self._polling = False

    def poll(self, ip: str, port: int, expect: str, **kw) -> dict:
        self.poll_start(ip, port, expect, **kw)
        return self.poll_result()

    def http_get(self, ip: str, port: int, path: str = "/", timeout: float = 2.0) -> dict:
        """-> {"status", "body", "us"}; raises the client's error when no answer."""
        return self.request({"cmd": "http_get", "ip": ip, "port": port, "path": path, "timeout": timeout})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spawn_module(ns: str | None, module: str, python: str | None = None) -> subprocess.Popen:
    """`python -u -m module` inside namespace `ns` (None: here), this checkout on its PYTHONPATH,
    stdin/stdout/stderr as line-buffered text pipes."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ([] if ns is None else ["ip", "netns", "exec", ns]) + [
        python or sys.executable,
        "-u",
        "-m",
        module,
    ]
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )


class Agent(AgentClient):
    """Starts the agent inside namespace `ns` (None: here) and sends it commands.

    Use as a context manager, or call close(). `python` defaults to this interpreter.
    """

    def __init__(self, ns: str | None, python: str | None = None):
        self.ns = ns
        self.proc = spawn_module(ns, "harness.measure.agent", python)
        # all three are PIPEs, so Popen set them
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self._stdin: IO[str] = self.proc.stdin
        self._stdout: IO[str] = self.proc.stdout
        self._stderr: IO[str] = self.proc.stderr
        self._polling = False
        try:
            self.pid = self.ping()["pid"]
        except Exception:
            self.close()
            raise

    def _send(self, obj: dict) -> None:
        if self.proc.poll() is not None:
            raise AgentError(f"agent exited ({self.proc.returncode}): {self._stderr.read()[-2000:]}")
        self._stdin.write(json.dumps(obj) + "\n")
        self._stdin.flush()

    def _read_line(self, timeout: float) -> str:
        line = self._stdout.readline()  # the agent itself bounds every command by its timeout
        if not line:
            self.proc.wait(timeout=5)
            raise AgentError(f"agent exited ({self.proc.returncode}): {self._stderr.read()[-2000:]}")
        return line

    def close(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                if self._polling:
                    self.poll_result()
                self._send({"cmd": "quit"})
                p.wait(timeout=5)
            except Exception:  # noqa: BLE001 - whatever the polite quit failed on, the agent is killed
                p.kill()
                p.wait()
        for f in (self._stdin, self._stdout, self._stderr):
            try:
                f.close()
            except OSError:  # closing stdin flushes it: BrokenPipeError when the agent is gone already
                pass


if __name__ == "__main__":
    sys.exit(main())
