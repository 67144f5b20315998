"""Listening sockets from the kernel's socket diagnostics (NETLINK_SOCK_DIAG). Stdlib only.

The supervisor's listener check (runtime/supervisor.py) asks the kernel, about once a
second, for the sockets that can take traffic from anyone: TCP sockets in LISTEN, and UDP
sockets that are bound but not connected (a UDP socket has no LISTEN state: an unconnected
one takes datagrams from every peer; a connected one only from its peer). The kernel
filters by state (``idiag_states``), so a dump carries only those sockets, a few dozen
bytes each, IPv4 and IPv6 alike, and each comes with its inode: the supervisor matches
inodes against its workload's socket fds only for sockets on an address that is not
allowed. No parse of ``/proc/net/*``.

A dump sees one network namespace: the one its netlink socket was created in.
``Dumper(netns=PATH)`` creates it inside another (``setns``, which needs CAP_SYS_ADMIN)
and goes back; the socket stays bound to that namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_ESTABLISHED = 1
TCP_CLOSE = 7  # an unconnected UDP socket
TCP_LISTEN = 10
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (zeroed:
# every socket of the family and protocol)
_REQ = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid (sport, dport: big endian;
# src, dst: 16 bytes each; interface; cookie); expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


class Listener:
    """One socket that takes traffic from anyone: protocol, address, port, inode."""

    __slots__ = ("addr", "inode", "port", "proto")

    def __init__(self, proto: str, addr: str, port: int, inode: int) -> None:
        self.proto = proto  # "tcp" or "udp"
        self.addr = addr  # as written by inet_ntop; an IPv4-mapped IPv6 one as IPv4
        self.port = port
        self.inode = inode

    def __repr__(self) -> str:
        return f"<Listener {self.proto} {self.shown()} inode={self.inode}>"

    def shown(self) -> str:
        """``0.0.0.0:80``, ``[::]:80``."""
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # ::ffff:a.b.c.d reaches IPv4 a.b.c.d
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


# (protocol, family, states) of each dump
QUERIES = (
    ("tcp", socket.AF_INET, 1 << TCP_LISTEN),
    ("tcp", socket.AF_INET6, 1 << TCP_LISTEN),
    ("udp", socket.AF_INET, 1 << TCP_CLOSE),
    ("udp", socket.AF_INET6, 1 << TCP_CLOSE),
)
_PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class Dumper:
    """A NETLINK_SOCK_DIAG socket (of this namespace, or of ``netns``) and its dumps.

    Raises OSError when the socket cannot be made (no such namespace, no CAP_SYS_ADMIN
    for ``setns``, a kernel without sock_diag).
    """

    def __init__(self, netns: str | None = None) -> None:
        self.seq = 0
        if netns is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        else:
            self.sock = _socket_in(netns)
        self.buf = bytearray(1 << 16)
        # "UDP/IPv6" -> why the kernel refused that dump (e.g. no udp_diag module): skipped
        self.unavailable: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Dumper fd={self.sock.fileno()}>"

    def close(self) -> None:
        self.sock.close()

    def listeners(self) -> list[Listener]:
        """Every TCP listener and unconnected UDP socket of the namespace.

        A dump the kernel refuses is skipped from then on (named in ``unavailable``);
        OSError when every one is refused.
        """
        out: list[Listener] = []
        for proto, family, states in QUERIES:
            what = f"{proto.upper()}/IPv{4 if family == socket.AF_INET else 6}"
            if what in self.unavailable:
                continue
            try:
                self._dump(proto, family, states, out)
            except OSError as exc:  # this dump only: the others still hold
                self.unavailable[what] = exc.strerror or str(exc)
        if len(self.unavailable) == len(QUERIES):
            raise OSError(f"no socket diagnostics: {self.unavailable}")
        return out

    def _dump(self, proto: str, family: int, states: int, out: list[Listener]) -> None:
        self.seq += 1
        body = _REQ.pack(family, _PROTO[proto], 0, 0, states)
        head = _HDR.pack(
            _HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0
        )
        self.sock.send(head + body)
        view = memoryview(self.buf)
        while True:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + _HDR.size <= n:
                length, kind, _flags, seq, _pid = _HDR.unpack_from(view, off)
                if length < _HDR.size:
                    return  # malformed: stop reading this dump
                if seq == self.seq:
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        # A dump's error comes in its DONE message, a request's in ERROR.
                        code = 0
                        if length >= _HDR.size + 4:
                            (code,) = struct.unpack_from("=i", view, off + _HDR.size)
                        if code < 0:
                            raise OSError(-code, os.strerror(-code))
                        return
                    if kind == SOCK_DIAG_BY_FAMILY and length >= _HDR.size + _MSG.size:
                        f = _MSG.unpack_from(view, off + _HDR.size)
                        out.append(
                            Listener(
                                proto, _address(f[0], f[6]), int.from_bytes(f[4], "big"), f[14]
                            )
                        )
                off += (length + 3) & ~3
            if n == 0:
                return


def _socket_in(netns: str) -> socket.socket:
    """A sock_diag socket created inside the network namespace at ``netns``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), netns)
            try:
                return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:  # never stay in the workload's
                    err = ctypes.get_errno()
                    os.write(2, f"las: setns back failed: {os.strerror(err)}\n".encode())
                    os._exit(70)
        finally:
            os.close(target)
    finally:
        os.close(own)


def socket_inodes(pids: list[int]) -> dict[int, int]:
    """inode -> pid for every socket fd of ``pids`` (those gone are skipped)."""
    out: dict[int, int] = {}
    for pid in pids:
        base = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(base):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"{base}/{fd}")
                    if link.startswith("socket:["):
                        out.setdefault(int(link[8:-1]), pid)
    return out


def netns_of(pid: int) -> int | None:
    """The inode of ``pid``'s network namespace (None: gone, or not ours to see)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
