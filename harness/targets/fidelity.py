"""Rule-by-rule comparison of what real kube-proxy installed with what the lab installs.

Both sides are the kernel's own listing (`nft list ruleset`, `iptables-save`, `ipvsadm -Sn`,
`ipset save`, `ip addr show dev kube-ipvs0`), so syntax the tools normalise cannot differ.
Compared: nftables table `ip kube-proxy` (each chain's rules in order, each set's and map's
definition and elements as a set); iptables every KUBE-* chain's rules (as a multiset: kube-proxy
writes Services in map order) and the jumps into KUBE-* chains from the built-in chains; IPVS
every virtual and real server with its scheduler, persistence, forwarding method and weight (as a
multiset), each ipset's definition and members (as a set), the addresses on kube-ipvs0, and the
iptables rules as above. Left out as cosmetic (they do not change what a packet meets):
- the order of elements in sets and maps, and of Services in KUBE-SERVICES / KUBE-NODEPORTS;
- which endpoint gets which index of a uniform `numgen random mod N` map (kube-proxy's endpoint
  order is its EndpointSlice cache's), and likewise a KUBE-SVC chain's `-m statistic` cascade
  (its rules are compared without the statistic match; the 1/n, 1/(n-1) ... probabilities are
  tests/unit/test_dataplane_render.py's);
- the elements of ClientIP affinity sets (client addresses the traffic has put there), and
  packet counters;
- iptables `-m nfacct --nfacct-name ct_state_invalid_dropped_pkts` (and the localhost NodePort
  counter): kube-proxy adds these accounting matches, which only count packets for its metrics,
  when the kernel has nfnetlink_acct; the lab does not create nfacct objects;
- an ipset's `initval` (the random seed of its hash), kube-ipvs0's interface index and queue
  length, and iptables tables without KUBE-* chains (kube-proxy's IPVS mode leaves an empty
  `*mangle` in iptables-save: its built-in chains only).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

_NUMGEN = re.compile(r"(numgen random mod \d+ v?map) \{ ([^}]*) \}")
_IPT_NFACCT = re.compile(r"-m nfacct --nfacct-name\s+\S+ ")
_IPT_STATISTIC = re.compile(r"-m statistic --mode random --probability \S+ ")
_IPVSADM = re.compile(r"^-[Aa] -[tuf] ")  # `ipvsadm -Sn`: -A virtual server, -a real server
_IPSET_INITVAL = re.compile(r" initval 0x[0-9a-f]+")
_KUBE_IPVS0_ADDR = re.compile(r"^inet \S+ .*kube-ipvs0$")

NftObject = list[str] | tuple[list[str], set[str]]  # a chain's rules | a set/map's (header lines, elements)


def _numgen_values(m: re.Match) -> str:
    values = sorted(item.split(" : ", 1)[1].strip() for item in m.group(2).split(", "))
    return f"{m.group(1)} {{ {', '.join(values)} }}"


def parse_nft(text: str, table: str = "table ip kube-proxy") -> dict[str, NftObject]:
    """{'chain NAME': [rules...], 'set NAME': (header lines, {elements})} of one table's listing."""
    out: dict[str, NftObject] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip() == f"{table} {{":
            break
    else:
        return out
    obj = None
    rules: list[str] = []  # the current chain's
    header: list[str] = []  # the current set's or map's
    elements: set[str] = set()
    in_elements = False
    buf = ""
    for raw in lines:
        line = raw.strip()
        if raw.startswith("}"):
            break  # end of the table
        if not line:
            continue
        if obj is None:
            if not line.endswith("{"):
                continue  # the table's own comment / flags
            kind, name = line.split()[:2]
            obj = f"{kind} {name}"
            if kind == "chain":
                rules = out[obj] = []
            else:
                header, elements = out[obj] = ([], set())
            continue
        if line == "}" and not in_elements:
            obj = None
            continue
        if obj.startswith("chain "):
            rules.append(_NUMGEN.sub(_numgen_values, line))
            continue
        if line.startswith("elements = {"):
            in_elements, buf = True, line[len("elements = {") :]
        elif in_elements:
            buf += " " + line
        else:
            header.append(line)
        if in_elements and buf.rstrip().endswith("}"):
            in_elements = False
            if not obj.startswith("set affinity-"):
                elements.update(e.strip() for e in buf.rstrip().rstrip("}").split(",") if e.strip())
    return out


def parse_iptables(text: str) -> dict[str, Counter]:
    """{'table/CHAIN': Counter(rules)} of the KUBE-* chains, plus each built-in chain's jumps to them."""
    out: dict[str, Counter] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":KUBE-"):
            out.setdefault(f"{table}/{line[1:].split()[0]}", Counter())
        elif line.startswith("-A "):
            chain = line.split()[1]
            if not chain.startswith("KUBE-") and " -j KUBE-" not in line:
                continue
            rule = _IPT_NFACCT.sub("", line)
            rule = _IPT_STATISTIC.sub("", rule) if chain.startswith("KUBE-SVC-") else rule
            out.setdefault(f"{table}/{chain}", Counter())[rule] += 1
    return out


def parse_ipvs(text: str) -> dict[str, object]:
    """{'ipvs': Counter(ipvsadm -Sn lines), 'ipset NAME': ([definition], {members}),
    'kube-ipvs0': ([], {addresses})} plus parse_iptables() of the same listing."""
    servers: Counter = Counter()
    ipsets: dict[str, tuple[list[str], set[str]]] = {}
    addresses: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if _IPVSADM.match(line):
            servers[line] += 1
        elif line.startswith("create "):
            ipsets[f"ipset {line.split()[1]}"] = ([_IPSET_INITVAL.sub("", line)], set())
        elif line.startswith("add "):
            _, name, member = line.split(None, 2)
            ipsets.setdefault(f"ipset {name}", ([], set()))[1].add(member)
        elif _KUBE_IPVS0_ADDR.match(line):
            addresses.add(line.split()[1])
    return {"ipvs": servers, "kube-ipvs0": ([], addresses), **ipsets, **parse_iptables(text)}


def differences(mode: str, kube_proxy: str, lab: str, limit: int = 20) -> list[str]:
    """What differs between kube-proxy's listing and the lab's (empty: the same ruleset)."""
    a: Mapping[str, object]
    b: Mapping[str, object]
    if mode == "nftables":
        a, b = parse_nft(kube_proxy), parse_nft(lab)
    elif mode == "iptables":
        a, b = parse_iptables(kube_proxy), parse_iptables(lab)
    elif mode == "ipvs":
        a, b = parse_ipvs(kube_proxy), parse_ipvs(lab)
    else:
        return []
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name}: only kube-proxy has it")
        elif name not in a:
            out.append(f"{name}: only the lab has it")
        elif a[name] != b[name]:
            out.append(f"{name}: {_what_differs(a[name], b[name])}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def _what_differs(x, y) -> str:
    if isinstance(x, Counter):
        only_kp, only_lab = list((x - y).elements()), list((y - x).elements())
    elif isinstance(x, list):
        if sorted(x) == sorted(y):
            return "rule order"
        only_kp, only_lab = [r for r in x if r not in y], [r for r in y if r not in x]
    else:
        (hx, ex), (hy, ey) = x, y
        if hx != hy:
            return f"definition: kube-proxy {' ; '.join(hx)!r}, lab {' ; '.join(hy)!r}"
        only_kp, only_lab = sorted(ex - ey), sorted(ey - ex)
    parts = []
    if only_kp:
        parts.append(f"kube-proxy only {len(only_kp)}: {only_kp[0]!r}")
    if only_lab:
        parts.append(f"lab only {len(only_lab)}: {only_lab[0]!r}")
    return "; ".join(parts) or "differs"
