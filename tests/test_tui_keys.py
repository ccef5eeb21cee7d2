"""Keys that never surprise, resize, exit codes and no dead ends, in tmux at 80x24,
on one sandbox host (bus, OVS, vSphere simulator, libvirt) shared by the module.

The tests that apply come last in the file (pytest keeps file order)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, hostsetup
from helpers import add_unit
from test_tui import restored
from test_tui_fields import host, wizard_on  # noqa: F401 - the module's sandbox fixture
from tmux import Terminal

from sandbox.core import Sandbox
from sandbox.host import BROKEN_UNIT
from sandbox.manage import write_yaml


def run_wizard(tmp: Path, answers: dict[str, Any], *extra: str) -> Terminal:
    path = tmp / "answers.yaml"
    write_yaml(path, answers)
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {path} "
                    f"--log {tmp}/w.log " + " ".join(extra), cwd=tmp)


def pending(sb: Sandbox) -> str:
    """What ``hostsetup plan`` would change on the sandbox (stdout)."""
    res = hostsetup("plan", "--answers", str(sb.dir / "answers.yaml"))
    assert res.returncode == 4, res.stdout + res.stderr
    return res.stdout


@pytest.fixture
def full(host: Sandbox, tmp_path: Path) -> Iterator[Terminal]:  # noqa: F811
    """The wizard with the sandbox's complete answers (nothing asked): welcome."""
    t = run_wizard(tmp_path, {k: v for k, v in host.answers.items()} | {"version": 1},
                   f"--report {tmp_path}/r.json")
    try:
        t.wait_for("[*] Host services")
        yield t
    finally:
        t.close()


def to_review(t: Terminal) -> str:
    t.send("F12")
    return t.wait_for("Esc back | ^C quit", timeout=60)  # the review's help line


def test_escape_and_f12_never_apply(full: Terminal, host: Sandbox) -> None:  # noqa: F811
    before = pending(host)
    screen = to_review(full)
    assert "Review" in screen and "Tab buttons" in screen  # the help line says the keys
    full.send("F12", "F12")  # nothing: F12 is not Apply here
    full.send("Escape")  # Back: the welcome window, not Apply
    full.wait_for("[*] Host services")
    to_review(full)
    full.send("Tab", "Enter")  # the Apply button: a confirmation, No focused
    screen = full.wait_for("Apply? ")
    assert "change(s) to host" in screen
    full.send("Enter")  # No
    full.wait_gone("Apply? ")
    full.wait_for("Review")
    full.send("Tab", "Enter")
    full.wait_for("Apply? ")
    full.send("Escape")  # Escape is No
    full.wait_gone("Apply? ")
    full.send("Tab", "Enter")
    full.wait_for("Apply? ")
    full.send("F12")  # F12 never confirms
    full.send("Escape")
    full.wait_gone("Apply? ")
    assert pending(host) == before  # nothing was applied


def test_review_scrolls_without_tab(full: Terminal) -> None:
    first = to_review(full)
    full.send("NPage")
    moved = full.wait_gone(first.split("\n")[3].strip() or "services:")
    assert moved != first
    full.send("Down", "Up", "PPage")
    full.wait_for("services:")


def test_escape_on_welcome_asks_then_leaves(full: Terminal) -> None:
    full.send("Escape")
    screen = full.wait_for("Leave hostsetup?")
    assert "Stay" in screen
    full.send("Enter")  # Stay has the focus
    full.wait_for("[*] Host services")
    full.send("Escape")
    full.wait_for("Leave hostsetup?")
    full.send("Left", "Enter")  # Leave
    assert full.exit_code() == 130
    assert restored(full)


def test_ctrl_c_asks_in_pickers_and_help_once_something_was_entered(
        host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    t = wizard_on(host, tmp_path, "services")
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        t.wait_for(": connection")
        t.send("F12")
        t.wait_for("Required units")
        t.send("Tab", "Space")  # "Start inactive units": something entered
        t.send("BTab", "Enter")  # the units picker
        t.wait_for("Space toggle")
        t.send("C-c")
        t.wait_for("Leave hostsetup?")
        t.send("Enter")  # Stay: back in the picker
        t.wait_gone("Leave hostsetup?")
        t.wait_for("Space toggle")
        t.send("Escape")  # the picker closes unchanged
        t.wait_for("F12 next")
        t.send("F1")
        t.wait_for("Enter/Esc close")  # the help window
        t.send("C-c")
        t.wait_for("Leave hostsetup?")
        t.send("C-c")  # a second Ctrl-C leaves
        assert t.exit_code() == 130
        assert restored(t)
    finally:
        t.close()


def test_resize_at_every_window(host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    """welcome, a step window, a picker, a record list, the review, a message: each
    redraws at a new size, and below 80x24 says so and waits."""
    t = wizard_on(host, tmp_path, "ovs_mirror")

    def bounce(marker: str) -> None:
        t.resize(70, 20)
        t.wait_for("terminal too small: need 80x24")
        t.resize(100, 30)
        t.wait_for(marker)
        t.resize(80, 24)
        time.sleep(0.6)  # a timer tick, then the redraw
        t.wait_for(marker)
        assert t.alive()

    try:
        t.wait_for("[*] Open vSwitch")
        bounce("[*] Open vSwitch")
        t.send("F12")
        t.wait_for(": connection")
        bounce("OVSDB remote")
        t.send("F12")
        t.wait_for("1 entry: edit...")
        bounce("1 entry: edit...")
        t.send("Enter")  # the record list
        t.wait_for("Enter edit")
        bounce("span-vm1: bridge=br0")
        t.send("Enter")  # the record
        t.wait_for("Esc cancel this entry")
        t.send("Tab", "Enter")  # the bridge picker
        t.wait_for("Enter choose")
        bounce("Enter choose")
        t.send("Escape")
        t.wait_for("Esc cancel this entry")
        t.send("Escape")
        t.wait_for("Enter edit")
        t.send("Escape")
        t.wait_for("F12 next")
        t.send("F12")
        t.wait_for("Esc back | ^C quit", timeout=60)
        bounce("Review")
        t.send("Tab", "Enter")
        t.wait_for("Apply? ")
        bounce("Apply? ")
        t.send("Escape")
        t.wait_gone("Apply? ")
        t.send("Tab", "Tab", "Tab", "Enter")  # Cancel: nothing was entered, no question
        assert t.exit_code() == 130
        assert restored(t)
    finally:
        t.close()


def test_unknown_keys_can_be_dropped_and_bad_interactive_is_reported(
        host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    # The shared host's required units run already: one inactive unit gives a change.
    services = dict(host.answers["services"], startt=True,
                    require=[*host.answers["services"]["require"], BROKEN_UNIT])
    t = run_wizard(tmp_path, {"version": 1, "interactive": ["nosuchstep"],
                              "services": services})
    try:
        screen = t.wait_for("Answers file: problems")
        assert "interactive: 'nosuchstep' is neither '*', a step" in screen
        t.send("Enter")
        screen = t.wait_for("Answers file: unknown keys")
        assert "Host services: startt (line" in screen and "unknown key" in screen
        t.send("Enter")  # Drop them
        t.wait_for("[*] Host services")
        t.send("F12")
        screen = t.wait_for("Esc back | ^C quit", timeout=60)
        assert "Review" in screen and "start unit" in screen  # no "unknown key" dead end
    finally:
        t.close()


def test_plan_problem_reopens_the_window_at_fault(host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    ovs = dict(host.answers["ovs_mirror"])
    ovs["mirrors"] = [dict(ovs["mirrors"][0], output_port="nosuch")]
    t = run_wizard(tmp_path, {"version": 1, "ovs_mirror": ovs})
    try:
        t.wait_for("[*] Open vSwitch")
        t.send("F12")
        screen = t.wait_for("Cannot plan", timeout=60)
        # Told with the step's title and the fields' labels, not the YAML path.
        assert "Port mirrors #1 > Output port (SPAN)" in screen
        assert re.search(r"\(line \d+\)", screen)
        assert "nosuch" in screen and "mirrors[0]" not in screen
        t.send("Enter")
        screen = t.wait_for("F12 next")  # the step's questions window, not the welcome
        assert "Port mirrors" in screen and "Step 1 of 1" in screen
        t.send("Enter")  # the focus is on the field at fault: its record list opens
        t.wait_for("Enter edit")
    finally:
        t.close()


class Silent:
    """A TCP server that accepts and never answers (a stalled TLS handshake)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def test_a_key_stops_a_stalled_wait(host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    silent = Silent()
    section = dict(host.answers["vsphere_network"], port=silent.port)
    t = run_wizard(tmp_path, {"version": 1, "interactive": ["vsphere_network"],
                              "vsphere_network": section})
    try:
        t.wait_for("[*] vSphere networking")
        t.send("F12")
        t.wait_for("Checking this host")  # the host check waits on the silent server too
        t.send("Escape")
        t.wait_for(": connection")
        t.send("F12")
        screen = t.wait_for("Please wait")
        assert "Stop waiting" in screen
        t.send("Escape")
        t.wait_gone("Please wait", timeout=3)  # at once, not after the 30 s timeout
        t.wait_for(": connection")  # back to the window before
        assert t.alive()
    finally:
        t.close()
        silent.close()


# ---------------------------------------------------------------- these apply


def test_ctrl_c_while_applying_stops_after_the_running_step(
        host: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    # The services step starts a unit whose start takes 10 s: Ctrl-C comes during it.
    add_unit(host, "slow-start.service",
             "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 10\n")
    answers = dict(host.answers) | {"version": 1}
    answers["services"] = {**answers["services"], "require": ["slow-start.service"]}
    t = run_wizard(tmp_path, answers, f"--report {tmp_path}/r.json")
    try:
        t.wait_for("[*] Host services")
        to_review(t)
        t.send("Tab", "Enter")
        t.wait_for("Apply? ")
        t.send("Left", "Enter")
        screen = t.wait_for("Applying")
        assert "^C stop after the running step" in screen
        assert re.search(r"\d+ s │", screen), screen  # the elapsed seconds
        t.send("C-c")
        t.wait_for("Stop after the running step?")  # the next step waits for the answer
        t.send("Left", "Enter")  # Stop
        screen = t.wait_for("Summary", timeout=120)
        assert "not run" in screen
        t.send("Enter")
        assert t.exit_code() == 130, (tmp_path / "r.json").read_text()
    finally:
        t.close()


@pytest.mark.parametrize("key", ["C-c", "Escape"])
def test_failed_apply_exits_1_whatever_closes_the_summary(
        host: Sandbox, tmp_path: Path, key: str) -> None:  # noqa: F811
    name = f"Faulty-{key}"
    Path(host.env["HOSTSETUP_VCSIM_FAULTS"]).write_text(f"AddPortGroup:{name}\n")
    section = dict(host.answers["vsphere_network"])
    section["portgroups"] = [{"name": name, "vswitch": "vSwitch0", "vlan": 7}]
    section["vswitches"], section["vm_adapters"] = [], []
    t = run_wizard(tmp_path, {"version": 1, "vsphere_network": section})
    try:
        t.wait_for("[*] vSphere networking")
        to_review(t)
        t.send("Tab", "Enter")
        t.wait_for("Apply? ")
        t.send("Left", "Enter")
        screen = t.wait_for("Summary", timeout=120)
        assert "failed" in screen
        t.send(key)
        assert t.exit_code() == 1
        assert restored(t)
    finally:
        t.close()
