"""The local target's processes: started inside a network namespace with a log file, stopped,
and asked why they failed; plus plain HTTP(S) GETs from inside a namespace (health checks)."""

from __future__ import annotations

import http.client
import re
import signal
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.k8s import KubeError
from harness.lab import netns as lab_netns


class LocalClusterError(KubeError):
    """The local control plane could not be built, started or used; the message says why."""


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
            data = self.log.read_bytes()[-64 * 1024 :].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def failure(self, tail: int = 5) -> str:
        """The lines of the log that say why (klog E/F lines, `Error:`), then its last lines; a
        component's start-up flag dump would otherwise bury the cause. The whole log stays in
        `self.log` (a run keeps it in local-logs/)."""
        lines = self.log_tail(400).splitlines()
        why = [line for line in lines if _CAUSE.match(line)][:6]
        last = [line for line in lines[-tail:] if line not in why]
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
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    finally:
        logf.close()
    return Proc(name=name, argv=list(full), netns=netns, log=log, popen=popen)


def http_get(
    netns: str | None,
    host: str,
    port: int,
    path: str,
    *,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    with lab_netns.in_netns(netns):
        if tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=tls
            )
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
