"""``hostsetup report show FILE``: reports of plan, apply and a fleet run, read back as
the same text the commands printed.  The reports are made by real runs: the
services step on a sandbox host's systemd, and a fleet of two sandbox hosts with
their agent units (whose answers carry per-host late_commands: each agent runs its own)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostsetup

from sandbox import manage
from sandbox.core import Sandbox
from wizard.answers import read_yaml


def test_plan_and_apply_reports_read_as_the_cli_printed_them(
        dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = tmp_path / "a.yaml"
    answers.write_text(f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
                       "  require: [libvirtd.service, ovs-vswitchd.service]\n"
                       "late_commands: [[echo, configured]]\n")
    for mode, code in (("plan", 4), ("apply", 0)):
        report = tmp_path / f"{mode}.json"
        res = hostsetup(mode, "--answers", str(answers), "--report", str(report))
        assert res.returncode == code, res.stderr
        shown = hostsetup("report", "show", str(report))
        assert shown.returncode == 0, shown.stderr
        head, *body = shown.stdout.splitlines()
        assert head.startswith(f"{mode} on ") and head.endswith(
            "exit 4 (changes pending)" if mode == "plan" else "exit 0 (done)")
        assert body == res.stdout.splitlines()  # the very text the command printed
    assert "  + run: echo configured (exit 0)" in body and "      | configured" in body


def test_failed_and_invalid_reports_show_their_errors(dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = tmp_path / "a.yaml"
    answers.write_text(f"version: 1\nservices:\n  bus: {dbus_host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
                       "  require: [nosuch.service]\n")
    report = tmp_path / "r.json"
    assert hostsetup("plan", "--answers", str(answers), "--report", str(report)).returncode == 3
    shown = hostsetup("report", "show", str(report))
    assert shown.returncode == 0
    assert "services: invalid" in shown.stdout
    assert "  ! services.require[0] (line 4): unit 'nosuch.service' is not installed" \
        in shown.stdout

    answers.write_text("version: 1\nservices: {timeout: -1}\n")
    assert hostsetup("apply", "--answers", str(answers), "--report", str(report)).returncode == 3
    shown = hostsetup("report", "show", str(report))
    assert "exit 3 (answers invalid)" in shown.stdout.splitlines()[0]
    assert "  ! services.timeout (line 2): Input should be greater than 0" in shown.stdout


def test_not_a_report_is_refused_clearly(tmp_path: Path) -> None:
    cases = {"text": b"not json", "list.json": b"[1, 2]", "other.json": b'{"version": 1}'}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        res = hostsetup("report", "show", str(tmp_path / name))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert f"hostsetup: report show: {tmp_path / name}: not " in res.stderr
    res = hostsetup("report", "show", "/dev/zero")  # never read without end
    assert res.returncode == 2 and "not a regular file" in res.stderr
    res = hostsetup("report", "show", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and "cannot read: No such file or directory" in res.stderr
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "mode": "apply", "steps": [{"name": 3}]}))
    res = hostsetup("report", "show", str(broken))
    assert res.returncode == 2 and "not a hostsetup report: unexpected content" in res.stderr
    broken.write_text(json.dumps({"version": 1, "mode": "apply", "started": 1e300}))
    res = hostsetup("report", "show", str(broken))
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Two sandbox hosts with the agent unit each, and Redis; the fleet answers keep the
    services and ovs_mirror steps (hosts with changes: a host with none is not applied)."""
    directory = tmp_path_factory.mktemp("fleet")
    try:
        fleet = manage.up_fleet(directory, 2, components=[manage.HOST])
        data = read_yaml(directory / "fleet-answers.yaml")
        for section in (data, *data["hosts"]):
            section.pop("ivshmem", None)
        manage.write_yaml(directory / "fleet-answers.yaml", data)
        yield fleet
    finally:
        manage.down(directory)


def test_fleet_report_and_per_host_late_commands(fleet: Sandbox, tmp_path: Path) -> None:
    base = (fleet.dir / "fleet-answers.yaml").read_text()
    answers = tmp_path / "fleet.yaml"
    # A file in each host's own /var/log (the agent unit has a private /tmp), read here
    # through the host's root.
    trace = "/var/log/hostsetup-test-trace"
    # Each host overrides late_commands: every agent runs its own host's list.
    lines = []
    for line in base.splitlines():
        lines.append(line)
        for host in ("hv1", "hv2"):
            if line.strip() == f"- name: {host}":
                lines.append(f"  late_commands: [[sh, -c, 'echo {host} >> {trace}']]")
    answers.write_text("\n".join(lines) + "\n")
    report = tmp_path / "fleet.json"
    res = hostsetup("fleet", "apply", "--answers", str(answers), "--report", str(report),
                    env=dict(fleet.env), timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [Path(Sandbox.load(fleet.dir / h).env["HOSTSETUP_HOST_ROOT"], trace[1:]).read_text()
            for h in ("hv1", "hv2")] == ["hv1\n", "hv2\n"]

    shown = hostsetup("report", "show", str(report))
    assert shown.returncode == 0, shown.stderr
    start = shown.stdout.splitlines()[0]
    assert start.startswith("run ") and "(apply): done, exit 0" in start
    # the same closing block as 'hostsetup fleet apply' printed
    assert res.stdout.splitlines()[-len(shown.stdout.splitlines()):] == \
        shown.stdout.splitlines()
    assert "late_commands=applied" in shown.stdout

    host = hostsetup("report", "show", str(report), "--host", "hv2")
    assert host.returncode == 0, host.stderr
    assert host.stdout.splitlines()[0].startswith("apply on hv2")
    assert f"  + run: sh -c 'echo hv2 >> {trace}' (exit 0)" in host.stdout
    # Again, with no step change left: the hosts are still applied for their commands.
    res = hostsetup("fleet", "apply", "--answers", str(answers), env=dict(fleet.env),
                    timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [Path(Sandbox.load(fleet.dir / h).env["HOSTSETUP_HOST_ROOT"], trace[1:]).read_text()
            for h in ("hv1", "hv2")] == ["hv1\nhv1\n", "hv2\nhv2\n"]
    res = hostsetup("report", "show", str(report), "--host", "hv9")
    assert res.returncode == 2 and "no host 'hv9' in this fleet report (hosts: hv1, hv2)" \
        in res.stderr
