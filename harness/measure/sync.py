"""Sync latency: how long until one changed Service is (no longer) served, and the full sync.

``measure_sync_one``: with N Services programmed, one change per sample. The agent starts
polling first (a new connection attempt every <= 1 ms), then ``t0 = perf_counter_ns()``,
``dataplane.apply(services_after, Change(kind, svc))``, ``t_apply``. The agent reports the start
time of the first attempt that saw the new state (``t_served``; CLOCK_MONOTONIC, the same clock
in both processes). Rows (unit "s", tag change=add|update|delete; sample seq j was
made at index positions(N, samples)[j] of the list handed to the dataplane):

- ``sync_one_s`` = t_served - t0 (the programming latency as a client sees it); a sample whose
  state never came within ``timeout`` is a row with value = timeout and timed_out=True;
- ``sync_apply_s`` = t_apply - t0 (the apply call's own time);
- ``sync_resolution_s`` = how finely that sample was timed: the new state arrived after the start
  of the attempt before the satisfying one (or after t0, if later), so sync_one_s is an upper bound
  this much above the earliest possible value. The poller starts an attempt every ``interval``
  but, with ``max_cpu_share``, never takes more than that share of a CPU from the apply it times
  (agent.paced_start): in a UML guest at 10,000 Services one attempt costs ~1.7 ms of the guest's
  only CPU, so the spacing there grows to ~10 ms (max_cpu_share 0.15), and this row records it.

A delete is "gone" when the connect is refused, unreachable, or unanswered while a control
attempt to another Service (one that stays served) was answered: in a one-CPU guest a served SYN
can wait seconds behind the apply, and silence alone was read as "gone" (deletes timed at 40 ms
while their apply took 7 s).

add: a new Service (``model.service(i)`` with i >= N, inserted at the sample's position) must
become served (TCP connect succeeds). update: the Service's endpoints move to other pods; done
when a GET / is answered by one of the new backends. delete: the Service must be gone (refused,
unreachable, or unanswered within ``attempt_timeout``). After each sample the original set is
restored (not measured) and checked, so N stays constant.

``measure_sync_full``: ``sync_full_s``, the time of one ``full_sync`` of the whole set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from harness.dataplane.base import Change, Dataplane
from harness.measure.adaptive import StopRule, spread_order
from harness.measure.agent import Agent
from harness.model import Endpoint, Model, Service
from harness.samples import PointContext


class SyncError(RuntimeError):
    """The sync measurement could not be made (state wrong before or after a change)."""


# where in each stretch of the ruleset each kind changes a Service: different offsets, so that an
# update or a delete never lands on the Service an add just created
PHASE = {"add": 0.5, "update": 0.25, "delete": 0.75}


def positions(n: int, samples: int, phase: float = 0.5) -> list[int]:
    """`samples` indices spread evenly over 0..n-1 (repeating only when samples > n).

    Sample `seq` j of change kind k is made at the Service that stood at index
    positions(N, samples, PHASE[k])[j] of the original ruleset (for an add: the index the new
    Service is inserted at); the rows do not repeat it as a tag, so quantiles group by kind only.
    """
    if n <= 0:
        return []
    return [min(n - 1, int((j + phase) * n / samples)) for j in range(samples)]


def other_endpoints(svc: Service, model: Model, shift: int = 0) -> tuple[Endpoint, ...]:
    """As many endpoints as `svc` has (at least one), on other pods where possible."""
    spec = model.spec
    current = {(e.ip, e.port) for e in svc.endpoints}
    current_ips = {e.ip for e in svc.endpoints}
    cands = [
        Endpoint(p.ip, port, p.node)
        for p in model.pods
        for port in p.ports
        if (port - spec.target_port) % spec.ports_per_service == 0
    ]
    cands = [e for e in cands if (e.ip, e.port) not in current]
    other_pods = [e for e in cands if e.ip not in current_ips]
    pool = other_pods or cands
    if not pool:
        raise SyncError(f"{svc.name}: no other endpoint to move to (every pod port is in use)")
    k = min(max(1, len(svc.endpoints)), len(pool))
    start = shift % len(pool)
    return tuple((pool[start:] + pool[:start])[:k])


def _backend_expect(eps: Sequence[Endpoint]) -> str:
    return "backend:" + ",".join(e.addr for e in eps)


def _addr(svc: Service) -> tuple[str, int]:
    return svc.cluster_ip, svc.ports[0].port


def resolution_s(t_served_ns: int, t_prev_ns: int | None, t0_ns: int) -> float:
    """The width of the window the new state arrived in: after the previous attempt's start (or
    after t0, the change being asked for, if that is later) and by the satisfying attempt's start."""
    return (t_served_ns - max(t0_ns, t_prev_ns if t_prev_ns is not None else t0_ns)) / 1e9


def served_time(res: dict, t0: int) -> tuple[int, int | None]:
    """(t_served, t_prev) of a satisfied poll result against the change asked for at t0. An
    attempt that started before t0 but completed after it (the change landed within one attempt,
    as a netlink IPVS change does) straddled the change: the new state came after t0 and by that
    attempt's completion, which is then t_served (an upper bound, with resolution from t0). Only
    an attempt that also completed before t0 shows the new state held before the change."""
    t, done = int(res["t_ns"]), res.get("t_done_ns")
    if t < t0 and done is not None and done >= t0:
        return int(done), None
    return t, res.get("t_prev_ns")


def _control(services: Sequence[Service], changed: Service, expect: str) -> tuple[str, int] | None:
    """For a "gone" poll: a Service of `services` other than `changed` (it stays served)."""
    if expect != "gone":
        return None
    for svc in (services[0], services[-1]) if services else ():
        if svc.cluster_ip != changed.cluster_ip:
            return _addr(svc)
    return None


def measure_sync_one(
    agent: Agent,
    dataplane: Dataplane,
    services: Sequence[Service],
    model: Model,
    ctx: PointContext,
    samples: int,
    kinds: Sequence[str] = ("add", "update", "delete"),
    timeout: float = 10.0,
    *,
    interval: float = 0.001,
    max_cpu_share: float | None = None,
    attempt_timeout: float = 0.2,
    verify_restore: bool = True,
    restore: bool = True,
    stop: StopRule | None = None,
) -> list[dict[str, Any]]:
    """Rows sync_one_s and sync_apply_s, `samples` per kind, kinds interleaved sample by sample.

    `services` is the programmed set (N = len(services)); it is programmed again after each
    sample. Raises SyncError when the restored state cannot be confirmed, or when the
    expectation held before the change was applied (a broken lab, not a latency).

    restore=False: no undo; the changes accumulate (kinds interleaved, so with add and delete both
    measured N stays within one of its value), halving the applies - at 50,000 Services one
    iptables apply costs seconds. The dataplane is then left in the changed state: measure last.

    stop: adaptive sample count (harness.measure.adaptive): `samples` is the cap, rounds are taken in
    spread_order (any prefix covers the whole list) and end once `stop` is satisfied for every kind.
    """
    services = list(services)
    n = len(services)
    if n == 0 and any(k != "add" for k in kinds):
        kinds = [k for k in kinds if k == "add"]
    rows: list[dict[str, Any]] = []
    pos = {
        "add": positions(n + 1, samples, PHASE["add"]),
        "update": positions(n, samples, PHASE["update"]),
        "delete": positions(n, samples, PHASE["delete"]),
    }
    original = list(services)
    for j in spread_order(samples) if stop is not None else range(samples):
        if stop is not None and stop.done():
            break
        for kind in kinds:
            p = pos[kind][j]
            if not restore:  # changes accumulate: find the original Service where it stands now
                if kind == "add":
                    anchor = original[p] if p < n else None
                    p = services.index(anchor) if anchor in services else len(services)
                else:
                    target = original[p]
                    if target not in services:
                        continue
                    p = services.index(target)
            if kind == "add":
                svc = model.service(n + j)
                after = services[:p] + [svc] + services[p:]
                change, undo = Change("add", svc), Change("delete", svc)
                expect, restore_expect = "served", "gone"
            elif kind == "update":
                old = services[p]
                svc = old.with_endpoints(other_endpoints(old, model, shift=j))
                after = services[:p] + [svc] + services[p + 1 :]
                change, undo = Change("update", svc), Change("update", old)
                expect, restore_expect = _backend_expect(svc.endpoints), _backend_expect(old.endpoints)
            elif kind == "delete":
                svc = services[p]
                after = services[:p] + services[p + 1 :]
                change, undo = Change("delete", svc), Change("add", svc)
                expect, restore_expect = "gone", "served"
            else:
                raise ValueError(f"unknown change kind {kind!r}")
            ip, port = _addr(svc)
            pace: dict[str, Any] = {
                "interval": interval,
                "max_cpu_share": max_cpu_share,
                "attempt_timeout": attempt_timeout,
            }

            agent.poll_start(
                ip, port, expect, timeout=timeout + 0.05, control=_control(after, svc, expect), **pace
            )
            t0 = time.perf_counter_ns()
            try:
                dataplane.apply(after, change)
                t_apply = time.perf_counter_ns()
            finally:
                res = agent.poll_result()
            t_served, t_prev = served_time(res, t0) if res["satisfied"] else (t0, None)
            if res["satisfied"] and t_served < t0:
                raise SyncError(
                    f"{kind} {svc.name} ({ip}:{port}): '{expect}' held before the change "
                    f"was applied (seen {(t0 - t_served) / 1e6:.3f} ms early): {res['detail']}"
                )
            lat = (t_served - t0) / 1e9 if res["satisfied"] else timeout
            timed_out = (not res["satisfied"]) or lat > timeout
            if timed_out:
                lat = timeout
            rows.append(
                ctx.row(
                    "sync_one_s",
                    lat,
                    "s",
                    seq=j,
                    timed_out=timed_out,
                    change=kind,
                    error="timeout" if timed_out else "",
                )
            )
            if stop is not None:
                stop.add(f"sync_one_s change={kind}", lat)
            rows.append(ctx.row("sync_apply_s", (t_apply - t0) / 1e9, "s", seq=j, change=kind))
            if not timed_out:
                rows.append(
                    ctx.row(
                        "sync_resolution_s",
                        resolution_s(t_served, t_prev, t0),
                        "s",
                        seq=j,
                        change=kind,
                    )
                )

            if not restore:
                services = after
                continue
            dataplane.apply(services, undo)
            if verify_restore:
                back = agent.poll(
                    ip,
                    port,
                    restore_expect,
                    timeout=max(timeout, 1.0),
                    control=_control(services, svc, restore_expect),
                    **pace,
                )
                if not back["satisfied"]:
                    raise SyncError(
                        f"after undoing {kind} {svc.name}: '{restore_expect}' not seen "
                        f"within {max(timeout, 1.0)} s"
                    )
    return rows


def measure_sync_full(
    dataplane: Dataplane, services: Sequence[Service], ctx: PointContext
) -> list[dict[str, Any]]:
    """One full sync of `services`, timed: row sync_full_s."""
    t0 = time.perf_counter_ns()
    dataplane.full_sync(services)
    t1 = time.perf_counter_ns()
    return [ctx.row("sync_full_s", (t1 - t0) / 1e9, "s")]
