"""Host sysctls the test cluster changes, recorded before it starts and put back at `down`.

kubelet sets kernel-wide values on start (protectKernelDefaults: false lets it): kernel.panic,
kernel.panic_on_oops, vm.overcommit_memory, vm.panic_on_oom and kernel.keys.*. The network
sysctls kube-proxy and the CNI bridge plugin set (ip_forward, route_localnet, bridge-nf-call-*)
are per network namespace and go with the node namespaces; those of the root namespace are
recorded too, as a check that nothing leaked there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

WATCHED = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)


def _path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read(keys: Iterable[str] = WATCHED) -> dict[str, str]:
    """The current value of every key that exists on this kernel (whitespace-normalised)."""
    out = {}
    for key in keys:
        try:
            out[key] = " ".join(_path(key).read_text().split())
        except OSError:
            continue
    return out


def restore(found: Mapping[str, str]) -> list[str]:
    """Write back every value in `found` that differs now; returns "key: now -> found" per change
    (and "key: ... (failed: why)" for one that could not be written)."""
    changed = []
    now = read(found)
    for key, value in found.items():
        if key not in now or now[key] == value:
            continue
        try:
            _path(key).write_text(value)
            changed.append(f"{key}: {now[key]} -> {value}")
        except OSError as e:
            changed.append(f"{key}: {now[key]} -> {value} (failed: {e.strerror})")
    return changed
