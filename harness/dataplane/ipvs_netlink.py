"""ipvs mode's netlink plumbing: raw netlink sockets opened inside a namespace, batches of
messages sent many per sendto() with one acknowledged message closing each batch, the generic
netlink family lookup, and one pyroute2-encoded template per IPVS / address message shape.

Standard library + pyroute2 only (the UML guest imports it).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterable

from harness.lab.netns import LabError, call_in

NLMSG_ERROR = 2
NLMSG_DONE = 3
IP_VS_SVC_F_PERSISTENT = 0x1
F_REQUEST, F_ACK, F_EXCL, F_CREATE = 1, 4, 0x200, 0x400


# ---------------------------------------------------------------------- netlink plumbing
def netlink_socket(ns: str | None, proto: int) -> socket.socket:
    """A raw netlink socket that lives in namespace `ns` (made by a thread that entered it)."""
    if ns is None:
        return _open_nl(proto)
    try:
        return call_in(ns, _open_nl, proto)
    except (OSError, LabError) as e:
        raise LabError(f"cannot open a netlink socket in namespace {ns}: {e}") from None


def _open_nl(proto: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE as root
        try:
            s.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    s.bind((0, 0))
    return s


class NetlinkBatch:
    """Send many pre-encoded requests per sendto(); only errors (and the final ack) come back."""

    MAX_SEND = 60000  # bytes per sendto

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.seq = 1
        self.replied = 0  # highest sequence number an error/ack message arrived for

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def run(self, messages: Iterable[bytearray], what: str, ignore: tuple[int, ...] = ()) -> int:
        """messages: encoded requests whose seq field (bytes 8..12) this method fills in.

        Returns the number sent; raises LabError listing the kernel's errors (except `ignore`d errnos).
        """
        errors: dict[int, int] = {}
        buf: list[bytearray] = []
        size = n = 0
        last = None
        first_seq = self.seq + 1
        for m in messages:
            seq = self.next_seq()
            struct.pack_into("=I", m, 8, seq)
            last = m
            buf.append(m)
            size += len(m)
            n += 1
            if size >= self.MAX_SEND and len(buf) > 1:
                # keep the newest message back: it may be the last one, which must carry the ack flag
                self._send(buf[:-1], errors)
                buf = buf[-1:]
                size = len(m)
        if last is None:
            return 0
        # the last message asks for an ack: when it arrives every earlier error has arrived too
        flags = struct.unpack_from("=H", last, 6)[0]
        struct.pack_into("=H", last, 6, flags | F_ACK)
        self._send(buf, errors)
        self._drain(errors, until=self.seq)
        bad = {s: e for s, e in errors.items() if -e not in ignore and first_seq <= s <= self.seq}
        if bad:
            codes: dict[int, int] = {}
            for e in bad.values():
                codes[-e] = codes.get(-e, 0) + 1
            summary = ", ".join(f"{errno.errorcode.get(c, c)} x{k}" for c, k in codes.items())
            raise LabError(
                f"{what}: the kernel refused {len(bad)} of {n} requests ({summary}); "
                f"first failing request #{min(bad) - first_seq + 1}"
            )
        return n

    def _send(self, buf: list[bytearray], errors: dict[int, int]) -> None:
        if not buf:
            return
        data = b"".join(buf)
        view = memoryview(data)
        while view:
            # netlink processes one sendto synchronously; a message never straddles two sends
            k = self.sock.send(view)
            view = view[k:]
        self._drain(errors, until=None)

    def _drain(self, errors: dict[int, int], until: int | None) -> None:
        sock = self.sock
        while True:
            if until is not None:
                if self.replied >= until:
                    return
                if not select.select([sock], [], [], 60)[0]:
                    raise LabError("netlink: no acknowledgement from the kernel within 60 s")
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if until is None:
                    return
                continue
            off = 0
            while off + 16 <= len(data):
                length, typ, _flags, seq = struct.unpack_from("=IHHI", data, off)
                if typ == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        errors[seq] = code
                    if seq > self.replied:
                        self.replied = seq
                off += (length + 3) & ~3 if length else len(data)


def _genl_family_id(sock: socket.socket, name: str) -> int:
    """CTRL_CMD_GETFAMILY for `name` (generic netlink family ids are global, any netns)."""
    attr_name = name.encode() + b"\0"
    nla = struct.pack("=HH", 4 + len(attr_name), 2) + attr_name  # CTRL_ATTR_FAMILY_NAME
    nla += b"\0" * ((4 - len(nla) % 4) % 4)
    body = struct.pack("=BBH", 3, 1, 0) + nla  # CTRL_CMD_GETFAMILY, version 1
    msg = struct.pack("=IHHII", 16 + len(body), 16, F_REQUEST, 1, 0) + body  # GENL_ID_CTRL = 16
    sock.send(msg)
    data = sock.recv(65536)
    length, typ = struct.unpack_from("=IH", data, 0)
    if typ == NLMSG_ERROR:
        code = struct.unpack_from("=i", data, 16)[0]
        raise LabError(
            f"generic netlink family {name} is not available ({os.strerror(-code)}): "
            f"this kernel has no IPVS (CONFIG_IP_VS); run ipvs mode in the UML guest"
        )
    off = 20
    while off + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, off)
        if atype == 1:  # CTRL_ATTR_FAMILY_ID
            return struct.unpack_from("=H", data, off + 4)[0]
        off += (alen + 3) & ~3
    raise LabError(f"no family id in the reply for {name}")


# ---------------------------------------------------------------------- message templates
class _Templates:
    """Encode one message per shape with pyroute2, then patch address / port bytes per object."""

    SVC_IP, SVC_PORT = "203.0.113.91", 0xFEDC
    DST_IP, DST_PORT = "198.51.100.77", 0xFEDB

    def __init__(self, family_id: int, scheduler: str):
        self.family_id = family_id
        self.scheduler = scheduler
        self._cache: dict = {}

    def _encode_ipvs(self, cmd: int, flags: int, svc_attrs: list, dest_attrs: list | None) -> bytearray:
        from pyroute2.netlink.generic.ipvs import ipvsmsg

        msg = ipvsmsg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": svc_attrs})]
        if dest_attrs is not None:
            msg["attrs"].append(("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs}))
        msg["header"]["type"] = self.family_id
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = 0
        msg.encode()
        return bytearray(msg.data)

    def _svc_key_attrs(self, proto: int) -> list:
        return [
            ("IPVS_SVC_ATTR_AF", socket.AF_INET),
            ("IPVS_SVC_ATTR_PROTOCOL", proto),
            ("IPVS_SVC_ATTR_ADDR", self.SVC_IP),
            ("IPVS_SVC_ATTR_PORT", self.SVC_PORT),
        ]

    def _offsets(self, data: bytearray, ip: str, port: int) -> tuple[int, int]:
        a = data.find(socket.inet_aton(ip))
        p = data.find(struct.pack(">H", port))
        if a < 0 or p < 0:
            raise RuntimeError("cannot locate the template fields in the encoded message")
        return a, p

    def service(self, cmd: int, flags: int, proto: int, timeout: int | None):
        k = ("svc", cmd, flags, proto, timeout)
        t = self._cache.get(k)
        if t is None:
            attrs = self._svc_key_attrs(proto)
            if cmd != 3:  # not DEL: full description
                pflags = IP_VS_SVC_F_PERSISTENT if timeout else 0
                attrs += [
                    ("IPVS_SVC_ATTR_SCHED_NAME", self.scheduler),
                    ("IPVS_SVC_ATTR_FLAGS", {"flags": pflags, "mask": 0xFFFFFFFF}),
                    ("IPVS_SVC_ATTR_TIMEOUT", timeout or 0),
                    ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
                ]
            data = self._encode_ipvs(cmd, flags, attrs, None)
            t = self._cache[k] = (data, *self._offsets(data, self.SVC_IP, self.SVC_PORT))
        return t

    def dest(self, cmd: int, flags: int, proto: int):
        k = ("dst", cmd, flags, proto)
        t = self._cache.get(k)
        if t is None:
            dattrs = [
                ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET),
                ("IPVS_DEST_ATTR_ADDR", self.DST_IP),
                ("IPVS_DEST_ATTR_PORT", self.DST_PORT),
            ]
            if cmd != 7:  # not DEL
                dattrs += [
                    ("IPVS_DEST_ATTR_FWD_METHOD", 0),
                    ("IPVS_DEST_ATTR_WEIGHT", 1),
                    ("IPVS_DEST_ATTR_U_THRESH", 0),
                    ("IPVS_DEST_ATTR_L_THRESH", 0),
                ]
            data = self._encode_ipvs(cmd, flags, self._svc_key_attrs(proto), dattrs)
            sa, sp = self._offsets(data, self.SVC_IP, self.SVC_PORT)
            da, dp = self._offsets(data, self.DST_IP, self.DST_PORT)
            t = self._cache[k] = (data, sa, sp, da, dp)
        return t

    def addr(self, msg_type: int, flags: int, ifindex: int):
        k = ("addr", msg_type, flags, ifindex)
        t = self._cache.get(k)
        if t is None:
            from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

            msg = ifaddrmsg()
            msg["family"] = socket.AF_INET
            msg["prefixlen"] = 32
            msg["index"] = ifindex
            msg["attrs"] = [("IFA_LOCAL", self.SVC_IP), ("IFA_ADDRESS", self.SVC_IP)]
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg.encode()
            data = bytearray(msg.data)
            packed = socket.inet_aton(self.SVC_IP)
            a1 = data.find(packed)
            a2 = data.find(packed, a1 + 4)
            t = self._cache[k] = (data, a1, a2)
        return t
