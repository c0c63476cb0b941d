"""The disruption phase of a lab point: the prober running while the dataplane is reprogrammed.

With the point's N Services programmed and serving (after the connect and load phases):

1. ``full`` - the warm full sync: the whole ruleset written again over the live dataplane the way
   kube-proxy's first sync after a restart writes it (`warm_sync`), timed without the prober
   (``sync_full_warm_s`` path=quiet, when ``baseline``) and with it (path=prober, plus the
   disruption rows). Their ratio is the prober's own cost, kept in status["disruption"].
2. ``cold`` - the full sync from an empty dataplane (emptied before the prober starts): beside the
   warm case, how long the existing Services' clients are refused while the ruleset is written.
3. ``add`` / ``update`` / ``delete`` - one change each through the dataplane's apply, observed by
   the prober, then undone (not observed) so the other phases still see the same N Services.

The probed Services are `targets` of the N spread over the ruleset, none of them the one changed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from harness.dataplane.base import Change
from harness.measure import disrupt
from harness.measure.sync import PHASE, other_endpoints, positions
from harness.model import Model, Service
from harness.samples import PointContext
from harness.scenario import DisruptionSpec


def warm_sync(dp: Any, services: Sequence[Service]) -> None:
    """Rewrite the whole ruleset over the live one, as kube-proxy's first sync after a restart does.

    iptables: one ``iptables-restore --noflush`` of every KUBE chain (each `:CHAIN` line flushes it)
    and its rules - kube-proxy's RestoreAll with NoFlushTables - with no cleanup before it.
    nftables: one ``nft -f`` transaction that replaces the kube-proxy table (the harness's full
    ruleset; kube-proxy flushes and rewrites every chain, map and set in one transaction too).
    IPVS: kube-proxy keeps existing virtual servers across a restart and only re-adds what is
    missing; the harness's full_sync starts from empty, so the warm case is not reproduced there.
    """
    mode = getattr(dp, "mode", "")
    if mode == "iptables":
        record: dict = {}
        dp._top_cache = {}
        dp.restore(dp._full_chunks(services, record))
        dp._chains = record
    elif mode == "nftables":
        dp.full_sync(services)
    else:
        raise NotImplementedError(f"warm full sync is not reproduced for mode {mode!r}")


def probe_targets(services: Sequence[Service], k: int, avoid: set[str]) -> list[tuple[str, int]]:
    """k ClusterIP:port of `services` spread over the list, skipping the names in `avoid`."""
    keep = [s for s in services if s.name not in avoid and s.endpoints]
    idx = positions(len(keep), min(k, len(keep)))
    return [(keep[i].cluster_ip, keep[i].ports[0].port) for i in sorted(set(idx))]


def measure_disruption(
    dp: Any,
    ns: str,
    services: Sequence[Service],
    model: Model,
    ctx: PointContext,
    spec: DisruptionSpec,
    status: dict,
) -> list[dict[str, Any]]:
    """Rows of the disruption phase on node a's dataplane `dp`; a summary in status["disruption"]."""
    services = list(services)
    n = len(services)
    timeout = spec.timeout_ms / 1000
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
    for kind in spec.kinds:
        if kind == "full":
            try:
                warm_sync(dp, services)  # the first warm rewrite is not timed: the same state after it
            except NotImplementedError as e:
                info["kinds"]["full"] = {"skipped": str(e)}
                continue
            base_s = None
            if spec.baseline:
                t0 = time.perf_counter_ns()
                warm_sync(dp, services)
                base_s = (time.perf_counter_ns() - t0) / 1e9
                rows.append(ctx.row("sync_full_warm_s", base_s, "s", path="quiet"))
            obs = disrupt.measure_during(
                ns,
                targets,
                lambda: warm_sync(dp, services),
                ctx,
                "full",
                rate=spec.rate,
                keepalive=spec.keepalive_conns,
                window_s=spec.window_s,
                timeout=timeout,
            )
            rows.append(ctx.row("sync_full_warm_s", obs.sync_s, "s", path="prober"))
            if base_s:
                info["prober_slowdown"] = round(obs.sync_s / base_s, 3)
        elif kind == "cold":  # from empty: the probed Services exist only once the sync is done
            obs = disrupt.measure_during(
                ns,
                targets,
                lambda: dp.full_sync(services),
                ctx,
                kind,
                rate=spec.rate,
                keepalive=spec.keepalive_conns,
                window_s=spec.window_s,
                timeout=timeout,
                prepare=dp.cleanup,
            )
        else:
            if kind not in changed:
                continue
            change, undo, after = changed[kind]
            obs = disrupt.measure_during(
                ns,
                targets,
                functools.partial(dp.apply, after, change),
                ctx,
                kind,
                rate=spec.rate,
                keepalive=spec.keepalive_conns,
                window_s=spec.window_s,
                timeout=timeout,
            )
            dp.apply(services, undo)
        rows.extend(obs.rows)
        fails = sum(1 for r in obs.rows if r["metric"] == "disrupt_failed")
        info["kinds"][kind] = {"sync_s": round(obs.sync_s, 6), "attempts": obs.attempts, "failed": fails}
        if obs.saturated:
            saturated[kind] = obs.saturated
    if saturated:
        status["flags"].setdefault("saturated", {})["disruption"] = saturated
    return rows
