"""Confirm or revert on a real host: ``hostsetup apply`` runs inside a sandbox host (real
systemd), where ``ssh.service`` is a small TCP server on 127.0.0.1:2222 (the "SSH
connection" a probe can reach); stopping it is risky.  ``hostsetup confirm`` comes from
another process entering the host (a new connection).  Every state is read back
with ``busctl`` from outside, independently of our backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tmux
from helpers import ROOT, systemd_call, unit_state

from sandbox.core import Sandbox
from sandbox.host import exec_argv
from wizard.answers import write

HOSTSETUP = str(ROOT / ".venv" / "bin" / "hostsetup")
SERVERS = {"ssh.service": 2222, "vcenter-stub.service": 2223}


@pytest.fixture
def host(dbus_host: Sandbox) -> Sandbox:
    """The host with SERVERS installed (as packages would), running and listening."""
    for name, port in SERVERS.items():
        Path(dbus_host.env["HOSTSETUP_HOST_ROOT"], "lib/systemd/system", name).write_text(
            f"[Unit]\nDescription=test {name}\n[Service]\nExecStart=/usr/bin/python3 -m "
            f"http.server {port} --bind 127.0.0.1\n[Install]\nWantedBy=multi-user.target\n")
    systemd_call(dbus_host, "Reload")
    for name in SERVERS:
        systemd_call(dbus_host, "StartUnit", "ss", name, "replace")
    wait(lambda: all(listening(dbus_host, p) for p in SERVERS.values()), "servers listen")
    return dbus_host


def wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def inside(sb: Sandbox, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command inside the host (a new connection to it)."""
    return subprocess.run(exec_argv(sb, *argv), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def listening(sb: Sandbox, port: int) -> bool:
    """A TCP connect to 127.0.0.1:PORT inside the host succeeds."""
    return inside(sb, "/usr/bin/python3", "-c", "import socket; socket.create_connection"
                  f"(('127.0.0.1', {port}), timeout=1)").returncode == 0


def answers(sb: Sandbox, **confirm: Any) -> str:
    """Answers (inside the host: bus 'system') that stop ssh.service."""
    path = Path(sb.dir, "answers-confirm.yaml")
    data: dict[str, Any] = {"version": 1, "services": {"require": [], "stop": ["ssh.service"]}}
    if confirm:
        data["confirm"] = confirm
    write(path, data)
    return str(path)


def record(sb: Sandbox) -> dict[str, Any] | None:
    """The run's confirmation record in the host's /var/lib/hostsetup, read from outside."""
    found = list(Path(sb.env["HOSTSETUP_HOST_ROOT"], "var/lib/hostsetup/confirm").glob("*.json"))
    return json.loads(found[0].read_text()) if found else None


@contextlib.contextmanager
def apply_in_background(sb: Sandbox, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``hostsetup apply`` inside the host, running while the block runs (killed after)."""
    proc = subprocess.Popen(exec_argv(sb, HOSTSETUP, "apply", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def waiting(sb: Sandbox) -> None:
    wait(lambda: (record(sb) or {}).get("state") == "waiting", "the window opens", 60)


def test_not_confirmed_in_time_is_reverted(host: Sandbox) -> None:
    # The probe's target is what the change cuts: it never answers after the stop.
    report = Path(host.dir, "report.json")
    res = inside(host, HOSTSETUP, "apply", "--answers",
                 answers(host, within=3, tcp="127.0.0.1:2222"), "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "~ stop unit ssh.service [needs confirmation: ssh.service carries the " \
        "operator's SSH connections]" in out
    assert "or tcp 127.0.0.1:2222 must answer" in out
    assert "confirm: not confirmed within 3 s: reverted 1 operation(s)" in out
    assert unit_state(host, "ssh.service") == "active"  # re-read with busctl
    assert listening(host, 2222)
    got = json.loads(report.read_text())
    assert got["exit_code"] == 1
    assert got["confirm"]["outcome"] == "reverted"
    assert got["confirm"]["reverted"] == ["stop unit ssh.service"]
    assert got["steps"][0]["changes"][0]["risky"]
    # One id: the run's journal is the record's run (hostsetup confirm/undo RUN).
    journal = Path(host.env["HOSTSETUP_HOST_ROOT"], "var/lib/hostsetup/journal")
    assert (journal / f"{got['confirm']['run']}.jsonl").is_file()
    assert (record(host) or {})["state"] == "reverted"
    late = inside(host, HOSTSETUP, "confirm")
    assert late.returncode == 1 and "nothing is waiting" in late.stderr


def test_confirmed_from_a_new_connection_is_kept(host: Sandbox) -> None:
    with apply_in_background(host, "--answers", answers(host), "--confirm-within", "60") as proc:
        waiting(host)
        assert unit_state(host, "ssh.service") == "inactive"
        wrong = inside(host, HOSTSETUP, "confirm", "20250101-000000-abcdef")
        assert wrong.returncode == 2, wrong.stderr
        assert "is not waiting for a confirmation (waiting: " in wrong.stderr
        res = inside(host, HOSTSETUP, "confirm")
        assert res.returncode == 0, res.stderr
        assert "confirmed: its changes are kept" in res.stdout
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "confirm: confirmed ('hostsetup confirm'): the changes are kept" in out
    assert unit_state(host, "ssh.service") == "inactive"


def test_a_probe_reachable_after_the_change_keeps_it(host: Sandbox) -> None:
    res = inside(host, HOSTSETUP, "apply", "--answers",
                 answers(host, within=30, tcp="127.0.0.1:2223"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "confirm: confirmed (the probe reached tcp 127.0.0.1:2223)" in res.stdout
    assert unit_state(host, "ssh.service") == "inactive"


def kill_apply(sb: Sandbox, within: str, *who: str) -> dict[str, Any]:
    """Apply, then ``kill -9`` the processes of its open window (``pid``: the apply,
    ``keeper``); the record as it was."""
    with apply_in_background(sb, "--answers", answers(sb), "--confirm-within", within) as proc:
        waiting(sb)
        data = record(sb) or {}
        for key in who:
            assert inside(sb, "kill", "-9", str(data[key])).returncode == 0
        proc.wait(timeout=30)
    return data


def test_killed_while_waiting_its_keeper_reverts_in_time(host: Sandbox) -> None:
    data = kill_apply(host, "3", "pid")
    wait(lambda: (record(host) or {}).get("state") == "reverted", "reverted", 30)
    assert unit_state(host, "ssh.service") == "active"
    assert (record(host) or {})["reverted_by"] == data["keeper"] != data["pid"]
    assert time.time() >= data["deadline"]  # not before the window closed


def test_killed_with_its_keeper_is_reverted_at_the_next_start(host: Sandbox) -> None:
    kill_apply(host, "2", "keeper", "pid")
    time.sleep(2.5)  # its window closes with nobody to revert
    assert unit_state(host, "ssh.service") == "inactive"
    assert (record(host) or {})["state"] == "waiting"
    plan = inside(host, HOSTSETUP, "plan", "--answers", answers(host))
    assert "its risky changes were not confirmed; the next apply (or 'hostsetup confirm " \
        "--revert-expired') reverts them" in plan.stderr
    res = inside(host, HOSTSETUP, "confirm", "--revert-expired")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not confirmed within 2 s: reverted 1 operation(s)" in res.stdout
    assert unit_state(host, "ssh.service") == "active"
    assert (record(host) or {})["state"] == "reverted"


def test_the_window_outlives_the_operators_terminal(host: Sandbox) -> None:
    """The apply runs on a terminal (tmux) that goes away during the window, as an
    SSH session does: the process is hung up on, outlives it, and reverts in time."""
    argv = " ".join(exec_argv(host, HOSTSETUP, "apply", "--answers", answers(host),
                              "--confirm-within", "4"))
    term = tmux.Terminal(argv, Path(host.dir))
    try:
        term.wait_for("reverting in", timeout=60)
    finally:
        term.close()  # the terminal is gone: SIGHUP, then EIO on every write
    wait(lambda: (record(host) or {}).get("state") == "reverted", "reverted", 30)
    assert unit_state(host, "ssh.service") == "active"
    data = record(host) or {}
    assert data["result"] == "not confirmed within 4 s: reverted 1 operation(s)"
    assert data["reverted_by"] == data["pid"]  # the apply itself, not its keeper


def test_interrupted_while_waiting_reverts_at_once(host: Sandbox) -> None:
    with apply_in_background(host, "--answers", answers(host), "--confirm-within", "600") as proc:
        waiting(host)
        inside(host, "kill", "-TERM", str((record(host) or {})["pid"]))
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted while waiting for the confirmation: reverted 1 operation(s)" in out
    assert unit_state(host, "ssh.service") == "active"


# ---- the wizard: its "Keep these changes?" window, at 80x24


def outside_answers(sb: Sandbox, within: int) -> Path:
    """Answers for hostsetup outside the host (on its bus) that stop ssh.service."""
    path = Path(sb.dir, "wizard-answers.yaml")
    write(path, {"version": 1, "confirm": {"within": within}, "services": {
        "bus": sb.env["HOSTSETUP_DBUS_ADDRESS"], "require": [], "stop": ["ssh.service"]}})
    return path


def start_wizard(sb: Sandbox, within: int) -> tmux.Terminal:
    return tmux.Terminal(f"HOSTSETUP_STATE_DIR={sb.dir}/state {ROOT}/.venv/bin/python -m "
                         f"wizard --answers {outside_answers(sb, within)} --log {sb.dir}/w.log "
                         f"--report {sb.dir}/w.json", cwd=Path(sb.dir))


def wizard(sb: Sandbox, within: int) -> tmux.Terminal:
    """The wizard (outside the host, on its bus) with answers that stop ssh.service;
    from its welcome window to the window that asks to keep the change."""
    t = start_wizard(sb, within)
    t.wait_for("[*] Host services")
    t.send("F12")
    review = t.wait_for("Review")
    assert "~ stop unit ssh.service [needs confirmation:" in review
    t.send("Tab", "Enter")
    t.wait_for("Apply? ")
    t.send("Left", "Enter")
    return t


def test_wizard_keep(host: Sandbox) -> None:
    t = wizard(host, 60)
    try:
        screen = t.wait_for("Keep these changes?", timeout=60)
        assert "~ stop unit ssh.service" in screen
        first = int(screen.split("Reverting in ")[1].split()[0])
        time.sleep(2.5)
        later = int(t.screen().split("Reverting in ")[1].split()[0])
        assert later <= first - 2  # a live countdown
        assert unit_state(host, "ssh.service") == "inactive"
        t.send("Enter")  # Keep has the focus
        summary = t.wait_for("Summary")
        assert "Changes marked ~: confirmed (Keep pressed in the wizard): the" in summary
        t.send("Enter")
        assert t.exit_code() == 0
    finally:
        t.close()
    assert unit_state(host, "ssh.service") == "inactive"
    assert json.loads(Path(host.dir, "w.json").read_text())["confirm"]["outcome"] == "kept"


def test_wizard_no_key_reverts(host: Sandbox) -> None:
    t = wizard(host, 4)
    try:
        t.wait_for("Keep these changes?", timeout=60)
        summary = t.wait_for("Summary", timeout=30)
        assert "not confirmed within 4 s: reverted 1 operation(s)" in " ".join(summary.split())
        assert unit_state(host, "ssh.service") == "active"
        t.send("Enter")
        assert t.exit_code() == 1
    finally:
        t.close()
    report = json.loads(Path(host.dir, "w.json").read_text())
    assert report["exit_code"] == 1 and report["confirm"]["reverted"] == ["stop unit ssh.service"]


def test_wizard_terminal_lost_in_the_window_is_reverted(host: Sandbox) -> None:
    """newt exits when its terminal goes away: the window's keeper reverts in time."""
    t = wizard(host, 4)
    try:
        t.wait_for("Keep these changes?", timeout=60)
    finally:
        t.close()
    state = Path(host.dir, "state", "confirm")
    wait(lambda: any(json.loads(p.read_text())["state"] == "reverted"
                     for p in state.glob("*.json")), "reverted by the keeper", 30)
    assert unit_state(host, "ssh.service") == "active"


def test_wizard_reverts_an_expired_window_at_start(host: Sandbox) -> None:
    """An apply and its keeper killed inside the window: the next wizard reverts first."""
    state = Path(host.dir, "state")
    env = {**os.environ, "HOSTSETUP_STATE_DIR": str(state)}
    proc = subprocess.Popen([HOSTSETUP, "apply", "--answers", str(outside_answers(host, 3))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def opened() -> dict[str, Any]:
        found = [json.loads(p.read_text()) for p in state.glob("confirm/*.json")]
        return found[0] if found and "keeper" in found[0] else {}
    try:
        wait(opened, "the window opens, with its keeper", 60)
        data = opened()
        for pid in (data["keeper"], data["pid"]):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    time.sleep(max(0.0, data["deadline"] - time.time()) + 0.5)
    assert unit_state(host, "ssh.service") == "inactive"
    t = start_wizard(host, 3)
    try:
        screen = t.wait_for("Unconfirmed changes reverted", timeout=60)
        text = " ".join(line.strip(" │") for line in screen.splitlines())  # unwrapped
        assert "not confirmed within 3 s: reverted 1 operation(s)" in text
        assert unit_state(host, "ssh.service") == "active"
        t.send("Enter")
        t.wait_for("[*] Host services")
    finally:
        t.close()
