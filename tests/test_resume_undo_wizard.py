"""The wizard's window about an interrupted run (Resume / Undo / Ignore / Quit), in tmux
at 80x24, on a sandbox host's real systemd.  The run is interrupted by the test-only
pause point (``HOSTSETUP_TEST_KILL_AT``) of a ``hostsetup apply``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, hostsetup
from tmux import Terminal, apply_and_finish

from sandbox import manage
from sandbox.core import Sandbox
from wizard import journal
from wizard.answers import write


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    directory = tmp_path_factory.mktemp("ruw") / "sb"
    try:
        yield manage.up(directory, components=[manage.HOST])
    finally:
        manage.down(directory)


@pytest.fixture
def answers(host: Sandbox, tmp_path: Path) -> Path:
    path = tmp_path / "answers.yaml"
    write(path, {"version": 1, "services": host.answers["services"]})
    return path


def interrupted(answers: Path, at: int) -> journal.JournalRun:
    """An apply killed at boundary ``at``: the journal's interrupted run."""
    res = hostsetup("apply", "--answers", str(answers),
                    env={"HOSTSETUP_TEST": "1", "HOSTSETUP_TEST_KILL_AT": str(at)})
    assert res.returncode == -9, res.stderr
    [run] = journal.unsettled()
    return run


def wizard(answers: Path, tmp: Path) -> Terminal:
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} "
                    f"--log {tmp}/wizard.log --report {tmp}/report.json", cwd=tmp)


def window(t: Terminal, run: journal.JournalRun) -> str:
    """The window, whole on the 80x24 screen: the run, when, the last operation."""
    t.wait_for("Interrupted run")
    screen = t.wait_for("Esc/^C quit, the run left as it is")  # its keys line: drawn last
    for text in (f"run {run.id} (apply)", f"started {run.when()}",
                 "last operation begun: services: start unit", "Resume", "Undo", "Ignore",
                 "Quit"):
        assert text in screen, screen
    return screen


def leave(t: Terminal) -> int:
    """From the welcome window: Escape, then Leave."""
    t.wait_for("[*] Host services")
    t.send("Escape")
    t.wait_for("Leave hostsetup?")
    t.send("Left", "Enter")
    return t.exit_code()


def test_quit_leaves_the_run_as_it_is(answers: Path, tmp_path: Path) -> None:
    run = interrupted(answers, 1)
    t = wizard(answers, tmp_path)
    try:
        window(t, run)
        t.send("Escape")  # Quit, as the button
        assert t.exit_code() == 6
    finally:
        t.close()
    assert journal.read_run(run.id).state == "interrupted"
    for keys in (("Tab", "Tab", "Tab", "Enter"), ("C-c",)):  # the Quit button, Ctrl-C
        t = wizard(answers, tmp_path)
        try:
            window(t, run)
            t.send(*keys)
            assert t.exit_code() == 6
        finally:
            t.close()
    check_ignored(answers, tmp_path, run)


def check_ignored(answers: Path, tmp_path: Path, run: journal.JournalRun) -> None:
    t = wizard(answers, tmp_path)
    try:
        window(t, run)
        t.send("Tab", "Tab", "Enter")  # Ignore
        assert leave(t) == 130
    finally:
        t.close()
    assert journal.read_run(run.id).state == "abandoned"


def shown(answers: Path, tmp: Path, at: int) -> tuple[str, journal.JournalRun, Terminal]:
    """The first plan (its text), a run killed at boundary ``at`` and the wizard showing
    the window about it."""
    first = hostsetup("plan", "--answers", str(answers)).stdout
    run = interrupted(answers, at)
    t = wizard(answers, tmp)
    try:
        window(t, run)
    except BaseException:
        t.close()
        raise
    return first, run, t


def test_resume_reviews_what_is_left_and_applies_it(answers: Path, tmp_path: Path) -> None:
    # the first start carried out, its end not recorded
    first, run, t = shown(answers, tmp_path, 2)
    try:
        t.send("Enter")  # Resume
        t.wait_for("[*] Host services")
        t.send("F12")
        review = t.wait_for("Review")
        # what is left, read from the host: the first start took effect
        assert "services: 1 change" in review and "start unit libvirtd.service" in review
        assert "openvswitch-switch" not in review
        assert apply_and_finish(t, timeout=60) == 0  # its F12 does nothing on the Review
    finally:
        t.close()
    assert hostsetup("plan", "--answers", str(answers)).returncode == 0
    old = journal.read_run(run.id)
    resumed = journal.read_run(old.records[-1]["by"])
    assert old.state == "resumed" and resumed.mode == "resume"
    assert resumed.header["via"] == "wizard" and resumed.header["resumes"] == run.id
    undone = hostsetup("undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert hostsetup("plan", "--answers", str(answers)).stdout == first


def test_undo_reverts_it_and_says_so(answers: Path, tmp_path: Path) -> None:
    first, run, t = shown(answers, tmp_path, 2)
    try:
        t.send("Tab", "Enter")  # Undo
        screen = t.wait_for("everything reverted (exit 0)", timeout=60)
        assert "undone: services: start unit" in screen
        t.send("Enter")
        assert leave(t) == 130
    finally:
        t.close()
    assert journal.read_run(run.id).state == "undone"
    assert hostsetup("plan", "--answers", str(answers)).stdout == first
