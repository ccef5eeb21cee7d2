"""The wizard in a real terminal: tmux at 80x24, keys by send-keys, screens by capture-pane."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, hostsetup, unit_state
from tmux import Terminal, apply_and_finish, restored

from sandbox import manage
from sandbox.core import Sandbox


def wizard(sb: Sandbox, tmp: Path, *extra: str) -> Terminal:
    """The wizard on the host's services step (asked, though answered)."""
    answers = tmp / "answers.yaml"
    manage.write_yaml(answers, {"version": 1, "interactive": ["services"],
                                "services": sb.answers["services"]})
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} "
                    f"--log {tmp}/wizard.log " + " ".join(extra), cwd=tmp)


@pytest.fixture
def term(dbus_host: Sandbox, tmp_path: Path) -> Iterator[Terminal]:
    t = wizard(dbus_host, tmp_path, f"--report {tmp_path}/report.json")
    try:
        yield t
    finally:
        t.close()


def to_questions(t: Terminal) -> None:
    t.wait_for("[*] Host services")
    t.send("F12")
    t.wait_for("Host services: connection")
    t.send("F12")
    t.wait_for("Start timeout (s)")


def set_timeout(t: Terminal, text: str) -> None:
    t.send("Tab", "Tab", "C-e", *["BSpace"] * 8)
    t.type(text)



def test_forward_run_to_summary(term: Terminal, dbus_host: Sandbox, tmp_path: Path) -> None:
    to_questions(term)
    screen = term.screen()
    assert "NetworkManager.service" in screen  # choices come from the host
    term.send("F12")
    review = term.wait_for("Review")
    assert "start unit libvirtd.service" in review
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"  # nothing before Apply
    term.send("Tab", "Enter")  # Apply
    term.wait_for("Apply? ")
    term.send("Left", "Enter")  # Yes
    summary = term.wait_for("Report:")
    assert "services: changed" in summary
    assert "Log:" in summary and "wizard.log" in summary
    assert "report.j" in summary
    term.resize(70, 20)  # the summary redraws after a resize, too
    term.wait_for("terminal too small: need 80x24")
    term.resize(80, 24)
    term.wait_for("services: changed")
    term.send("Enter")
    assert term.exit_code() == 0
    assert unit_state(dbus_host, "libvirtd.service") == "active"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"][0]["status"] == "applied"
    assert restored(term)


@pytest.mark.parametrize("key", ["C-c", "Escape", "Enter"])
def test_exit_code_is_the_runs_whatever_closes_the_summary(term: Terminal, key: str) -> None:
    to_questions(term)
    term.send("F12")
    term.wait_for("Review")
    term.send("Tab", "Enter")
    term.wait_for("Apply? ")
    term.send("Left", "Enter")
    term.wait_for("services: changed")
    term.send(key)
    assert term.exit_code() == 0
    assert restored(term)


def test_back_from_review_keeps_answers(term: Terminal) -> None:
    to_questions(term)
    set_timeout(term, "45")
    term.send("F12")
    term.wait_for("Review")
    term.send("Tab", "Tab", "Enter")  # Back
    screen = term.wait_for("Start timeout (s)")
    assert "45____" in screen
    term.send("Tab", "Tab", "Tab", "Tab", "Enter")  # Back again: the connection window
    screen = term.wait_for("Host services: connection")
    assert "system_bus_socket" in screen


def test_bad_value_is_refused_with_reason(term: Terminal) -> None:
    to_questions(term)
    set_timeout(term, "abc")
    term.send("F12")
    screen = term.wait_for("Not accepted")
    assert "Start timeout (s): Input should be a valid number" in screen
    term.send("Enter")
    screen = term.wait_for("abc___")  # the same window, value kept
    assert "Not accepted" not in screen
    set_timeout(term, "0")
    term.send("F12")
    assert "greater than 0" in term.wait_for("Not accepted")


def test_f1_help(term: Terminal) -> None:
    to_questions(term)
    term.send("F1")
    term.wait_for("Reads systemd and NetworkManager over D-Bus")
    term.send("NPage")  # each question's help too, further down: PgDn scrolls
    term.wait_for("Start timeout (s): Seconds to wait")
    term.send("Enter")
    term.wait_for("Start timeout (s)")


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_cancel_and_ctrl_c_restore_terminal(term: Terminal, dbus_host: Sandbox, how: str) -> None:
    to_questions(term)
    if how == "cancel":
        term.send("Tab", "Tab", "Tab", "Tab", "Tab", "Enter")
    else:
        term.send("C-c")
    assert term.exit_code() == 130
    assert restored(term)
    assert "Host services" not in term.screen()  # the windows are gone
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"


def test_cancel_asks_once_something_was_typed(term: Terminal, dbus_host: Sandbox) -> None:
    to_questions(term)
    set_timeout(term, "45")
    term.send("Tab", "Tab", "Tab", "Enter")  # Cancel
    term.wait_for("Leave hostsetup?")
    term.send("Enter")  # Stay has the focus
    screen = term.wait_gone("Leave hostsetup?")
    assert "45____" in screen  # nothing lost
    term.send("C-c")
    term.wait_for("Leave hostsetup?")
    term.send("Left", "Enter")  # Leave
    assert term.exit_code() == 130
    assert restored(term)
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"


def test_record_then_replay_gives_identical_plan(dbus_host: Sandbox, tmp_path: Path) -> None:
    rec = tmp_path / "recorded.yaml"
    t = wizard(dbus_host, tmp_path, f"--record {rec} --report {tmp_path}/wizard.json")
    try:
        to_questions(t)
        set_timeout(t, "42")
        assert apply_and_finish(t) == 0
    finally:
        t.close()
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    assert "timeout: 42" in rec.read_text()
    wizard_changes = json.loads((tmp_path / "wizard.json").read_text())["steps"][0]["changes"]

    # A fresh host in the same state, at the same address (the same dir, booted
    # again: nothing persists from the first boot): replay the record.
    manage.down(dbus_host.dir)
    manage.up(dbus_host.dir, components=[manage.HOST])
    res = hostsetup("plan", "--answers", str(rec), "--report", str(tmp_path / "p.json"))
    assert res.returncode == 4, res.stderr
    replayed = json.loads((tmp_path / "p.json").read_text())["steps"][0]["changes"]
    assert replayed == wizard_changes
    assert hostsetup("apply", "--answers", str(rec)).returncode == 0


def test_answered_sections_are_not_asked(dbus_host: Sandbox, tmp_path: Path) -> None:
    """With a complete answers file and no `interactive:`, welcome leads to the review."""
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {dbus_host.dir}/answers.yaml "
                 f"--log {tmp_path}/w.log", cwd=tmp_path)
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        screen = t.wait_for("start unit libvirtd.service")
        assert "Review" in screen and "Start timeout" not in screen
        t.send("Tab", "Tab", "Tab", "Enter")  # Cancel: nothing was entered, no question
        assert t.exit_code() == 130
    finally:
        t.close()


@pytest.mark.parametrize("text,reason", [
    ("version: 1\nservices:\n  bus: [system\n", "not valid YAML"),
    ("version: 1\nservices: {}\nhosts:\n- name: hv1\n", "it is for a fleet run"),
], ids=["broken-yaml", "fleet-file"])
def test_unusable_answers_file_is_explained_and_terminal_restored(
        tmp_path: Path, text: str, reason: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {bad} --log {tmp_path}/w.log",
                 cwd=tmp_path)
    try:
        screen = t.wait_for(reason)
        assert "Answers file not usable" in screen
        t.send("Enter")
        assert t.exit_code() == 3
        assert restored(t)
    finally:
        t.close()


def test_internal_error_keeps_the_answers_and_names_the_log(dbus_host: Sandbox,
                                                           tmp_path: Path) -> None:
    """A bug (simulated: the review's text raises) ends with exit 1, the traceback in
    the log, and the answers typed so far saved on request (0600, --record's file)."""
    answers, saved = tmp_path / "answers.yaml", tmp_path / "saved.yaml"
    answers.write_text((dbus_host.dir / "answers.yaml").read_text().replace(
        "version: 1", "version: 1\ninteractive: [services]"))
    bug = ("import sys, wizard.tui.flow as f; f.review_lines = lambda run: 1 / 0; "
           "from wizard.cli import main; sys.exit(main(sys.argv[1:]))")
    t = Terminal(f"{ROOT}/.venv/bin/python -c '{bug}' --answers {answers} "
                 f"--log {tmp_path}/w.log --record {saved}", cwd=tmp_path)
    try:
        to_questions(t)
        set_timeout(t, "43")
        t.send("F12")
        screen = t.wait_for("Internal error")
        assert "The traceback is in" in screen and "w.log" in screen
        assert "Save the answers" in screen
        t.send("Left", "Enter")  # Save (Don't save has the focus)
        assert t.exit_code() == 1
        assert restored(t)
        assert "ZeroDivisionError" in t.screen()
    finally:
        t.close()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "timeout: 43" in saved.read_text() or "timeout: '43'" in saved.read_text()
    assert "Traceback" in (tmp_path / "w.log").read_text()
