"""The services step against a real dbus-daemon with dbusmock's systemd/NM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import hostsetup, unit_state

from wizard.sandbox.core import Sandbox


def test_plan_apply_plan(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = str(dbus_host.dir / "answers.yaml")
    report = tmp_path / "plan.json"
    res = hostsetup("plan", "--answers", answers, "--report", str(report))
    assert res.returncode == 4, res.stderr
    for unit in ("ovs-vswitchd.service", "openvswitch-switch.service", "libvirtd.service"):
        assert f"start unit {unit}" in res.stdout
    assert "redis-server.service" not in res.stdout  # already active
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"  # plan changed nothing
    data = json.loads(report.read_text())
    assert data["exit_code"] == 4
    assert [c["target"] for c in data["steps"][0]["changes"]] == [
        "unit ovs-vswitchd.service", "unit openvswitch-switch.service", "unit libvirtd.service"]

    res = hostsetup("apply", "--answers", answers, "--report", str(report))
    assert res.returncode == 0, res.stderr
    assert unit_state(dbus_host, "libvirtd.service") == "active"
    data = json.loads(report.read_text())
    assert data["steps"][0]["status"] == "applied"
    assert set(data["steps"][0]["durations"]) >= {"discover", "plan", "apply", "verify"}

    res = hostsetup("plan", "--answers", answers)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to change" in res.stdout


def test_start_that_fails_exits_1(tmp_path: Path) -> None:
    sb = Sandbox(dir=tmp_path / "host")
    from wizard.sandbox import dbus as component

    try:
        component.up(sb, failing=["libvirtd.service"])
        answers = tmp_path / "a.yaml"
        answers.write_text(
            f"version: 1\nservices:\n  bus: {sb.env['HOSTSETUP_DBUS_ADDRESS']}\n"
            "  require: [ovs-vswitchd.service, libvirtd.service, openvswitch-switch.service]\n")
        report = tmp_path / "r.json"
        res = hostsetup("apply", "--answers", str(answers), "--report", str(report))
        assert res.returncode == 1
        assert "libvirtd.service ended with job result 'failed'" in res.stderr
        step = json.loads(report.read_text())["steps"][0]
        assert step["status"] == "failed"
        # The report says exactly what took effect before the failure.
        assert "remains changed: start unit ovs-vswitchd.service" in step["notes"][0]
        assert unit_state(sb, "openvswitch-switch.service") == "inactive"  # never reached
    finally:
        sb.stop()


def test_missing_unit_is_named_with_line(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require:\n  - libvirtd.service\n  - nosuch.service\n")
    res = hostsetup("plan", "--answers", str(answers))
    assert res.returncode == 3
    assert "services.require[1] (line 6): unit 'nosuch.service' is not installed" in res.stderr


def test_bus_unreachable_exits_5_naming_address(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-bus-here"
    answers = tmp_path / "a.yaml"
    answers.write_text(f"version: 1\nservices:\n  bus: {address}\n")
    res = hostsetup("plan", "--answers", str(answers))
    assert res.returncode == 5
    assert f"D-Bus unreachable at {address}" in res.stderr
    assert "Traceback" not in res.stderr


def test_facts_for_later_steps(dbus_host: Sandbox) -> None:
    from backends.bundle import RealBackends
    from steps.base import Context
    from steps.services import ServicesStep

    backends = RealBackends()
    try:
        facts = ServicesStep().discover(
            {"bus": dbus_host.env["HOSTSETUP_DBUS_ADDRESS"]}, Context(backends))
    finally:
        backends.close()
    assert facts["ovs"] is True  # ovsdb-server.service is active in the sandbox
    assert facts["libvirt"] is False  # libvirtd.service is inactive
    assert facts["network"].running and {d.interface for d in facts["network"].devices} == {
        "eth0", "eth1"}
    assert "/org/freedesktop/NetworkManager/Devices/mock_eth0" in facts["bus"][
        "org.freedesktop.NetworkManager"]


def test_interrupted_apply_still_reports(dbus_host: Sandbox, tmp_path: Path) -> None:
    import signal
    import sys
    import time

    from helpers import ROOT

    subprocess.run(["busctl", "--address", dbus_host.env["HOSTSETUP_DBUS_ADDRESS"], "call",
                    "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                    "org.freedesktop.DBus.Mock", "SetStartBehaviour", "ssd",
                    "ovs-vswitchd.service", "done", "20"], check=True)
    report, log = tmp_path / "r.json", tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "wizard", "apply", "--answers",
                             str(dbus_host.dir / "answers.yaml"), "--report", str(report),
                             "--log", str(log)],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Interrupt once the services step is applying (its first start job takes 20 s).
    deadline = time.monotonic() + 30
    while "services: applying" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, "apply never started"
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    step = json.loads(report.read_text())["steps"][0]
    assert step["status"] == "interrupted"
    assert "run 'plan' to see what took effect" in step["errors"][0]
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"  # never reached
