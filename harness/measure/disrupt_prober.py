"""The disruption prober: a process in the client namespace that keeps traffic flowing during a sync.

Started as ``ip netns exec NS <python> -m harness.measure.disrupt_prober``. Standard library only
(it may run inside a UML guest). Protocol on stdin/stdout, JSON lines:

0. optionally, before the config and after the records: ``{"cmd": "clock"}`` lines, each answered
   at once with ``{"ok": true, "event": "clock", "t_ns": ..., "wall_ns": ...}`` (this process's
   perf_counter_ns and time_ns read back to back): a caller on another machine maps its clock
   into the prober's from these (harness.cluster.disrupt_probe);
1. the caller writes one config line ``{"targets": [[ip, port], ...], "rate": per second,
   "keepalive": connections, "timeout": s, "request_interval": s}``;
2. the prober answers ``{"ok": true, "event": "running", "t_ns": ...}`` once it probes;
3. the caller writes ``stop`` (any line); the prober answers with every record:
   ``{"ok": true, "event": "done", "attempts": [[t_ns, us, err, late_us], ...],
   "requests": [[t_ns, us, err], ...], "t_first_ns", "t_last_ns"}``, answers clock lines (0.)
   and exits at the end of its input.

New connections: one non-blocking connect every 1/rate s on an open-loop schedule, round-robin
over `targets` (SO_LINGER 0: the close sends RST, no TIME_WAIT pile-up). A slot that comes due
while the prober is late is still started (never thinned); its lateness (actual start - intended
start, us) is recorded so the caller can flag the point saturated. ``err`` is "" or "refused",
"reset", "unreachable", "timeout" (not connected within `timeout`; ``us`` is then the elapsed
time). Keepalive connections: `keepalive` sockets each send ``GET /`` every `request_interval`;
a request that fails is recorded with its reason and the socket reconnects.
Timestamps are ``time.perf_counter_ns()`` (CLOCK_MONOTONIC: the caller's own clock when both run
in one kernel; a caller in another uses the clock lines).
"""

from __future__ import annotations

import errno
import json
import select
import socket
import struct
import sys
import time

_pc = time.perf_counter_ns
_LINGER0 = struct.pack("ii", 1, 0)


def errname(code: int) -> str:
    """The failure reason of a socket errno."""
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "reset"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if code in (errno.ETIMEDOUT, errno.EAGAIN):
        return "timeout"
    return errno.errorcode.get(code, str(code))


def _sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    s.setblocking(False)
    return s


class _KeepAlive:
    """One established connection sending GET / every interval."""

    def __init__(self, addr: tuple[str, int]):
        self.addr, self.state, self.buf, self.t0, self.next = addr, "down", b"", 0, 0
        self.sock: socket.socket | None = None
        self.req = f"GET / HTTP/1.1\r\nHost: {addr[0]}\r\nConnection: keep-alive\r\n\r\n".encode()


def run(cfg: dict, stop_fd: int, send) -> dict:
    targets = [(str(t[0]), int(t[1])) for t in cfg["targets"]]
    interval_ns = int(1e9 / float(cfg.get("rate", 500)))
    timeout_ns = int(float(cfg.get("timeout", 1.0)) * 1e9)
    req_ns = int(float(cfg.get("request_interval", 0.01)) * 1e9)
    n_ka = int(cfg.get("keepalive", 2))
    poller = select.poll()
    poller.register(stop_fd, select.POLLIN)
    live: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> (socket, start, lateness us)
    attempts: list[list] = []
    requests: list[list] = []
    kas = [_KeepAlive(targets[i % len(targets)]) for i in range(n_ka)] if targets else []
    ka_fd: dict[int, _KeepAlive] = {}

    def ka_down(k: _KeepAlive, now: int, err: str) -> None:
        if k.state == "sent":
            requests.append([k.t0, (now - k.t0) / 1000.0, err])
        if k.sock is not None:
            fd = k.sock.fileno()
            ka_fd.pop(fd, None)
            try:
                poller.unregister(fd)
            except (KeyError, ValueError):
                pass
            k.sock.close()
        k.sock, k.state, k.buf, k.next = None, "down", b"", now + req_ns

    def ka_send(k: _KeepAlive, now: int) -> None:
        sock = k.sock
        assert sock is not None  # sent on a connected socket only
        try:
            sock.send(k.req)
        except OSError as e:
            k.state = "sent"
            ka_down(k, _pc(), errname(e.errno or 0))
            return
        k.state, k.t0, k.buf = "sent", now, b""
        poller.modify(sock.fileno(), select.POLLIN)

    send({"ok": True, "event": "running", "t_ns": _pc()})
    t_first = _pc()
    next_start = t_first
    i = 0
    while True:
        now = _pc()
        while targets and now >= next_start:  # every due slot starts: late ones are recorded, not dropped
            s = _sock()
            t0 = _pc()
            code = s.connect_ex(targets[i % len(targets)])
            i += 1
            late_us = (t0 - next_start) / 1000.0
            if code in (0, errno.EINPROGRESS):
                live[s.fileno()] = (s, t0, late_us)
                poller.register(s.fileno(), select.POLLOUT)
            else:
                attempts.append([t0, (_pc() - t0) / 1000.0, errname(code), late_us])
                s.close()
            next_start += interval_ns
            now = _pc()
        for k in kas:
            if k.state == "down" and now >= k.next:
                k.sock = sock = _sock()
                k.t0 = now
                code = sock.connect_ex(k.addr)
                if code not in (0, errno.EINPROGRESS):
                    k.state = "sent"
                    ka_down(k, _pc(), errname(code))
                    continue
                k.state = "connecting"
                ka_fd[sock.fileno()] = k
                poller.register(sock.fileno(), select.POLLOUT)
            elif k.state == "idle" and now >= k.next:
                ka_send(k, now)
        wait_ms = max(0, min(next_start - _pc(), 1_000_000) // 1_000_000)
        for fd, _ev in poller.poll(wait_ms):
            now = _pc()
            if fd == stop_fd:
                for s, t0, late_us in live.values():  # still pending at stop: not connected yet
                    s.close()
                    attempts.append([t0, (now - t0) / 1000.0, "pending", late_us])
                for k in kas:
                    if k.state in ("sent", "connecting"):
                        k.state = "sent"
                    ka_down(k, now, "timeout")
                return {
                    "ok": True,
                    "event": "done",
                    "attempts": attempts,
                    "requests": requests,
                    "t_first_ns": t_first,
                    "t_last_ns": now,
                }
            if fd in live:
                s, t0, late_us = live.pop(fd)
                poller.unregister(fd)
                code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                attempts.append([t0, (now - t0) / 1000.0, errname(code) if code else "", late_us])
                s.close()
                continue
            if fd not in ka_fd:
                continue
            k = ka_fd[fd]
            ksock = k.sock
            assert ksock is not None  # ka_down() takes a closed socket out of ka_fd
            if k.state == "connecting":
                code = ksock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    k.state = "sent"
                    ka_down(k, now, errname(code))
                else:
                    ka_send(k, now)
                continue
            try:
                chunk = ksock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                ka_down(k, now, errname(e.errno or 0))
                continue
            if not chunk:
                ka_down(k, now, "reset")
                continue
            k.buf += chunk
            head, sep, body = k.buf.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            if len(body) < length:
                continue
            ok = head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n", 1)[0] + b" "
            requests.append([k.t0, (now - k.t0) / 1000.0, "" if ok else "status"])
            k.state, k.buf, k.next = "idle", b"", k.t0 + req_ns
            poller.modify(fd, 0)
        # expire only after the events are collected: when the prober itself was descheduled for
        # longer than the timeout, connections that completed meanwhile are not counted as timeouts
        now = _pc()
        for k in kas:
            if k.state in ("sent", "connecting") and now - k.t0 > timeout_ns:
                k.state = "sent"
                ka_down(k, now, "timeout")
        for fd in [fd for fd, (_s, t0, _l) in live.items() if now - t0 >= timeout_ns]:
            s, t0, late_us = live.pop(fd)
            poller.unregister(fd)
            s.close()
            attempts.append([t0, (now - t0) / 1000.0, "timeout", late_us])


def main() -> int:
    out = sys.stdout

    def send(obj):
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    def clock() -> None:
        wall = time.time_ns()
        send({"ok": True, "event": "clock", "t_ns": _pc(), "wall_ns": wall})

    while True:
        line = sys.stdin.readline()
        if not line:  # the input ended before a config: nothing to probe
            return 0
        cfg = json.loads(line)
        if cfg.get("cmd") != "clock":
            break
        clock()
    send(run(cfg, sys.stdin.fileno(), send))
    for line in sys.stdin:  # the stop line, then clock lines until the input ends
        if '"clock"' in line:
            clock()
    return 0


if __name__ == "__main__":
    sys.exit(main())
