"""kpbench's own UML kernel (harness/lab/build_uml_kernel.sh): one kernel for all three proxy modes.

Boots the custom kernel once (same recipe as harness/lab/uml.py: hostfs root read-only, the init
script uml_init.sh, no modules to load) and checks, each in a fresh network namespace of the
guest: IPVS (/proc/net/ip_vs, pyroute2, every scheduler kube-proxy offers), dummy/veth/bridge
links, br_netfilter, nftables NAT (dnat, numgen vmap, kube-proxy-like ruleset), iptables legacy
and nft backends with the matches/targets kube-proxy emits, ipset types, conntrack netlink; then
the harness's own capability probe (harness.lab.caps --probe) inside the guest.

Skipped, with the reason, when the kernel is not built: `harness/lab/build_uml_kernel.sh`.
KPBENCH_UML_KERNEL=/path/to/linux picks a kernel binary explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest

from harness.lab import registry, uml

pytestmark = [pytest.mark.uml, pytest.mark.kernel]

REPO = Path(__file__).resolve().parents[2]
FRAGMENT = REPO / "harness" / "lab" / "uml-kernel.config"
BUILD_SCRIPT = REPO / "harness" / "lab" / "build_uml_kernel.sh"


def _fragment_hash() -> str:
    return hashlib.sha256(FRAGMENT.read_bytes()).hexdigest()[:10]


def find_kernel() -> tuple[Path | None, str]:
    """(the custom kernel binary, "") or (None, why not)."""
    env = os.environ.get("KPBENCH_UML_KERNEL")
    if env:
        p = Path(env)
        return (p, "") if os.access(p, os.X_OK) else (None, f"KPBENCH_UML_KERNEL={env} is not an executable")
    cache = Path(
        os.environ.get("KPBENCH_UML_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kpbench" / "uml"
    )
    pattern = f"*-kpbench{_fragment_hash()}/linux"
    found = sorted((p for p in cache.glob(pattern) if os.access(p, os.X_OK)), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1], ""
    return None, (
        f"the kpbench UML kernel is not built (no {cache}/{pattern} for the current "
        f"{FRAGMENT.name}, KPBENCH_UML_KERNEL unset): run {BUILD_SCRIPT.relative_to(REPO)} "
        f"(about 30 min on 2 shared cores)"
    )


KERNEL, _WHY = find_kernel()
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)
if KERNEL is None:
    pytest.skip(_WHY, allow_module_level=True)

PY = uml.default_command("x")[0]

# --- the checks (each a shell script run as `unshare --net sh -ec SCRIPT` inside the guest) --------
KUBE_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SVC-AAAA ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "default/svc:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAA -m comment --comment "default/svc:http -> 10.244.1.2:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A1
-A KUBE-SVC-AAAA -m comment --comment "default/svc:http -> 10.244.2.2:80" -j KUBE-SEP-A2
-A KUBE-SEP-A1 -s 10.244.1.2/32 -m comment --comment "default/svc:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A1 -p tcp -m comment --comment "default/svc:http" -m tcp -j DNAT --to-destination 10.244.1.2:80
-A KUBE-SEP-A2 -s 10.244.2.2/32 -m comment --comment "default/svc:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A2 -p tcp -m comment --comment "default/svc:http" -m tcp -j DNAT --to-destination 10.244.2.2:80
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""

# what kube-proxy's IPVS mode (and its filter chains) add on top: ipset matches, addrtype,
# conntrack, physdev, ipvs, recent, multiport, CONNMARK, REJECT, limit
KUBE_IPVS_MODE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FORWARD -m physdev --physdev-is-bridged -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FIREWALL -p tcp -m multiport --dports 30000:30010,30100 -m recent --name kpb --rcheck --seconds 10 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FIREWALL -m limit --limit 10/second -j CONNMARK --set-mark 0x1
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-LOAD-BALANCER
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-LOAD-BALANCER -m ipvs --vdir ORIGINAL --vmethod MASQ -j KUBE-MARK-MASQ
-A POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
COMMIT
"""

# (nft 1.0.6 rejects the one-line form "... dnat to 10.244.0.1:80; } }": a "}" must be followed by
#  a newline or ";" there, hence the lines)
NFT_DNAT = """table ip t {
    chain pre {
        type nat hook prerouting priority -100; ip daddr 10.96.0.1 tcp dport 80 dnat to 10.244.0.1:80;
    }
}"""

NFT_NUMGEN = """table ip t {
    chain ep-1 { meta l4proto tcp dnat to 10.244.1.2:80; }
    chain ep-2 { meta l4proto tcp dnat to 10.244.2.2:80; }
    chain svc { numgen random mod 2 vmap { 0 : goto ep-1, 1 : goto ep-2 }; }
    chain pre { type nat hook prerouting priority dstnat; ip daddr 10.96.0.1 tcp dport 80 goto svc; }
}"""

# the shape kube-proxy's nftables mode programs (inet family, verdict map on a concatenation,
# fib daddr type local, ct state, masquerade, reject, counters, a dynamic set, jhash, limit)
NFT_KUBE = """table inet kube-proxy {
    set cluster-ips { type ipv4_addr; elements = { 10.96.0.1 } }
    set recent { type ipv4_addr; flags dynamic, timeout; timeout 10s; size 1024; }
    map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
    map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }
    chain mark-for-masquerade { mark set mark or 0x4000; }
    chain masquerading {
        mark and 0x4000 == 0 return
        mark set mark xor 0x4000
        masquerade fully-random
    }
    chain endpoint-a1 { ip saddr 10.244.1.2 jump mark-for-masquerade; meta l4proto tcp dnat ip to 10.244.1.2:80; }
    chain endpoint-a2 { ip saddr 10.244.2.2 jump mark-for-masquerade; meta l4proto tcp dnat ip to 10.244.2.2:80; }
    chain service-aaaa {
        ip daddr 10.96.0.1 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
        numgen random mod 2 vmap { 0 : goto endpoint-a1, 1 : goto endpoint-a2 }
    }
    chain services {
        ip daddr . meta l4proto . th dport vmap @service-ips
        fib daddr type local ip daddr != 127.0.0.0/8 counter return
    }
    chain filter-input {
        type filter hook input priority -110; policy accept;
        ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
        ct state new add @recent { ip saddr } limit rate 100/second counter
        ip daddr @cluster-ips ct state invalid drop
        tcp dport 30000 meta mark set jhash ip saddr mod 4 seed 0x1 counter
        tcp dport 30001 reject with tcp reset
        tcp dport 30002 reject
    }
    chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
    chain nat-output { type nat hook output priority -100; policy accept; jump services; }
    chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }
    chain nat-redirect { type nat hook output priority -90; tcp dport 9999 redirect to :80; }
}
add element inet kube-proxy service-ips { 10.96.0.1 . tcp . 80 : goto service-aaaa }
add element inet kube-proxy no-endpoint-services { 10.96.0.2 . tcp . 80 : drop }
"""

IPVS_PYROUTE2 = """
import socket
from pyroute2 import IPVS, IPVSDest, IPVSService, IPRoute
with IPRoute() as ipr:  # a real server must be local or routable here
    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    ipr.link("add", ifname="kube-ipvs0", kind="dummy")
    i = ipr.link_lookup(ifname="kube-ipvs0")[0]
    ipr.link("set", index=i, state="up")
    ipr.addr("add", index=i, address="10.96.0.1", prefixlen=32)
    ipr.addr("add", index=i, address="10.244.0.1", prefixlen=24)
ipvs = IPVS()
svc = IPVSService(addr="10.96.0.1", port=80, protocol=socket.IPPROTO_TCP, sched_name="rr")
ipvs.service("add", svc)
ipvs.dest("add", service=svc, dest=IPVSDest(addr="10.244.0.5", port=80, fwd_method=0))
print(len(list(ipvs.service("dump"))), "service(s)")
"""

IPSET_TYPES = [
    "hash:ip",
    "hash:ip,port",
    "hash:ip,port,ip",
    "hash:ip,port,net",
    "hash:net",
    "bitmap:port range 0-65535",
]
IPVS_SCHEDULERS = ["rr", "wrr", "lc", "sh", "mh"]


def _checks() -> dict[str, str]:
    q = _shquote
    c: dict[str, str] = {
        "release": 'uname -r; case "$(uname -r)" in *-kpbench) ;; *) exit 1;; esac',
        "no_modules_needed": "test ! -e /proc/modules",
        "ip_vs_proc": "head -1 /proc/net/ip_vs",
        "dummy_link": "ip link add x type dummy && ip link set x up",
        "veth_bridge": "ip link add v0 type veth peer name v1 && ip link add b0 type bridge && ip link set v0 master b0",
        "br_netfilter": "cat /proc/sys/net/bridge/bridge-nf-call-iptables",
        "tap_device": "ip tuntap add mode tap kpbt0",
        "conntrack_netlink": "conntrack -L",
        "nft_nat_dnat": f"printf '%s\\n' {q(NFT_DNAT)} | nft -f - && nft list chain ip t pre",
        "nft_numgen_vmap": f"printf '%s\\n' {q(NFT_NUMGEN)} | nft -f -",
        "nft_kube_proxy_like": f"printf '%s\\n' {q(NFT_KUBE)} | nft -f - && nft list table inet kube-proxy >/dev/null",
        "iptables_legacy_restore": f"printf '%s' {q(KUBE_NAT)} | iptables-legacy-restore && iptables-legacy-save -t nat | grep -q statistic",
        "iptables_nft_restore": f"printf '%s' {q(KUBE_NAT)} | iptables-nft-restore && iptables-nft-save -t nat | grep -q statistic",
        "ipset_hash_ip_port": "ipset create x hash:ip,port && ipset add x 10.96.0.1,tcp:80 && ipset test x 10.96.0.1,tcp:80",
        "ipset_types": " && ".join(f"ipset create s{i} {t}" for i, t in enumerate(IPSET_TYPES)),
        "ipvs_pyroute2": f"{q(PY)} -c {q(IPVS_PYROUTE2)} && ipvsadm -Ln | grep -q 10.244.0.5:80",
        "ipvs_schedulers_protocols": " && ".join(
            [f"ipvsadm -A -t 10.96.1.{i}:80 -s {s}" for i, s in enumerate(IPVS_SCHEDULERS, 1)]
            + [
                "ipvsadm -A -u 10.96.2.1:53 -s rr",
                "ipvsadm -A --sctp-service 10.96.2.2:80 -s rr",
                "ipvsadm -Ln | grep -c ' 10.96' | grep -qx 7",
            ]
        ),
    }
    ipvs_sets = (
        "ipset create KUBE-CLUSTER-IP hash:ip,port && ipset create KUBE-LOOP-BACK hash:ip,port,ip && "
        "ipset create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 && "
    )
    c["iptables_legacy_ipvs_mode_rules"] = (
        ipvs_sets + f"printf '%s' {q(KUBE_IPVS_MODE)} | iptables-legacy-restore"
    )
    c["iptables_nft_ipvs_mode_rules"] = ipvs_sets + f"printf '%s' {q(KUBE_IPVS_MODE)} | iptables-nft-restore"
    c["python_import_pyroute2"] = (
        f"t0=$(date +%s%N); {q(PY)} -c 'import pyroute2' && t1=$(date +%s%N) && "
        "echo $(( (t1 - t0) / 1000000 )) ms"
    )
    return c


def _shquote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


GUEST_RUNNER = textwrap.dedent("""\
    import json, subprocess, sys, time
    checks = json.load(open(sys.argv[1]))
    out = {}
    for name, script in checks.items():
        t0 = time.monotonic()
        p = subprocess.run(["unshare", "--net", "sh", "-ec", script], capture_output=True, text=True, timeout=120)
        out[name] = {"ok": p.returncode == 0, "rc": p.returncode, "s": round(time.monotonic() - t0, 3),
                     "stdout": p.stdout[-400:], "stderr": p.stderr[-600:]}
        print(json.dumps({"check": name, **out[name]}), flush=True)
    # the harness's own probe, as harness.lab.caps would run it in a guest
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness.lab.caps", "--probe", sys.argv[2] + ".caps", "--kernel", "uml"],
                       capture_output=True, text=True, timeout=300)
    caps = json.load(open(sys.argv[2] + ".caps")) if p.returncode == 0 else None
    out["harness_caps"] = {"ok": p.returncode == 0, "rc": p.returncode, "s": round(time.monotonic() - t0, 3),
                           "caps": caps, "stderr": p.stderr[-600:]}
    json.dump(out, open(sys.argv[2], "w"), indent=1)
""")

CHECK_NAMES = list(_checks())


@contextlib.contextmanager
def _builtin_kernel_allowed(kernel: Path):
    """uml.available() insists on a module tree for the kernel's release; this kernel has none and
    needs none (CONFIG_MODULES=n). Accept it when it runs (`--version`); other kernels unchanged."""
    real = uml.available

    def available(linux: str = uml.LINUX_UML) -> tuple[bool, str]:
        if os.path.realpath(linux) == os.path.realpath(kernel):
            return (True, "") if uml.uml_version(linux) else (False, f"{linux} --version failed")
        return real(linux)

    with mock.patch.object(uml, "available", available):
        yield


def _boot(run: Path, command, kernel: Path, **kw) -> tuple[uml.GuestResult, list[str], uml.Guest]:
    lines: list[str] = []
    with _builtin_kernel_allowed(kernel):
        g = uml.Guest(run, command, linux=str(kernel), modules=(), mem="1G", timeout=600, name="kpbk", **kw)
        with g:
            res = g.wait(lines.append)
    return res, lines, g


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    run = tmp_path_factory.mktemp("umlkernel")
    (run / "checks.json").write_text(json.dumps(_checks()))
    (run / "runner.py").write_text(GUEST_RUNNER)
    out = run / "results.json"
    t0 = time.monotonic()
    res, lines, g = _boot(run, [PY, str(run / "runner.py"), str(run / "checks.json"), str(out)], KERNEL)
    wall = time.monotonic() - t0
    results = json.loads(out.read_text()) if out.exists() else {}
    print(f"\n{KERNEL}: boot to command {res.boot_s}s, guest total {res.elapsed_s:.1f}s (wall {wall:.1f}s)")
    for name, r in results.items():
        print(
            f"  {'ok ' if r['ok'] else 'BAD'} {name} ({r['s']}s) {r.get('stdout', '').strip()[-80:]!r}"
            f"{'' if r['ok'] else ' ' + r['stderr'].strip()[-300:]!r}"
        )
    return {"res": res, "lines": lines, "guest": g, "results": results}


def test_kernel_boots_and_runs_the_checks(booted):
    res = booted["res"]
    assert res.status == 0, (res, booted["lines"][-20:])
    assert res.modules_missing == []
    assert res.boot_s is not None and res.boot_s < 60
    assert set(booted["results"]) >= set(CHECK_NAMES) | {"harness_caps"}, booted["lines"][-20:]


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_capability(booted, name):
    r = booted["results"].get(name)
    assert r is not None, f"check {name} did not run"
    assert r["ok"], f"{name} failed (exit {r['rc']}): {r['stderr'].strip()}"


def test_harness_probe_sees_every_mode(booted):
    r = booted["results"]["harness_caps"]
    assert r["ok"], r["stderr"]
    caps = r["caps"]
    missing = {
        f: caps.get("why", {}).get(f)
        for f in ("ipvs", "dummy", "nft_nat", "iptables_legacy", "iptables_nft", "ipset", "br_netfilter")
        if not caps.get(f)
    }
    assert not missing, missing
    assert caps["release"].endswith("-kpbench")


def test_guest_leaves_nothing_behind(booted):
    g = booted["guest"]
    assert g.proc is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(g.proc.pid, 0)
    assert registry.lookup("uml", g.proc.pid) is None
    assert g.tmpdir is None
    left = subprocess.run(["pgrep", "-g", str(g.proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, left
