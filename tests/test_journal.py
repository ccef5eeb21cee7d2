"""The run journal (wizard/journal.py) and what reads it (resume, undo, reports), on
the fakes: records on disk before each operation, the bounds, pruning, the state
directory's permissions, no secret value, and a kill at every operation boundary
followed by resume or undo (the same sequence runs on a real host in
test_resume_undo.py)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackends, sample_backends, unit

import steps
from backends.interfaces import BackendError
from steps import REGISTRY
from steps.base import Change, Operation, Step, StepModel
from wizard import answers as answers_mod
from wizard import journal as journal_mod
from wizard import recovery
from wizard.exits import EXIT_FAILED, EXIT_INTERRUPTED_RUN, EXIT_OK
from wizard.journal import JournalError, JournalFull, RunBusy, RunJournal, answers_document
from wizard.reportshow import load_report, report_lines
from wizard.runner import Run, execute

TOKEN = "t0p-s3cret-env-value"
SERVICES = {"require": ["ovs-vswitchd.service", "libvirtd.service"],
            "enable": ["libvirtd.service"],
            "dropins": [{"unit": "libvirtd.service", "name": "50-hs",
                         "content": f"[Service]\nEnvironment=TOKEN={TOKEN}\n"}]}


def doc(**sections: Any) -> answers_mod.Answers:
    return answers_mod.validate({"version": 1, **sections})


def apply(fb: FakeBackends, answers: answers_mod.Answers, **kw: Any) -> tuple[Run, RunJournal]:
    journal = RunJournal.create("apply", answers_document(answers), **kw)
    return execute(answers, "apply", fb, journal=journal), journal


def changes(fb: FakeBackends, answers: answers_mod.Answers) -> list[str]:
    """What a plan of ``answers`` shows now."""
    return [c.describe() for s in execute(answers, "plan", fb).steps for c in s.changes]


def lines(journal: RunJournal) -> list[dict[str, Any]]:
    return [json.loads(x) for x in journal.path.read_text().splitlines()]


def test_each_operation_is_on_disk_before_it_is_carried_out(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    seen: dict[str, dict[str, Any]] = {}
    real_start = fb.dbus.start_unit

    def start(name: str, timeout: float) -> str:
        # What a reader (a later process) finds on disk while the job runs.
        [path] = state_dir.glob("journal/*.jsonl")
        seen[name] = json.loads(path.read_text().splitlines()[-1])
        return real_start(name, timeout)

    fb.dbus.start_unit = start  # type: ignore[method-assign]
    run, journal = apply(fb, answers)
    assert run.exit_code == EXIT_OK
    assert seen["libvirtd.service"]["t"] == "begin"
    assert seen["libvirtd.service"]["op"]["do"] == {
        "op": "job", "action": "start", "unit": "libvirtd.service", "timeout": 30.0}
    records = lines(journal)
    kinds = [r["t"] for r in records]
    assert kinds[:2] == ["run", "step"] and kinds[-1] == "end_run"
    ops = [r for r in records if r["t"] == "begin"]
    assert len(ops) == len(run.steps[0].changes) and kinds.count("end") == len(ops)
    assert len(synced) >= len(records)  # each record synced
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700
    assert records[0]["answers"]["services"]["require"] == SERVICES["require"]


def test_the_report_is_read_back_from_the_journal(state_dir: Path) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    run, journal = apply(fb, answers)
    found = journal_mod.read_run(journal.id)
    assert found.state == "finished"
    assert found.report() == {**run.as_dict(), "run": journal.id, "state": "finished"}
    shown = report_lines(load_report(Path(journal.id)), None, 200)
    assert shown[0].startswith(f"apply on {run.host} (run {journal.id}), ")
    assert shown[0].endswith("exit 0 (done)")
    assert "services: changed (5 changes)" in shown
    assert report_lines(load_report(journal.path), None, 200) == shown


class Killed(BaseException):
    """What the pause point's SIGKILL becomes in these tests."""


@contextlib.contextmanager
def killed_at(at: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The pause point at boundary ``at``, its SIGKILL replaced by :class:`Killed`, which
    skips the rest (no end records are written, as after a kill)."""
    def kill(_pid: int, _sig: int) -> None:
        raise Killed

    monkeypatch.setenv("HOSTSETUP_TEST", "1")
    monkeypatch.setenv("HOSTSETUP_TEST_KILL_AT", str(at))
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(os, "kill", kill)
        m.setattr(RunJournal, "finish", lambda self, _run: self.close())
        yield
    monkeypatch.delenv("HOSTSETUP_TEST_KILL_AT")


def interrupt(answers: answers_mod.Answers, fb: FakeBackends, at: int,
              monkeypatch: pytest.MonkeyPatch) -> RunJournal:
    """An apply killed at boundary ``at``."""
    made: list[RunJournal] = []
    with killed_at(at, monkeypatch):  # the pause point is read when a journal is made
        made.append(RunJournal.create("apply", answers_document(answers)))
        execute(answers, "apply", fb, journal=made[0])
    made[0].close()
    return made[0]


def test_an_interrupted_run_is_found_named_and_reported(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    journal = interrupt(answers, fb, 5, monkeypatch)  # the third operation began
    [found] = journal_mod.unsettled()
    assert found.id == journal.id and found.state == "interrupted" and not found.busy
    assert found.last_begun() == "services: update systemd: Reload: systemd re-reads unit " \
        "files and drop-ins"
    report = found.report()
    assert report["state"] == "interrupted" and report["exit_code"] is None
    assert report["steps"][0]["status"] == "interrupted"
    assert len(report["steps"][0]["changes"]) == 3
    head = report_lines(report, None, 200)[0]
    assert "interrupted, no end recorded; last operation begun: services: update systemd" in head
    said: list[str] = []
    assert recovery.settle(None, fb, said.append) == EXIT_INTERRUPTED_RUN
    assert said == [f"hostsetup: run {journal.id} (apply, {found.when()}) was interrupted; "
                    f"last operation begun: {found.last_begun()}: {recovery.HOW}"]


def test_a_run_in_progress_is_busy_and_never_touched(state_dir: Path) -> None:
    journal = RunJournal.create("apply", {"version": 1})
    [found] = journal_mod.unsettled()
    assert found.busy and found.state == "running"
    with pytest.raises(RunBusy):
        journal_mod.mark(found, "abandoned")
    said: list[str] = []
    assert recovery.settle("ignore", sample_backends(), said.append) == EXIT_INTERRUPTED_RUN
    assert "is running now" in said[0]
    journal.close()
    assert not journal_mod.unsettled()[0].busy


@pytest.mark.parametrize("at", range(1, 11))
def test_killed_at_each_boundary_resume_finishes_and_undo_goes_back(
        at: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boundaries 1..10 of the 5 operations: odd ones before an operation, even ones
    after it took effect and before its end record."""
    fb, answers = sample_backends(), doc(services=SERVICES)
    first = changes(fb, answers)
    assert len(first) == 5
    killed = interrupt(answers, fb, at, monkeypatch)
    # resume finishes it: a new run; then nothing is left to do
    [run] = journal_mod.unsettled()
    done, resumed = recovery.resume(run, fb)
    assert done.exit_code == EXIT_OK and changes(fb, answers) == []
    assert resumed.header["resumes"] == killed.id
    assert journal_mod.read_run(killed.id).state == "resumed"
    assert journal_mod.unsettled() == []
    # undo reverts the resume and the run it resumed, back to the first plan
    target, every = recovery.target_run(None)
    assert target.id == resumed.id
    result = recovery.undo(target, fb, every=every)
    assert result.exit_code == EXIT_OK, result.lines()
    assert changes(fb, answers) == first
    assert {o.state for o in result.outcomes} <= {"undone", "nothing to revert",
                                                   "already as before", "not applied"}
    assert journal_mod.read_run(killed.id).state == "undone"
    with pytest.raises(recovery.Refused, match="nothing to undo") as refused:
        recovery.target_run(None)
    assert refused.value.code == EXIT_OK


@pytest.mark.parametrize("at", [1, 2, 7, 8])
def test_undo_of_an_interrupted_run_reverts_only_what_took_effect(
        at: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    first = changes(fb, answers)
    interrupt(answers, fb, at, monkeypatch)
    [run] = journal_mod.unsettled()
    said: list[str] = []
    assert recovery.settle("undo", fb, said.append) is None
    assert changes(fb, answers) == first
    state = journal_mod.read_run(run.id).state
    assert state == "undone", said
    last = [line for line in said if line.startswith("  ")][0]
    # the operation begun last: not carried out (odd), or carried out, no end record
    assert last.startswith("  not applied" if at % 2 else "  undone"), said


def test_undo_dry_run_changes_nothing_and_lists_what_it_would_revert(state_dir: Path) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    apply(fb, answers)
    before = len(journal_mod.runs())
    target, every = recovery.target_run(None)
    result = recovery.undo(target, fb, dry_run=True, every=every)
    assert [o.state for o in result.outcomes] == [
        "would revert", "would revert", "nothing to revert", "would revert", "would revert"]
    assert changes(fb, answers) == [] and len(journal_mod.runs()) == before
    assert result.lines()[0].endswith("5 operation(s) (dry run: nothing is changed)")


def test_undo_stops_at_the_first_failure_and_goes_on_when_run_again(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    first = changes(fb, answers)
    apply(fb, answers)

    def refuse(name: str, timeout: float) -> str:
        raise BackendError(f"stop of {name} refused")

    target, every = recovery.target_run(None)
    with monkeypatch.context() as m:
        m.setattr(fb.dbus, "stop_unit", refuse)
        result = recovery.undo(target, fb, every=every)
    assert result.exit_code == EXIT_FAILED
    assert [o.state for o in result.outcomes][:2] == ["failed", "not undone"]
    assert "stop of libvirtd.service refused" in result.outcomes[0].error
    assert result.lines()[-1].startswith("NOT everything reverted")
    assert journal_mod.read_run(target.id).state == "finished"  # not marked undone
    report = result.journal.report() if result.journal else {}
    assert report["mode"] == "undo" and report["exit_code"] == EXIT_FAILED
    again, every = recovery.target_run(None)
    assert again.id == target.id
    assert recovery.undo(again, fb, every=every).exit_code == EXIT_OK
    assert changes(fb, answers) == first


class Legacy(Step[StepModel]):
    """A step still on the transitional contract: no ``execute``, no commands."""

    name, title, Answers = "legacy", "Legacy", StepModel


def test_undo_refuses_a_step_that_does_not_journal_its_commands(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    run, _journal = apply(fb, answers)
    assert run.exit_code == EXIT_OK
    legacy = RunJournal.create("apply", answers_document(answers))
    legacy.step("services", 0)
    legacy.step("legacy", 2)  # it applied, and recorded no operation
    legacy.finish(Run("apply"))
    known = steps.by_name()
    monkeypatch.setattr(steps, "by_name", lambda: {**known, "legacy": Legacy()})
    target, every = recovery.target_run(None)
    assert target.id == legacy.id
    with pytest.raises(recovery.Refused, match="step 'legacy' does not journal how to undo"):
        recovery.undo(target, fb, every=every)
    assert changes(fb, answers) == []  # nothing was undone


def test_the_run_journal_is_bounded_and_a_run_past_it_applies_nothing(state_dir: Path) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    run, journal = apply(fb, answers, limit=20_000)
    assert run.exit_code == EXIT_FAILED
    assert "run journal limit: this run's 5 operation(s) need about" in run.steps[0].errors[0]
    assert "nothing was applied" in run.steps[0].errors[0]
    assert len(changes(fb, answers)) == 5  # the host is as it was
    assert journal.path.stat().st_size < 20_000
    assert journal_mod.read_run(journal.id).state == "finished"
    with pytest.raises(JournalFull):
        RunJournal.create("apply", {"version": 1, "x": "y" * 30_000}, limit=20_000)


def test_the_last_runs_are_kept_and_an_unfinished_one_never_goes(state_dir: Path) -> None:
    unfinished = RunJournal.create("apply", {"version": 1})
    unfinished.close()
    for _ in range(5):
        RunJournal.create("apply", {"version": 1}, keep=3).finish(Run("apply"))
    ids = [r.id for r in journal_mod.runs()]
    assert len(ids) == 4 and ids[0] == unfinished.id  # 3 kept + the unfinished one


@pytest.mark.parametrize("how", ["symlink", "writable", "owner", "group-readable"])
def test_a_state_directory_others_could_use_is_refused(
        how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s"
    if how == "symlink":
        (tmp_path / "real").mkdir()
        state.symlink_to(tmp_path / "real")
    else:
        state.mkdir(mode=0o755)
    if how == "writable":
        state.chmod(0o777)
    elif how == "owner":
        os.chown(state, 65534, 65534)
    elif how == "group-readable":
        (state / "journal").mkdir(mode=0o750)
    monkeypatch.setenv("HOSTSETUP_STATE_DIR", str(state))
    expected = {"symlink": "it is a symbolic link", "writable": "mode 0777",
                "owner": "owned by uid 65534", "group-readable": "mode 0750"}[how]
    with pytest.raises(JournalError, match=expected):
        RunJournal.create("apply", {"version": 1})
    assert not list(tmp_path.rglob("*.jsonl"))


def test_no_secret_value_in_the_journal(state_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2-file-secret\n")
    secret.chmod(0o600)
    step = next(s for s in REGISTRY if s.name == "vsphere_network")
    section = {**step.example(), "password": f"file:{secret}"}
    run, journal = apply(sample_backends(), doc(vsphere_network=section))
    assert run.exit_code == EXIT_OK
    data = journal.path.read_text()
    assert f"file:{secret}" in data and "hunter2" not in data
    with pytest.raises(JournalError, match="value not shown"):
        journal_mod.check_references({"vsphere_network": {"password": "hunter2"}})


def test_the_kill_point_is_for_tests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTSETUP_TEST_KILL_AT", "3")
    monkeypatch.delenv("HOSTSETUP_TEST", raising=False)
    assert journal_mod._kill_at() == 0
    monkeypatch.setenv("HOSTSETUP_TEST", "1")
    assert journal_mod._kill_at() == 3


@pytest.mark.parametrize("step", REGISTRY, ids=lambda s: s.name)
def test_the_journaled_answers_validate_to_the_same_answers(
        step: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSPHERE_PASSWORD", "example")
    answers = doc(**{step.name: step.example()}, late_commands=[["true"]])
    again = doc(**answers_document(answers))
    assert again.sections == answers.sections and again.commands == answers.commands


def test_a_line_cut_short_is_left_out_only_at_the_end(state_dir: Path) -> None:
    journal = RunJournal.create("apply", {"version": 1})
    journal.close()
    with journal.path.open("ab") as f:
        f.write(b'{"t":"begin","step":"services","n":1,"op":{"cha')
    [found] = journal_mod.unsettled()
    journal_mod.mark(found, "abandoned")
    assert journal_mod.read_run(journal.id).state == "abandoned"
    with journal.path.open("ab") as f:
        f.write(b'{"t":"end","n":1}\n')
    with pytest.raises(JournalError, match="damaged at line 2"):
        journal_mod.read_run(journal.id)


@pytest.mark.parametrize("at", [1, 2, 4])
def test_an_interrupted_undo_is_finished_by_undoing_again(
        at: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    first = changes(fb, answers)
    _run, applied = apply(fb, answers)
    target, every = recovery.target_run(None)
    with killed_at(at, monkeypatch):
        recovery.undo(target, fb, every=every)
    [stuck] = journal_mod.unsettled()
    assert stuck.mode == "undo" and stuck.header["undoes"] == applied.id
    said: list[str] = []
    assert recovery.settle(None, fb, said.append) == EXIT_INTERRUPTED_RUN
    assert recovery.settle("resume", fb, said.append) is None  # an undo: undone again
    assert changes(fb, answers) == first
    assert journal_mod.unsettled() == []
    assert journal_mod.read_run(applied.id).state == "undone"
    assert journal_mod.read_run(stuck.id).state == "resumed"


def test_an_error_longer_than_the_room_left_is_cut(state_dir: Path) -> None:
    run = RunJournal.create("apply", {"version": 1}, limit=3000)
    op = Operation(Change("unit x.service", "start"), {"op": "job"}, None)
    run.reserve([op], steps=0)
    run.begin("services", op)
    run.end("services", op, "é" * 100_000)
    run.close()
    assert run.path.stat().st_size <= 3000
    [entry] = journal_mod.read_run(run.id).entries()
    assert entry.ended and entry.error.startswith("éé") and entry.error.endswith("... [cut]")


def test_undo_of_a_start_stops_what_the_start_pulled_in(state_dir: Path) -> None:
    """libvirtd.service pulls in its sockets: left active, they would start it again."""
    fb = sample_backends()
    fb.dbus.pulls["libvirtd.service"] = ("libvirtd.socket", "NetworkManager.service",
                                         "sockets.target")
    fb.dbus.units["libvirtd.socket"] = unit("libvirtd.socket", "inactive")
    answers = doc(services={"require": ["libvirtd.service"]})
    first = changes(fb, answers)
    run, journal = apply(fb, answers)
    [begin] = [r for r in lines(journal) if r["t"] == "begin"]
    assert begin["op"]["undo"]["also"] == ["libvirtd.socket"]  # it was inactive; a unit
    assert fb.dbus.units["libvirtd.socket"].active == "active"
    target, every = recovery.target_run(None)
    assert recovery.undo(target, fb, every=every).exit_code == EXIT_OK
    assert fb.dbus.units["libvirtd.socket"].active == "inactive"
    assert fb.dbus.units["NetworkManager.service"].active == "active"  # active before
    assert changes(fb, answers) == first


def test_an_undo_stopped_by_ctrl_c_ends_as_interrupted(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, answers = sample_backends(), doc(services=SERVICES)
    apply(fb, answers)

    def ctrl_c(name: str, timeout: float) -> str:
        raise KeyboardInterrupt

    target, every = recovery.target_run(None)
    monkeypatch.setattr(fb.dbus, "stop_unit", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        recovery.undo(target, fb, every=every)
    undo_run = journal_mod.runs()[-1]
    assert undo_run.mode == "undo" and undo_run.report()["exit_code"] == 130
    assert journal_mod.read_run(target.id).state == "finished"  # not undone
    assert journal_mod.unsettled() == []
