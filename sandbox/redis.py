"""Sandbox component: redis-server, the fleet's broker and result store.

redis-server listens on 127.0.0.1 on a free port picked at run time (never
its default 6379), requires a password (generated, kept in
``DIR/redis/password``, mode 0600) and keeps an append-only file in
``DIR/redis`` so that a restart during a fleet run loses nothing, as a
production broker with persistence would.  Exports ``HOSTSETUP_REDIS_URL``
(no password in it) and ``HOSTSETUP_REDIS_PASSWORD`` (a secret reference,
``file:DIR/redis/password``); ``redis-cli -u URL --askpass`` inspects it.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from backends.hostfiles import atomic_write
from sandbox.core import Sandbox, alive, kill_group

PROC = "redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def password_file(sb: Sandbox) -> Path:
    """Where the sandbox's Redis password is kept (mode 0600)."""
    return sb.path("redis", "password")


def _answers_ping(port: int, password: str) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, password=password,
                                socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start(sb: Sandbox, port: int) -> int:
    """Start redis-server on ``port`` (also to restart it in tests); returns its pid."""
    data = password_file(sb).parent
    password = password_file(sb).read_text().strip()
    conf = data / "redis.conf"
    # The password goes in a config file that is 0600 from its creation on,
    # not on the command line.
    atomic_write(conf, (
        f"bind 127.0.0.1\nport {port}\ndir {data}\nrequirepass {password}\n"
        'save ""\nappendonly yes\nappendfsync always\ndaemonize no\n'
    ).encode(), 0o600)
    return sb.spawn(PROC, ["redis-server", str(conf)],
                    ready=lambda: _answers_ping(port, password))


def stop(sb: Sandbox) -> None:
    """Stop redis-server (SIGTERM: it flushes its append-only file first)."""
    for proc in sb.procs:
        if proc.name == PROC and alive(proc.pid):
            kill_group(proc.pid, 10)
    sb.procs = [p for p in sb.procs if p.name != PROC]
    sb.save()


def port_of(sb: Sandbox) -> int:
    """The port the sandbox's Redis listens on (from its exported URL)."""
    return int(sb.env["HOSTSETUP_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])


def restart(sb: Sandbox) -> int:
    """Stop and start redis-server on the same port; returns the new pid."""
    stop(sb)
    return start(sb, port_of(sb))


def up(sb: Sandbox) -> None:
    """Start redis-server; export its URL and a reference to its password."""
    secret = password_file(sb)
    atomic_write(secret, (secrets.token_hex(16) + "\n").encode(), 0o600)
    port = free_port()
    start(sb, port)
    sb.export("HOSTSETUP_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    sb.export("HOSTSETUP_REDIS_PASSWORD", f"file:{secret}")


__all__ = ["up", "start", "stop", "restart", "port_of", "free_port", "password_file"]
