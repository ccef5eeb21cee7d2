"""A step whose system an earlier step starts: checked after that step is applied.

On a host where Open vSwitch is stopped, the services step starts it and the
ovs_mirror step, whose database is unreachable at plan time, is checked and
applied once the switch runs.  Here "systemd starting OVS" is a thread that
starts the real ovsdb-server again when the mock unit turns active.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostsetup, unit_state

from wizard.sandbox import ovs as ovs_component
from wizard.sandbox.core import Sandbox, kill_group
from wizard.sandbox.manage import write_yaml

UNIT = "ovs-vswitchd.service"
SPAN = {"name": "span-vm1", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "mon0"}


@pytest.fixture
def stopped_switch(tmp_path: Path) -> Iterator[Sandbox]:
    """An OVS sandbox host whose ovsdb-server is stopped (its database is kept)."""
    sb = Sandbox(dir=tmp_path / "switch", tag="defer")
    try:
        ovs_component.up(sb)
        ovsdb = next(p for p in sb.procs if p.name == "ovsdb-server")
        kill_group(ovsdb.pid, 10)
        sb.procs.remove(ovsdb)
        yield sb
    finally:
        sb.stop()
        ovs_component.down(sb)


def answers(dbus_host: Sandbox, switch: Sandbox, path: Path, start: bool) -> str:
    lay = ovs_component.layout(switch)
    write_yaml(path, {
        "version": 1,
        "services": {"bus": dbus_host.env["HOSTSETUP_DBUS_ADDRESS"], "require": [UNIT],
                     "start": start},
        "ovs_mirror": {"db": lay.remote, "vswitchd_ctl": str(lay.vswitchd_ctl),
                       "mirrors": [SPAN]},
    })
    return str(path)


def test_checked_after_services_starts_ovs(dbus_host: Sandbox, stopped_switch: Sandbox,
                                           tmp_path: Path) -> None:
    f = answers(dbus_host, stopped_switch, tmp_path / "a.yaml", start=True)
    res = hostsetup("plan", "--answers", f)
    assert res.returncode == 4, res.stdout + res.stderr
    assert f"start unit {UNIT}" in res.stdout
    assert "ovs_mirror: to be checked during apply" in res.stdout
    assert "OVSDB unreachable" in " ".join(res.stdout.split())

    def systemd_starts_ovs() -> None:
        deadline = time.monotonic() + 60
        while unit_state(dbus_host, UNIT) != "active" and time.monotonic() < deadline:
            time.sleep(0.05)
        ovs_component.start_ovsdb(stopped_switch)

    starter = threading.Thread(target=systemd_starts_ovs)
    starter.start()
    try:
        report = tmp_path / "r.json"
        res = hostsetup("apply", "--answers", f, "--report", str(report))
    finally:
        starter.join()
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["name"]: s for s in json.loads(report.read_text())["steps"]}
    assert steps["services"]["status"] == "applied"
    assert steps["ovs_mirror"]["status"] == "applied"
    assert [c["target"] for c in steps["ovs_mirror"]["changes"]] == ["mirror br0/span-vm1"]
    assert hostsetup("plan", "--answers", f).returncode == 0


def test_not_deferred_when_nothing_will_start_it(dbus_host: Sandbox, stopped_switch: Sandbox,
                                                 tmp_path: Path) -> None:
    res = hostsetup("plan", "--answers",
                    answers(dbus_host, stopped_switch, tmp_path / "a.yaml", start=False))
    assert res.returncode == 5
    assert "OVSDB unreachable" in res.stderr


def test_steps_after_a_failure_are_not_run(dbus_host: Sandbox, stopped_switch: Sandbox,
                                           tmp_path: Path) -> None:
    subprocess.run(["busctl", "--address", dbus_host.env["HOSTSETUP_DBUS_ADDRESS"], "call",
                    "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                    "org.freedesktop.DBus.Mock", "SetStartBehaviour", "ssd", UNIT, "failed",
                    "0"], check=True)
    report = tmp_path / "r.json"
    res = hostsetup("apply", "--answers", answers(dbus_host, stopped_switch, tmp_path / "a.yaml",
                                                  start=True), "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    steps = {s["name"]: s["status"] for s in json.loads(report.read_text())["steps"]}
    assert steps == {"services": "failed", "ovs_mirror": "not run"}
