"""One load phase on the cluster: locust in distributed mode, a master and W workers (Jobs in the
run's namespace, harness/cluster/locustfile.py), against the ClusterIPs of the point's Services.

Workers reach the master at its pod's IP (no cluster DNS, and no wait for kube-proxy to program
one more Service). Each worker
prints its raw requests when it quits; they are read back from the worker pods' logs and become
the same rows as the lab's load phase: `request_us` per request (a failed one = the timeout, with
timed_out), `load_target_rps`, `load_achieved_rps` (requests started within `duration` of the
first one, / duration: locust runs START_MARGIN_S longer, as its timer starts before the workers
do), `load_requests`, `load_failures`. The phase's objects are deleted when it ends, so nothing of
the load generator runs while kube-proxy's syncs are timed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from harness.cluster import manifests
from harness.cluster.kube import Rest, api_error
from harness.measure.load import SATURATION_RATE, LoadError, LoadResult
from harness.samples import PointContext

DONE = ("Succeeded", "Failed")
# locust's --run-time starts with the spawn, before the workers' first requests: the phase runs this
# much longer, and the achieved rate counts the requests of `duration` from the first one
START_MARGIN_S = 2.0


class ClusterLoad:
    """Runs load phases in namespace `ns` with `workers` locust workers from `image`."""

    def __init__(
        self,
        rest: Rest,
        ns: str,
        run_id: str,
        image: str,
        workers: int,
        *,
        start_timeout_s: float = 180.0,
        log: Callable[[str], None] = lambda s: None,
    ):
        self.rest, self.ns, self.run_id, self.image, self.workers = rest, ns, run_id, image, workers
        self.start_timeout_s, self.log = start_timeout_s, log
        self.phases = 0

    def run(
        self,
        ctx: PointContext,
        targets: Sequence[tuple[str, int]],
        *,
        users: int,
        rate: float,
        duration: float,
        timeout: float,
        keepalive: bool,
    ) -> LoadResult:
        """One phase: create, wait for the master to finish, read the workers' records, delete."""
        if not targets:
            raise LoadError("no Services to load")
        self.phases += 1
        suffix = f"-{self.phases}"
        kw: dict[str, Any] = dict(
            users=users,
            rate=rate,
            duration_s=duration + START_MARGIN_S,
            keepalive=keepalive,
            timeout_s=timeout,
            targets=json.dumps([[ip, int(port)] for ip, port in targets]),
            suffix=suffix,
        )
        cm, _, master, _ = manifests.locust_manifests(self.ns, self.run_id, self.image, self.workers, **kw)
        created: list[str] = []
        try:
            created.append(self._create("configmaps", cm))
            created.append(self._create("jobs", master))
            # the workers dial the master's pod IP: the load generator's own connection does not
            # depend on kube-proxy (the system under test) programming one more Service
            master_ip = self._master_ip(master["metadata"]["name"])
            *_, worker = manifests.locust_manifests(
                self.ns, self.run_id, self.image, self.workers, master_host=master_ip, **kw
            )
            created.append(self._create("jobs", worker))
            self._wait_master(master["metadata"]["name"], duration)
            records, reported = self._worker_records(worker["metadata"]["name"])
        finally:
            for path in reversed(created):
                self.rest.delete(path)
        return result(ctx, records, reported, rate, duration, timeout, keepalive)

    def _create(self, kind: str, body: dict) -> str:
        group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
        path = f"{group}/namespaces/{self.ns}/{kind}"
        self.rest.create(path, body)
        return f"{path}/{body['metadata']['name']}"

    def _pods(self, job: str) -> list[dict]:
        return self.rest.get(
            f"/api/v1/namespaces/{self.ns}/pods", query={"labelSelector": f"job-name={job}"}
        )["items"]

    def _master_ip(self, job: str) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            pods = self._pods(job)
            ip = next((p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")), None)
            if ip:
                return ip
            if time.monotonic() > deadline:
                raise LoadError(f"locust master Job {job} has no running pod: {_pod_states(pods)}")
            time.sleep(0.5)

    def _wait_master(self, job: str, duration: float) -> None:
        deadline = time.monotonic() + self.start_timeout_s + duration + 60
        while True:
            pods = self._pods(job)
            if pods and all((p.get("status") or {}).get("phase") in DONE for p in pods):
                return
            if time.monotonic() > deadline:
                raise LoadError(f"locust master Job {job} did not finish: {_pod_states(pods)}")
            time.sleep(1)

    def _worker_records(self, job: str) -> tuple[list[list], int]:
        """Every worker's requests (after its pod ended, waiting up to 60 s) -> (records, workers that
        reported)."""
        deadline = time.monotonic() + 60
        pods = self._pods(job)
        while not (pods and all((p.get("status") or {}).get("phase") in DONE for p in pods)):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
            pods = self._pods(job)
        records: list[list] = []
        reported = 0
        tails: list[str] = []
        for p in pods:
            name = p["metadata"]["name"]
            try:
                text = self.rest.get(f"/api/v1/namespaces/{self.ns}/pods/{name}/log", raw=True)
            except Exception as e:  # noqa: BLE001 - a worker whose log cannot be read: said in the error below
                self.log(f"locust worker {name}: log not readable ({api_error(e)})")
                continue
            recs, done = parse_worker_log(text)
            records += recs
            reported += done
            if not done:
                tails.append(f"{name}: {' | '.join(text.strip().splitlines()[-3:])[-300:]}")
        if reported < self.workers:
            raise LoadError(
                f"{reported} of {self.workers} locust workers reported their requests ({_pod_states(pods)})"
                + (f"; log tails: {'; '.join(tails)}" if tails else "")
            )
        return records, reported


def parse_worker_log(text: str) -> tuple[list[list], int]:
    """A locust worker's output (harness/cluster/locustfile.py) -> (its requests, 1 if it reported)."""
    records: list[list] = []
    reported = 0
    for line in text.splitlines():
        if not line.startswith('{"t": '):
            continue
        obj = json.loads(line)
        if obj["t"] == "req":
            records.append(obj["r"])
        elif obj["t"] == "worker":
            reported += 1
    return records, reported


def _pod_states(pods: list[dict]) -> str:
    out = []
    for p in pods:
        st = p.get("status") or {}
        why = ""
        for c in st.get("containerStatuses") or []:
            state = c.get("state") or {}
            w = state.get("waiting") or state.get("terminated") or {}
            why = w.get("reason", "") + (f" {w.get('message', '')[:120]}" if w.get("message") else "")
        out.append(f"{p['metadata']['name']} {st.get('phase', '?')}{' ' + why if why else ''}")
    return "; ".join(out) or "no pods"


def result(
    ctx: PointContext,
    records: list[list],
    workers: int,
    rate: float,
    duration: float,
    timeout: float,
    keepalive: bool,
) -> LoadResult:
    """One phase's rows from the workers' records: the lab's load rows, less what closed-loop
    locust cannot tell (intended start times, hence lateness and corrected latency; client CPU)."""
    rows = []
    t_us = timeout * 1e6
    failures = 0
    for seq, (_start, ms, ok, err) in enumerate(sorted(records)):
        if ok:
            rows.append(ctx.row("request_us", ms * 1000.0, "us", seq=seq, keepalive=keepalive))
        else:
            failures += 1
            rows.append(
                ctx.row(
                    "request_us",
                    t_us,
                    "us",
                    seq=seq,
                    keepalive=keepalive,
                    timed_out=True,
                    error=str(err)[:80],
                )
            )
    t0 = min((r[0] for r in records), default=0.0)
    in_phase = sum(1 for r in records if r[0] < t0 + duration)
    achieved = in_phase / duration
    summary = {
        "target_rps": rate,
        "achieved_rps": achieved,
        "requests": len(records),
        "failures": failures,
        "workers": workers,
    }
    rows += [
        ctx.row("load_target_rps", rate, "rps", keepalive=keepalive),
        ctx.row("load_achieved_rps", achieved, "rps", keepalive=keepalive),
        ctx.row("load_requests", len(records), "count", keepalive=keepalive),
        ctx.row("load_failures", failures, "count", keepalive=keepalive),
    ]
    reasons = []
    if achieved < SATURATION_RATE * rate:
        reasons.append(f"achieved {achieved:.1f}/s < {SATURATION_RATE:.0%} of target {rate:.1f}/s")
    return LoadResult(rows, bool(reasons), summary, reasons)
