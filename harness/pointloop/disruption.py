"""The disruption phase of a point: the prober running while the dataplane is reprogrammed.

With the point's N Services programmed and serving (after the connect and load phases):

1. ``full`` - the warm full sync: the whole ruleset written again over the live dataplane the way
   kube-proxy's first sync after a restart writes it, timed without the prober
   (``sync_full_warm_s`` path=quiet, when ``baseline``) and with it (path=prober, plus the
   disruption rows). Their ratio is the prober's own cost, kept in status["disruption"].
2. ``cold`` - the full sync from an empty dataplane (emptied before the prober starts): beside the
   warm case, how long the existing Services' clients are refused while the ruleset is written.
3. ``add`` / ``update`` / ``delete`` - one change each, observed by the prober, then undone (not
   observed) so the other phases still see the same N Services.

How a target makes those syncs is a `Syncs`: the lab's (`LabSyncs`) drives the harness's
dataplane renderers, the local target's (harness.targets.local_disruption) restarts and changes
the real kube-proxy and reports each sync's own start and end from kube-proxy's metrics. The
sequence, the probed Services and the rows are the same for both (this module).

The probed Services are `targets` of the N spread over the ruleset, none of them the one changed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, Protocol

from harness.dataplane.base import Change
from harness.measure import disrupt
from harness.measure.sync import PHASE, other_endpoints, positions
from harness.model import Model, Service
from harness.samples import PointContext
from harness.scenario import DisruptionSpec

Span = tuple[int, int] | None  # a sync's own start and end (perf_counter_ns); None: the call's


class Syncs(Protocol):
    """The syncs the disruption phase observes, as one target makes them. Each observed call may
    return the sync's own start and end (`Span`) when they differ from the call's (the local
    target: kube-proxy syncs after the API call returns, or after its own start)."""

    node_ns: str  # node a's namespace, where the client's Service traffic is NATed
    # optional: `start_prober(ns, targets, rate=, keepalive=, timeout=)`, a prober of the target's
    # own (harness.measure.disrupt.measure_during); without it the prober runs in namespace `ns`

    def warm(self, services: Sequence[Service]) -> Span:
        """Write the whole ruleset again over the live one (NotImplementedError: not reproduced)."""

    def cold_prepare(self) -> None:
        """Empty the dataplane (before the prober starts, not observed; NotImplementedError: the
        cold kind is not reproduced on this target)."""

    def cold(self, services: Sequence[Service]) -> Span:
        """Program `services` from empty."""

    def change(self, services: Sequence[Service], change: Change) -> Span:
        """Apply one change; `services` is the state after it."""

    def undo(self, services: Sequence[Service], change: Change) -> None:
        """Apply the undoing change and wait until it is programmed (not observed)."""


class LabSyncs:
    """The lab's syncs: the harness's dataplane of node a, timed by the calls themselves."""

    def __init__(self, dp: Any):
        self.dp = dp
        self.node_ns = dp.ns

    def warm(self, services: Sequence[Service]) -> Span:
        warm_sync(self.dp, services)
        return None

    def cold_prepare(self) -> None:
        self.dp.cleanup()

    def cold(self, services: Sequence[Service]) -> Span:
        self.dp.full_sync(services)
        return None

    def change(self, services: Sequence[Service], change: Change) -> Span:
        self.dp.apply(services, change)
        return None

    def undo(self, services: Sequence[Service], change: Change) -> None:
        self.dp.apply(services, change)


def warm_sync(dp: Any, services: Sequence[Service]) -> None:
    """Rewrite the whole ruleset over the live one, as kube-proxy's first sync after a restart does.

    iptables: one ``iptables-restore --noflush`` of every KUBE chain (each `:CHAIN` line flushes it)
    and its rules - kube-proxy's RestoreAll with NoFlushTables - with no cleanup before it.
    nftables: one ``nft -f`` transaction that replaces the kube-proxy table (the harness's full
    ruleset; kube-proxy flushes and rewrites every chain, map and set in one transaction too).
    IPVS: `ipvs_warm_sync`.
    """
    mode = getattr(dp, "mode", "")
    if mode == "iptables":
        record: dict = {}
        dp._top_cache = {}
        dp.restore(dp._full_chunks(services, record))
        dp._chains = record
    elif mode == "nftables":
        dp.full_sync(services)
    elif mode == "ipvs":
        ipvs_warm_sync(dp, services)
    else:
        raise NotImplementedError(f"warm full sync is not reproduced for mode {mode!r}")


def ipvs_warm_sync(dp: Any, services: Sequence[Service]) -> None:
    """IPVS mode's first sync over a live dataplane, as read in v1.37.2 pkg/proxy/ipvs/proxier.go
    (syncProxyRules with initialSync) and ipset.go (syncIPSetEntries): it keeps what is there.

    kube-proxy ensures kube-ipvs0 and every KUBE-* ipset exist (``ipset create ... -exist``),
    lists the addresses bound to kube-ipvs0, then per Service port reads its virtual server
    (GetVirtualServer: added only when missing, updated only when different) and its real servers
    (GetRealServers: added only when missing, stale ones gracefully deleted; on the initial sync a
    weight that differs is reset), lists each ipset's entries and adds / deletes only the
    difference, writes the nat and filter KUBE chains with one ``iptables-restore --noflush``
    (RestoreAll NoFlushTables), unbinds superfluous addresses and deletes virtual servers no
    Service owns (cleanLegacyService, after a GetVirtualServers dump). Over a dataplane that
    already holds the same N Services, the one write the kernel serves from is that
    iptables-restore; the rest are reads. The same here: the sets' create lines with -exist, the
    address listing, the virtual and real servers read back through netlink twice (``ipvsadm
    -Sn`` dumps both, as kube-proxy's per-service reads and its final dump do), the sets listed,
    and the harness's iptables payload of ipvs mode restored with --noflush. The reads fork
    ipset / ipvsadm / ip where kube-proxy reads over netlink in its own process (ipset: it forks
    too), so in the UML guest this sync's length overstates kube-proxy's (100 Services: 2.5 s warm
    against 0.9 s cold); its one write, and so what the prober sees, is the same.
    """
    from harness.dataplane import ipvs
    from harness.dataplane._tool import stream
    from harness.lab.netns import run

    creates = "".join(  # the sets as full_sync made them (maxelem grows with the members)
        line for line in dp.ipset_text(services).splitlines(keepends=True) if line.startswith("create ")
    )
    run(dp.ns, ["ipset", "-exist", "restore"], input=creates)
    run(dp.ns, ["ip", "-o", "-4", "addr", "show", "dev", ipvs.IFNAME])
    run(dp.ns, ["ipvsadm", "-Sn"])
    run(dp.ns, ["ipset", "list"])
    stream(dp.ns, ["iptables-legacy-restore", "--noflush", "-w", "5"], [dp.iptables_text(services)])
    run(dp.ns, ["ipvsadm", "-Sn"])


def forget_conntrack(ns: str, targets: Sequence[tuple[str, int]]) -> None:
    """Delete `ns`'s conntrack entries to `targets` (after the cold sync). Its unanswered SYNs
    leave entries without NAT (SYN_SENT: 120 s); a later attempt that reuses a source port
    matches one, skips the DNAT and is refused by nftables mode's cluster-ips-check (measured: up
    to 7 refused attempts in the next point's phases on the local target at 2,000 Services)."""
    from harness.lab.netns import run

    for ip, port in targets:
        # exit 1 when nothing matched: not an error
        run(ns, ["conntrack", "-D", "-p", "tcp", "-d", ip, "--dport", str(port)], check=False)


def probe_targets(services: Sequence[Service], k: int, avoid: set[str]) -> list[tuple[str, int]]:
    """k ClusterIP:port of `services` spread over the list, skipping the names in `avoid`."""
    keep = [s for s in services if s.name not in avoid and s.endpoints]
    idx = positions(len(keep), min(k, len(keep)))
    return [(keep[i].cluster_ip, keep[i].ports[0].port) for i in sorted(set(idx))]


def measure_disruption(
    syncs: Syncs,
    ns: str,
    services: Sequence[Service],
    model: Model,
    ctx: PointContext,
    spec: DisruptionSpec,
    status: dict,
) -> list[dict[str, Any]]:
    """Rows of the disruption phase, the syncs made by `syncs`, the prober in namespace `ns`; a
    summary in status["disruption"]."""
    services = list(services)
    n = len(services)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {
        "rate": spec.rate,
        "keepalive_conns": spec.keepalive_conns,
        "window_s": spec.window_s,
        "kinds": {},
    }
    status["disruption"] = info
    changed: dict[str, tuple[Change, Change, list[Service]]] = {}
    if n:
        upd = services[positions(n, 1, PHASE["update"])[0]]
        dele = services[positions(n, 1, PHASE["delete"])[0]]
        new = model.service(n)
        moved = upd.with_endpoints(other_endpoints(upd, model))
        changed = {
            "add": (Change("add", new), Change("delete", new), services + [new]),
            "update": (
                Change("update", moved),
                Change("update", upd),
                [moved if s is upd else s for s in services],
            ),
            "delete": (Change("delete", dele), Change("add", dele), [s for s in services if s is not dele]),
        }
        avoid = {upd.name, dele.name}
    else:
        avoid = set()
    targets = probe_targets(services, spec.targets, avoid)
    if not targets:
        info["skipped"] = "no Service to probe"
        return rows
    saturated: dict[str, list[str]] = {}
    start_prober = getattr(syncs, "start_prober", None)
    for kind in spec.kinds:
        try:
            obs = _observe(syncs, kind, ns, targets, services, changed, ctx, spec, info, rows, start_prober)
        except NotImplementedError as e:  # a sync the target cannot reproduce: said, not measured
            info["kinds"][kind] = {"skipped": str(e)}
            continue
        if obs is None:
            continue
        if kind == "cold":
            forget_conntrack(syncs.node_ns, targets)
        rows.extend(obs.rows)
        fails = sum(1 for r in obs.rows if r["metric"] == "disrupt_failed")
        info["kinds"][kind] = {
            "sync_s": round(obs.sync_s, 6),
            "call_s": round(obs.call_s, 6),
            "attempts": obs.attempts,
            "failed": fails,
        }
        if obs.saturated:
            saturated[kind] = obs.saturated
    if saturated:
        status["flags"].setdefault("saturated", {})["disruption"] = saturated
    return rows


def _observe(
    syncs: Syncs,
    kind: str,
    ns: str,
    targets: list[tuple[str, int]],
    services: list[Service],
    changed: dict[str, tuple[Change, Change, list[Service]]],
    ctx: PointContext,
    spec: DisruptionSpec,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    start_prober: Any,
) -> disrupt.Observed | None:
    """One sync kind observed by the prober (None: nothing to observe)."""
    measure = functools.partial(
        disrupt.measure_during,
        ns,
        targets,
        ctx=ctx,
        rate=spec.rate,
        keepalive=spec.keepalive_conns,
        window_s=spec.window_s,
        timeout=spec.timeout_ms / 1000,
        start_prober=start_prober,
    )
    if kind == "full":
        syncs.warm(services)  # the first warm rewrite is not timed: the same state after it
        base_s = None
        if spec.baseline:
            t0 = time.perf_counter_ns()
            span = syncs.warm(services)
            t0, t1 = span or (t0, time.perf_counter_ns())
            base_s = (t1 - t0) / 1e9
            rows.append(ctx.row("sync_full_warm_s", base_s, "s", path="quiet"))
        obs = measure(functools.partial(syncs.warm, services), kind="full")
        rows.append(ctx.row("sync_full_warm_s", obs.sync_s, "s", path="prober"))
        if base_s:
            info["prober_slowdown"] = round(obs.sync_s / base_s, 3)
    elif kind == "cold":  # from empty: the probed Services exist only once the sync is done
        obs = measure(functools.partial(syncs.cold, services), kind=kind, prepare=syncs.cold_prepare)
    else:
        if kind not in changed:
            return None
        change, undo, after = changed[kind]
        obs = measure(functools.partial(syncs.change, after, change), kind=kind)
        syncs.undo(services, undo)
    return obs
