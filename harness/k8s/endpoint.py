"""API client setup from a server URL, a CA file and a bearer token (the local target's
control plane), reached from inside a network namespace."""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.lab.netns import enter_for_good


@dataclass
class ApiEndpoint:
    """How to reach an apiserver: URL, CA, bearer token, and the namespace to connect from."""

    host: str
    ca_file: str
    token: str
    netns: str | None = None

    def configuration(self):
        from kubernetes import client

        c = client.Configuration()
        c.host = self.host
        c.ssl_ca_cert = self.ca_file
        c.verify_ssl = True
        c.api_key = {"authorization": self.token}
        c.api_key_prefix = {"authorization": "Bearer"}
        c.connection_pool_maxsize = 4
        return c

    def client(self):
        """A new kubernetes.client.ApiClient. Use it inside `with netns.in_netns(endpoint.netns):`
        (or from a thread started by `executor()`), since it connects lazily."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

    def executor(self, workers: int) -> ThreadPoolExecutor:
        """A thread pool whose threads live in the endpoint's namespace."""
        return ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="kpb-api",
            initializer=enter_for_good,
            initargs=(self.netns,),
        )

    def call(self, fn, *args, **kwargs):
        """Run fn(ApiClient, *args, **kwargs) on a fresh client from inside the namespace."""
        with self.executor(1) as ex:

            def run():
                with self.client() as api:
                    return fn(api, *args, **kwargs)

            return ex.submit(run).result()


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "kpbench") -> Path:
    """A kubeconfig (JSON, which is YAML) with one cluster, one token user, one context."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kpbench",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kpbench", "context": {"cluster": "kpbench", "user": user}}],
        "current-context": "kpbench",
    }
    path.write_text(json.dumps(cfg, indent=1))
    os.chmod(path, 0o600)
    return path
