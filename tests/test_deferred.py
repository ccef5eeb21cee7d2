"""A step whose system an earlier step starts: checked after that step is applied.

On a sandbox host Open vSwitch is installed but stopped: the services step
starts it through the host's real systemd, and the ovs_mirror step, whose
database is unreachable at plan time, is checked and applied once it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import hostsetup

from sandbox import host
from sandbox.core import Sandbox
from sandbox.manage import write_yaml

UNIT = "openvswitch-switch.service"
SPAN = {"name": "span-vm1", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "mon0"}


def answers(sb: Sandbox, path: Path, start: bool, require: list[str] | None = None) -> str:
    write_yaml(path, {
        "version": 1,
        "services": {"bus": sb.env["HOSTSETUP_DBUS_ADDRESS"], "require": require or [UNIT],
                     "start": start},
        "ovs_mirror": {"db": sb.env["HOSTSETUP_OVSDB"], "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"],
                       "mirrors": [SPAN]},
    })
    return str(path)


def test_checked_after_services_starts_ovs(dbus_host: Sandbox, tmp_path: Path) -> None:
    f = answers(dbus_host, tmp_path / "a.yaml", start=True)
    res = hostsetup("plan", "--answers", f)
    assert res.returncode == 4, res.stdout + res.stderr
    assert f"start unit {UNIT}" in res.stdout
    assert "ovs_mirror: to be checked during apply" in res.stdout
    assert "OVSDB unreachable" in " ".join(res.stdout.split())

    report = tmp_path / "r.json"
    res = hostsetup("apply", "--answers", f, "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["name"]: s for s in json.loads(report.read_text())["steps"]}
    assert steps["services"]["status"] == "applied"
    assert steps["ovs_mirror"]["status"] == "applied"
    assert [c["target"] for c in steps["ovs_mirror"]["changes"]] == ["mirror br0/span-vm1"]
    assert hostsetup("plan", "--answers", f).returncode == 0


def test_not_deferred_when_nothing_will_start_it(dbus_host: Sandbox, tmp_path: Path) -> None:
    res = hostsetup("plan", "--answers", answers(dbus_host, tmp_path / "a.yaml", start=False))
    assert res.returncode == 5
    assert "OVSDB unreachable" in res.stderr


def test_steps_after_a_failure_are_not_run(dbus_host: Sandbox, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    f = answers(dbus_host, tmp_path / "a.yaml", start=True, require=[host.BROKEN_UNIT, UNIT])
    res = hostsetup("apply", "--answers", f, "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    steps = {s["name"]: s["status"] for s in json.loads(report.read_text())["steps"]}
    assert steps == {"services": "failed", "ovs_mirror": "not run"}
