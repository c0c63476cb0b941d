"""ipvs mode: kube-ipvs0 + IPVS virtual/real servers (netlink, pyroute2) + ipsets + a small iptables set.

Reference section B. What a full sync programs inside namespace `ns`:
- sysctls of B.3 (net.ipv4.vs.conntrack, expire_nodest_conn, expire_quiescent_template, ip_forward);
- the KUBE-* ipsets (B.1 table) with `ipset -exist restore` (create + members);
- the fixed iptables ruleset of B.2 with one iptables-legacy-restore --noflush;
- dummy `kube-ipvs0` (down, NOARP) with every ClusterIP / external IP bound as /32;
- one IPVS virtual server per (ClusterIP | externalIP | node IP x NodePort, protocol, port), scheduler
  from settings (ClientIP affinity: persistent flag + timeout), Masq real servers of weight 1.

Addresses and IPVS objects go through netlink: messages are encoded with pyroute2's ifaddrmsg and
ipvsmsg classes (one template per message shape, then only address, port and sequence number are
patched), sent many per sendto() without per-message acknowledgements, and a final acknowledged
message closes each batch; every error the kernel reports is collected and raised. The kernel
refuses a real server with EINVAL unless its address is routable in the namespace: the lab (or a
test) installs the pod routes first.

render() prints ipvsadm-restore lines, then `ipset restore` lines, then the iptables payload, each
section introduced by a `#` comment line. Standard library + pyroute2 only (no pandas: UML).
The netlink plumbing and message templates are in ipvs_netlink.py.

Families (harness.releases): one, v1.33, for v1.33.x-v1.37.x. pkg/proxy/ipvs/proxier.go
programs the same virtual servers, ipsets and iptables rules in v1.33.13 ... v1.37.2; what changed
is not rendered state: v1.34.0-v1.34.3 and v1.35.0 stopped the periodic resync (syncPeriod) when
nothing changed, v1.34.4 / v1.35.1 / v1.36 restored it; v1.35 logs the deprecation (KEP-5495);
v1.37 writes `--random-fully` unconditionally and adds the KubeProxyIPVS feature gate (on).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Sequence

from harness import releases as versions
from harness.dataplane._tool import stream
from harness.dataplane.base import Change, DataplaneSettings
from harness.dataplane.iptables import LOCK_WAIT
from harness.dataplane.ipvs_netlink import (
    F_CREATE,
    F_EXCL,
    F_REQUEST,
    NetlinkBatch,
    _genl_family_id,
    _Templates,
    netlink_socket,
)
from harness.lab.netns import LabError, run
from harness.model import Service

IFNAME = "kube-ipvs0"
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
IPVSADM_PROTO = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
SYSCTLS = (
    "net.ipv4.vs.conntrack=1",
    "net.ipv4.vs.expire_nodest_conn=1",
    "net.ipv4.vs.expire_quiescent_template=1",
    "net.ipv4.ip_forward=1",
)

# kube-proxy's ipsetInfo: name, type (all created on every sync)
IPSETS = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip"),
    ("KUBE-CLUSTER-IP", "hash:ip,port"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port"),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port"),
    ("KUBE-IPVS-IPS", "hash:ip"),
)
IPSET_NAMES = tuple(n for n, _t in IPSETS)


def _key(svc: Service) -> tuple[str, str]:
    return (svc.namespace, svc.name)


# ---------------------------------------------------------------------- the dataplane
class IpvsDataplane:
    mode = "ipvs"

    def __init__(self, ns: str | None, settings: DataplaneSettings | None = None, node: str | None = None):
        """node: this node's name (model Endpoint.node) for KUBE-LOOP-BACK; None counts every
        endpoint as local (hairpin SNAT then works for all pods of a single-node test)."""
        self.ns = ns
        self.settings = settings or DataplaneSettings()
        self.family = versions.family(self.mode, self.settings.kube_version)  # one family so far
        self.node = node
        self.scheduler = self.settings.scheduler or "rr"
        self.mark = "%#010x" % (1 << self.settings.masquerade_bit)
        self._state: dict[tuple[str, str], Service] = {}
        self._members: dict[tuple[str, str], int] = {}  # ipset member -> how many Services need it
        self._ipvs_sock: socket.socket | None = None
        self._rt_sock: socket.socket | None = None
        self._tpl: _Templates | None = None
        self._idx = 0  # kube-ipvs0's ifindex once known (0: look it up)

    # ------------------------------------------------------------- model -> objects
    def virtual_servers(self, svc: Service) -> list[tuple[str, str, int, list[tuple[str, int]]]]:
        """[(proto, vip, port, [(rs_ip, rs_port)])] of one Service."""
        out: list[tuple[str, str, int, list[tuple[str, int]]]] = []
        for port in svc.ports:
            rs = [(e.ip, e.port) for e in svc.endpoints_for(port)]
            proto = port.protocol
            out.append((proto, svc.cluster_ip, port.port, rs))
            for eip in svc.external_ips:
                out.append((proto, eip, port.port, rs))
            if port.node_port:
                for nip in self.settings.node_ips:
                    out.append((proto, nip, port.node_port, rs))
        return out

    def bound_addresses(self, svc: Service) -> list[str]:
        return [svc.cluster_ip, *svc.external_ips]

    def ipset_members(self, svc: Service) -> list[tuple[str, str]]:
        out = []
        for port in svc.ports:
            proto = port.protocol
            out.append(("KUBE-CLUSTER-IP", f"{svc.cluster_ip},{proto}:{port.port}"))
            for eip in svc.external_ips:
                out.append(("KUBE-EXTERNAL-IP", f"{eip},{proto}:{port.port}"))
            if port.node_port:
                if proto == "sctp":
                    for nip in self.settings.node_ips:
                        out.append(("KUBE-NODE-PORT-SCTP-HASH", f"{nip},sctp:{port.node_port}"))
                else:
                    out.append((f"KUBE-NODE-PORT-{proto.upper()}", str(port.node_port)))
            for e in svc.endpoints_for(port):
                if self.node is None or e.node == self.node:
                    out.append(("KUBE-LOOP-BACK", f"{e.ip},{proto}:{e.port},{e.ip}"))
        for a in self.bound_addresses(svc):
            out.append(("KUBE-IPVS-IPS", a))
        return out

    # ------------------------------------------------------------- text
    def ipvsadm_lines(self, services: Sequence[Service]) -> Iterable[str]:
        sched = self.scheduler
        for svc in services:
            pers = f" -p {svc.affinity_timeout}" if svc.affinity_timeout else ""
            buf = []
            for proto, vip, port, rs in self.virtual_servers(svc):
                f = IPVSADM_PROTO[proto]
                buf.append(f"-A {f} {vip}:{port} -s {sched}{pers}\n")
                for ip, p in rs:
                    buf.append(f"-a {f} {vip}:{port} -r {ip}:{p} -m -w 1\n")
            yield "".join(buf)

    def ipset_text(self, services: Sequence[Service]) -> str:
        members = list(dict.fromkeys(m for svc in services for m in self.ipset_members(svc)))  # unique
        sizes: dict[str, int] = {}
        for s, _m in members:
            sizes[s] = sizes.get(s, 0) + 1
        out = []
        for name, typ in IPSETS:
            if typ == "bitmap:port":
                out.append(f"create {name} {typ} range 0-65535\n")
            else:
                maxelem = max(65536, 2 * sizes.get(name, 0))
                out.append(f"create {name} {typ} family inet hashsize 1024 maxelem {maxelem}\n")
        # grouped by set: ipset restore packs consecutive adds to one set into one netlink message
        by_set: dict[str, list[str]] = {name: [] for name in IPSET_NAMES}
        for s, m in members:
            by_set[s].append(f"add {s} {m}\n")
        for name in IPSET_NAMES:
            out += by_set[name]
        return "".join(out)

    def iptables_text(self, services: Sequence[Service], full: bool = True) -> str:
        """The small fixed ruleset of B.2 (rules on empty sets are left out, as kube-proxy does)."""
        m = self.mark
        has = {
            "KUBE-CLUSTER-IP": False,
            "KUBE-EXTERNAL-IP": False,
            "KUBE-NODE-PORT-TCP": False,
            "KUBE-NODE-PORT-UDP": False,
            "KUBE-LOOP-BACK": False,
        }
        for svc in services:
            has["KUBE-CLUSTER-IP"] = True
            if svc.external_ips:
                has["KUBE-EXTERNAL-IP"] = True
            for port in svc.ports:
                if port.node_port:
                    has[f"KUBE-NODE-PORT-{port.protocol.upper()}"] = True
                if self.node is None or any(e.node == self.node for e in svc.endpoints):
                    has["KUBE-LOOP-BACK"] = has["KUBE-LOOP-BACK"] or bool(svc.endpoints)
        cidr = self.settings.cluster_cidr
        nat = ["*nat\n"] + [
            f":{c} - [0:0]\n"
            for c in (
                "KUBE-SERVICES",
                "KUBE-POSTROUTING",
                "KUBE-NODE-PORT",
                "KUBE-LOAD-BALANCER",
                "KUBE-MARK-MASQ",
            )
        ]
        if full:
            nat += [
                '-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n',
                '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n',
                '-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n',
            ]
        if has["KUBE-LOOP-BACK"]:
            nat.append(
                '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for '
                'solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE\n'
            )
        nat += [
            f"-A KUBE-POSTROUTING -m mark ! --mark {m}/{m} -j RETURN\n",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {m}\n",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully\n",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {m}\n",
            # kube-proxy 1.34 (writeIptablesRules): localhost connections leave KUBE-SERVICES first
            "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n",
        ]
        if has["KUBE-NODE-PORT-TCP"]:
            nat.append(
                '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade '
                'purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ\n'
            )
        if has["KUBE-NODE-PORT-UDP"]:
            nat.append(
                '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade '
                'purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ\n'
            )
        if has["KUBE-CLUSTER-IP"]:
            src = f"! -s {cidr} " if cidr else ""
            nat.append(
                f'-A KUBE-SERVICES {src}-m comment --comment "Kubernetes service cluster ip + port for '
                'masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n'
            )
        if has["KUBE-EXTERNAL-IP"]:
            c = '-m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose"'
            nat += [
                f"-A KUBE-SERVICES {c} -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ\n",
                f"-A KUBE-SERVICES {c} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in "
                "-m addrtype ! --src-type LOCAL -j ACCEPT\n",
                f"-A KUBE-SERVICES {c} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL "
                "-j ACCEPT\n",
            ]
        nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n")
        nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ\n")  # written whatever the sets hold
        if has["KUBE-CLUSTER-IP"]:
            nat.append("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n")
        nat.append("COMMIT\n")
        filt = ["*filter\n"] + [
            f":{c} - [0:0]\n"
            for c in (
                "KUBE-FORWARD",
                "KUBE-NODE-PORT",
                "KUBE-PROXY-FIREWALL",
                "KUBE-SOURCE-RANGES-FIREWALL",
                "KUBE-IPVS-FILTER",
                "KUBE-IPVS-OUT-FILTER",
            )
        ]
        if full:
            filt += [
                '-I FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n',
                '-I INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT\n',
                '-I INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL\n',
                '-I FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL\n',
                '-I INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER\n',
                '-I OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER\n',
            ]
        filt += [
            f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {m}/{m} -j ACCEPT\n',
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
            "RELATED,ESTABLISHED -j ACCEPT\n",
            '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set '
            "KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT\n",
            "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP\n",
            "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN\n",
            "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN\n",
            "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN\n",
            "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN\n",
            "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN\n",
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT\n",
            "COMMIT\n",
        ]
        return "".join(nat + filt)

    def render(self, services: Sequence[Service]) -> str:
        return (
            "# ipvsadm-restore\n"
            + "".join(self.ipvsadm_lines(services))
            + "# ipset restore\n"
            + self.ipset_text(services)
            + "# iptables-legacy-restore --noflush\n"
            + self.iptables_text(services)
        )

    # ------------------------------------------------------------- netlink helpers
    def _socks(self) -> tuple[NetlinkBatch, NetlinkBatch]:
        if self._ipvs_sock is None:
            self._ipvs_sock = netlink_socket(self.ns, 16)  # NETLINK_GENERIC
            fam = _genl_family_id(self._ipvs_sock, "IPVS")
            self._tpl = _Templates(fam, self.scheduler)
            self._ipvs = NetlinkBatch(self._ipvs_sock)
            self._rt_sock = netlink_socket(self.ns, 0)  # NETLINK_ROUTE
            self._rt = NetlinkBatch(self._rt_sock)
        return self._ipvs, self._rt

    def _templates(self) -> _Templates:
        assert self._tpl is not None, "_socks() builds the message templates first"
        return self._tpl

    def close(self) -> None:
        for s in (self._ipvs_sock, self._rt_sock):
            if s is not None:
                s.close()
        self._ipvs_sock = self._rt_sock = None

    def _svc_msgs(self, vss, cmd: int, flags: int, timeout: int | None) -> Iterable[bytearray]:
        tpl = self._templates()
        aton = socket.inet_aton
        for proto, vip, port, _rs in vss:
            data, a, p = tpl.service(cmd, flags, PROTO[proto], timeout)
            m = bytearray(data)
            m[a : a + 4] = aton(vip)
            m[p : p + 2] = port.to_bytes(2, "big")
            yield m

    def _dest_msgs(self, items, cmd: int, flags: int) -> Iterable[bytearray]:
        """items: (proto, vip, port, rs_ip, rs_port)."""
        tpl = self._templates()
        aton = socket.inet_aton
        for proto, vip, port, ip, rport in items:
            data, sa, sp, da, dp = tpl.dest(cmd, flags, PROTO[proto])
            m = bytearray(data)
            m[sa : sa + 4] = aton(vip)
            m[sp : sp + 2] = port.to_bytes(2, "big")
            m[da : da + 4] = aton(ip)
            m[dp : dp + 2] = rport.to_bytes(2, "big")
            yield m

    def _addr_msgs(
        self, addrs: Iterable[str], msg_type: int, flags: int, ifindex: int
    ) -> Iterable[bytearray]:
        data, a1, a2 = self._templates().addr(msg_type, flags, ifindex)
        aton = socket.inet_aton
        for ip in addrs:
            m = bytearray(data)
            b = aton(ip)
            m[a1 : a1 + 4] = b
            m[a2 : a2 + 4] = b
            yield m

    def _ifindex(self, create: bool) -> int:
        """kube-ipvs0's index, created if asked; kept from the full sync (cleanup forgets it), as
        kube-proxy looks it up in-process: a one-change apply forks nothing before its netlink
        messages (a `cat` fork was most of a change's 0.1 s in the UML guest)."""
        if self._idx:
            return self._idx
        self._idx = self._lookup_ifindex(create)
        return self._idx

    def _lookup_ifindex(self, create: bool) -> int:
        p = run(self.ns, ["cat", f"/sys/class/net/{IFNAME}/ifindex"], check=False)
        if p.returncode == 0:
            return int(p.stdout)
        if not create:
            return 0
        # one `ip -batch` (netlink underneath): cheaper than importing pyroute2's IPRoute in UML
        p = run(
            self.ns,
            ["ip", "-batch", "-"],
            check=False,
            input=f"link add {IFNAME} type dummy\nlink set {IFNAME} arp off\n",
        )
        if p.returncode != 0:
            raise LabError(
                f"cannot create dummy {IFNAME} in {self.ns}: {p.stderr.strip()} "
                "(the host kernel has no dummy device: run ipvs mode in the UML guest)"
            )
        return int(run(self.ns, ["cat", f"/sys/class/net/{IFNAME}/ifindex"]).stdout)

    # ------------------------------------------------------------- protocol
    def full_sync(self, services: Sequence[Service]) -> None:
        self.cleanup()
        ipvs, rt = self._socks()
        run(self.ns, ["sysctl", "-q", "-w", *SYSCTLS])
        run(self.ns, ["ipset", "-exist", "restore"], input=self.ipset_text(services))
        stream(self.ns, ["iptables-legacy-restore", "--noflush", *LOCK_WAIT], [self.iptables_text(services)])
        idx = self._ifindex(create=True)
        addrs = [a for svc in services for a in self.bound_addresses(svc)]
        rt.run(
            self._addr_msgs(addrs, 20, F_REQUEST | F_CREATE | F_EXCL, idx),
            f"bind addresses to {IFNAME}",
            ignore=(errno.EEXIST,),
        )
        ipvs.run(self._all_ipvs_msgs(services), "program IPVS virtual and real servers")
        self._state = {_key(s): s for s in services}
        members: dict[tuple[str, str], int] = {}
        for s in services:
            for mem in self.ipset_members(s):
                members[mem] = members.get(mem, 0) + 1
        self._members = members

    def _all_ipvs_msgs(self, services: Sequence[Service]) -> Iterable[bytearray]:
        svc_msgs, dest_msgs = self._svc_msgs, self._dest_msgs
        new = F_REQUEST | F_CREATE | F_EXCL
        for svc in services:
            vss = self.virtual_servers(svc)
            yield from svc_msgs(vss, 1, new, svc.affinity_timeout)  # IPVS_CMD_NEW_SERVICE
            yield from dest_msgs([(pr, v, p, ip, rp) for pr, v, p, rs in vss for ip, rp in rs], 5, new)

    def apply(self, services: Sequence[Service], change: Change) -> None:
        ipvs, rt = self._socks()
        svc = change.service
        key = _key(svc)
        old = self._state.get(key)
        new = None if change.kind == "delete" else svc
        new_flag = F_REQUEST | F_CREATE | F_EXCL
        idx = self._ifindex(create=True)
        old_vs = {(p, v, po): rs for p, v, po, rs in self.virtual_servers(old)} if old else {}
        if old is None and change.kind != "add":
            old_vs = self._kernel_vs_of(svc)
        new_vs = {(p, v, po): rs for p, v, po, rs in self.virtual_servers(new)} if new else {}
        msgs: list[bytearray] = []
        # 1. virtual servers (create new ones, update the flags of kept ones), bind addresses
        add_vs = [(p, v, po, rs) for (p, v, po), rs in new_vs.items() if (p, v, po) not in old_vs]
        keep_vs = [(p, v, po, rs) for (p, v, po), rs in new_vs.items() if (p, v, po) in old_vs]
        msgs += self._svc_msgs(add_vs, 1, new_flag, new.affinity_timeout if new else None)
        msgs += self._svc_msgs(keep_vs, 2, F_REQUEST, new.affinity_timeout if new else None)  # SET_SERVICE
        # 2. real servers: add new, delete gone (kube-proxy drains TCP ones first; here at once)
        for (p, v, po), rs in new_vs.items():
            have = set(old_vs.get((p, v, po), []))
            msgs += self._dest_msgs(
                [(p, v, po, ip, rp) for ip, rp in rs if (ip, rp) not in have], 5, new_flag
            )
            want = set(rs)
            msgs += self._dest_msgs(
                [(p, v, po, ip, rp) for ip, rp in have if (ip, rp) not in want], 7, F_REQUEST
            )
        # 3. stale virtual servers (their real servers go with them)
        gone_vs: list[tuple[str, str, int, list[tuple[str, int]]]] = [
            (p, v, po, []) for (p, v, po) in old_vs if (p, v, po) not in new_vs
        ]
        msgs += self._svc_msgs(gone_vs, 3, F_REQUEST, None)
        old_addrs = (
            set(self.bound_addresses(old))
            if old
            else ({svc.cluster_ip, *svc.external_ips} if change.kind != "add" else set())
        )
        new_addrs = set(self.bound_addresses(new)) if new else set()
        rt.run(
            self._addr_msgs(sorted(new_addrs - old_addrs), 20, F_REQUEST | F_CREATE | F_EXCL, idx),
            f"bind addresses to {IFNAME}",
            ignore=(errno.EEXIST,),
        )
        ipvs.run(msgs, f"{change.kind} IPVS objects of {svc.namespace}/{svc.name}")
        rt.run(
            self._addr_msgs(sorted(old_addrs - new_addrs), 21, F_REQUEST, idx),  # RTM_DELADDR
            f"unbind addresses from {IFNAME}",
            ignore=(errno.EADDRNOTAVAIL,),
        )
        # 4. ipset members, then the (small) iptables ruleset, as every kube-proxy ipvs sync does
        # members are reference counted: two Services may share an endpoint (KUBE-LOOP-BACK)
        refs = self._members
        lines = []
        for mem in self.ipset_members(new) if new else []:
            refs[mem] = refs.get(mem, 0) + 1
            if refs[mem] == 1:
                lines.append(f"add {mem[0]} {mem[1]}\n")
        for mem in self.ipset_members(old) if old else []:
            n = refs.get(mem, 1) - 1
            if n <= 0:
                refs.pop(mem, None)
                lines.append(f"del {mem[0]} {mem[1]}\n")
            else:
                refs[mem] = n
        if lines:
            run(self.ns, ["ipset", "-exist", "restore"], input="".join(lines))
        stream(
            self.ns,
            ["iptables-legacy-restore", "--noflush", *LOCK_WAIT],
            [self.iptables_text(services, full=False)],
        )
        if new is None:
            self._state.pop(key, None)
        else:
            self._state[key] = new

    def _kernel_vs_of(self, svc: Service) -> dict:
        """Virtual servers of `svc`'s addresses as the kernel has them (when this object did not program it)."""
        vs = self._kernel_vs()
        mine = set(self.bound_addresses(svc)) | set(self.settings.node_ips)
        ports = {p.port for p in svc.ports} | {p.node_port for p in svc.ports if p.node_port}
        return {k: rs for k, rs in vs.items() if k[1] in mine and k[2] in ports}

    def _kernel_vs(self) -> dict[tuple[str, str, int], list[tuple[str, int]]]:
        """Every virtual server of this namespace, from the kernel's netlink dump (`ipvsadm -Sn`).
        Not /proc/net/ip_vs: on 6.1 that listing loses entries when other namespaces hold
        virtual servers too (94 of 200 with three lab namespaces); the dump does not."""
        return parse_ipvsadm_save(run(self.ns, ["ipvsadm", "-Sn"]).stdout)

    def counts(self) -> dict[str, int]:
        c = {
            "virtual_servers": 0,
            "real_servers": 0,
            "addresses": 0,
            "ipset_members": 0,
            "ipsets": 0,
            "nat_rules": 0,
            "filter_rules": 0,
        }
        if os.path.exists("/proc/net/ip_vs"):
            vs = self._kernel_vs()
            c["virtual_servers"] = len(vs)
            c["real_servers"] = sum(len(rs) for rs in vs.values())
        p = run(self.ns, ["ip", "-o", "-4", "addr", "show", "dev", IFNAME], check=False)
        if p.returncode == 0:
            c["addresses"] = len([line for line in p.stdout.splitlines() if " inet " in line])
        p = run(self.ns, ["ipset", "list", "-t"], check=False)
        for line in p.stdout.splitlines():
            if line.startswith("Name: KUBE-"):
                c["ipsets"] += 1
                current = True
            elif line.startswith("Name: "):
                current = False
            elif line.startswith("Number of entries:") and current:
                c["ipset_members"] += int(line.split(":")[1])
        for table in ("nat", "filter"):
            p = run(self.ns, ["iptables-legacy-save", "-t", table], check=False)
            c[f"{table}_rules"] = sum(
                1
                for line in p.stdout.splitlines()
                if line.startswith("-A ") and "KUBE-" in line.split(" ", 2)[1]
            )
        return c

    def cleanup(self) -> None:
        """Flush IPVS (the namespace is ours), delete kube-ipvs0, the KUBE-* chains, then the ipsets."""
        if os.path.exists("/proc/net/ip_vs"):
            ipvs, _rt = self._socks()
            msg = bytearray(
                struct.pack("=IHHII", 20, self._templates().family_id, F_REQUEST, 0, 0)
                + struct.pack("=BBH", 17, 1, 0)
            )  # IPVS_CMD_FLUSH
            ipvs.run([msg], "flush IPVS")
        run(self.ns, ["ip", "link", "del", IFNAME], check=False)
        self._idx = 0
        from harness.dataplane.iptables import IptablesDataplane

        IptablesDataplane(self.ns, DataplaneSettings(iptables_backend="legacy")).cleanup()
        p = run(self.ns, ["ipset", "list", "-n"], check=False)
        sets = [s for s in p.stdout.split() if s.startswith("KUBE-")]
        if sets:
            run(self.ns, ["ipset", "restore"], input="".join(f"destroy {s}\n" for s in sets))
        self._state = {}
        self._members = {}


_IPVSADM_PROTO = {
    "-t": "tcp",
    "--tcp-service": "tcp",
    "-u": "udp",
    "--udp-service": "udp",
    "--sctp-service": "sctp",
}


def parse_ipvsadm_save(text: str) -> dict[tuple[str, str, int], list[tuple[str, int]]]:
    """`ipvsadm -Sn` -> {(proto, vip, port): [(rs_ip, rs_port)]} (fwmark services left out)."""
    out: dict = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("-A", "-a") or parts[1] not in _IPVSADM_PROTO:
            continue
        ip, _, port = parts[2].rpartition(":")
        key = (_IPVSADM_PROTO[parts[1]], ip, int(port))
        if parts[0] == "-A":
            out.setdefault(key, [])
        elif "-r" in parts:
            rip, _, rport = parts[parts.index("-r") + 1].rpartition(":")
            out.setdefault(key, []).append((rip, int(rport)))
    return out
