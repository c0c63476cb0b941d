"""The disruption prober inside the cluster, and its clock.

`RemoteProber` runs harness.measure.disrupt_prober in the disruption client pod (pod network, on the
probed node: its Service traffic enters the node through PREROUTING, as the lab's client pod's
does) through a pods/exec stream, and offers what harness.measure.disrupt.measure_during uses of a
local `Prober`: `t_running_ns`, `stop() -> Records`, `close()`, plus `offset_ns`.

Clocks: the prober stamps its records with the pod's CLOCK_MONOTONIC; the harness may run on
another machine. Before the config (and again after the records) the caller sends clock lines and
takes the one with the shortest round trip: the prober's reading is mapped to the middle of that
round trip (`ClockMap.offset_ns` = prober - harness, uncertain by half the round trip). Each clock
line also carries the pod's wall clock read beside its monotonic one, so a time the node reports in
wall-clock seconds (kube-proxy's metrics) maps into the prober's clock without crossing the network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.cluster.probe import exec_stream
from harness.measure.disrupt import ProberError, Records

PROBER_COMMAND = ["python3", "-u", "-m", "harness.measure.disrupt_prober"]
CLOCK_PINGS = 7


@dataclass(frozen=True)
class ClockMap:
    """The prober's clocks against the harness's perf_counter_ns."""

    offset_ns: int  # prober monotonic - harness monotonic (at the middle of the best round trip)
    rtt_ns: int  # that round trip: the offset is uncertain by half of it
    wall_minus_mono_ns: int  # the pod's time_ns - perf_counter_ns (its node's wall clock)

    def from_harness(self, t_ns: int) -> int:
        return t_ns + self.offset_ns

    def to_harness(self, t_ns: int) -> int:
        return t_ns - self.offset_ns

    def wall_to_prober(self, wall_ns: int) -> int:
        """A wall-clock time of the prober's node (e.g. kube-proxy's metrics) in the prober's clock."""
        return wall_ns - self.wall_minus_mono_ns

    def as_dict(self) -> dict[str, Any]:
        return {
            "offset_ns": self.offset_ns,
            "uncertainty_us": round(self.rtt_ns / 2000, 1),
            "wall_minus_mono_ns": self.wall_minus_mono_ns,
        }


def clock_map(samples: Sequence[tuple[int, int, int, int]]) -> ClockMap:
    """The ClockMap of clock exchanges [(harness sent, prober t_ns, prober wall_ns, harness received)]:
    the one with the shortest round trip (the least queued), the prober's reading taken as made
    half-way through it."""
    if not samples:
        raise ValueError("no clock exchange")
    sent, mono, wall, got = min(samples, key=lambda s: s[3] - s[0])
    return ClockMap(mono - (sent + got) // 2, got - sent, wall - mono)


class ProberStream:
    """harness.measure.disrupt_prober in a pod, over one pods/exec websocket (JSON lines)."""

    def __init__(self, api: Any, namespace: str, pod: str, container: str, *, timeout: float = 60.0):
        self.pod, self.timeout, self._buf = pod, timeout, ""
        self.ws = exec_stream(api, namespace, pod, container, PROBER_COMMAND)

    def send(self, line: str) -> None:
        if not self.ws.is_open():
            raise ProberError(f"disruption prober in pod {self.pod} exited: {self.ws.read_stderr()[-1000:]}")
        self.ws.write_stdin(line + "\n")

    def reply(self, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while "\n" not in self._buf:
            if not self.ws.is_open():
                raise ProberError(
                    f"disruption prober in pod {self.pod} exited: {self.ws.read_stderr()[-1000:]}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProberError(
                    f"disruption prober in pod {self.pod}: no answer within {timeout or self.timeout:.0f}s"
                )
            self.ws.update(timeout=min(1.0, left))
            if self.ws.peek_stdout():
                self._buf += self.ws.read_stdout()
        line, self._buf = self._buf.split("\n", 1)
        return json.loads(line)

    def clock(self, pings: int = CLOCK_PINGS) -> ClockMap:
        samples = []
        for _ in range(pings):
            t0 = time.perf_counter_ns()
            self.send('{"cmd": "clock"}')
            rep = self.reply()
            samples.append((t0, rep["t_ns"], rep["wall_ns"], time.perf_counter_ns()))
        return clock_map(samples)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - the stream is gone already
            pass


class RemoteProber:
    """A disrupt_prober probing `targets` from a pod; its records in its own clock, `offset_ns`
    (= clock.offset_ns) mapping the harness's times into it; `clock_after` once stopped."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        pod: str,
        targets: Sequence[tuple[str, int]],
        *,
        rate: float,
        keepalive: int,
        timeout: float,
        container: str = "client",
    ):
        self.stream = ProberStream(api, namespace, pod, container)
        try:
            self.clock = self.stream.clock()
            self.offset_ns = self.clock.offset_ns
            self.clock_after: ClockMap | None = None
            cfg = {
                "targets": [list(t) for t in targets],
                "rate": rate,
                "keepalive": keepalive,
                "timeout": timeout,
            }
            self.stream.send(json.dumps(cfg))
            self.t_running_ns: int = self.stream.reply()["t_ns"]
        except BaseException:
            self.stream.close()
            raise

    def stop(self) -> Records:
        """Stop probing -> everything recorded (and the clock read again: `clock_after`)."""
        try:
            self.stream.send("stop")
            rep = self.stream.reply(timeout=120)
            self.clock_after = self.stream.clock()
        finally:
            self.close()
        return Records(rep["attempts"], rep["requests"], rep["t_first_ns"], rep["t_last_ns"])

    def close(self) -> None:
        self.stream.close()
