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
from collections.abc import Sequence
from typing import Any

from harness.measure.agent import Agent
from harness.model import Service
from harness.samples import PointContext

CHUNK = 2000  # attempts per agent command


def _svc_addr(svc: Service) -> tuple[str, int]:
    return svc.cluster_ip, svc.ports[0].port


def run_plan(agent: Agent, plan: Sequence[tuple[str, int, str]], timeout: float) -> list[tuple[float, str]]:
    """Connect once to every (ip, port, tag) of `plan`, in order -> [(us, err), ...]."""
    out: list[tuple[float, str]] = []
    for i in range(0, len(plan), CHUNK):
        chunk = plan[i:i + CHUNK]
        res = agent.connect(chunk, samples=1, timeout=timeout)
        out.extend((us, err) for _, us, err in res)
    return out


def measure_connect(agent: Agent, ctx: PointContext, model_services: Sequence[Service], n: int,
                    samples: int, rng: random.Random, timeout: float, *, edge_samples: int = 0,
                    direct_samples: int | None = None, lookup_order: Sequence[Service] | None = None,
                    warmup: int = 3) -> list[dict[str, Any]]:
    """Connect-latency rows for a point with the first `n` of `model_services` programmed.

    samples: attempts to random Services; edge_samples: attempts to each of the first and the last
    Service of `lookup_order` (default: the first n Services in list order); direct_samples:
    attempts to random endpoints' pod IPs (default: same as samples; 0 disables). `warmup`
    unrecorded attempts of each kind run first (neighbour and route caches).
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

    results = run_plan(agent, plan, timeout)
    rows: list[dict[str, Any]] = []
    seq: dict[str, int] = {}
    timeout_us = timeout * 1e6
    for (_ip, _port, kind), (us, err) in zip(plan, results, strict=True):
        k = seq.get(kind, 0)
        seq[kind] = k + 1
        failed = bool(err)
        value = timeout_us if failed else us
        if kind == "direct":
            rows.append(ctx.row("connect_direct_us", value, "us", seq=k, timed_out=failed, path="pod",
                                error=err or ""))
        else:
            rows.append(ctx.row("connect_us", value, "us", seq=k, timed_out=failed, position=kind,
                                path="clusterip", error=err or ""))
    return rows
