"""nftables mode: kube-proxy's `table ip kube-proxy` (reference section C), per release family.

A full sync is ONE `nft -f -` transaction that removes the table (add + delete, so it also works
when the table is absent) and re-creates everything. apply() is one transaction carrying only
the changed Service's chains, sets and map elements: new chains are added, kept chains are
flushed and rewritten, chains that are no longer used are flushed and deleted, and map/set
elements are diffed (delete what went away, add what is new).

Families (harness.releases; read from pkg/proxy/nftables/proxier.go of each release):
- v1.33 (v1.33.x): base chains as v1.34 (filter-* at -110 / 0, nat-* at dstnat / srcnat); the
  service chain's masquerade rule matches the port: `ip daddr VIP tcp dport P ip saddr != CIDR
  jump mark-for-masquerade`.
- v1.34 (v1.34.x, v1.35.x; 1.35's nftables proxier is 1.34's): the masquerade rule without the
  port, `ip daddr VIP ip saddr != CIDR jump mark-for-masquerade`. Every endpoint has a chain
  (`ip saddr EP jump mark-for-masquerade`, [affinity update], `dnat to EP:port`) and the service
  chain ends in `numgen random mod N vmap { i : goto endpoint-... }`.
- v1.36 (v1.36.x): no `mark-for-masquerade` chain (rules write `mark set mark or 0x00004000`);
  off-cluster masquerading moves from each service chain to one rule in `services`
  (`ip daddr @cluster-ips ip saddr != CIDR mark set ...`, comment "masquerade clusterIP traffic
  from outside cluster"); hairpin SNAT moves from each endpoint chain to a set
  `hairpin-connections` (`ip . ip . proto . port` of every local endpoint) matched in
  `masquerading` (`ct status dnat ip saddr . ip daddr . meta l4proto . th dport
  @hairpin-connections masquerade fully-random`), whose first rule becomes `mark and M != 0
  mark set mark xor M masquerade fully-random`; Services without affinity have no endpoint
  chains: one rule `meta l4proto tcp dnat ip addr . port to numgen random mod N map { i : EP . port }`
  (an anonymous map per Service); with ClientIP affinity, endpoint chains hold only the affinity
  update and the dnat; external chains' masquerade rule carries comment "masquerade".
- v1.37 (v1.37.x): as v1.36, but a Service with ONE endpoint (and no affinity) gets a plain
  `meta l4proto tcp dnat to EP:port` instead of the map (PR #140723: anonymous sets make full
  syncs quadratic, #139513). Also (not rendered: no difference for the lab's Services or under
  the default feature gates) comments are truncated to 128 bytes, and the alpha gate
  KubeProxyNFTablesLocalhostNodePorts adds a `localhost-nodeport-reject-ports` map (off by default:
  kube-proxy adds and deletes it in the same transaction).
Every family: the reject-chain carries comment "helper for @no-endpoint-services / @no-endpoint-nodeports".

Standard library only (the worker imports this inside UML).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Sequence

from harness import releases as versions
from harness.dataplane import names
from harness.dataplane._tool import stream
from harness.dataplane.base import Change, DataplaneSettings
from harness.lab.netns import run
from harness.model import Service

TABLE = "ip kube-proxy"
CHUNK = 2000

# base chains of every family (v1.33.13 has v1.34's, PR #132456): name, type, hook, priority. kube-proxy writes dstnat-10 / filter /
# dstnat / srcnat; nft 1.0.6 refuses the symbolic "dstnat" on the output hook, so the numeric values
# (dstnat = -100, srcnat = 100, filter = 0) are written: the kernel state is identical.
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
    ("filter-output-pre-dnat", "filter", "output", "-110"),
    ("filter-input", "filter", "input", "0"),
    ("filter-forward", "filter", "forward", "0"),
    ("filter-output", "filter", "output", "0"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
)
# nftJumpChains: destination, source, extra match
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting-pre-dnat", "ct state new "),
    ("firewall-check", "filter-output-pre-dnat", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    ("cluster-ips-check", "filter-output", "ct state new "),
)
SETS = (
    ("set", "cluster-ips", 'type ipv4_addr ; comment "Active ClusterIPs" ;'),
    ("set", "nodeport-ips", 'type ipv4_addr ; comment "IPs that accept NodePort traffic" ;'),
    (
        "map",
        "service-ips",
        "type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ;',
    ),
    ("map", "service-nodeports", 'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;'),
    (
        "map",
        "no-endpoint-services",
        "type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ;',
    ),
    (
        "map",
        "no-endpoint-nodeports",
        "type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ;',
    ),
    (
        "map",
        "firewall-ips",
        "type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ;',
    ),
)
HAIRPIN_SPEC = (
    'type ipv4_addr . ipv4_addr . inet_proto . inet_service ; comment "service hairpin connections" ;'
)
REJECT_CHAIN_COMMENT = "helper for @no-endpoint-services / @no-endpoint-nodeports"


def _key(svc: Service) -> tuple[str, str]:
    return (svc.namespace, svc.name)


class ServiceObjects:
    """What one Service owns in the table: chains (name -> rules), affinity sets, elements."""

    __slots__ = ("chains", "sets", "elements", "hairpin")

    def __init__(self):
        self.chains: dict[str, list[str]] = {}  # insertion order: creation order
        self.sets: dict[str, str] = {}  # affinity set name -> definition
        self.elements: dict[tuple[str, str], str] = {}  # (set, key) -> " : verdict" / "" / comment+verdict
        self.hairpin: dict[str, None] = {}  # v1.36+: hairpin-connections keys (shared between Services)


class NftablesDataplane:
    mode = "nftables"

    def __init__(self, ns: str | None, settings: DataplaneSettings | None = None, node: str | None = None):
        """node: this node's name (model Endpoint.node) for the v1.36+ hairpin set; None counts
        every endpoint as local."""
        self.ns = ns
        self.settings = settings or DataplaneSettings()
        self.node = node
        self.family = versions.family(self.mode, self.settings.kube_version)
        self.port_in_masq = self.family == "v1.33"  # service chain masquerade rule matches the port
        self.shared_masq = self.family not in ("v1.33", "v1.34")  # v1.36+: see the module docstring
        self.single_dnat = self.family == "v1.37"  # one endpoint: plain dnat, no map
        self.mark = "%#010x" % (1 << self.settings.masquerade_bit)
        self.masq = "jump mark-for-masquerade" if not self.shared_masq else f"mark set mark or {self.mark}"
        self.cidr = self.settings.cluster_cidr
        self._state: dict[tuple[str, str], ServiceObjects] = {}
        self._hairpin: dict[str, int] = {}  # hairpin-connections key -> Services using it

    # ------------------------------------------------------------------ objects
    def objects_bulk(self, services: Sequence[Service]) -> list[ServiceObjects]:
        keys: list[str] = []
        shapes = []
        for svc in services:
            ports = []
            for port in svc.ports:
                base = f"{svc.namespace}/{svc.name}/{port.protocol}/{port.name}"
                eps = svc.endpoints_for(port)
                keys.append(base)
                keys.extend([f"{base}__{e.ip.replace(':', '.')}/{e.port}" for e in eps])
                ports.append((port, base, eps))
            shapes.append(ports)
        hashes = names.bulk_hash(keys, 8)
        out = []
        i = 0
        cidr = self.cidr
        for svc, ports in zip(services, shapes, strict=True):
            o = ServiceObjects()
            ch, st, el = o.chains, o.sets, o.elements
            vip = svc.cluster_ip
            aff = svc.affinity_timeout
            for port, base, eps in ports:
                proto, p = port.protocol, port.port
                sb = f"{hashes[i]}-{base}"
                n = len(eps)
                ebs = [
                    f"{h}-{base}__{e.ip.replace(':', '.')}/{e.port}"
                    for h, e in zip(hashes[i + 1 : i + 1 + n], eps, strict=True)
                ]
                i += 1 + n
                if len(sb) > 240 or any(len(b) > 240 for b in ebs):  # kube-proxy's truncation (never here)
                    sb = names._hash_and_truncate(base)
                    ebs = [
                        names._hash_and_truncate(f"{base}__{e.ip.replace(':', '.')}/{e.port}") for e in eps
                    ]
                el[("cluster-ips", vip)] = ""
                ps = svc.port_string(port)
                if not eps:
                    el[("no-endpoint-services", f"{vip} . {proto} . {p}")] = (
                        f' comment "{ps}" : goto reject-chain'
                    )
                    for eip in svc.external_ips:
                        el[("no-endpoint-services", f"{eip} . {proto} . {p}")] = (
                            f' comment "{ps}" : goto reject-chain'
                        )
                    if port.node_port:
                        el[("no-endpoint-nodeports", f"{proto} . {port.node_port}")] = (
                            f' comment "{ps}" : goto reject-chain'
                        )
                    continue
                svcc = "service-" + sb
                epcs = ["endpoint-" + b for b in ebs]
                shared = self.shared_masq
                ep_chains = not shared or aff is not None  # v1.36+: endpoint chains only for affinity
                # endpoint chains are created before the service chain rules that jump to them
                rules = []
                if cidr and not shared:
                    dport = f" {proto} dport {p}" if self.port_in_masq else ""
                    rules.append(f"ip daddr {vip}{dport} ip saddr != {cidr} jump mark-for-masquerade")
                if aff is not None:
                    for b, c in zip(ebs, epcs, strict=True):
                        rules.append(f"ip saddr @affinity-{b} goto {c}")
                if ep_chains:
                    vm = " , ".join([f"{k} : goto {c}" for k, c in enumerate(epcs)])
                    rules.append(f"numgen random mod {n} vmap {{ {vm} }}")
                elif n == 1 and self.single_dnat:
                    rules.append(f"meta l4proto {proto} dnat to {eps[0].ip}:{eps[0].port}")
                else:
                    dm = " , ".join([f"{k} : {e.ip} . {e.port}" for k, e in enumerate(eps)])
                    rules.append(
                        f"meta l4proto {proto} dnat ip addr . port to numgen random mod {n} map {{ {dm} }}"
                    )
                ext = bool(port.node_port or svc.external_ips)
                if ext:
                    masq = "jump mark-for-masquerade" if not shared else f'{self.masq} comment "masquerade"'
                    ch["external-" + sb] = [masq, f"goto {svcc}"]
                ch[svcc] = rules
                if ep_chains:
                    for e, b, c in zip(eps, ebs, epcs, strict=True):
                        r = [] if shared else [f"ip saddr {e.ip} jump mark-for-masquerade"]
                        if aff is not None:
                            st["affinity-" + b] = f"type ipv4_addr ; flags dynamic,timeout ; timeout {aff}s ;"
                            r.append(f"update @affinity-{b} {{ ip saddr }}")
                        r.append(f"meta l4proto {proto} dnat to {e.ip}:{e.port}")
                        ch[c] = r
                if shared:
                    node = self.node
                    o.hairpin.update(
                        dict.fromkeys(
                            f"{e.ip} . {e.ip} . {proto} . {e.port}"
                            for e in eps
                            if node is None or e.node == node
                        )
                    )
                el[("service-ips", f"{vip} . {proto} . {p}")] = f" : goto {svcc}"
                for eip in svc.external_ips:
                    el[("service-ips", f"{eip} . {proto} . {p}")] = f" : goto external-{sb}"
                if port.node_port:
                    el[("service-nodeports", f"{proto} . {port.node_port}")] = f" : goto external-{sb}"
            out.append(o)
        return out

    def objects(self, svc: Service) -> ServiceObjects:
        return self.objects_bulk([svc])[0]

    # ------------------------------------------------------------------ text
    def _head(self) -> str:
        t = TABLE
        m = self.mark
        out = [
            f"add table {t}\n",
            f"delete table {t}\n",
            f'add table {t} {{ comment "rules for kube-proxy" ; }}\n',
        ]
        for name, typ, hook, prio in BASE_CHAINS:
            out.append(f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}\n")
        created = set()
        for dst, src, extra in JUMP_CHAINS:
            if dst not in created:
                out.append(f"add chain {t} {dst}\n")
                created.add(dst)
            out.append(f"add rule {t} {src} {extra}jump {dst}\n")
        if not self.shared_masq:
            out += [
                f"add chain {t} mark-for-masquerade\n",
                f"add rule {t} mark-for-masquerade mark set mark or {m}\n",
                f"add rule {t} masquerading mark and {m} == 0 return\n",
                f"add rule {t} masquerading mark set mark xor {m}\n",
                f"add rule {t} masquerading masquerade fully-random\n",
            ]
        else:
            out += [
                f"add set {t} hairpin-connections {{ {HAIRPIN_SPEC} }}\n",
                f"add rule {t} masquerading mark and {m} != 0 mark set mark xor {m} masquerade fully-random\n",
                f"add rule {t} masquerading ct status dnat ip saddr . ip daddr . meta l4proto . th dport "
                f"@hairpin-connections masquerade fully-random\n",
            ]
        out += [
            f'add chain {t} reject-chain {{ comment "{REJECT_CHAIN_COMMENT}" ; }}\n',
            f"add rule {t} reject-chain reject\n",
        ]
        node_ips = self.settings.node_ips
        for kind, name, spec in SETS:
            if name == "nodeport-ips" and not node_ips:
                continue
            out.append(f"add {kind} {t} {name} {{ {spec} }}\n")
        if node_ips:
            np_match = "ip daddr @nodeport-ips"
        else:  # nodePortAddresses matches everything: fib, never localhost
            np_match = "fib daddr type local ip daddr != 127.0.0.0/8"
        if self.shared_masq and self.cidr:
            out.append(
                f"add rule {t} services ip daddr @cluster-ips ip saddr != {self.cidr} {self.masq} "
                f'comment "masquerade clusterIP traffic from outside cluster"\n'
            )
        out += [
            f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n",
            f"add rule {t} services {np_match} meta l4proto . th dport vmap @service-nodeports\n",
            f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n",
            f"add rule {t} nodeport-endpoints-check {np_match} meta l4proto . th dport vmap @no-endpoint-nodeports\n",
            f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n",
            f"add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment "
            f'"Reject traffic to invalid ports of ClusterIPs"\n',
            f"add rule {t} cluster-ips-check ip daddr {{ {self.settings.service_cidr} }} drop comment "
            f'"Drop traffic to unallocated ClusterIPs"\n',
        ]
        if node_ips:
            out.append(f"add element {t} nodeport-ips {{ {', '.join(node_ips)} }}\n")
        return "".join(out)

    @staticmethod
    def _add_lines(o: ServiceObjects, out: list[str], flush: Container[str] = frozenset()) -> None:
        t = TABLE
        for name, spec in o.sets.items():
            out.append(f"add set {t} {name} {{ {spec} }}\n")
        for name in o.chains:
            out.append(f"add chain {t} {name}\n")
            if name in flush:
                out.append(f"flush chain {t} {name}\n")
        # endpoint chains first, then the chains that refer to them, so rules never jump to an empty name
        items = list(o.chains.items())
        for name, rules in sorted(items, key=lambda kv: not kv[0].startswith("endpoint-")):
            for r in rules:
                out.append(f"add rule {t} {name} {r}\n")
        for (s, k), v in o.elements.items():
            out.append(f"add element {t} {s} {{ {k}{v} }}\n")

    def _full_chunks(
        self, services: Sequence[Service], record: dict | None = None, hairpin: dict[str, int] | None = None
    ) -> Iterator[str]:
        yield self._head()
        add = self._add_lines
        users: dict[str, int] = {} if hairpin is None else hairpin  # hairpin key -> Services using it
        for lo in range(0, len(services), CHUNK):
            part = services[lo : lo + CHUNK]
            buf: list[str] = []
            fresh: list[str] = []
            for svc, o in zip(part, self.objects_bulk(part), strict=True):
                add(o, buf)
                for k in o.hairpin:
                    if k not in users:
                        fresh.append(k)
                    users[k] = users.get(k, 0) + 1
                if record is not None:
                    record[_key(svc)] = o
            if fresh:
                buf.append(f"add element {TABLE} hairpin-connections {{ {', '.join(fresh)} }}\n")
            yield "".join(buf)

    def _hairpin_text(self, old: ServiceObjects | None, new: ServiceObjects | None) -> str:
        """Element changes of the shared hairpin-connections set for one Service's change."""
        users = self._hairpin
        before, after = set(old.hairpin if old else ()), set(new.hairpin if new else ())
        gone, came = before - after, after - before
        out = []
        for k in sorted(came):
            users[k] = users.get(k, 0) + 1
            if users[k] == 1:
                out.append(f"add element {TABLE} hairpin-connections {{ {k} }}\n")
        for k in sorted(gone):
            if k not in users:  # programmed by someone else: other Services may still use it
                continue
            users[k] -= 1
            if users[k] == 0:
                del users[k]
                out.append(f"delete element {TABLE} hairpin-connections {{ {k} }}\n")
        return "".join(out)

    def _change_text(self, old: ServiceObjects | None, new: ServiceObjects | None) -> str:
        t = TABLE
        old = old or ServiceObjects()
        out: list[str] = []
        # 1. elements that went away (they may point at chains deleted below)
        for (s, k), v in old.elements.items():
            if new is None or new.elements.get((s, k)) != v:
                out.append(f"delete element {t} {s} {{ {k} }}\n")
        # 2. new and kept chains: add (no-op if present), flush kept ones, write rules; new elements
        if new is not None:
            self._add_lines(new, out, flush=set(old.chains) & set(new.chains))
            # _add_lines re-adds unchanged elements too (add is idempotent for an identical element)
        # 3. chains and sets no longer used: flush all first, then delete
        gone = [c for c in old.chains if new is None or c not in new.chains]
        out += [f"flush chain {t} {c}\n" for c in gone]
        # externals refer to services, services to endpoints: delete in that order
        order = {"external-": 0, "service-": 1, "endpoint-": 2}
        for c in sorted(gone, key=lambda c: order.get(c.split("-", 1)[0] + "-", 3)):
            out.append(f"delete chain {t} {c}\n")
        for s in old.sets:
            if new is None or s not in new.sets:
                out.append(f"delete set {t} {s}\n")
        return "".join(out)

    # ------------------------------------------------------------------ protocol
    def render(self, services: Sequence[Service]) -> str:
        return "".join(self._full_chunks(services))

    def nft(self, chunks) -> None:
        stream(self.ns, ["nft", "-f", "-"], chunks)

    def full_sync(self, services: Sequence[Service]) -> None:
        record: dict = {}
        hairpin: dict[str, int] = {}
        self.nft(self._full_chunks(services, record, hairpin))
        self._state = record
        self._hairpin = hairpin

    def apply(self, services: Sequence[Service], change: Change) -> None:
        svc = change.service
        key = _key(svc)
        old = self._state.get(key)
        if old is None and change.kind != "add":
            old = self._kernel_objects_of(svc)
        new = None if change.kind == "delete" else self.objects(svc)
        text = self._change_text(old, new) + self._hairpin_text(old, new)
        if text:
            self.nft([text])
        if new is None:
            self._state.pop(key, None)
        else:
            self._state[key] = new

    def _kernel_objects_of(self, svc: Service) -> ServiceObjects:
        """Best effort when this object did not program `svc`: its elements as the model says,
        its chains and affinity sets as the kernel lists them."""
        o = self.objects(svc)
        marker = f"-{svc.namespace}/{svc.name}/"
        listing = run(self.ns, ["nft", "-t", "list", "chains", "ip"], check=False).stdout
        o.chains = {c: [] for c in re.findall(r"chain (\S+) \{", listing) if marker in c}
        sets = run(self.ns, ["nft", "-t", "list", "sets", "ip"], check=False).stdout
        o.sets = {s: "" for s in re.findall(r"set (affinity-\S+) \{", sets) if marker in s}
        return o

    def counts(self) -> dict[str, int]:
        p = run(self.ns, ["nft", "list", "table", "ip", "kube-proxy"], check=False)
        c = {
            "chains": 0,
            "rules": 0,
            "service_chains": 0,
            "endpoint_chains": 0,
            "sets": 0,
            "cluster_ips": 0,
            "service_ips": 0,
            "service_nodeports": 0,
            "no_endpoint_services": 0,
            "no_endpoint_nodeports": 0,
            "hairpin_connections": 0,
            "table": 0,
        }
        if p.returncode != 0:
            return c
        c["table"] = 1
        elem_key = {
            "cluster-ips": "cluster_ips",
            "service-ips": "service_ips",
            "service-nodeports": "service_nodeports",
            "no-endpoint-services": "no_endpoint_services",
            "no-endpoint-nodeports": "no_endpoint_nodeports",
            "hairpin-connections": "hairpin_connections",
        }
        current_set = None  # counts key of the set/map being listed
        block = None  # "chain" | "set" while inside one
        in_elements = False
        for raw in p.stdout.splitlines():
            line = raw.strip()
            if line.startswith("chain "):
                c["chains"] += 1
                name = line.split()[1]
                if name.startswith("service-") and name != "service-endpoints-check":
                    c["service_chains"] += 1
                elif name.startswith("endpoint-"):
                    c["endpoint_chains"] += 1
                block, current_set = "chain", None
                continue
            if line.startswith(("set ", "map ")):
                c["sets"] += 1
                block, current_set = "set", elem_key.get(line.split()[1])
                continue
            if block == "set":
                if line.startswith("elements = {"):
                    in_elements = True
                    line = line[len("elements = {") :]
                if in_elements:
                    if current_set:
                        c[current_set] += _count_elements(line)
                    if line.endswith("}"):
                        in_elements = False
                    continue
                if line == "}":
                    block = None
            elif block == "chain":
                if line == "}":
                    block = None
                elif line and not line.startswith(("type ", "comment ")):
                    c["rules"] += 1
        return c

    def cleanup(self) -> None:
        run(self.ns, ["nft", "-f", "-"], input=f"add table {TABLE}\ndelete table {TABLE}\n")
        self._state = {}
        self._hairpin = {}


def _count_elements(line: str) -> int:
    """Elements on one line of an `elements = { ... }` listing (comma separated, possibly with vmaps)."""
    line = line.rstrip("}").strip()
    if not line:
        return 0
    # anonymous vmaps cannot appear inside an element list; a comma ends each element
    return line.count(",") + (0 if line.endswith(",") else 1)
