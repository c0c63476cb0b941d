"""TCP connect latency through the Service dataplane, measured by the probe agent.

Rows (unit "us", one per attempt, never dropped):
- ``connect_us`` position=random: to the ClusterIP of a Service drawn uniformly among the N;
- ``connect_us`` position=first / position=last: to the first / last Service in lookup order
  (where a linear ruleset such as iptables' KUBE-SERVICES is cheapest / dearest);
- ``connect_direct_us`` path=pod: straight to an endpoint's pod IP, no Service (the floor).

``connect_us`` rows carry path=clusterip. All attempts of one call are shuffled together, so
drift (other load on the machine) spreads over all kinds instead of biasing one of them. A failed
attempt (timed out, refused, unreachable) is a row with value = timeout (in us) and
timed_out=True: a censored sample meaning "not connected within the timeout".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from harness.measure.adaptive import MIN_FOR_CI, StopRule
from harness.measure.agent import Agent
from harness.model import Service
from harness.samples import PointContext

CHUNK = 2000  # attempts per agent command
STOP_CHUNK = 200  # with adaptive sampling: how often the stop rule is asked


def _svc_addr(svc: Service) -> tuple[str, int]:
    return svc.cluster_ip, svc.ports[0].port


def connect_stop_rules(plan: Sequence[tuple[str, int, str]]) -> dict[str, StopRule]:
    """One stop rule per kind of attempt: capped at the attempts planned, floored at the report's
    minimum for its metric (harness.metrics)."""
    from harness.metrics import min_samples

    floors = min_samples()
    caps: dict[str, int] = {}
    for _ip, _port, kind in plan:
        caps[kind] = caps.get(kind, 0) + 1
    return {
        k: StopRule(
            cap=c,
            floor=max(MIN_FOR_CI, floors.get("connect_direct_us" if k == "direct" else "connect_us", 1)),
        )
        for k, c in caps.items()
    }


def run_plan(
    agent: Agent,
    plan: Sequence[tuple[str, int, str]],
    timeout: float,
    stop: Callable[[list[tuple[float, str]]], bool] | None = None,
) -> list[tuple[float, str]]:
    """Connect once to every (ip, port, tag) of `plan`, in order -> [(us, err), ...]; with `stop`,
    in chunks of STOP_CHUNK, ending early once stop(results so far) is true."""
    out: list[tuple[float, str]] = []
    step = CHUNK if stop is None else STOP_CHUNK
    for i in range(0, len(plan), step):
        if stop is not None and stop(out):
            break
        chunk = plan[i : i + step]
        res = agent.connect(chunk, samples=1, timeout=timeout)
        out.extend((us, err) for _, us, err in res)
    return out


def measure_connect(
    agent: Agent,
    ctx: PointContext,
    model_services: Sequence[Service],
    n: int,
    samples: int,
    rng: random.Random,
    timeout: float,
    *,
    edge_samples: int = 0,
    direct_samples: int | None = None,
    lookup_order: Sequence[Service] | None = None,
    warmup: int = 3,
    adaptive: dict | None = None,
) -> list[dict[str, Any]]:
    """Connect-latency rows for a point with the first `n` of `model_services` programmed.

    samples: attempts to random Services; edge_samples: attempts to each of the first and the last
    Service of `lookup_order` (default: the first n Services in list order); direct_samples:
    attempts to random endpoints' pod IPs (default: same as samples; 0 disables). `warmup`
    unrecorded attempts of each kind run first (neighbour and route caches). adaptive (a dict): the
    counts are caps; the shuffled attempts stop once every kind's median has its 95% CI within
    +-5% (harness.measure.adaptive, never below the report's floor per metric); the samples spent
    and the CI reached per kind are written into the dict.
    """
    services = list(model_services[:n])
    if not services:
        return []
    order = list(lookup_order) if lookup_order is not None else services
    if direct_samples is None:
        direct_samples = samples
    endpoints = sorted({(e.ip, e.port) for s in services for e in s.endpoints_for(s.ports[0])})

    plan: list[tuple[str, int, str]] = []  # (ip, port, kind)
    for _ in range(samples):
        plan.append((*_svc_addr(rng.choice(services)), "random"))
    for _ in range(edge_samples):
        plan.append((*_svc_addr(order[0]), "first"))
        plan.append((*_svc_addr(order[-1]), "last"))
    if endpoints:
        for _ in range(direct_samples):
            plan.append((*rng.choice(endpoints), "direct"))
    rng.shuffle(plan)

    warm = [(*_svc_addr(rng.choice(services)), "w") for _ in range(warmup if samples or edge_samples else 0)]
    if endpoints and direct_samples:
        warm += [(*rng.choice(endpoints), "w") for _ in range(warmup)]
    if warm:
        run_plan(agent, warm, timeout)

    timeout_us = timeout * 1e6
    rules = connect_stop_rules(plan) if adaptive is not None else None
    fed = [0]

    def enough(done: list[tuple[float, str]]) -> bool:
        assert rules is not None
        for (_ip, _port, kind), (us, err) in zip(plan[fed[0] : len(done)], done[fed[0] :], strict=True):
            rules[kind].add(kind, timeout_us if err else us)
        fed[0] = len(done)
        return all(r.done() for r in rules.values())

    results = run_plan(agent, plan, timeout, enough if rules is not None else None)
    if rules is not None and adaptive is not None:
        enough(results)
        adaptive.update(
            {
                f"{'connect_direct_us' if k == 'direct' else 'connect_us'} {k}": r.summary()[k]
                for k, r in rules.items()
                if k in r.series
            }
        )
    rows: list[dict[str, Any]] = []
    seq: dict[str, int] = {}
    for (_ip, _port, kind), (us, err) in zip(plan[: len(results)], results, strict=True):
        k = seq.get(kind, 0)
        seq[kind] = k + 1
        failed = bool(err)
        value = timeout_us if failed else us
        if kind == "direct":
            rows.append(
                ctx.row(
                    "connect_direct_us", value, "us", seq=k, timed_out=failed, path="pod", error=err or ""
                )
            )
        else:
            rows.append(
                ctx.row(
                    "connect_us",
                    value,
                    "us",
                    seq=k,
                    timed_out=failed,
                    position=kind,
                    path="clusterip",
                    error=err or "",
                )
            )
    return rows
