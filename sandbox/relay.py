"""A byte relay between a TCP port on 127.0.0.1 and a unix socket (standard library only).

A sandbox host has a private network: what is remote by nature (the vSphere
simulator, Redis) listens on the machine's loopback.  Two relays carry a port
into a host without any other address: outside, ``unix-to-tcp`` listens on a
unix socket under ``DIR/run/relay`` (bound into the host at the same path) and
connects to the port; inside, ``tcp-to-unix`` listens on the same port on the
host's own 127.0.0.1 and connects to that socket.  So ``127.0.0.1:PORT`` means
the same service inside the host and out, and URLs, thumbprints and answers
stay valid in both.

``python3 relay.py tcp-to-unix PORT SOCKET`` | ``unix-to-tcp SOCKET PORT``
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 65536


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def _serve(listener: socket.socket, connect: tuple[int, object]) -> None:
    family, address = connect
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.settimeout(10)  # a bounded connect; then blocking like the client
        try:
            upstream.connect(address)  # type: ignore[arg-type]
        except OSError:
            client.close()
            upstream.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    """Listen as told and relay every connection; runs until killed."""
    if len(argv) != 3 or argv[0] not in ("tcp-to-unix", "unix-to-tcp"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, a, b = argv
    if mode == "tcp-to-unix":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(a)))
        target: tuple[int, object] = (socket.AF_UNIX, b)
    else:
        if os.path.exists(a):
            os.unlink(a)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(a)
        target = (socket.AF_INET, ("127.0.0.1", int(b)))
    listener.listen(64)
    _serve(listener, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
