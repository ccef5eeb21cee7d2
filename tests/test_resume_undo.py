"""``apply`` killed (SIGKILL) at an operation boundary, then the next start, ``resume``
and ``undo``, as processes on a sandbox host (real systemd, Open vSwitch, libvirtd and
the vSphere simulator).

The answers are the sandbox's full answers, each section of a step that journals its
commands (step contract v2; the others cannot be undone yet and are left out). The
kill comes from the test-only pause point (``HOSTSETUP_TEST=1``,
``HOSTSETUP_TEST_KILL_AT=N``). ``make test`` kills at a seeded sample of the
boundaries (the first, the last and a few between); ``make fuzz``
(``HOSTSETUP_FUZZ=1``) at every one.  One host serves the whole sequence: each
``undo`` brings it back to its first plan for the next boundary.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostsetup

from sandbox import manage
from sandbox.core import Sandbox
from steps import by_name
from steps.base import Step
from wizard import journal
from wizard.answers import read_yaml, write

SAMPLE = 4  # boundaries killed at under make test (the first, the last, two seeded)
KILL = {"HOSTSETUP_TEST": "1"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    directory = tmp_path_factory.mktemp("ru") / "sb"
    try:
        yield manage.up(directory)
    finally:
        manage.down(directory)


@pytest.fixture
def answers(host: Sandbox, tmp_path: Path) -> Path:
    """The sandbox's answers, the sections of the steps that journal their commands."""
    full = read_yaml(host.dir / "answers.yaml")
    steps = by_name()
    kept = {name: dict(section) for name, section in full.items()
            if name in steps and type(steps[name]).execute is not Step.execute}
    assert "services" in kept
    path = tmp_path / "answers.yaml"
    write(path, {"version": 1, **kept})
    return path


def boundaries(total: int) -> list[int]:
    """Every boundary under make fuzz; else the first, the last and a seeded few."""
    every = list(range(1, total + 1))
    if os.environ.get("HOSTSETUP_FUZZ") or total <= SAMPLE:
        return every
    rng = random.Random(int(os.environ.get("HOSTSETUP_FUZZ_SEED", "17")))
    return sorted({1, total, *rng.sample(every[1:-1], SAMPLE - 2)})


def planned(answers: Path, report: Path) -> list[tuple[str, str, list[dict[str, object]]]]:
    """What ``plan`` shows now: per step its status and changes (its notes, e.g. why a
    step waits for a daemon, may word the same state differently)."""
    check(hostsetup("plan", "--answers", str(answers), "--report", str(report)), 4)
    return [(s["name"], s["status"], s["changes"])
            for s in json.loads(report.read_text())["steps"]]


def check(res: subprocess.CompletedProcess[str], code: int) -> None:
    assert res.returncode == code, \
        f"exit {res.returncode}, expected {code}\n{res.stdout}{res.stderr}"


@pytest.mark.timeout(900)  # a sequence of runs, on 2 shared cores
def test_killed_at_each_operation_boundary_resume_and_undo(
        host: Sandbox, answers: Path, tmp_path: Path) -> None:
    report = tmp_path / "p.json"
    first = planned(answers, report)
    # One whole apply counts the operations (steps checked during apply, after the
    # services step started their daemons, plan theirs then); its undo goes back.
    check(hostsetup("apply", "--answers", str(answers)), 0)
    ops = len(journal.runs()[-1].entries())
    assert ops > sum(len(changes) for _name, _status, changes in first)
    check(hostsetup("undo"), 0)
    assert planned(answers, report) == first
    for n in boundaries(2 * ops):
        killed = hostsetup("apply", "--answers", str(answers),
                           env={**KILL, "HOSTSETUP_TEST_KILL_AT": str(n)})
        check(killed, -9)
        [run] = journal.unsettled()
        # the next start names it, and changes nothing
        again = hostsetup("apply", "--answers", str(answers))
        check(again, 6)
        assert f"hostsetup: run {run.id} (apply, {run.when()}) was interrupted; last " \
            f"operation begun: {run.last_begun()}" in again.stderr
        shown = hostsetup("report", "show", run.id)
        check(shown, 0)
        assert "interrupted, no end recorded; last operation begun:" in shown.stdout
        # resume finishes it: then nothing is left to do
        check(hostsetup("resume"), 0)
        check(hostsetup("plan", "--answers", str(answers)), 0)
        # undo brings the host back to its first plan
        undone = hostsetup("undo")
        check(undone, 0)
        assert "everything reverted (exit 0)" in undone.stdout
        assert planned(answers, report) == first, f"boundary {n}"
        assert journal.unsettled() == []


def test_exit_6_is_reported_and_after_interrupted_says_what_to_do(
        host: Sandbox, answers: Path, tmp_path: Path) -> None:
    first = planned(answers, tmp_path / "p.json")
    check(hostsetup("apply", "--answers", str(answers),
                    env={**KILL, "HOSTSETUP_TEST_KILL_AT": "2"}), -9)
    [killed] = journal.unsettled()
    report = tmp_path / "r.json"
    check(hostsetup("apply", "--answers", str(answers), "--report", str(report)), 6)
    assert json.loads(report.read_text())["exit_code"] == 6
    # undo it first, then apply: the apply does it all again
    res = hostsetup("apply", "--answers", str(answers), "--after-interrupted=undo",
                    "--report", str(report))
    check(res, 0)
    assert f"run {killed.id} (apply" in res.stderr and "undo it first" in res.stderr
    assert "undone: services: start unit" in res.stderr
    assert journal.read_run(killed.id).state == "undone"
    applied = json.loads(report.read_text())
    assert applied["state"] == "finished" and applied["run"] != killed.id
    assert applied["steps"][0]["status"] == "applied"
    # ignore: marked abandoned, and the apply goes on (nothing left to do)
    check(hostsetup("undo"), 0)
    check(hostsetup("apply", "--answers", str(answers),
                    env={**KILL, "HOSTSETUP_TEST_KILL_AT": "1"}), -9)
    [ignored] = journal.unsettled()
    check(hostsetup("apply", "--answers", str(answers), "--after-interrupted=ignore"), 0)
    assert journal.read_run(ignored.id).state == "abandoned"
    listed = hostsetup("report", "list")
    assert f"{ignored.id}  apply   {ignored.when()}  abandoned" in listed.stdout
    check(hostsetup("undo"), 0)
    assert planned(answers, tmp_path / "p.json") == first


def test_undo_dry_run_nothing_to_resume_nothing_to_undo(
        host: Sandbox, answers: Path, tmp_path: Path) -> None:
    first = planned(answers, tmp_path / "p.json")
    res = hostsetup("resume")
    check(res, 0)
    assert "no interrupted run in the journal: nothing to resume" in res.stdout
    check(hostsetup("apply", "--answers", str(answers)), 0)
    dry = hostsetup("undo", "--dry-run")
    check(dry, 0)
    assert "(dry run: nothing is changed)" in dry.stdout
    assert "  would revert: services: start unit libvirtd.service" in dry.stdout
    check(hostsetup("plan", "--answers", str(answers)), 0)  # nothing was changed
    check(hostsetup("undo"), 0)
    assert planned(answers, tmp_path / "p.json") == first
    res = hostsetup("undo")
    check(res, 0)
    assert "nothing to undo" in res.stdout


def test_a_state_directory_others_can_write_is_refused(
        host: Sandbox, answers: Path, tmp_path: Path) -> None:
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o777)
    res = hostsetup("apply", "--answers", str(answers), env={"HOSTSETUP_STATE_DIR": str(state)})
    check(res, 2)
    assert f"state directory {state}: refused: mode 0777" in res.stderr
    assert "Traceback" not in res.stderr
    check(hostsetup("plan", "--answers", str(answers),
                    env={"HOSTSETUP_STATE_DIR": str(state)}), 4)  # nothing was applied
