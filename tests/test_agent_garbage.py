"""A fleet agent survives garbage on its queue: the sandbox's real Redis and a real agent.

Entries that are not kombu message envelopes are pushed straight onto the
host's queue with LPUSH (not JSON, not UTF-8, 5 MB, JSON of the wrong
shape), and messages Celery refuses are published with a huge header.  The
agent logs each one in bounded form, drops it, and a real ``fleet plan``
right after still gets the host's result.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import hostsetup

from sandbox import manage
from sandbox import redis as redis_component
from sandbox.core import Sandbox, alive
from wizard import fleet as fleet_mod

HOST = "hv1"
BIG = 5 * 1024 * 1024
GARBAGE: list[bytes] = [
    b"{not json",
    b"\xff\xfe\x00\x9c binary \x00\x01",
    b"{" + b"x" * BIG,  # 5 MB, not JSON
    b"[1, 2, 3]",  # JSON, not an envelope
    b'{"body": "e30=", "properties": "not a mapping"}',
    b'{"body": "!!! not base64 !!!", "headers": {}, "content-type": "application/json",'
    b' "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": {}}}',
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Redis and one agent on this machine (a host with no system of its own: the
    agent's transport is what is tested, not a host)."""
    directory = tmp_path_factory.mktemp("garbage")
    try:
        yield manage.up_fleet(directory, 1, components=[])
    finally:
        manage.down(directory)


def broker(fleet: Sandbox) -> fleet_mod.BrokerConfig:
    return fleet_mod.broker_config(None, None, {}, dict(fleet.env))


def agent_log(fleet: Sandbox) -> str:
    return (fleet.logs / f"agent-{HOST}.log").read_text(errors="replace")


def publish_refused(fleet: Sandbox, task: str, huge: str) -> None:
    """A well-formed Celery message that the agent refuses (unregistered task name),
    carrying a huge header (what Celery logs when it refuses one)."""
    from kombu import Connection, Exchange, Queue

    name = fleet_mod.queue_name(HOST)
    task_id = uuid.uuid4().hex
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
               "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
               "timelimit": [None, None], "origin": "test", "argsrepr": huge}
    body: Any = ([], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(broker(fleet).full_url()) as conn:
        conn.Producer().publish(body, serializer="json", headers=headers,
                                exchange=Exchange(name), routing_key=name,
                                declare=[Queue(name, Exchange(name), routing_key=name)])


def test_agent_drops_garbage_and_keeps_consuming(fleet: Sandbox, tmp_path: Path) -> None:
    client = redis.Redis.from_url(broker(fleet).full_url())
    queue = fleet_mod.queue_name(HOST)
    for entry in GARBAGE:
        client.lpush(queue, entry)
    huge = "H" * BIG
    publish_refused(fleet, "os.system", huge)
    publish_refused(fleet, "x" * 100_000, "h")  # a huge task name: in the error itself

    report = tmp_path / "plan.json"
    res = hostsetup("fleet", "plan", "--answers", str(fleet.dir / "fleet-answers.yaml"),
                    "--lines", "--report", str(report), env=dict(fleet.env), timeout=120)
    assert res.returncode in (0, 4), res.stdout + res.stderr
    host = json.loads(report.read_text())["hosts"][0]
    assert host["name"] == HOST and host["status"] in ("pending", "unchanged"), host
    assert client.llen(queue) == 0  # every entry was taken
    pid = next(p.pid for p in reversed(fleet.procs) if p.name == f"agent-{HOST}")
    assert alive(pid)

    log = agent_log(fleet)
    assert "Unrecoverable error" not in log
    assert log.count("dropped an undecodable entry") == 3, log[-5000:]
    assert log.count("that is not a message envelope") == 3
    assert repr(b"{not json") in log
    assert f"... ({BIG + 1} bytes)" in log  # the 5 MB entry: a preview and its size
    assert "Received unregistered task of type 'os.system'" in log
    assert "characters, truncated]" in log
    longest = max(len(line) for line in log.splitlines())
    assert longest <= fleet_mod.LOG_LINE_LIMIT + 200, longest


def test_redis_config_is_0600(fleet: Sandbox) -> None:
    conf = redis_component.password_file(fleet).parent / "redis.conf"
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(redis_component.password_file(fleet)).st_mode) == 0o600


@pytest.mark.parametrize("blocking", [True, False], ids=["brpop", "get"])
def test_transport_drops_garbage_in_both_read_paths(fleet: Sandbox, blocking: bool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The event loop's BRPOP read and the polling ``_get`` both drop garbage and
    deliver the message behind it."""
    import queue as queue_mod

    from kombu import Connection

    from wizard.fleet_transport import Transport

    name = f"hostsetup.test.garbage-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(broker(fleet).full_url())
    with Connection(broker(fleet).full_url(), transport=Transport) as conn:
        q = conn.SimpleQueue(name)
        try:
            for entry in GARBAGE:
                client.lpush(name, entry)
            q.put({"hello": "agent"})
            got = None
            for _ in range(3 * len(GARBAGE)):
                try:
                    got = q.get(block=True, timeout=2) if blocking else q.get_nowait()
                    break
                except queue_mod.Empty:
                    continue
            assert got is not None and got.payload == {"hello": "agent"}
            got.ack()
        finally:
            q.clear()
            q.close()
            client.delete(name)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == len(GARBAGE), dropped
    assert all(len(m) < 600 for m in dropped)
