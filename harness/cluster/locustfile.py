"""Locust file for the cluster target's distributed load (master + workers, see manifests.py).

Targets come from the JSON list at $KPBENCH_TARGETS ([[cluster_ip, port], ...], a mounted
ConfigMap); each user picks a random target per request. $KPBENCH_KEEPALIVE=1 reuses connections,
0 opens a new connection per request (the Service dataplane's connection path, every time).
$KPBENCH_RATE is the target total requests/s, spread over all users with constant_throughput.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant_throughput, events, task

TARGETS: list = []


@events.init.add_listener
def _load_targets(environment, **kw):
    global TARGETS
    try:
        with open(os.environ.get("KPBENCH_TARGETS", "/etc/kpbench/targets.json")) as f:
            TARGETS = [tuple(t) for t in json.load(f)]
    except (OSError, ValueError):
        TARGETS = []


class ServiceUser(FastHttpUser):
    host = "http://127.0.0.1"
    _users = max(1, int(os.environ.get("KPBENCH_USERS", "8")))
    wait_time = constant_throughput(float(os.environ.get("KPBENCH_RATE", "200")) / _users)

    @task
    def get(self):
        if not TARGETS:
            return
        ip, port = random.choice(TARGETS)
        headers = {} if os.environ.get("KPBENCH_KEEPALIVE") == "1" else {"Connection": "close"}
        self.client.get(f"http://{ip}:{port}/", headers=headers, name="clusterip")
