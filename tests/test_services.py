"""The services step against a sandbox host's real systemd (and NetworkManager)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import add_unit, hostsetup, systemd_call, unit_prop, unit_state

from sandbox import host
from sandbox.core import Sandbox


def test_plan_apply_plan(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = str(dbus_host.dir / "answers.yaml")
    report = tmp_path / "plan.json"
    res = hostsetup("plan", "--answers", answers, "--report", str(report))
    assert res.returncode == 4, res.stderr
    for unit in ("openvswitch-switch.service", "libvirtd.service"):
        assert f"start unit {unit}" in res.stdout
    assert "NetworkManager.service" not in res.stdout  # already active
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"  # plan changed nothing
    data = json.loads(report.read_text())
    assert data["exit_code"] == 4
    assert [c["target"] for c in data["steps"][0]["changes"]] == [
        "unit openvswitch-switch.service", "unit libvirtd.service"]

    res = hostsetup("apply", "--answers", answers, "--report", str(report))
    assert res.returncode == 0, res.stderr
    # systemd started their dependencies too: the daemons run.
    for unit in ("libvirtd.service", "ovsdb-server.service", "ovs-vswitchd.service"):
        assert unit_state(dbus_host, unit) == "active", unit
    data = json.loads(report.read_text())
    assert data["steps"][0]["status"] == "applied"
    assert set(data["steps"][0]["durations"]) >= {"discover", "plan", "apply", "verify"}

    res = hostsetup("plan", "--answers", answers)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to change" in res.stdout


def test_start_that_fails_exits_1_with_its_result(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        f"  require: [openvswitch-switch.service, {host.BROKEN_UNIT}, libvirtd.service]\n")
    report = tmp_path / "r.json"
    res = hostsetup("apply", "--answers", str(answers), "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    assert (f"start of {host.BROKEN_UNIT} ended with job result 'failed' "
            "(unit Result: exit-code)") in res.stderr
    step = json.loads(report.read_text())["steps"][0]
    assert step["status"] == "failed"
    # The report says exactly what took effect before the failure.
    assert "remains changed: start unit openvswitch-switch.service" in step["notes"][0]
    assert unit_state(dbus_host, "openvswitch-switch.service") == "active"
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"  # never reached


def test_failed_dependency_exits_1(dbus_host: Sandbox, tmp_path: Path) -> None:
    """A unit whose dependency fails: real systemd ends its job 'dependency'."""
    add_unit(dbus_host, "needs-broken.service",
             f"[Unit]\nRequires={host.BROKEN_UNIT}\nAfter={host.BROKEN_UNIT}\n"
             "[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n")
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: [needs-broken.service]\n")
    res = hostsetup("apply", "--answers", str(answers))
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("start of needs-broken.service ended with job result 'dependency' "
            "(unit Result: success)") in res.stderr
    assert unit_state(dbus_host, "needs-broken.service") == "inactive"
    assert unit_state(dbus_host, host.BROKEN_UNIT) == "failed"


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
    from steps.services import ServicesConnection, ServicesStep

    backends = RealBackends()
    try:
        facts = ServicesStep().discover(
            ServicesConnection(bus=dbus_host.env["HOSTSETUP_DBUS_ADDRESS"]), Context(backends))
    finally:
        backends.close()
    # Open vSwitch and libvirtd are installed, stopped
    assert "ovs" not in facts.present and "libvirt" not in facts.present
    assert "network_manager" in facts.present
    assert facts.network is not None
    devices = {d.interface: d for d in facts.network.devices}
    assert facts.network.running and devices["lo"].kind and "vm1" in devices
    assert devices["vm1"].state == "unmanaged"  # left to Open vSwitch (the image's NM config)
    assert "/org/freedesktop/NetworkManager" in facts.bus["org.freedesktop.NetworkManager"]


def test_interrupted_apply_still_reports(dbus_host: Sandbox, tmp_path: Path) -> None:
    import signal
    import sys
    import time

    from helpers import ROOT

    add_unit(dbus_host, "slow.service", "[Service]\nType=oneshot\nExecStart=/bin/sleep 20\n")
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: [slow.service, libvirtd.service]\n")
    report, log = tmp_path / "r.json", tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "wizard", "apply", "--answers",
                             str(answers), "--report", str(report), "--log", str(log)],
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


def test_enable_survives_daemon_reload(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: [libvirtd.service]\n  enable: [libvirtd.service]\n")
    res = hostsetup("plan", "--answers", str(answers))
    assert res.returncode == 4, res.stdout + res.stderr
    assert "+ enable unit libvirtd.service enablement: disabled -> enabled" in " ".join(
        res.stdout.split())
    res = hostsetup("apply", "--answers", str(answers))
    assert res.returncode == 0, res.stdout + res.stderr
    assert unit_prop(dbus_host, "libvirtd.service", "UnitFileState") == "enabled"
    wants = Path(dbus_host.env["HOSTSETUP_HOST_ROOT"],
                 "etc/systemd/system/multi-user.target.wants/libvirtd.service")
    assert wants.is_symlink()  # persistent, in /etc: what the next boot reads
    systemd_call(dbus_host, "Reload")  # systemctl daemon-reload
    assert unit_prop(dbus_host, "libvirtd.service", "UnitFileState") == "enabled"
    assert unit_state(dbus_host, "libvirtd.service") == "active"
    res = hostsetup("plan", "--answers", str(answers))
    assert res.returncode == 0 and "nothing to change" in res.stdout, res.stdout


def test_unit_file_changed_on_disk_is_reloaded_before_the_start(dbus_host: Sandbox,
                                                                 tmp_path: Path) -> None:
    unit = add_unit(dbus_host, "greeter.service",
                    "[Service]\nType=oneshot\nRemainAfterExit=yes\nEnvironment=GREETING=old\n"
                    "ExecStart=/bin/sh -c 'echo $GREETING > /run/greeting'\n", reload=False)
    # Enabled but stopped (so systemd keeps it loaded), as after an earlier boot.
    wants = unit.parent / "multi-user.target.wants" / unit.name
    wants.parent.mkdir(exist_ok=True)
    wants.symlink_to(f"/etc/systemd/system/{unit.name}")
    (unit.parent / f"{unit.name}.d").mkdir()  # systemd caches the directories it has seen
    systemd_call(dbus_host, "Reload")
    # A drop-in written after systemd read the unit: it needs a daemon-reload.
    add_unit(dbus_host, "greeter.service.d/new.conf", "[Service]\nEnvironment=GREETING=new\n",
             reload=False)
    assert unit_prop(dbus_host, "greeter.service", "NeedDaemonReload") == "true"
    answers = tmp_path / "a.yaml"
    answers.write_text(
        f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: [greeter.service]\n")
    res = hostsetup("plan", "--answers", str(answers))
    assert res.returncode == 4, res.stdout + res.stderr
    text = " ".join(res.stdout.split())
    assert "(greeter.service changed on disk)" in text
    assert text.index("update systemd: Reload") < text.index("start unit greeter.service")
    res = hostsetup("apply", "--answers", str(answers))
    assert res.returncode == 0, res.stdout + res.stderr
    # Started in the version on disk, drop-in included.
    assert Path(dbus_host.env["HOSTSETUP_HOST_ROOT"], "run/greeting").read_text() == "new\n"
    assert unit_prop(dbus_host, "greeter.service", "NeedDaemonReload") == "false"
    assert hostsetup("plan", "--answers", str(answers)).returncode == 0
