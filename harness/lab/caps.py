"""What each kernel can do, and which kernel runs which proxy mode.

host_caps() probes the running kernel in a scratch namespace (nothing touches the namespace the
caller is in); uml_caps() is the same probe run once inside a UML guest and cached, keyed by the
linux.uml file's mtime and size. plan_kernels() applies ARCHITECTURE.md's rule.

    python -m harness.lab.caps            # print host (and UML, if available) capabilities
    python -m harness.lab.caps --probe F  # probe this kernel, write JSON to F (run inside the guest)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.jsonfile import write_json
from harness.lab import netns, uml
from harness.lab.netns import LabError
from harness.modes import BRIDGE_MODE, MODES, mode as mode_spec

FEATURES = ("ipvs", "dummy", "nft_nat", "iptables_legacy", "iptables_nft", "ipset", "br_netfilter")
FEATURE_TEXT = {
    "ipvs": "IPVS (CONFIG_IP_VS)",
    "dummy": "dummy links (CONFIG_DUMMY)",
    "nft_nat": "nftables NAT (nft_chain_nat / nft_nat)",
    "iptables_legacy": "iptables-legacy NAT (ip_tables, iptable_nat, xt_statistic ...)",
    "iptables_nft": "iptables-nft NAT (nft_compat, nft_chain_nat)",
    "ipset": "ipset (CONFIG_IP_SET, hash:ip,port)",
    "br_netfilter": "br_netfilter",
}

# The Debian user-mode-linux 6.1 kernel, as verified here (uml_caps(verify=True) re-checks).
KNOWN_UML_CAPS: dict[str, Any] = {
    "kernel": "uml",
    "release": "6.1.176",
    "ipvs": True,
    "dummy": True,
    "nft_nat": False,
    "iptables_legacy": True,
    "iptables_nft": False,
    "ipset": True,
    "br_netfilter": True,
    "why": {
        "nft_nat": "the UML kernel is built without nft_chain_nat / nft_nat",
        "iptables_nft": "the UML kernel is built without nft_chain_nat / nft_nat",
    },
}

_IPT_PROBE = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-PROBE - [0:0]
:KUBE-SEP-PROBE - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "kpbench/probe" -m tcp --dport 80 -j KUBE-SVC-PROBE
-A KUBE-SVC-PROBE -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-PROBE
-A KUBE-SEP-PROBE -s 10.244.0.10/32 -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-PROBE -p tcp -m tcp -j DNAT --to-destination 10.244.0.10:80
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
"""

_NFT_PROBE = """table ip kpbench_probe {
    map svc {
        type ipv4_addr . inet_proto . inet_service : verdict
    }
    chain ep-probe {
        meta l4proto tcp dnat to 10.244.0.10:80
    }
    chain svc-probe {
        numgen random mod 2 vmap { 0 : goto ep-probe, 1 : goto ep-probe }
    }
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr . meta l4proto . th dport vmap @svc
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x4000 == 0x4000 masquerade
    }
}
"""


def _probe_in(ns: str, argv: list[str], stdin: str | None = None) -> tuple[bool, str]:
    if not shutil.which(argv[0]):
        return False, f"{argv[0]} is not installed"
    try:
        p = netns.run(ns, argv, input=stdin, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} timed out"
    if p.returncode == 0:
        return True, ""
    return False, (p.stderr or p.stdout).strip().splitlines()[0][:200] if (
        p.stderr or p.stdout
    ).strip() else f"exit {p.returncode}"


def probe_kernel(kernel: str = "host") -> dict[str, Any]:
    """Probe the running kernel; every probe that programs anything runs in a scratch namespace."""
    caps: dict[str, Any] = {"kernel": kernel, "release": platform.release(), "why": {}}
    why = caps["why"]
    scratch = netns.ns_name(f"caps{os.getpid()}", "probe")
    netns.delete(scratch)
    netns.create(scratch)
    try:
        # IPVS: the proc file exists once ip_vs is in; then add a real virtual server in the scratch ns
        if os.path.exists("/proc/net/ip_vs"):
            ok, err = _probe_in(scratch, ["ipvsadm", "-A", "-t", "10.96.0.10:80", "-s", "rr"])
            caps["ipvs"] = ok
            if not ok:
                why["ipvs"] = f"cannot create an IPVS service: {err}"
        else:
            caps["ipvs"] = False
            why["ipvs"] = f"the {kernel} kernel has no CONFIG_IP_VS (no /proc/net/ip_vs)"

        def add_dummy() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link("add", ifname="kpbdummy0", kind="dummy")

        try:
            netns.call_in(scratch, add_dummy)
            caps["dummy"] = True
        except Exception as e:  # noqa: BLE001 - a probe: any failure means no dummy links, and `why` says it
            caps["dummy"] = False
            why["dummy"] = f"the {kernel} kernel has no dummy links (CONFIG_DUMMY): {e}"

        ok, err = _probe_in(scratch, ["nft", "-f", "-"], _NFT_PROBE)
        caps["nft_nat"] = ok
        if not ok:
            why["nft_nat"] = f"the {kernel} kernel cannot do nftables NAT: {err}"
        for feat, tool in (
            ("iptables_legacy", "iptables-legacy-restore"),
            ("iptables_nft", "iptables-nft-restore"),
        ):
            ok, err = _probe_in(scratch, [tool], _IPT_PROBE)
            caps[feat] = ok
            if not ok:
                why[feat] = f"{tool} fails on the {kernel} kernel: {err}"
        ok, err = _probe_in(scratch, ["ipset", "create", "KPB-PROBE", "hash:ip,port"])
        caps["ipset"] = ok
        if not ok:
            why["ipset"] = f"ipset fails on the {kernel} kernel: {err}"
        caps["br_netfilter"] = os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if not caps["br_netfilter"]:
            why["br_netfilter"] = "no br_netfilter"
    finally:
        netns.delete(scratch)
    return caps


_host_cache: dict[str, Any] | None = None


def host_caps(refresh: bool = False) -> dict[str, Any]:
    """Capabilities of the running (host) kernel, probed once per process."""
    global _host_cache
    if _host_cache is None or refresh:
        _host_cache = probe_kernel("host")
    return dict(_host_cache)


def uml_available() -> bool:
    return uml.available()[0]


def _cache_dir() -> Path:
    for d in (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpbench",
        Path("/var/cache/kpbench"),
    ):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def _uml_key(linux: str = uml.LINUX_UML) -> str:
    st = os.stat(linux)
    return f"{os.path.realpath(linux)}:{st.st_mtime_ns}:{st.st_size}"


def uml_caps(verify: bool = True, *, refresh: bool = False, timeout: float = 300.0) -> dict[str, Any]:
    """Capabilities of the UML guest kernel.

    verify=False: the known facts (KNOWN_UML_CAPS) without booting. verify=True: the probe result
    from booting the guest once, cached under ~/.cache/kpbench (or /var/cache/kpbench) and keyed
    by the linux.uml file's mtime and size. Raises LabError if no guest can be booted.
    """
    ok, why = uml.available()
    if not ok:
        raise LabError(f"no UML guest available: {why}")
    if not verify:
        return json.loads(json.dumps(KNOWN_UML_CAPS))
    key = _uml_key()
    cache = _cache_dir() / f"uml-caps-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"  # one per kernel
    if not refresh:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return data["caps"]
        except (OSError, ValueError, KeyError):
            pass
    with tempfile.TemporaryDirectory(prefix="kpbench-caps-") as run:
        out = Path(run) / "caps.json"
        py = uml.default_command("x")[0]
        res = uml.run_guest(
            run,
            [py, "-m", "harness.lab.caps", "--probe", str(out), "--kernel", "uml"],
            mem="1G",
            timeout=timeout,
            name="caps",
        )
        if res.status != 0 or not out.exists():
            raise LabError(f"probing the UML kernel failed (exit {res.status}): {res.stderr_tail[-300:]}")
        caps = json.loads(out.read_text())
    caps["boot_s"] = res.boot_s
    write_json(cache, {"key": key, "probed_at": time.time(), "caps": caps}, default=None)
    return caps


def mode_requirements(mode: str, iptables_backend: str = "legacy") -> list[str]:
    """Kernel features a proxy mode needs (ipvs mode also programs iptables, with the same backend)."""
    if mode not in MODES:
        raise LabError(f"unknown proxy mode {mode!r} (known: {', '.join(MODES)})")
    return mode_spec(mode).kernel_needs(iptables_backend)


def unsupported(caps: Mapping[str, Any], mode: str, iptables_backend: str = "legacy") -> str | None:
    """None if the kernel described by `caps` runs `mode`, else the reason."""
    for feat in mode_requirements(mode, iptables_backend):
        if not caps.get(feat):
            return (
                caps.get("why", {}).get(feat)
                or f"the {caps.get('kernel', '?')} kernel lacks {FEATURE_TEXT[feat]}"
            )
    return None


def plan_kernels(
    modes: Iterable[str],
    iptables_backend: str = "legacy",
    choice: str = "auto",
    *,
    host: Mapping[str, Any] | None = None,
    uml_: Mapping[str, Any] | None | bool = True,
    spread: bool = False,
) -> dict[str, list[str]]:
    """Which kernel(s) measure each mode: {mode: ["host"] | ["uml"] | ["host", "uml"]}.

    auto: one kernel for every mode when one can (the host preferred); otherwise each mode on a
    kernel that supports it (host preferred), and iptables is measured on every kernel used (as
    the bridge between them), added to the plan even if not asked for. host / uml: that kernel
    for all, or LabError naming the mode and the reason. `host` / `uml_` override the probes
    (uml_=None or False: no UML guest available; True: probe it if needed). spread: in auto, keep
    every mode the host can run on the host even when one guest kernel could run them all (the
    local target: kube-proxy forks helpers, and a fork in UML costs ~100 times the host's).
    """
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise LabError("no proxy modes to plan")
    for m in modes:
        mode_requirements(m, iptables_backend)  # validates the name
    if choice not in ("auto", "host", "uml"):
        raise LabError(f"--kernel {choice!r}: use auto, host or uml")

    host_c = dict(host) if host is not None else None
    uml_c: dict[str, Any] | None | bool = dict(uml_) if isinstance(uml_, Mapping) else uml_

    def get_host() -> dict[str, Any]:
        nonlocal host_c
        if host_c is None:
            host_c = host_caps()
        return host_c

    def get_uml() -> dict[str, Any] | None:
        nonlocal uml_c
        if uml_c is True:
            uml_c = uml_caps() if uml_available() else None
        return uml_c or None

    if choice == "host":
        hc = get_host()
        for m in modes:
            r = unsupported(hc, m, iptables_backend)
            if r:
                raise LabError(f"mode {m} cannot run on the host kernel: {r}; use --kernel auto or uml")
        return {m: ["host"] for m in modes}
    if choice == "uml":
        uc = get_uml()
        if uc is None:
            raise LabError("--kernel uml: no UML guest is available; install user-mode-linux (and kmod)")
        for m in modes:
            r = unsupported(uc, m, iptables_backend)
            if r:
                raise LabError(f"mode {m} cannot run on the UML kernel: {r}; use --kernel auto or host")
        return {m: ["uml"] for m in modes}

    # auto
    hc = get_host()
    on_host = {m: unsupported(hc, m, iptables_backend) for m in modes}
    if not any(on_host.values()):
        return {m: ["host"] for m in modes}
    uc = get_uml()
    if uc is None:
        m, r = next((m, r) for m, r in on_host.items() if r)
        need = FEATURE_TEXT.get(_first_missing(hc, m, iptables_backend), "a kernel feature").split(" (")[0]
        raise LabError(
            f"mode {m} needs {need}: {r} and no UML guest is available; "
            f"install user-mode-linux or leave out mode {m}"
        )
    on_uml = {m: unsupported(uc, m, iptables_backend) for m in modes}
    if not any(on_uml.values()) and not spread:
        return {m: ["uml"] for m in modes}
    plan: dict[str, list[str]] = {}
    for m in modes:
        if not on_host[m]:
            plan[m] = ["host"]
        elif not on_uml[m]:
            plan[m] = ["uml"]
        else:
            raise LabError(f"mode {m} runs on no kernel here: host: {on_host[m]}; uml: {on_uml[m]}")
    used = sorted({k for ks in plan.values() for k in ks}, key=["host", "uml"].index)
    if len(used) > 1:
        caps_of = {"host": hc, "uml": uc}
        bridge = [k for k in used if not unsupported(caps_of[k], BRIDGE_MODE, iptables_backend)]
        if bridge:  # (with the nft backend, only kernels that have it)
            plan[BRIDGE_MODE] = bridge
    return plan


def _first_missing(caps: Mapping[str, Any], mode: str, backend: str) -> str:
    for f in mode_requirements(mode, backend):
        if not caps.get(f):
            return f
    return ""


def _dpkg_version(tool: str) -> str | None:
    path = shutil.which(tool)
    if not path:
        return None
    try:
        pkg = ""
        for cand in (path, os.path.realpath(path), "/sbin/" + tool, "/bin/" + tool):
            p = subprocess.run(["dpkg-query", "-S", cand], capture_output=True, text=True, timeout=10)
            pkg = p.stdout.split(":")[0].strip()
            if pkg:
                break
        if not pkg:
            return None
        v = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True, timeout=10
        )
        return f"{pkg} {v.stdout.strip()}" if v.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def tool_versions() -> dict[str, str | None]:
    """Versions of the userspace tools and the UML kernel (None: not installed)."""
    cmds = {
        "iptables": ["iptables", "--version"],
        "iptables-legacy": ["iptables-legacy", "--version"],
        "nft": ["nft", "--version"],
        "ipset": ["ipset", "--version"],
        "ipvsadm": ["ipvsadm", "--version"],
        "nginx": ["nginx", "-v"],
        "ip": ["ip", "-V"],
    }
    out: dict[str, str | None] = {}
    for name, argv in cmds.items():
        if not shutil.which(argv[0]):
            out[name] = None
            continue
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
            text = [t.strip() for t in (p.stdout + p.stderr).strip().splitlines()]
            good = [t for t in text if "version" in t.lower() or re.search(r"\bv?\d+\.\d+", t)]
            good = [t for t in good if "modprobe" not in t]
            out[name] = good[0] if good else _dpkg_version(argv[0])
        except (OSError, subprocess.TimeoutExpired):
            out[name] = None
    out["linux.uml"] = uml.uml_version() if os.access(uml.LINUX_UML, os.X_OK) else None
    out["uml kernel"] = uml.LINUX_UML
    try:
        p = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "user-mode-linux"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        out["user-mode-linux"] = p.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["user-mode-linux"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.lab.caps")
    ap.add_argument("--probe", metavar="FILE", help="probe this kernel, write JSON to FILE")
    ap.add_argument("--kernel", default="host")
    a = ap.parse_args(argv)
    if a.probe:
        caps = probe_kernel(a.kernel)
        Path(a.probe).write_text(json.dumps(caps))
        return 0
    print(
        json.dumps(
            {"host": host_caps(), "uml": uml_caps() if uml_available() else None, "tools": tool_versions()},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
