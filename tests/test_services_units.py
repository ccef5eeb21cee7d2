"""The services step's unit files, stops, restarts and drop-ins, read back over D-Bus.

Runs on a sandbox host's real systemd; the units ``ssh.service`` and
``redis-server.service`` are small daemons written into the host for the test
(enabled, running).  Every state is read back with ``busctl``, independently of
our backend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import add_unit, hostsetup, systemd_call, unit_prop

from sandbox.core import Sandbox
from wizard.answers import write

DAEMONS = ("ssh.service", "redis-server.service")


def prop(sb: Sandbox, unit: str, name: str) -> str:
    """A unit property read with busctl."""
    return unit_prop(sb, unit, name)


@pytest.fixture
def host(dbus_host: Sandbox) -> Sandbox:
    """The host with DAEMONS installed (as a package would), enabled and running."""
    for name in DAEMONS:
        # Where packages put theirs (a unit file in /etc could not be masked).
        lib(dbus_host, name).write_text(
            f"[Unit]\nDescription=test {name}\n[Service]\nExecStart=/bin/sleep infinity\n"
            "[Install]\nWantedBy=multi-user.target\n")
        systemd_call(dbus_host, "EnableUnitFiles", "asbb", "1", name, "false", "false")
    systemd_call(dbus_host, "Reload")
    for name in DAEMONS:
        systemd_call(dbus_host, "StartUnit", "ss", name, "replace")
    deadline = time.monotonic() + 30
    while any(prop(dbus_host, n, "ActiveState") != "active" for n in DAEMONS):
        assert time.monotonic() < deadline, "test daemons did not start"
        time.sleep(0.1)
    return dbus_host


def lib(sb: Sandbox, name: str) -> Path:
    """A unit file in the host's /lib/systemd/system, from outside."""
    return Path(sb.env["HOSTSETUP_HOST_ROOT"], "lib/systemd/system", name)


def etc(sb: Sandbox) -> Path:
    """The host's /etc/systemd/system, from outside (where its drop-ins go)."""
    return Path(sb.env["HOSTSETUP_HOST_ROOT"], "etc/systemd/system")


def answers(sb: Sandbox, path: Path, **section: Any) -> str:
    write(path, {"version": 1, "services": {"bus": sb.env["HOSTSETUP_DBUS_ADDRESS"],
                                            "require": [], **section}})
    return str(path)


def test_enable_disable_mask_stop(host: Sandbox, tmp_path: Path) -> None:
    path = answers(host, tmp_path / "a.yaml", enable=["libvirtd.service", "ssh.service"],
                   mask=["redis-server.service"], stop=["ssh.service"])
    res = hostsetup("plan", "--answers", path)
    assert res.returncode == 4, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "enable unit libvirtd.service" in out and "enablement: disabled -> enabled" in out
    assert "mask unit redis-server.service" in out and "active: active (running)" in out
    assert "~ stop unit ssh.service [needs confirmation: ssh.service carries" in out
    assert prop(host, "libvirtd.service", "UnitFileState") == "disabled"

    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert prop(host, "libvirtd.service", "UnitFileState") == "enabled"
    assert prop(host, "ssh.service", "UnitFileState") == "enabled"
    assert prop(host, "redis-server.service", "UnitFileState") == "masked"
    assert prop(host, "ssh.service", "ActiveState") == "inactive"
    assert hostsetup("plan", "--answers", path).returncode == 0

    path = answers(host, tmp_path / "b.yaml", disable=["ssh.service"])
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert prop(host, "ssh.service", "UnitFileState") == "disabled"


def test_dropin_reload_and_restart(host: Sandbox, tmp_path: Path) -> None:
    content = "[Service]\nEnvironment=TOKEN=s3cr3t-value\n"
    dropin = {"unit": "redis-server.service", "name": "50-hostsetup", "content": content}
    path = answers(host, tmp_path / "a.yaml", dropins=[dropin],
                   dropin_dir=str(etc(host)), restart=["ssh.service"])
    report = tmp_path / "r.json"
    res = hostsetup("plan", "--answers", path, "--report", str(report))
    assert res.returncode == 4, res.stdout + res.stderr
    target = etc(host) / "redis-server.service.d" / "50-hostsetup.conf"
    out = " ".join(res.stdout.split())
    assert f"install drop-in {target}" in out and "[Service] Environment" in out
    assert "update systemd: Reload" in out
    assert "! restart unit redis-server.service: its drop-ins changed" in out
    assert "restart unit ssh.service" in out  # listed, and the configuration changes
    assert "s3cr3t" not in res.stdout + res.stderr + report.read_text()
    assert not target.exists()

    since = prop(host, "redis-server.service", "ActiveEnterTimestamp")
    res = hostsetup("apply", "--answers", path, "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    assert target.read_text() == content
    assert prop(host, "redis-server.service", "ActiveEnterTimestamp") != since  # restarted
    assert prop(host, "redis-server.service", "NeedDaemonReload") == "false"
    assert "s3cr3t" not in res.stdout + res.stderr + report.read_text()
    assert hostsetup("plan", "--answers", path).returncode == 0  # no restart without a change

    # Edited on disk since the last Reload: Reload and restart, nothing rewritten.
    unit = lib(host, "redis-server.service")
    unit.write_text(unit.read_text() + "# edited\n")
    assert prop(host, "redis-server.service", "NeedDaemonReload") == "true"
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "redis-server.service changed on disk" in " ".join(res.stdout.split())
    assert prop(host, "redis-server.service", "NeedDaemonReload") == "false"

    # A new content replaces the file atomically and keeps the old one.
    dropin["content"] = "[Service]\nEnvironment=TOKEN=other\n"
    res = hostsetup("apply", "--answers", answers(
        host, tmp_path / "b.yaml", dropins=[dropin], dropin_dir=str(etc(host))))
    assert res.returncode == 0, res.stdout + res.stderr
    backups = list(target.parent.glob("50-hostsetup.conf.hostsetup-bak.*"))
    assert [b.read_text() for b in backups] == [content]
    assert target.read_text() == dropin["content"]


def test_failing_job_reports_the_unit_result(host: Sandbox, tmp_path: Path) -> None:
    # A start that fails, and stays failed (libvirtd.service has Restart=on-failure).
    add_unit(host, "libvirtd.service.d/fail.conf",
             "[Service]\nExecStartPre=/bin/false\nRestart=no\n")
    report = tmp_path / "r.json"
    res = hostsetup("apply", "--answers", answers(
        host, tmp_path / "a.yaml", require=["libvirtd.service"],
        enable=["libvirtd.service"]), "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("start of libvirtd.service ended with job result 'failed' (unit Result: "
            "exit-code)") in res.stderr
    step = json.loads(report.read_text())["steps"][0]
    assert step["status"] == "failed"
    # The report says exactly what took effect before the failure.
    assert ("remains changed: enable unit libvirtd.service, update systemd: Reload"
            in step["notes"][0])
    assert prop(host, "libvirtd.service", "ActiveState") == "failed"


def test_unknown_units_exit_3_at_check(host: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        f"version: 1\nservices:\n  bus: {host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: []\n  enable: [nosuch.service]\n  stop: [ssh.service, gone.service]\n"
        "  dropins:\n  - {unit: other.service, name: x, content: \"[Service]\"}\n")
    res = hostsetup("apply", "--answers", str(path))
    assert res.returncode == 3, res.stdout + res.stderr
    err = res.stderr
    assert "services.enable[0] (line 5): unit 'nosuch.service' is not installed" in err
    assert "services.stop[1] (line 6): unit 'gone.service' is not installed" in err
    assert "services.dropins[0].unit (line 8): unit 'other.service' is not installed" in err
    assert prop(host, "ssh.service", "ActiveState") == "active"  # nothing applied


def test_bad_fields_exit_3(host: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        f"version: 1\nservices:\n  bus: {host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
        "  require: [ssh.service]\n"
        "  enable: [a.service]\n"
        "  disable: [a.service]\n"
        "  stop: [ssh.service]\n"
        "  restart: [nodot]\n"
        "  dropin_dir: etc/systemd\n"
        "  dropins:\n"
        "  - {unit: ssh.service, name: ../x, content: \"Environment=A=1\"}\n")
    res = hostsetup("plan", "--answers", str(path))
    assert res.returncode == 3, res.stdout + res.stderr
    err = res.stderr
    assert "services.disable (line 6): a.service also in enable" in err
    assert "services.stop (line 7): ssh.service also in require" in err
    assert "services.restart (line 8): 'nodot' is not a systemd unit name" in err
    assert "services.dropin_dir (line 9)" in err
    assert "services.dropins[0].name (line 11)" in err
    assert "services.dropins[0].content (line 11): a drop-in starts with its section " \
        "header" in err


def test_masking_a_unit_whose_file_is_in_etc_says_why_and_what_to_do(
        host: Sandbox, tmp_path: Path) -> None:
    (etc(host) / "local-only.service").write_text(
        "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_call(host, "Reload")
    done = hostsetup("apply", "--answers", answers(host, tmp_path / "a.yaml",
                                                   mask=["local-only.service"]))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot mask local-only.service: its unit file is in /etc/systemd/system" \
        in done.stdout + done.stderr
    assert prop(host, "local-only.service", "UnitFileState") != "masked"
