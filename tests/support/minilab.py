"""A minimal, self-contained lab for testing and benchmarking harness.measure (not the real topology).

    client (10.77.0.2) --veth-- router (10.77.0.1 | 10.78.0.1) --veth-- server (10.78.0.2 + pod IPs)

The server namespace carries every model pod IP as a /32 and runs one nginx answering GET / on
each pod ip:port with "<podname> <ip>:<port>" (like the real topology's backends); its
``/kpb-status`` on 10.78.0.2:8080 is nginx's stub_status (connection counters). The router
forwards and does Service DNAT with plain iptables (`DnatDataplane`), standing in for a
kube-proxy mode. Everything lives in namespaces named ``kpb-m<tag>-*``; ``close()`` removes it all.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

from harness.dataplane.base import Change
from harness.lab import netns
from harness.model import Model, Service

CLIENT_IP, ROUTER_C, ROUTER_S, SERVER_IP = "10.77.0.2", "10.77.0.1", "10.78.0.1", "10.78.0.2"
STATUS_PORT = 8080


class MiniLab:
    def __init__(self, model: Model, tag: str | None = None):
        self.model = model
        self.tag = tag or "m" + secrets.token_hex(3)
        self.client = netns.ns_name(self.tag, "client")
        self.router = netns.ns_name(self.tag, "router")
        self.server = netns.ns_name(self.tag, "server")
        self.tmp = tempfile.mkdtemp(prefix=f"kpb-{self.tag}-")
        self._nginx: subprocess.Popen | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        c, r, s = self.client, self.router, self.server
        for n in (c, r, s):
            netns.create(n)
        run = netns.run
        # veth pairs are created inside the router namespace and one end moved: nothing in root ns
        run(r, ["ip", "link", "add", "r0", "type", "veth", "peer", "name", "c0"])
        run(r, ["ip", "link", "set", "c0", "netns", c])
        run(r, ["ip", "link", "add", "r1", "type", "veth", "peer", "name", "s0"])
        run(r, ["ip", "link", "set", "s0", "netns", s])
        run(r, ["ip", "addr", "add", f"{ROUTER_C}/24", "dev", "r0"])
        run(r, ["ip", "addr", "add", f"{ROUTER_S}/24", "dev", "r1"])
        for dev in ("r0", "r1"):
            run(r, ["ip", "link", "set", dev, "up"])
        run(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run(r, ["ip", "route", "add", self.model.spec.pod_cidr, "via", SERVER_IP])
        run(c, ["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "c0"])
        run(c, ["ip", "link", "set", "c0", "up"])
        run(c, ["ip", "route", "add", "default", "via", ROUTER_C])
        run(s, ["ip", "addr", "add", f"{SERVER_IP}/24", "dev", "s0"])
        for pod in self.model.pods:
            run(s, ["ip", "addr", "add", f"{pod.ip}/32", "dev", "s0"])
        run(s, ["ip", "link", "set", "s0", "up"])
        run(s, ["ip", "route", "add", "default", "via", ROUTER_S])
        self._start_nginx()

    def _start_nginx(self) -> None:
        servers = []
        for pod in self.model.pods:
            for port in pod.ports:
                servers.append(
                    f"server {{ listen {pod.ip}:{port} backlog=4096; keepalive_requests 1000000; "
                    f'location / {{ default_type text/plain; return 200 "{pod.name} {pod.ip}:{port}\\n"; }} }}'
                )
        conf = f"""daemon off; master_process off; worker_processes 1; pid {self.tmp}/nginx.pid;
error_log {self.tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; client_body_temp_path {self.tmp}; proxy_temp_path {self.tmp};
fastcgi_temp_path {self.tmp}; uwsgi_temp_path {self.tmp}; scgi_temp_path {self.tmp};
server {{ listen {SERVER_IP}:{STATUS_PORT}; location /kpb-status {{ stub_status; }} }}
{chr(10).join(servers)}
}}
"""
        path = os.path.join(self.tmp, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self._nginx = subprocess.Popen(
            netns.exec_prefix(self.server) + ["nginx", "-c", path, "-e", f"{self.tmp}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pod = self.model.pods[0]
        for _ in range(200):
            if self._nginx.poll() is not None:
                raise netns.LabError(f"nginx failed: {self._nginx.stderr.read().decode()[-2000:]}")
            p = netns.run(
                self.server,
                [
                    "python3",
                    "-c",
                    f"import socket; socket.create_connection(('{pod.ip}', {pod.ports[0]}), 1)",
                ],
                check=False,
            )
            if p.returncode == 0:
                return
            time.sleep(0.05)
        raise netns.LabError("nginx did not start listening")

    def accepted_connections(self) -> int:
        """nginx's 'accepts' counter (includes the status request itself)."""
        p = netns.run(
            self.server,
            [
                "python3",
                "-c",
                "import urllib.request;print(urllib.request.urlopen("
                f"'http://{SERVER_IP}:{STATUS_PORT}/kpb-status').read().decode())",
            ],
        )
        lines = p.stdout.splitlines()
        return int(lines[2].split()[0])

    def close(self) -> None:
        if self._nginx is not None and self._nginx.poll() is None:
            self._nginx.kill()
            self._nginx.wait()
        for n in (self.client, self.router, self.server):
            netns.delete(n)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> MiniLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DnatDataplane:
    """A stand-in proxy mode for tests: one iptables DNAT chain in the router's nat table.

    Every sync rewrites the whole chain with iptables-restore (like kube-proxy's iptables mode);
    Services are matched in list order, multi-endpoint Services pick an endpoint at random.
    """

    mode = "dnat-test"

    def __init__(self, ns: str, iptables_restore: str = "iptables-restore"):
        self.ns = ns
        self.restore = iptables_restore
        self.synced = 0

    def render(self, services: Sequence[Service]) -> str:
        lines = ["*nat", ":KPB-SERVICES - [0:0]", ":PREROUTING ACCEPT [0:0]", "-A PREROUTING -j KPB-SERVICES"]
        for svc in services:
            port = svc.ports[0]
            eps = svc.endpoints_for(port)
            base = f"-A KPB-SERVICES -d {svc.cluster_ip}/32 -p tcp --dport {port.port}"
            if not eps:
                lines.append(f"{base} -j DNAT --to-destination 10.78.0.2:9")  # refused
                continue
            for j, ep in enumerate(eps):
                left = len(eps) - j
                prob = f" -m statistic --mode random --probability {1.0 / left:.5f}" if left > 1 else ""
                lines.append(f"{base}{prob} -j DNAT --to-destination {ep.ip}:{ep.port}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def full_sync(self, services: Sequence[Service]) -> None:
        netns.run(self.ns, [self.restore], input=self.render(services))
        self.synced += 1

    def apply(self, services: Sequence[Service], change: Change) -> None:
        self.full_sync(services)

    def counts(self) -> dict[str, int]:
        p = netns.run(self.ns, ["iptables-save", "-t", "nat"])
        return {"rules": sum(1 for ln in p.stdout.splitlines() if ln.startswith("-A KPB-SERVICES"))}

    def cleanup(self) -> None:
        netns.run(self.ns, ["iptables", "-t", "nat", "-F"], check=False)
