"""Locust file for the cluster target's distributed load (master + workers, see manifests.py and
harness/cluster/load.py).

Targets come from the JSON list at $KPBENCH_TARGETS ([[cluster_ip, port], ...], a mounted
ConfigMap); each user picks a random target per request. $KPBENCH_KEEPALIVE=1 reuses connections,
0 opens a new connection per request (the Service dataplane's connection path, every time).
$KPBENCH_RATE is the target total requests/s, spread over all users with constant_throughput.

Raw samples: each worker keeps every request (start time, latency, ok, error) and prints them as
JSON lines when it quits, ``{"t": "req", "r": [start_epoch_s, latency_ms, ok, error]}`` and one
``{"t": "worker", "requests": n}``; the harness reads them from the worker pods' logs (locust's own
statistics, aggregated by the master, round to whole milliseconds and keep no samples).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from locust import FastHttpUser, constant_throughput, events, task
from locust.runners import WorkerRunner

TARGETS: list = []
RECORDS: list[list] = []
_printed = False


@events.init.add_listener
def _load_targets(environment, **kw):
    global TARGETS
    try:
        with open(os.environ.get("KPBENCH_TARGETS", "/etc/kpbench/targets.json")) as f:
            TARGETS = [tuple(t) for t in json.load(f)]
    except (OSError, ValueError):
        TARGETS = []


@events.request.add_listener
def _record(response_time=0.0, exception=None, **kw):
    ms = float(response_time or 0.0)
    RECORDS.append(
        [time.time() - ms / 1000.0, ms, exception is None, "" if exception is None else str(exception)[:80]]
    )


@events.quitting.add_listener
def _print_records(environment, **kw):
    global _printed
    if _printed or not isinstance(environment.runner, WorkerRunner):
        return
    _printed = True
    out = sys.stdout
    for r in RECORDS:
        out.write(json.dumps({"t": "req", "r": r}) + "\n")
    out.write(json.dumps({"t": "worker", "requests": len(RECORDS)}) + "\n")
    out.flush()


class ServiceUser(FastHttpUser):
    host = "http://127.0.0.1"
    _users = max(1, int(os.environ.get("KPBENCH_USERS", "8")))
    wait_time = constant_throughput(float(os.environ.get("KPBENCH_RATE", "200")) / _users)
    network_timeout = float(os.environ.get("KPBENCH_TIMEOUT", "2"))
    connection_timeout = float(os.environ.get("KPBENCH_TIMEOUT", "2"))

    @task
    def get(self):
        if not TARGETS:
            return
        ip, port = random.choice(TARGETS)
        headers = {} if os.environ.get("KPBENCH_KEEPALIVE") == "1" else {"Connection": "close"}
        self.client.get(f"http://{ip}:{port}/", headers=headers, name="clusterip")
