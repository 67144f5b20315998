"""The sock_diag dumps of the listener check (runtime/sockdiag.py), on real sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from localaistack.runtime import sockdiag


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def _open(made: list[socket.socket], family: int, kind: int, addr: str) -> socket.socket:
    s = socket.socket(family, kind)
    made.append(s)
    s.bind((addr, 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


def _inode(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_tcp_and_udp_listeners_of_both_families(sockets: list[socket.socket]) -> None:
    cases = [
        (socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", "tcp", "0.0.0.0"),
        (socket.AF_INET6, socket.SOCK_STREAM, "::", "tcp", "::"),
        (socket.AF_INET6, socket.SOCK_STREAM, "::ffff:0.0.0.0", "tcp", "0.0.0.0"),
        (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", "udp", "127.0.0.1"),
        (socket.AF_INET6, socket.SOCK_DGRAM, "::1", "udp", "::1"),
    ]
    expected = {}
    for family, kind, addr, proto, shown in cases:
        s = _open(sockets, family, kind, addr)
        expected[_inode(s)] = (proto, shown, s.getsockname()[1])
    dumper = sockdiag.Dumper()
    try:
        found = {x.inode: (x.proto, x.addr, x.port) for x in dumper.listeners()}
    finally:
        dumper.close()
    for inode, want in expected.items():
        assert found.get(inode) == want


def test_connected_and_unlistened_sockets_are_not_listeners(
    sockets: list[socket.socket],
) -> None:
    client = _open(sockets, socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")
    client.connect(("127.0.0.1", 9))
    bound = socket.socket()  # TCP, bound but not listening
    sockets.append(bound)
    bound.bind(("0.0.0.0", 0))
    dumper = sockdiag.Dumper()
    try:
        inodes = {x.inode for x in dumper.listeners()}
    finally:
        dumper.close()
    assert _inode(client) not in inodes and _inode(bound) not in inodes


def test_socket_inodes_and_netns() -> None:
    s = socket.socket()
    try:
        owners = sockdiag.socket_inodes([os.getpid(), 999_999_999])
        assert owners[_inode(s)] == os.getpid()
    finally:
        s.close()
    assert sockdiag.netns_of(os.getpid()) == os.stat("/proc/self/ns/net").st_ino
    assert sockdiag.netns_of(999_999_999) is None


def test_a_namespace_that_does_not_exist() -> None:
    with pytest.raises(OSError):
        sockdiag.Dumper("/proc/999999999/ns/net")


def test_a_dump_the_kernel_refuses_is_skipped_and_named(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No inet_diag handler for protocol 200: the UDP dumps are refused, TCP goes on.
    monkeypatch.setitem(sockdiag._PROTO, "udp", 200)
    s = _open(sockets, socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0")
    dumper = sockdiag.Dumper()
    try:
        assert _inode(s) in {x.inode for x in dumper.listeners()}
        assert set(dumper.unavailable) == {"UDP/IPv4", "UDP/IPv6"}
        assert _inode(s) in {x.inode for x in dumper.listeners()}  # skipped from then on
    finally:
        dumper.close()
