#!/usr/bin/python3
# hostsetup-ivshmem-server: installed by hostsetup's ivshmem step; do not edit.
"""An ivshmem doorbell server (QEMU's ``ivshmem-server`` protocol), standard library only.

Debian's QEMU packages do not ship ``ivshmem-server`` (a QEMU contrib tool), so
hostsetup installs this one and runs it as a systemd unit.  Each client (QEMU's
``ivshmem-doorbell`` device, or a host program) that connects to ``--socket``
gets, as in docs/specs/ivshmem-spec.rst of QEMU, little-endian int64 messages:

1. the protocol version (0); 2. its peer id; 3. -1 with the shared memory's fd;
4. for each other peer, its id once per vector, each with that peer's eventfd;
5. its own id once per vector, each with its own eventfd.

The other peers then get the new id with each of its eventfds, and, when a
client goes, its id without an fd.  The shared memory is an anonymous memfd of
``--size`` MiB: it has no name anyone could open or squat; only clients of the
socket (mode ``--mode``, default 0660, owner ``--owner``) map it.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import selectors
import signal
import socket
import stat
import struct
import sys
from dataclasses import dataclass, field

PROTOCOL_VERSION = 0
MAX_PEERS = 65536
SEND_TIMEOUT = 5.0  # seconds: a client that does not read its messages is dropped


@dataclass
class Peer:
    """One connected client: its id, socket and one eventfd per vector."""

    ident: int
    sock: socket.socket
    eventfds: list[int] = field(default_factory=list)


def send(sock: socket.socket, value: int, fd: int | None = None) -> None:
    """One message: a little-endian int64, with ``fd`` attached when given."""
    data = struct.pack("<q", value)
    if fd is None:
        sock.sendall(data)
    else:
        socket.send_fds(sock, [data], [fd])


class Server:
    """The listening socket, the shared memory and the peers."""

    def __init__(self, path: str, size_mib: int, vectors: int) -> None:
        self.vectors = vectors
        self.memfd = os.memfd_create("ivshmem", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, size_mib * 1024 * 1024)
        self.peers: dict[int, Peer] = {}
        if os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket of an earlier run
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)

    def accept(self) -> None:
        """Greet a new client and introduce it to the others (and them to it)."""
        sock, _addr = self.listener.accept()
        sock.settimeout(SEND_TIMEOUT)
        ident = next((i for i in range(MAX_PEERS) if i not in self.peers), None)
        if ident is None:
            sock.close()
            return
        peer = Peer(ident, sock, [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(self.vectors)])
        try:
            send(sock, PROTOCOL_VERSION)
            send(sock, ident)
            send(sock, -1, self.memfd)
            for other in self.peers.values():
                for fd in other.eventfds:
                    send(sock, other.ident, fd)
            for fd in peer.eventfds:
                send(sock, ident, fd)
        except OSError:
            self.close(peer)
            return
        self.peers[ident] = peer
        self.sel.register(sock, selectors.EVENT_READ, peer)
        for other in list(self.peers.values()):
            if other is not peer:
                try:
                    for fd in peer.eventfds:
                        send(other.sock, ident, fd)
                except OSError:
                    self.drop(other)

    def close(self, peer: Peer) -> None:
        """Close a peer's socket and eventfds."""
        peer.sock.close()
        for fd in peer.eventfds:
            os.close(fd)

    def drop(self, peer: Peer) -> None:
        """A client went: forget it and tell the others (its id, no fd)."""
        if self.peers.pop(peer.ident, None) is None:
            return
        self.sel.unregister(peer.sock)
        self.close(peer)
        for other in list(self.peers.values()):
            try:
                send(other.sock, peer.ident)
            except OSError:
                self.drop(other)

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT."""
        while True:
            for key, _events in self.sel.select():
                if key.fileobj is self.listener:
                    self.accept()
                    continue
                peer = key.data
                try:
                    data = peer.sock.recv(4096)  # clients send nothing; empty: gone
                except OSError:
                    data = b""
                if not data:
                    self.drop(peer)


def main(argv: list[str]) -> int:
    """``ivshmem_server.py --socket PATH --size MIB --vectors N [--mode 0660] [--owner U:G]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--size", type=int, default=4, help="shared memory in MiB")
    parser.add_argument("--vectors", type=int, default=1)
    parser.add_argument("--mode", default="0660")
    parser.add_argument("--owner", default="")
    args = parser.parse_args(argv)
    server = Server(args.socket, args.size, args.vectors)
    user, _, group = args.owner.partition(":")
    os.chown(args.socket, pwd.getpwnam(user).pw_uid if user else -1,
             grp.getgrnam(group).gr_gid if group else -1)
    os.chmod(args.socket, int(args.mode, 8))

    def stop(_signum: int, _frame: object) -> None:
        os.unlink(server.path)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ivshmem server on {args.socket}: {args.size} MiB, {args.vectors} vectors",
          flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
