"""The local target's Dataplane: kube-proxy does the programming, the harness makes API calls.

The measurement code (harness.measure.sync, harness.validate) drives a Dataplane; on the local
target that Dataplane is the API server plus the real kube-proxy of the worker
(harness.targets.local_worker.LocalPoints), which owns the API client and the kube-proxies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.dataplane.base import Change
from harness.model import Service

if TYPE_CHECKING:
    from harness.targets.local_worker import LocalPoints


class ApiDataplane:
    """The Dataplane protocol implemented by API calls: kube-proxy does the programming.

    full_sync(services): create those of `services` not in the API yet and wait until both nodes
    program them (used by the validation matrix); cleanup() deletes what full_sync created.
    apply(): the change as API calls (create Service + EndpointSlices / patch the slices / delete),
    returning when the API calls return.
    """

    def __init__(self, w: LocalPoints, mode: str, node: str = "a"):
        self.w, self.mode, self.node = w, mode, node
        self.created: list[Service] = []

    def render(self, services: Sequence[Service]) -> str:
        raise NotImplementedError("the local target renders nothing itself: kube-proxy does")

    def full_sync(self, services: Sequence[Service]) -> None:
        """Create what is missing, then (re)start kube-proxy: its first sync holds every Service,
        so "programmed" can wait for a sync that ended after the start (kube-proxy writes a
        mode's state in several steps; ipvs: the iptables rules after the ipsets)."""
        if self.node != "a":
            return  # node a's call creates the objects and waits for every node
        new = [s for s in services if (s.namespace, s.name) not in self.w.in_api]
        for s in new:
            self.w.api_create(s)
        self.created += new
        restart = bool(new) or not self.w.proxies_running(self.mode)
        t_wall = time.time()
        if restart:
            self.w.ensure_proxies(self.mode, restart=True)
        timeout = self.w.local.sync_timeout_s
        self.w.wait_programmed({s.cluster_ip for s in services}, self.w.running_lab().nodes, timeout)
        if restart:
            for n in self.w.running_lab().nodes:
                self.w.wait_sync_finished(n, since=t_wall, timeout=timeout)

    def apply(self, services: Sequence[Service], change: Change) -> None:
        if self.node != "a":
            return
        if change.kind == "add":
            self.w.api_create(change.service, trigger=True)
        elif change.kind == "update":
            self.w.api_update(change.service, trigger=True)
        elif change.kind == "delete":
            self.w.api_delete(change.service)
        else:
            raise ValueError(f"unknown change kind {change.kind!r}")

    def counts(self) -> dict[str, int]:
        return self.w.kernel_counts(self.node, self.mode)

    def cleanup(self) -> None:
        for s in self.created:
            self.w.api_delete(s)
        self.created = []
