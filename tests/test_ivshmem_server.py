"""The doorbell server hostsetup installs (QEMU's ivshmem-server protocol), run as its
unit runs it, with two clients speaking the protocol as QEMU's ivshmem-doorbell does."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from steps.ivshmem import SERVER_SOURCE

VECTORS = 2


def message(sock: socket.socket) -> tuple[int, int | None]:
    """One server message: (the int64, the fd that came with it, if any)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 8, 1)
    assert len(data) == 8, data
    return struct.unpack("<q", data)[0], (fds[0] if fds else None)


def fd_of(msg: tuple[int, int | None]) -> int:
    """The fd of a message that must carry one."""
    assert msg[1] is not None, f"message {msg[0]} came without an fd"
    return msg[1]


def connect(path: Path) -> tuple[socket.socket, int, int, dict[int, list[int]]]:
    """A client: (socket, its id, the memory fd, its own eventfds by id + the peers')."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    assert message(sock) == (0, None)  # protocol version
    ident, none = message(sock)
    assert none is None
    minus_one = message(sock)
    assert minus_one[0] == -1
    fds: dict[int, list[int]] = {}
    while len(fds.get(ident, [])) < VECTORS:
        peer, fd = message(sock)
        fds.setdefault(peer, []).append(fd_of((peer, fd)))
    return sock, ident, fd_of(minus_one), fds


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    """The server on a private socket (1 MiB, two vectors), stopped afterwards."""
    path = tmp_path / "ivshmem.sock"
    proc = subprocess.Popen(["/usr/bin/python3", str(SERVER_SOURCE), "--socket", str(path),
                             "--size", "1", "--vectors", str(VECTORS), "--mode", "0600"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "ivshmem server on" in proc.stdout.readline()
        yield path
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not path.exists()  # removed at SIGTERM


def test_two_peers_share_memory_and_ring_each_other(server: Path) -> None:
    assert server.stat().st_mode & 0o777 == 0o600
    a, a_id, a_mem, a_fds = connect(server)
    b, b_id, b_mem, b_fds = connect(server)
    assert (a_id, b_id) == (0, 1)
    assert len(b_fds[a_id]) == VECTORS  # b learns a's doorbells on connect
    b_on_a = [fd_of(message(a)) for _ in range(VECTORS)]  # a is told of b
    assert os.fstat(a_mem).st_size == os.fstat(b_mem).st_size == 1 << 20
    with mmap.mmap(a_mem, 1 << 20) as ma, mmap.mmap(b_mem, 1 << 20) as mb:
        ma[100] = 0x5A
        assert mb[100] == 0x5A  # one memory
    os.eventfd_write(b_on_a[1], 1)  # a rings b's vector 1
    assert os.eventfd_read(b_fds[b_id][1]) == 1
    b.close()
    deadline = time.monotonic() + 10
    while True:  # b's departure: its id without an fd
        gone = message(a)
        if gone == (b_id, None) or time.monotonic() > deadline:
            break
    assert gone == (b_id, None)
    a.close()
