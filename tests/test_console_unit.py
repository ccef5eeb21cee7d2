"""The console wizard: deploy/hostsetup-console.service (checked by systemd-analyze
verify), its marker, ``--console`` and ``--reset-console``; the wizard in tmux."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import ROOT, hostsetup
from tmux import Terminal, apply_and_finish

from sandbox.core import Sandbox
from wizard.console import MARKER

UNIT = ROOT / "deploy" / "hostsetup-console.service"


def verify(unit_text: str, tmp_path: Path) -> str:
    """``systemd-analyze verify`` of the unit (its ExecStart pointed at this checkout's
    hostsetup, which verify requires to exist); returns what it reported."""
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    copy = d / UNIT.name
    copy.write_text(unit_text.replace("/usr/local/bin/hostsetup",
                                      str(ROOT / ".venv" / "bin" / "hostsetup")))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                         capture_output=True, text=True, timeout=60)
    return (res.stdout + res.stderr).strip() + ("" if res.returncode == 0
                                                else f"\nexit {res.returncode}")


def test_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert verify(text, tmp_path) == ""
    # the check can fail: a typo and a missing program are reported
    broken = text.replace("Type=oneshot", "Type=oneshott").replace(
        "/usr/local/bin/hostsetup", "/nonexistent/hostsetup")
    out = verify(broken, tmp_path)
    assert "Failed to parse service type" in out and "/nonexistent/hostsetup" in out


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_unit_runs_before_the_login_prompt_until_configured() -> None:
    lines = settings(UNIT.read_text())
    assert f"ConditionPathExists=!{MARKER}" in lines  # the marker the code writes
    assert "Before=getty@tty1.service" in lines and "TTYPath=/dev/tty1" in lines
    assert "StandardInput=tty" in lines and "Type=oneshot" in lines
    assert "ExecStart=/usr/local/bin/hostsetup --console" in lines


def test_reset_console_and_console_when_configured(tmp_path: Path) -> None:
    marker = tmp_path / "state" / "console-done"
    env = {"HOSTSETUP_CONSOLE_MARKER": str(marker)}
    res = hostsetup("--reset-console", env=env)
    assert res.returncode == 0 and "already starts at boot" in res.stdout
    marker.parent.mkdir()
    marker.write_text("configured\n")
    # configured: exits at once, without a terminal, without starting the wizard
    res = hostsetup("--console", env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    res = hostsetup("--reset-console", env=env)
    assert res.returncode == 0 and f"removed {marker}" in res.stdout
    assert not marker.exists()
    res = hostsetup("--console", env=env)  # not configured: the wizard, needing a terminal
    assert res.returncode == 2 and "needs a terminal" in res.stderr


def test_console_wizard_marks_the_host_configured(dbus_host: Sandbox, tmp_path: Path) -> None:
    marker = tmp_path / "state" / "console-done"
    answers = dbus_host.dir / "answers.yaml"
    command = (f"HOSTSETUP_CONSOLE_MARKER={marker} {ROOT}/.venv/bin/python -m wizard --console "
               f"--answers {answers} --log {tmp_path}/wizard.log")
    t = Terminal(command, cwd=tmp_path)
    try:
        t.wait_for("[*] Host services")
        t.send("C-c")  # cancelled: not configured, the wizard comes again
        assert t.exit_code() == 130
        assert not marker.exists()
    finally:
        t.close()
    t = Terminal(command, cwd=tmp_path)
    try:
        t.wait_for("[*] Host services")
        assert apply_and_finish(t) == 0
    finally:
        t.close()
    assert "configured by the hostsetup console wizard" in marker.read_text()
    assert hostsetup("--console", env={"HOSTSETUP_CONSOLE_MARKER": str(marker)}).returncode == 0
