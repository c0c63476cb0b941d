"""kube-proxy's deterministic object names (iptables KUBE-SVC/SEP/EXT chains, nftables chains).

iptables: KUBE-<PFX>-<first 16 chars of base32(sha256(portString + protocol [+ "ip:port"]))>.
nftables: <prefix><first 8 chars of base32(sha256(base))>-<base>, base = "ns/name/proto/portname"
(endpoint chains add "__ip/port"), truncated to 240 characters with "...".
Pure standard library: the worker imports this inside UML.
"""

from __future__ import annotations

from base64 import b32encode
from hashlib import sha256

NFT_CHAIN_MAX = 240


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [_B32[i >> 5] + _B32[i & 31] for i in range(1024)]  # 10 bits -> 2 base32 characters


def _h(s: str, n: int) -> str:
    """First n (8 or 16) characters of base32(sha256(s)), without encoding the whole digest."""
    d = sha256(s.encode()).digest()
    T = _PAIRS
    if n == 16:
        v = int.from_bytes(d[:10], "big")
        return (
            T[v >> 70]
            + T[(v >> 60) & 1023]
            + T[(v >> 50) & 1023]
            + T[(v >> 40) & 1023]
            + T[(v >> 30) & 1023]
            + T[(v >> 20) & 1023]
            + T[(v >> 10) & 1023]
            + T[v & 1023]
        )
    if n == 8:
        v = int.from_bytes(d[:5], "big")
        return T[v >> 30] + T[(v >> 20) & 1023] + T[(v >> 10) & 1023] + T[v & 1023]
    return b32encode(d)[:n].decode()


def iptables_hash(port_string: str, protocol: str) -> str:
    """The 16-character hash shared by KUBE-SVC-/KUBE-SVL-/KUBE-EXT-/KUBE-FW- chains."""
    return _h(port_string + protocol, 16)


def svc_chain(port_string: str, protocol: str) -> str:
    return "KUBE-SVC-" + iptables_hash(port_string, protocol)


def ext_chain(port_string: str, protocol: str) -> str:
    return "KUBE-EXT-" + iptables_hash(port_string, protocol)


def sep_chain(port_string: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-<hash(portString + protocol + "ip:port")>; endpoint is "ip:port" (target port)."""
    return "KUBE-SEP-" + _h(port_string + protocol + endpoint, 16)


def _hash_and_truncate(base: str) -> str:
    name = _h(base, 8) + "-" + base
    if len(name) > NFT_CHAIN_MAX:
        name = name[: NFT_CHAIN_MAX - 3] + "..."
    return name


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """'<HASH8>-ns/name/proto/portname' (the part after 'service-', 'external-' ...)."""
    return _hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}")


def nft_endpoint_base(namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    """'<HASH8>-ns/name/proto/portname__ip/port' (IPv6 colons become dots)."""
    return _hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}__{ip.replace(':', '.')}/{port}")


def nft_service_chain(namespace: str, name: str, protocol: str, port_name: str) -> str:
    return "service-" + nft_service_base(namespace, name, protocol, port_name)


def nft_endpoint_chain(namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    return "endpoint-" + nft_endpoint_base(namespace, name, protocol, port_name, ip, port)


def bulk_hash(strings: list[str], n: int) -> list[str]:
    """[_h(s, n) for s in strings] for n in (8, 16), encoded in one base32 call (much faster)."""
    nbytes = {16: 10, 8: 5}[n]
    big = b"".join([sha256(s.encode()).digest()[:nbytes] for s in strings])
    enc = b32encode(big).decode()
    return [enc[i : i + n] for i in range(0, len(enc), n)]
