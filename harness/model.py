"""Synthetic Services: a deterministic, prefix-stable model of N Services and the pods behind them.

The same seed always gives the same Services, and the first N Services of a model of size M > N
are exactly the Services of a model of size N: a sweep can grow the set from one count to the
next. Addresses come from configurable Service and pod CIDRs (kube-proxy's usual defaults).
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, field, replace
from typing import Literal

from harness.errors import UserError

NODE_PORT_MIN = 30000
NODE_PORT_MAX = 32767
NAMESPACE = "kpbench"


class ModelError(UserError, ValueError):
    """The model cannot be built as asked (too many Services for the CIDR, and so on)."""


@dataclass(frozen=True)
class Pod:
    """A pod namespace: a real HTTP server on `ip`, listening on `ports`."""

    name: str
    node: str
    ip: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    node: str

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    index: int
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    affinity_timeout: int | None = None  # seconds; set means sessionAffinity: ClientIP
    external_ips: tuple[str, ...] = ()

    def port_string(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName string: "namespace/name:portname" (":portname" only when named)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{port.name}" if port.name else base

    def endpoints_for(self, port: ServicePort) -> tuple[Endpoint, ...]:
        """Endpoints of one Service port (all pods serve every target port of the Service)."""
        if len(self.ports) == 1:
            return self.endpoints
        offset = port.target_port - self.ports[0].target_port
        return tuple(Endpoint(e.ip, e.port + offset, e.node) for e in self.endpoints)

    def with_endpoints(self, endpoints: tuple[Endpoint, ...]) -> Service:
        return replace(self, endpoints=endpoints)


@dataclass(frozen=True)
class ModelSpec:
    """What to generate. All fields have kube-proxy-like defaults."""

    n_services: int
    endpoints: int = 1
    ports_per_service: int = 1
    service_cidr: str = "10.96.0.0/12"
    pod_cidr: str = "10.244.0.0/16"
    nodes: tuple[str, ...] = ("a", "b")
    pods_per_node: int = 2
    port: int = 80
    target_port: int = 80
    node_ports: int = 0  # the first K Services get a NodePort
    affinity: int = 0  # the first K Services get sessionAffinity: ClientIP
    affinity_timeout: int = 10800
    seed: int = 1


@dataclass
class Model:
    spec: ModelSpec
    pods: list[Pod]
    client_ip: str
    services: list[Service] = field(default_factory=list)
    _ips: _AddressPermutation | None = None

    def service(self, index: int) -> Service:
        """Service number `index` of this model's infinite sequence (index may be >= N)."""
        return _make_service(self, index)

    def node_pod_cidr(self, node: str) -> str:
        return str(_node_subnet(self.spec, self.spec.nodes.index(node)))


class _AddressPermutation:
    """A bijection from 0..M-1 onto usable host offsets of a CIDR, fixed by a seed.

    i -> (a*i + b) mod M with gcd(a, M) == 1: prefix-stable and cheap, unlike random.sample.
    """

    def __init__(self, cidr: str, seed: int, reserved: int = 2):
        net = ipaddress.ip_network(cidr)
        self.base = int(net.network_address)
        self.first = reserved  # skip .0 and .1 (the "kubernetes" Service's address)
        self.size = net.num_addresses - reserved - 1  # and the broadcast address
        if self.size <= 0:
            raise ModelError(f"service CIDR {cidr} has no usable addresses")
        rng = random.Random(seed)
        a = rng.randrange(1, self.size) | 1 if self.size > 2 else 1
        while math.gcd(a, self.size) != 1:
            a += 2
        self.a, self.b = a, rng.randrange(self.size)

    def __call__(self, i: int) -> str:
        if i >= self.size:
            raise ModelError(f"Service #{i} does not fit: the service CIDR holds {self.size} addresses")
        return str(ipaddress.IPv4Address(self.base + self.first + (self.a * i + self.b) % self.size))


def _node_subnet(spec: ModelSpec, node_index: int) -> ipaddress.IPv4Network:
    pod_net = ipaddress.ip_network(spec.pod_cidr)
    if not isinstance(pod_net, ipaddress.IPv4Network):
        raise ModelError(
            f"pod CIDR {spec.pod_cidr} is not IPv4: the lab is IPv4-only; use e.g. 10.244.0.0/16"
        )
    if pod_net.prefixlen > 24:
        raise ModelError(f"pod CIDR {spec.pod_cidr} is too small: use a /24 or larger")
    subnets = pod_net.subnets(new_prefix=24)
    for i, net in enumerate(subnets):
        if i == node_index:
            return net
    raise ModelError(f"pod CIDR {spec.pod_cidr} has fewer than {node_index + 1} /24 node subnets")


def _check_spec(spec: ModelSpec) -> None:
    if spec.n_services < 0:
        raise ModelError("n_services must be >= 0")
    if spec.endpoints < 0:
        raise ModelError("endpoints must be >= 0")
    if spec.ports_per_service < 1:
        raise ModelError("ports_per_service must be >= 1")
    if spec.pods_per_node < 1 or not spec.nodes:
        raise ModelError("need at least one node with at least one pod")
    if spec.node_ports > NODE_PORT_MAX - NODE_PORT_MIN + 1:
        raise ModelError(
            f"node_ports={spec.node_ports}: only {NODE_PORT_MAX - NODE_PORT_MIN + 1} NodePorts exist"
        )
    for net, what in ((spec.service_cidr, "service_cidr"), (spec.pod_cidr, "pod_cidr")):
        try:
            if ipaddress.ip_network(net).version != 4:
                raise ModelError(f"{what} {net}: only IPv4 is supported")
        except ValueError as e:
            raise ModelError(f"{what}: {e}") from None
    if ipaddress.ip_network(spec.service_cidr).overlaps(ipaddress.ip_network(spec.pod_cidr)):
        raise ModelError(f"service_cidr {spec.service_cidr} overlaps pod_cidr {spec.pod_cidr}")


def _ports_per_pod(spec: ModelSpec) -> int:
    """How many target ports each pod serves so that a Service's endpoints are distinct ip:port pairs."""
    pods = len(spec.nodes) * spec.pods_per_node
    return max(1, math.ceil(spec.endpoints / pods))


def build_model(spec: ModelSpec) -> Model:
    """Build the pods and the first `spec.n_services` Services of the sequence fixed by the seed."""
    _check_spec(spec)
    k = _ports_per_pod(spec)
    pods: list[Pod] = []
    for n, node in enumerate(spec.nodes):
        net = _node_subnet(spec, n)
        for p in range(spec.pods_per_node):
            ip = str(net.network_address + 10 + p)
            ports = tuple(
                spec.target_port + pp * spec.ports_per_service + q
                for pp in range(k)
                for q in range(spec.ports_per_service)
            )
            pods.append(Pod(name=f"{node}{p}", node=node, ip=ip, ports=ports))
    client_ip = str(_node_subnet(spec, 0).network_address + 2)
    model = Model(spec=spec, pods=pods, client_ip=client_ip)
    model._ips = _AddressPermutation(spec.service_cidr, spec.seed)
    if spec.n_services > model._ips.size:
        raise ModelError(
            f"{spec.n_services} Services do not fit in service CIDR {spec.service_cidr} "
            f"({model._ips.size} usable addresses): use a larger CIDR or fewer Services"
        )
    model.services = [_make_service(model, i) for i in range(spec.n_services)]
    return model


def _make_service(model: Model, i: int) -> Service:
    spec = model.spec
    assert model._ips is not None
    pods = model.pods
    n_pods = len(pods)
    k = _ports_per_pod(spec)
    endpoints = []
    for j in range(spec.endpoints):
        f = (i + j) % (n_pods * k)
        pod = pods[f % n_pods]
        endpoints.append(
            Endpoint(pod.ip, spec.target_port + (f // n_pods) * spec.ports_per_service, pod.node)
        )
    ports = tuple(
        ServicePort(
            name="http" if q == 0 else f"p{q}",
            port=spec.port + q,
            target_port=spec.target_port + q,
            node_port=(NODE_PORT_MIN + i * spec.ports_per_service + q) if i < spec.node_ports else None,
        )
        for q in range(spec.ports_per_service)
    )
    return Service(
        index=i,
        namespace=NAMESPACE,
        name=f"svc-{i:05d}",
        cluster_ip=model._ips(i),
        ports=ports,
        endpoints=tuple(endpoints),
        affinity_timeout=spec.affinity_timeout if i < spec.affinity else None,
    )
