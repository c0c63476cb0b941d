"""The local target's syncs for the disruption phase (harness.pointloop.disruption): the real
kube-proxy of node a restarted and changed through the API, each sync's start and end read from
kube-proxy's own metrics.

- ``full`` (warm): kube-proxy on node a is stopped (SIGTERM: its rules stay in the kernel and keep
  serving) and started again; its first sync is a full one (every proxier starts with
  needFullSync / initialSync) over the previous process's ruleset. The periodic resync of
  ``local.sync_period`` is a partial sync in iptables and nftables modes (a full one only after
  FullSyncPeriod, 1 h, and never in iptables' large-cluster mode), so a restart is how a full
  resync over a live dataplane happens here.
- ``cold``: kube-proxy on node a stopped and ``kube-proxy --cleanup`` run there before the prober
  starts; then started, its first sync programs everything from empty.
- ``add`` / ``update`` / ``delete``: the change as API calls (harness.targets.local_dataplane), then
  kube-proxy's sync(s) that carry it; the undo the same way, waited for, not observed.

The sync's own timestamps: ``kubeproxy_sync_proxy_rules_last_timestamp_seconds`` (set when a
sync has written its rules) is the end, minus the ``kubeproxy_sync_proxy_rules_duration_seconds``
histogram's sum over the syncs seen since the call (observed when syncProxyRules returns, so the
start is, if anything, a little early) is the start; both are wall-clock seconds, mapped to
perf_counter_ns. Node b's kube-proxy keeps running and programs the same changes.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.dataplane.base import Change
from harness.lab.netns import LabError
from harness.model import Service
from harness.pointloop.disruption import Span
from harness.targets.local_procs import LocalClusterError

if TYPE_CHECKING:
    from harness.targets.local_worker import LocalPoints

POLL_S = 0.02
# a change is done once kube-proxy has consumed it and no further sync completed for this long
# (a Service delete is two changes here: the Service, then its EndpointSlices; each may sync)
SETTLE_S = 0.3
_V4 = '{ip_family="IPv4"}'


@dataclass(frozen=True)
class SyncState:
    """kube-proxy's sync counters at one scrape (IPv4 proxier; counts and sums since its start)."""

    last_ts: float  # wall-clock s of the last finished sync (0: none yet)
    count: float  # syncs finished
    seconds: float  # their summed duration
    full: float  # full syncs finished (ipvs mode does not split: every sync counts)
    changes: float  # Service + EndpointSlice changes received
    pending: float  # changes received and not yet taken by a sync

    def consumed_since(self, before: SyncState) -> bool:
        """A sync finished since `before` and took changes received since then, none left pending."""
        return self.count > before.count and self.changes > before.changes and self.pending == 0


def note_syncs(
    record: dict[str, list[dict]], kind: str, before: SyncState, after: SyncState, span: tuple[int, int]
) -> None:
    """Append to record[kind] the syncs kube-proxy made between `before` and `after` and the span's length."""
    record.setdefault(kind, []).append(
        {
            "syncs": int(after.count - before.count),
            "full_syncs": int(after.full - before.full),
            "sync_s": round((span[1] - span[0]) / 1e9, 6),
        }
    )


def sync_state(m: dict[str, float]) -> SyncState:
    """SyncState of one /metrics scrape (harness.k8s.metrics keys `name{labels}`)."""

    def v4(name: str) -> float:
        return m.get(name + _V4, m.get(name, 0.0))

    count = v4("kubeproxy_sync_proxy_rules_duration_seconds_count")
    full = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
    return SyncState(
        last_ts=v4("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        count=count,
        seconds=v4("kubeproxy_sync_proxy_rules_duration_seconds_sum"),
        full=v4(full) if (full + _V4) in m or full in m else count,
        changes=m.get("kubeproxy_sync_proxy_rules_service_changes_total", 0.0)
        + m.get("kubeproxy_sync_proxy_rules_endpoint_changes_total", 0.0),
        pending=m.get("kubeproxy_sync_proxy_rules_service_changes_pending", 0.0)
        + m.get("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 0.0),
    )


def settled(first: SyncState, next_state: Callable[[], SyncState]) -> SyncState:
    """The sync state once no further sync completed for SETTLE_S after `first` (a change may be
    consumed over several syncs), polling next_state() every POLL_S."""
    st, quiet_since = first, time.monotonic()
    while time.monotonic() - quiet_since < SETTLE_S:
        time.sleep(POLL_S)
        nxt = next_state()
        if nxt.count != st.count:
            quiet_since = time.monotonic()
        st = nxt
    return st


def span_of(before: SyncState, after: SyncState, not_before_ns: int) -> tuple[int, int]:
    """The syncs finished between two states as one span (perf_counter_ns): from the end of the
    last minus their summed duration (never before `not_before_ns`: the call that caused them)
    to the end of the last."""
    off = time.time_ns() - time.perf_counter_ns()
    end = int(after.last_ts * 1e9) - off
    start = int((after.last_ts - (after.seconds - before.seconds)) * 1e9) - off
    start = max(start, not_before_ns)
    return start, max(start, end)


class KubeProxySyncs:
    """`harness.pointloop.disruption.Syncs` of the local target, on node a's kube-proxy.

    `record[kind]`: per observed call, the kube-proxy syncs it spanned and their length."""

    def __init__(self, w: LocalPoints, mode: str):
        self.w, self.mode = w, mode
        self.node_ns = w.running_lab().node_ns("a")
        self.record: dict[str, list[dict[str, Any]]] = {}

    # -- metrics ------------------------------------------------------------------------------
    def state(self) -> SyncState:
        from harness.targets.local_kubeproxy import scrape_metrics

        w = self.w
        return sync_state(
            scrape_metrics(w.running_lab().node_ns("a"), w.proxies["a"].metrics_port)["metrics"]
        )

    def _wait(self, done: Callable[[SyncState], bool], what: str) -> SyncState:
        """Poll node a's kube-proxy until done(state); a kube-proxy that exits raises."""
        deadline = time.monotonic() + self.w.local.sync_timeout_s
        while True:
            self.w.check_proxies()
            try:
                st = self.state()
            except (OSError, http.client.HTTPException, LocalClusterError):  # a kube-proxy just started
                st = None
            if st is not None and done(st):
                return st
            if time.monotonic() > deadline:
                raise LabError(
                    f"kube-proxy ({self.mode}) on node-a: {what} not seen after {self.w.local.sync_timeout_s:.0f} s"
                )
            time.sleep(POLL_S)

    # -- full syncs ---------------------------------------------------------------------------
    def _first_sync(self, kind: str, t_start_ns: int) -> tuple[int, int]:
        """Wait for the first full sync of a kube-proxy started at t_start_ns -> its span."""
        zero = SyncState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        st = self._wait(lambda s: s.full >= 1 and s.last_ts > 0, "a first full sync")
        span = span_of(zero, st, t_start_ns)
        note_syncs(self.record, kind, zero, st, span)
        return span

    def _restart(self, cleanup: bool) -> None:
        w = self.w
        w.proxies["a"].stop()
        if cleanup:
            w.proxy_cleanup(["a"])

    def warm(self, services: Sequence[Service]) -> Span:
        self._restart(cleanup=False)
        t = time.perf_counter_ns()
        self.w.start_proxy("a", self.mode)
        return self._first_sync("full", t)

    def cold_prepare(self) -> None:
        self._restart(cleanup=True)

    def cold(self, services: Sequence[Service]) -> Span:
        t = time.perf_counter_ns()
        self.w.start_proxy("a", self.mode)
        return self._first_sync("cold", t)

    # -- one change ---------------------------------------------------------------------------
    def _visible(self, change: Change) -> bool:
        """The change as the rule read-back sees it (add / delete: the ClusterIP (un)programmed;
        an update moves endpoints, which the read-back of ClusterIPs does not show)."""
        if change.kind == "update":
            return True
        there = change.service.cluster_ip in self.w.programmed_ips("a", self.mode)
        return there if change.kind == "add" else not there

    def _apply(self, change: Change, kind: str | None) -> tuple[int, int]:
        w = self.w
        before = self.state()
        t0 = time.perf_counter_ns()
        if change.kind == "add":
            w.api_create(change.service, trigger=True)
        elif change.kind == "update":
            w.api_update(change.service, trigger=True)
        elif change.kind == "delete":
            w.api_delete(change.service)
        else:
            raise ValueError(f"unknown change kind {change.kind!r}")

        def consumed(s: SyncState) -> bool:
            return s.consumed_since(before)

        st = self._wait(lambda s: consumed(s) and self._visible(change), f"a sync with the {change.kind}")
        st = settled(st, lambda: self._wait(consumed, f"the {change.kind} consumed"))
        span = span_of(before, st, t0)
        if kind is not None:
            note_syncs(self.record, kind, before, st, span)
        return span

    def change(self, services: Sequence[Service], change: Change) -> Span:
        return self._apply(change, change.kind)

    def undo(self, services: Sequence[Service], change: Change) -> None:
        self._apply(change, None)
