"""kube-proxy releases the lab renders, and the ruleset family each mode uses in each (ground floor:
scenario.py and dataplane/ both read it; standard library only).

A family is named after the first release whose proxier programs it; every release of a family
programs the same kernel state for the lab's Services (ClusterIP, NodePort, external IPs, ClientIP
affinity, no endpoints; Cluster traffic policy; clusterCIDR local-traffic detection). Families were
read from pkg/proxy/{iptables,ipvs,nftables}/proxier.go of v1.33.13, v1.34.12, v1.35.4, v1.36.3 and
v1.37.2 (the Go module k8s.io/kubernetes) and the CHANGELOGs of those minors; what differs is listed
in each mode's module docstring. Earlier patches of a minor are taken to program what its newest
read patch does: their CHANGELOGs name no ruleset change for the lab's configuration (v1.33.6 /
v1.34.2's `iif` -> `iifname` fix concerns interface-based local-traffic detection, not the lab's
clusterCIDR), and v1.33.6's three proxiers program the same as v1.33.13's (read too). A patch
release newer than the one read for its minor, or a minor outside the table, is refused
(`UnknownRelease`): the lab never falls back to another family.

Standard library only (the worker imports this inside UML).
"""

from __future__ import annotations

import re

DEFAULT_KUBE_VERSION = "v1.37.2"  # kube/go.mod pins the same release (tests/unit/test_versions.py)

# minor -> newest patch release whose proxiers were read
VERIFIED_PATCH = {33: 13, 34: 12, 35: 4, 36: 3, 37: 2}

# mode -> ((first minor, family), ...), ascending; a family lasts until the next one starts
FAMILIES = {
    "iptables": ((33, "v1.33"),),
    "ipvs": ((33, "v1.33"),),
    "nftables": ((33, "v1.33"), (34, "v1.34"), (36, "v1.36"), (37, "v1.37")),
}

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


class UnknownRelease(ValueError):
    """A kube-proxy version the lab has no ruleset family for; the message lists the known ones."""


def parse(version: str) -> tuple[int, int, int]:
    """'v1.37.2' (or '1.37.2') -> (1, 37, 2); anything else raises UnknownRelease."""
    m = _VERSION.match(str(version).strip())
    if not m:
        raise UnknownRelease(
            f"kube-proxy version {version!r} is not a release like {DEFAULT_KUBE_VERSION}: "
            f"use one of {known_range()}"
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def normalize(version: str) -> str:
    """'1.37.2' -> 'v1.37.2' (validated)."""
    major, minor, patch = parse(version)
    return f"v{major}.{minor}.{patch}"


def known_range() -> str:
    """The releases the lab renders, e.g. 'v1.33.0-v1.33.13, v1.34.0-v1.34.12, ...'."""
    return ", ".join(f"v1.{m}.0-v1.{m}.{p}" for m, p in sorted(VERIFIED_PATCH.items()))


def known_releases() -> list[str]:
    """The newest release read per minor (the ones worth building), oldest first."""
    return [f"v1.{m}.{p}" for m, p in sorted(VERIFIED_PATCH.items())]


def family(mode: str, version: str) -> str:
    """The ruleset family `mode` programs in kube-proxy `version`, e.g. ('nftables', 'v1.36.3') -> 'v1.36'."""
    if mode not in FAMILIES:
        raise ValueError(f"unknown proxy mode {mode!r}: use one of {', '.join(FAMILIES)}")
    major, minor, patch = parse(version)
    newest = VERIFIED_PATCH.get(minor) if major == 1 else None
    if newest is None or patch > newest:
        raise UnknownRelease(
            f"kube-proxy {normalize(version)}: the lab knows no {mode} ruleset for this release; "
            f"use one of {known_range()}"
        )
    found = None
    for first, name in FAMILIES[mode]:
        if minor >= first:
            found = name
    assert found is not None  # every verified minor is >= the first family's
    return found


def families(mode: str) -> list[str]:
    """Every family of `mode`, oldest first."""
    return [name for _first, name in FAMILIES[mode]]


def representative(mode: str, fam: str) -> str:
    """The newest read release of family `fam` of `mode` (what goldens and tests render)."""
    out = [v for v in known_releases() if family(mode, v) == fam]
    if not out:
        raise UnknownRelease(f"no {mode} family {fam!r}: known {', '.join(families(mode))}")
    return out[-1]
