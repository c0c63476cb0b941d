"""The probe agent inside the cluster, and kube-proxy's metrics through the API server.

`RemoteAgent` starts `python -m harness.measure.agent` in a probe pod through pods/exec (a
websocket stream: JSON lines on stdin/stdout, exactly the protocol of harness.measure.agent) and
offers the same methods as harness.measure.agent.Agent, so harness.measure.connect and the sync
poller work unchanged.

kube-proxy metrics: kubeadm's kube-proxy binds metrics to 127.0.0.1:10249, which the API server's
node proxy cannot reach (it connects to the node's InternalIP). The run therefore sets
metricsBindAddress to 0.0.0.0:10249 in the config.conf it writes (restored at the end) and
scrapes GET /api/v1/nodes/<node>:10249/proxy/metrics (and /proxyMode), which needs only
`get nodes/proxy`. When the node proxy still cannot reach the port (firewall), `scrape_via_probe`
reads http://127.0.0.1:10249/metrics from inside the host-network probe pod on that node instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

from harness.cluster.kube import Rest, api_error
from harness.cluster.manifests import AGENT_COMMAND
from harness.cluster.preflight import node_proxy_path
from harness.k8s.metrics import parse_metrics
from harness.measure.agent import AgentClient, AgentError

SYNC_HISTOGRAM = "kubeproxy_sync_proxy_rules_duration_seconds"


class RemoteAgentError(AgentError):
    pass


class RemoteAgent(AgentClient):
    """The agent in a probe pod, over a pods/exec websocket; the commands are AgentClient's."""

    error = RemoteAgentError

    def __init__(
        self, api: Any, namespace: str, pod: str, container: str = "probe", *, start_timeout: float = 60.0
    ):
        self.pod = pod
        self._buf = ""
        self._polling = False
        self.ws = exec_stream(api, namespace, pod, container, AGENT_COMMAND)
        self.start_timeout = start_timeout
        self.pid = self.request({"cmd": "ping"}, timeout=start_timeout)["pid"]

    def _send(self, obj: dict) -> None:
        if not self.ws.is_open():
            raise RemoteAgentError(f"agent in pod {self.pod} exited: {self.ws.read_stderr()[-1000:]}")
        self.ws.write_stdin(json.dumps(obj) + "\n")

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while "\n" not in self._buf:
            if not self.ws.is_open():
                raise RemoteAgentError(f"agent in pod {self.pod} exited")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteAgentError(f"agent in pod {self.pod}: no answer within {timeout:.0f}s")
            self.ws.update(timeout=min(1.0, left))
            if self.ws.peek_stdout():
                self._buf += self.ws.read_stdout()
        line, self._buf = self._buf.split("\n", 1)
        return line

    def close(self) -> None:
        from websocket import WebSocketException

        try:
            if self._polling:
                self.poll_result()
            self._send({"cmd": "quit"})
        except (RemoteAgentError, WebSocketException, OSError):  # the agent or its stream is gone already
            pass
        self.ws.close()


def exec_stream(api: Any, namespace: str, pod: str, container: str, command: list[str]) -> Any:
    """An open pods/exec websocket running `command` in `pod`'s `container`, its stdin, stdout and
    stderr attached (no tty): read and write it line by line."""
    from kubernetes import client
    from kubernetes.stream import stream

    return stream(
        client.CoreV1Api(_own_client(api)).connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container=container,
        command=command,
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )


def _own_client(api: Any) -> Any:
    """A client of its own for a websocket stream: kubernetes.stream swaps the client's call_api
    while it connects, and a request another thread makes on that client meanwhile would go out
    as a websocket too."""
    from kubernetes import client

    return client.ApiClient(configuration=api.configuration)


def scrape_node(rest: Rest, node: str, port: int = 10249, timeout: float = 5.0) -> dict[str, float]:
    """kube-proxy's /metrics on `node` through the API server's node proxy."""
    text = rest.get(node_proxy_path(node, port, "metrics"), raw=True, timeout=(timeout, timeout))
    return parse_metrics(text)


def scrape_via_probe(api: Any, namespace: str, pod: str, port: int = 10249) -> dict[str, float]:
    """Fallback: read 127.0.0.1:<port>/metrics from inside the host-network probe pod (pods/exec)."""
    from kubernetes import client
    from kubernetes.stream import stream

    code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',timeout=5).read().decode())"
    out = stream(
        client.CoreV1Api(_own_client(api)).connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container="probe",
        command=["python3", "-c", code],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
    )
    return parse_metrics(out)


def ipv4_value(metrics: dict[str, float], name: str) -> float | None:
    """The IPv4 series of `name`: a dual-stack kube-proxy labels it ip_family="IPv4" (the Services
    here are IPv4), a single-stack one may not label it."""
    for key in (f'{name}{{ip_family="IPv4"}}', name):
        if key in metrics:
            return metrics[key]
    return None


def sync_delta_us(before: dict[str, float], after: dict[str, float]) -> tuple[float, int] | None:
    """Mean kube-proxy sync duration (us) and sync count between two scrapes; None if no sync ran."""
    s0, s1 = ipv4_value(before, f"{SYNC_HISTOGRAM}_sum") or 0.0, ipv4_value(after, f"{SYNC_HISTOGRAM}_sum")
    c0, c1 = (
        ipv4_value(before, f"{SYNC_HISTOGRAM}_count") or 0.0,
        ipv4_value(after, f"{SYNC_HISTOGRAM}_count"),
    )
    if s1 is None or c1 is None or c1 <= c0:
        return None
    return (s1 - s0) / (c1 - c0) * 1e6, int(c1 - c0)


def scrape_error(e: Exception) -> str:
    return api_error(e)
