"""Confirm or revert through fleet agents: two sandbox hosts, each with the agent unit of
``deploy/`` (a Celery worker under the host's systemd) and Redis reached through the
host's own 127.0.0.1.  The answers stop NetworkManager.service, a risky operation
(it carries the management connection).

- ``fleet apply --confirm-within``: each agent opens the window on its host; the
  controller's ``confirm`` task reaches the agent through the broker and the change
  is kept (the host's record says so).
- On hv1, stopping NetworkManager really cuts the agent off: a drop-in takes the
  host's loopback down when it stops (and up when it starts), and the agent's only way
  to Redis is 127.0.0.1.  The controller hears nothing more from hv1, the canary (its
  apply is ``unknown``), so hv2 is not applied; hv1's keeper reverts when the window
  closes: NetworkManager runs again, read back with systemctl, the agent comes back,
  and the record says reverted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import hostsetup, systemctl

from sandbox import host as host_mod
from sandbox import manage
from sandbox.core import Sandbox
from wizard.answers import write

HOSTS = ("hv1", "hv2")
UNIT = "NetworkManager.service"
CUT = "/etc/systemd/system/NetworkManager.service.d/50-test-cut.conf"
WITHIN = 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("cf") / "fleet"
    try:
        manage.up_fleet(directory, len(HOSTS), components=[manage.HOST])
        write(directory / "stop.yaml", {"version": 1, "services": {"stop": [UNIT]},
                                        "hosts": [{"name": n} for n in HOSTS]})
        yield directory
    finally:
        manage.down(directory)


def member(fleet: Path, name: str) -> Sandbox:
    return Sandbox.load(fleet / name)


def fleet_apply(fleet: Path, report: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    sb = Sandbox.load(fleet)
    env = {k: sb.env[k] for k in ("HOSTSETUP_REDIS_URL", "HOSTSETUP_REDIS_PASSWORD")}
    res = hostsetup("fleet", "apply", "--answers", str(fleet / "stop.yaml"), "--lines",
                    "--report", str(report), *extra, env=env, timeout=300)
    return res.returncode, json.loads(report.read_text()), res.stdout + res.stderr


def host(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in data["hosts"] if h["name"] == name)


def record(fleet: Path, name: str, run: str) -> dict[str, Any]:
    """The host's confirmation record, read from outside (its root)."""
    root = Path(member(fleet, name).env["HOSTSETUP_HOST_ROOT"])
    data: dict[str, Any] = json.loads(
        (root / "var/lib/hostsetup/confirm" / f"{run}.json").read_text())
    return data


def active(fleet: Path, name: str) -> str:
    """The unit's state as systemctl on the host reads it (is-active exits 3 when not)."""
    return host_mod.run_inside(member(fleet, name), "state", "sh", "-c",
                               f"systemctl is-active {UNIT} || true").strip()


def restore(fleet: Path) -> None:
    for name in HOSTS:
        systemctl(member(fleet, name), "start", UNIT)


def test_the_controller_confirms_through_the_broker(fleet: Path, tmp_path: Path) -> None:
    code, data, out = fleet_apply(fleet, tmp_path / "r.json", "--confirm-within", str(WITHIN))
    try:
        assert code == 0, out
        for name in HOSTS:
            h = host(data, name)
            assert h["status"] == "applied" and h["confirm"]["state"] == "kept", out
            rec = record(fleet, name, h["confirm"]["run"])
            assert rec["state"] == "confirmed", rec
            assert f"fleet run {data['run_id']}" in rec["how"]
            assert active(fleet, name) == "inactive"
        time.sleep(3)  # the keeper saw the confirmation: nothing is reverted later
        assert {active(fleet, n) for n in HOSTS} == {"inactive"}
    finally:
        restore(fleet)


@pytest.mark.timeout(600)
def test_a_change_that_cuts_the_agent_off_is_reverted_by_the_host(
        fleet: Path, tmp_path: Path) -> None:
    hv1 = member(fleet, "hv1")
    host_mod.run_inside(hv1, "cut drop-in", "sh", "-ec", (
        f"mkdir -p {Path(CUT).parent}\n"
        f"printf '[Service]\\nExecStopPost=/usr/sbin/ip link set lo down\\n"
        f"ExecStartPre=/usr/sbin/ip link set lo up\\n' > {CUT}\n"
        "systemctl daemon-reload"))
    try:
        started = time.monotonic()
        code, data, out = fleet_apply(fleet, tmp_path / "r.json", "--confirm-within",
                                      str(WITHIN), "--timeout", "120")
        # hv1 is the canary: cut off, it fails, and the rollout stops there.
        assert code == 1, out
        hv1_report = host(data, "hv1")
        assert hv1_report["status"] == "unknown", out
        assert any("the host reverts it when its confirmation window closes" in e
                   for e in hv1_report["errors"]), out
        assert host(data, "hv2")["status"] == "skipped", out
        # Every process of hv1's agent killed during the window (systemd restarts it):
        # the keeper runs in a unit of its own and is not among them.
        systemctl(hv1, "kill", "--signal=SIGKILL", "hostsetup-agent.service")
        # hv1's keeper reverts at the deadline: NetworkManager runs again (and with it
        # the loopback), read back with systemctl.
        deadline = started + WITHIN + 120
        while active(fleet, "hv1") != "active":
            assert time.monotonic() < deadline, "hv1's change was not reverted"
            time.sleep(1)
        assert active(fleet, "hv2") == "active"  # never applied
        manage.wait_listening(Sandbox.load(fleet), {"hv1"}, lambda: None)
        root = Path(hv1.env["HOSTSETUP_HOST_ROOT"], "var/lib/hostsetup/confirm")
        [rec] = [json.loads(p.read_text()) for p in root.glob("*.json")
                 if json.loads(p.read_text())["state"] != "confirmed"]
        assert rec["state"] == "reverted" and "not confirmed within" in rec["how"], rec
        assert rec["reverted_by"] == rec["keeper"], rec
    finally:
        host_mod.run_inside(hv1, "no cut", "sh", "-ec",
                            f"rm -f {CUT}\nsystemctl daemon-reload\nip link set lo up")
        restore(fleet)
