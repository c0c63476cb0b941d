"""iptables mode: kube-proxy's nat/filter ruleset, written with one iptables-restore --noflush.

Layout follows kube-proxy's syncProxyRules (reference A.1-A.6): a `*filter` then a `*nat` section,
each with all chain lines (`:CHAIN - [0:0]`, which flush under --noflush) before the rules.
A full sync additionally carries the jump rules from the built-in chains and the canary chains,
so one payload programs an empty namespace completely. A partial sync (apply) rewrites the
top-level chains and only the changed Service's KUBE-SVC/KUBE-EXT/KUBE-SEP chains; chains that
are no longer used are flushed and removed with -X in the same transaction.

Families (harness.releases): one, v1.33, for v1.33.x-v1.37.x. pkg/proxy/iptables/proxier.go
programs the same rules in v1.33.13, v1.34.12, v1.35.4, v1.36.3 and v1.37.2; what changed is not
rendered state: v1.34 and v1.36+ skip the hourly forced full sync in large-cluster mode (> 1000
endpoints; v1.35 does not), v1.37 writes `--random-fully` unconditionally (older releases when
iptables supports it, as every iptables here does), and `--cleanup` also removes KUBE-MARK-MASQ,
KUBE-PROXY-FIREWALL and the canary chains since v1.34.

Standard library only (the worker imports this inside UML).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from harness import releases as versions
from harness.dataplane import names
from harness.dataplane._tool import stream
from harness.dataplane.base import Change, DataplaneSettings
from harness.lab.netns import run
from harness.model import Service

LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold
# Wait for the xtables lock without a timer: with `-w 5`, iptables 1.8.9 sets alarm(5) when it takes
# the lock and never cancels it, and the SIGALRM (no SA_RESTART) interrupts a read of stdin still
# open 5 s later, which iptables-restore takes for EOF ("COMMIT expected at line N", exit 1). The
# payload is streamed while it is rendered, so a restore longer than 5 s (a cleanup at 10,000
# Services in the UML guest, a full sync at 50,000 on the host) failed whenever the reader caught up.
LOCK_WAIT = ("-w",)
CHUNK = 2000  # Services per written chunk

FILTER_TOP = (
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
)
NAT_TOP = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
NODEPORTS_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'

_PROB = ["%0.10f" % (1.0 / n) if n else "" for n in range(0, 257)]


def _prob(n: int) -> str:
    return _PROB[n] if n < len(_PROB) else "%0.10f" % (1.0 / n)


def _key(svc: Service) -> tuple[str, str]:
    return (svc.namespace, svc.name)


def total_endpoints(services: Iterable[Service]) -> int:
    n = 0
    for s in services:
        n += len(s.endpoints) * len(s.ports)
    return n


class IptablesDataplane:
    mode = "iptables"

    def __init__(self, ns: str | None, settings: DataplaneSettings | None = None):
        self.ns = ns
        self.settings = settings or DataplaneSettings()
        self.family = versions.family(self.mode, self.settings.kube_version)  # one family so far
        b = self.settings.iptables_backend
        if b not in ("legacy", "nft"):
            raise ValueError(f"iptables_backend must be legacy or nft, not {b!r}")
        self.restore_cmd = [f"iptables-{b}-restore", "--noflush", *LOCK_WAIT]
        self.save_cmd = f"iptables-{b}-save"
        self.mark = "%#010x" % (1 << self.settings.masquerade_bit)  # Go's %#08x: 0x00004000
        self.cidr = self.settings.cluster_cidr
        # localhostNodePorts applies (KUBE-FIREWALL) only when NodePorts are served on all local IPs
        self.localhost_nodeports = not self.settings.node_ips
        self._chains: dict[tuple[str, str], set[str]] = {}  # nat chains per Service, last sync
        self._top_cache: dict[tuple[str, str], tuple] = {}

    # ------------------------------------------------------------------ names
    @staticmethod
    def service_chains_bulk(services: Sequence[Service]) -> list[list[tuple]]:
        """Per Service, per port: (port, port_string, proto, svc_chain, ext_chain, [(endpoint, sep_chain)]).

        All hashes of the batch are base32-encoded in one call (names.bulk_hash).
        """
        keys: list[str] = []
        add_key, add_keys = keys.append, keys.extend
        shapes = []
        for svc in services:
            sports = svc.ports
            ports = []
            for port in sports:
                # == svc.port_string(port) and svc.endpoints_for(port), inlined: this loop is hot
                ps = f"{svc.namespace}/{svc.name}:{port.name}" if port.name else f"{svc.namespace}/{svc.name}"
                proto = port.protocol
                base = ps + proto
                eps = svc.endpoints if len(sports) == 1 else svc.endpoints_for(port)
                add_key(base)
                if eps:
                    add_keys([f"{base}{e.ip}:{e.port}" for e in eps])
                ports.append((port, ps, proto, eps))
            shapes.append(ports)
        hashes = names.bulk_hash(keys, 16)
        out = []
        i = 0
        for ports in shapes:
            info = []
            for port, ps, proto, eps in ports:
                h = hashes[i]
                n = len(eps)
                if n == 1:
                    seps = [(eps[0], "KUBE-SEP-" + hashes[i + 1])]
                else:
                    seps = [(e, "KUBE-SEP-" + x) for e, x in zip(eps, hashes[i + 1 : i + 1 + n], strict=True)]
                i += 1 + n
                info.append((port, ps, proto, "KUBE-SVC-" + h, "KUBE-EXT-" + h, seps))
            out.append(info)
        return out

    @classmethod
    def service_chains(cls, svc: Service) -> list[tuple]:
        return cls.service_chains_bulk([svc])[0]

    @staticmethod
    def _uses_ext(svc: Service, port) -> bool:
        return bool(port.node_port or svc.external_ips)

    def chain_set(self, svc: Service, info=None) -> set[str]:
        chains: set[str] = set()
        for port, _ps, _proto, svcc, extc, seps in info or self.service_chains(svc):
            if not seps:
                continue
            chains.add(svcc)
            if self._uses_ext(svc, port):
                chains.add(extc)
            chains.update(s for _e, s in seps)
        return chains

    # ------------------------------------------------------------------ text
    def _chain_lines(self, svc: Service, info) -> list[str]:
        """kube-proxy's natChains order per Service: EXT, SVC, SEP..."""
        out = []
        for port, _ps, _proto, svcc, extc, seps in info:
            if not seps:
                continue
            if port.node_port or svc.external_ips:
                out.append(f":{extc} - [0:0]\n")
            out.append(f":{svcc} - [0:0]\n")
            for _e, s in seps:
                out.append(f":{s} - [0:0]\n")
        return out

    def _filter_lines(self, svc: Service) -> list[str]:
        """filter rules of a Service without endpoints (REJECT)."""
        out = []
        for port in svc.ports:
            if svc.endpoints:
                continue
            ps, proto = svc.port_string(port), port.protocol
            out.append(
                f'-A KUBE-SERVICES -m comment --comment "{ps} has no endpoints" -m {proto} -p {proto} '
                f"-d {svc.cluster_ip} --dport {port.port} -j REJECT\n"
            )
            for eip in svc.external_ips:
                out.append(
                    f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{ps} has no endpoints" -m {proto} '
                    f"-p {proto} -d {eip} --dport {port.port} -j REJECT\n"
                )
            if port.node_port:
                out.append(
                    f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{ps} has no endpoints" -m addrtype '
                    f"--dst-type LOCAL -m {proto} -p {proto} --dport {port.node_port} -j REJECT\n"
                )
        return out

    def _nat_rules(self, svc: Service, info, large: bool, chains: bool, out: list[str]) -> None:
        """Append the nat rules of one Service: top-level rules, and its own chains if `chains`."""
        vip = svc.cluster_ip
        cidr = self.cidr
        plain = chains and not large and cidr and svc.affinity_timeout is None and not svc.external_ips
        for port, ps, proto, svcc, extc, seps in info:
            if not seps:
                continue
            p = port.port
            if plain and len(seps) == 1 and not port.node_port:
                # the common case in one string (same lines, same order as below)
                e, s = seps[0]
                out.append(
                    f'-A KUBE-SERVICES -m comment --comment "{ps} cluster IP" -m {proto} -p {proto} -d {vip} '
                    f"--dport {p} -j {svcc}\n"
                    f'-A {svcc} -m comment --comment "{ps} cluster IP" -m {proto} -p {proto} -d {vip} --dport {p} '
                    f"! -s {cidr} -j KUBE-MARK-MASQ\n"
                    f'-A {svcc} -m comment --comment "{ps} -> {e.ip}:{e.port}" -j {s}\n'
                    f"-A {s} -m comment --comment {ps} -s {e.ip} -j KUBE-MARK-MASQ\n"
                    f"-A {s} -m comment --comment {ps} -m {proto} -p {proto} -j DNAT --to-destination {e.ip}:{e.port}\n"
                )
                continue
            out.append(
                f'-A KUBE-SERVICES -m comment --comment "{ps} cluster IP" -m {proto} -p {proto} '
                f"-d {vip} --dport {p} -j {svcc}\n"
            )
            for eip in svc.external_ips:
                out.append(
                    f'-A KUBE-SERVICES -m comment --comment "{ps} external IP" -m {proto} -p {proto} '
                    f"-d {eip} --dport {p} -j {extc}\n"
                )
            if port.node_port:
                out.append(
                    f"-A KUBE-NODEPORTS -m comment --comment {ps} -m {proto} -p {proto} "
                    f"--dport {port.node_port} -j {extc}\n"
                )
            if not chains:
                continue
            if cidr:
                out.append(
                    f'-A {svcc} -m comment --comment "{ps} cluster IP" -m {proto} -p {proto} '
                    f"-d {vip} --dport {p} ! -s {cidr} -j KUBE-MARK-MASQ\n"
                )
            if port.node_port or svc.external_ips:
                out.append(
                    f'-A {extc} -m comment --comment "masquerade traffic for {ps} external destinations" '
                    f"-j KUBE-MARK-MASQ\n"
                )
                out.append(f"-A {extc} -j {svcc}\n")
            n = len(seps)
            aff = svc.affinity_timeout
            if large:
                if aff is not None:
                    for _e, s in seps:
                        out.append(f"-A {svcc} -m recent --name {s} --rcheck --seconds {aff} --reap -j {s}\n")
                for i, (_e, s) in enumerate(seps):
                    if i < n - 1:
                        out.append(
                            f"-A {svcc} -m statistic --mode random --probability {_prob(n - i)} -j {s}\n"
                        )
                    else:
                        out.append(f"-A {svcc} -j {s}\n")
                for e, s in seps:
                    out.append(f"-A {s} -s {e.ip} -j KUBE-MARK-MASQ\n")
                    rec = f" -m recent --name {s} --set" if aff is not None else ""
                    out.append(
                        f"-A {s}{rec} -m {proto} -p {proto} -j DNAT --to-destination {e.ip}:{e.port}\n"
                    )
            else:
                if aff is not None:
                    for e, s in seps:
                        out.append(
                            f'-A {svcc} -m comment --comment "{ps} -> {e.ip}:{e.port}" -m recent --name {s} '
                            f"--rcheck --seconds {aff} --reap -j {s}\n"
                        )
                for i, (e, s) in enumerate(seps):
                    if i < n - 1:
                        out.append(
                            f'-A {svcc} -m comment --comment "{ps} -> {e.ip}:{e.port}" -m statistic '
                            f"--mode random --probability {_prob(n - i)} -j {s}\n"
                        )
                    else:
                        out.append(f'-A {svcc} -m comment --comment "{ps} -> {e.ip}:{e.port}" -j {s}\n')
                for e, s in seps:
                    out.append(f"-A {s} -m comment --comment {ps} -s {e.ip} -j KUBE-MARK-MASQ\n")
                    rec = f" -m recent --name {s} --set" if aff is not None else ""
                    out.append(
                        f"-A {s} -m comment --comment {ps}{rec} -m {proto} -p {proto} "
                        f"-j DNAT --to-destination {e.ip}:{e.port}\n"
                    )

    def _filter_head(self, full: bool) -> list[str]:
        out = ["*filter\n"]
        out += [f":{c} - [0:0]\n" for c in FILTER_TOP]
        # kube-proxy always owns KUBE-FIREWALL (jumped to from INPUT and OUTPUT); it holds the
        # localnet DROP rule only when NodePorts are served on localhost
        out.append(":KUBE-FIREWALL - [0:0]\n")
        if full:
            out.append(":KUBE-PROXY-CANARY - [0:0]\n")
            ct = "-m conntrack --ctstate NEW "
            # kube-proxy's iptablesJumpChains, each prepended (-I) in this order
            for chain, comment, extra, target in (
                ("INPUT", "kubernetes externally-visible service portals", ct, "KUBE-EXTERNAL-SERVICES"),
                ("FORWARD", "kubernetes externally-visible service portals", ct, "KUBE-EXTERNAL-SERVICES"),
                ("INPUT", "kubernetes health check service ports", "", "KUBE-NODEPORTS"),
                ("FORWARD", "kubernetes service portals", ct, "KUBE-SERVICES"),
                ("OUTPUT", "kubernetes service portals", ct, "KUBE-SERVICES"),
                ("FORWARD", "kubernetes forwarding rules", "", "KUBE-FORWARD"),
                ("INPUT", "kubernetes load balancer firewall", ct, "KUBE-PROXY-FIREWALL"),
                ("OUTPUT", "kubernetes load balancer firewall", ct, "KUBE-PROXY-FIREWALL"),
                ("FORWARD", "kubernetes load balancer firewall", ct, "KUBE-PROXY-FIREWALL"),
            ):
                out.append(f'-I {chain} {extra}-m comment --comment "{comment}" -j {target}\n')
            out.append("-I INPUT -j KUBE-FIREWALL\n")
            out.append("-I OUTPUT -j KUBE-FIREWALL\n")
        return out

    def _filter_tail(self) -> list[str]:
        m = self.mark
        out = [
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
            f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {m}/{m} -j ACCEPT\n',
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
            "--ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        ]
        if self.localhost_nodeports:
            out.append(
                '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n"
            )
        out.append("COMMIT\n")
        return out

    def _nat_fixed(self, full: bool) -> list[str]:
        m = self.mark
        out = []
        if full:
            out += [
                '-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n',
                '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n',
                '-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n',
            ]
        out += [
            f"-A KUBE-POSTROUTING -m mark ! --mark {m}/{m} -j RETURN\n",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {m}\n",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully\n",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {m}\n",
        ]
        return out

    def _nat_last(self) -> list[str]:
        if self.settings.node_ips:
            return [
                f"-A KUBE-SERVICES -m comment --comment {NODEPORTS_COMMENT} -d {ip} -j KUBE-NODEPORTS\n"
                for ip in self.settings.node_ips
            ]
        return [
            f"-A KUBE-SERVICES -m comment --comment {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
            "-j KUBE-NODEPORTS\n"
        ]

    def _full_chunks(self, services: Sequence[Service], record: dict | None = None) -> Iterator[str]:
        large = total_endpoints(services) > LARGE_CLUSTER_ENDPOINTS
        filt = self._filter_head(True)
        for svc in services:
            if not svc.endpoints:
                filt += self._filter_lines(svc)
        filt += self._filter_tail()
        yield "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n" + "".join(filt)
        head = ["*nat\n"] + [f":{c} - [0:0]\n" for c in NAT_TOP] + [":KUBE-PROXY-CANARY - [0:0]\n"]
        infos: list = []
        buf = head
        cl = self._chain_lines
        for lo in range(0, len(services), CHUNK):
            part = services[lo : lo + CHUNK]
            pinfos = self.service_chains_bulk(part)
            infos += pinfos
            for svc, info in zip(part, pinfos, strict=True):
                buf += cl(svc, info)
                if record is not None:
                    record[_key(svc)] = self.chain_set(svc, info)
            yield "".join(buf)
            buf = []
        buf += self._nat_fixed(True)
        rules = self._nat_rules
        for i, svc in enumerate(services):
            rules(svc, infos[i], large, True, buf)
            if i % CHUNK == CHUNK - 1:
                yield "".join(buf)
                buf = []
        buf += self._nat_last()
        buf.append("COMMIT\n")
        yield "".join(buf)

    def _partial_chunks(
        self, services: Sequence[Service], changed: Service | None, stale: set[str]
    ) -> Iterator[str]:
        large = total_endpoints(services) > LARGE_CLUSTER_ENDPOINTS
        filt = self._filter_head(False)
        for svc in services:
            if not svc.endpoints:
                filt += self._filter_lines(svc)
        filt += self._filter_tail()
        yield "".join(filt)
        buf = ["*nat\n"] + [f":{c} - [0:0]\n" for c in NAT_TOP]
        ck = _key(changed) if changed is not None else None
        if changed is not None:
            buf += self._chain_lines(changed, self.service_chains(changed))
        stale_sorted = sorted(stale)
        buf += [f":{c} - [0:0]\n" for c in stale_sorted]
        buf += self._nat_fixed(False)
        rules = self._nat_rules
        cache = (
            self._top_cache
        )  # Service key -> (Service, its top-level nat rules): unchanged ones are reused
        for lo in range(0, len(services), CHUNK):
            part = services[lo : lo + CHUNK]
            miss = []
            for svc in part:
                c = cache.get(_key(svc))
                if c is None or (c[0] is not svc and c[0] != svc) or c[2] != large:
                    miss.append(svc)
            for svc, info in zip(miss, self.service_chains_bulk(miss), strict=True):
                top: list[str] = []
                rules(svc, info, large, False, top)
                cache[_key(svc)] = (svc, "".join(top), large)
            for svc in part:
                k = _key(svc)
                if k == ck:
                    rules(svc, self.service_chains(svc), large, True, buf)
                else:
                    buf.append(cache[k][1])
            yield "".join(buf)
            buf = []
        buf += self._nat_last()
        buf += [f"-X {c}\n" for c in stale_sorted]
        buf.append("COMMIT\n")
        yield "".join(buf)

    # ------------------------------------------------------------------ protocol
    def render(self, services: Sequence[Service]) -> str:
        return "".join(self._full_chunks(services))

    def restore(self, chunks: Iterable[str]) -> None:
        stream(self.ns, self.restore_cmd, chunks)

    def full_sync(self, services: Sequence[Service]) -> None:
        self.cleanup()
        record: dict = {}
        self._top_cache = {}
        self.restore(self._full_chunks(services, record))
        self._chains = record

    def apply(self, services: Sequence[Service], change: Change) -> None:
        svc = change.service
        key = _key(svc)
        old = self._chains.get(key)
        if old is None and change.kind != "add":
            old = self._kernel_chains_of(svc)
        old = old or set()
        if change.kind == "delete":
            new: set[str] = set()
            changed = None
        else:
            new = self.chain_set(svc)
            changed = svc
        self.restore(self._partial_chunks(services, changed, old - new))
        if change.kind == "delete":
            self._chains.pop(key, None)
            self._top_cache.pop(key, None)
        else:
            self._chains[key] = new

    def _kernel_chains_of(self, svc: Service) -> set[str]:
        """The nat chains a Service has in the kernel (when this object did not program it)."""
        text = self.save("nat")
        found: set[str] = set()
        for port in svc.ports:
            h = names.iptables_hash(svc.port_string(port), port.protocol)
            for c in ("KUBE-SVC-" + h, "KUBE-EXT-" + h):
                if f":{c} " in text:
                    found.add(c)
                    found.update(re.findall(rf"^-A {c} .*-j (KUBE-SEP-\w+)", text, re.M))
        return found

    def save_all(self) -> dict[str, str]:
        """{table: iptables-save text} for every table present, from one iptables-save run."""
        out: dict[str, str] = {}
        for block in run(self.ns, [self.save_cmd]).stdout.split("\n*")[0:]:
            block = block.lstrip("*")
            name, _, body = block.partition("\n")
            if name and not name.startswith("#"):
                out[name.strip()] = body
        return out

    def save(self, table: str) -> str:
        return run(self.ns, [self.save_cmd, "-t", table]).stdout

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        tables = self.save_all()
        for table in ("nat", "filter"):
            rules = kube_rules = svc_rules = chains = 0
            for line in tables.get(table, "").splitlines():
                if line.startswith("-A "):
                    rules += 1
                    chain = line.split(" ", 2)[1]
                    if chain.startswith("KUBE-"):
                        kube_rules += 1
                        if chain == "KUBE-SERVICES":
                            svc_rules += 1
                elif line.startswith(":KUBE-"):
                    chains += 1
            c[f"{table}_rules"] = rules
            c[f"{table}_kube_rules"] = kube_rules
            c[f"{table}_kube_services_rules"] = svc_rules
            c[f"{table}_chains"] = chains
        return c

    def cleanup(self) -> None:
        """Delete the jump rules into KUBE-* chains and every KUBE-* chain, in one transaction."""
        payload = []
        for table, text in self.save_all().items():  # one iptables-save for every table
            if table not in ("mangle", "filter", "nat"):
                continue
            chains = re.findall(r"^:(KUBE-\S+)", text, re.M)
            jumps = re.findall(
                r"^-A ((?:PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j KUBE-\S+)$", text, re.M
            )
            if not chains and not jumps:
                continue
            payload.append(f"*{table}\n")
            payload += [f"-D {j}\n" for j in jumps]
            payload += [f":{c} - [0:0]\n" for c in chains]
            payload += [f"-X {c}\n" for c in chains]
            payload.append("COMMIT\n")
        if payload:
            self.restore(payload)
        self._chains = {}
        self._top_cache = {}
