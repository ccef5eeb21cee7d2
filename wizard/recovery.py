"""After an interruption: the start-up check, ``resume`` and ``undo``, from the journal.

- :func:`settle`: before ``apply`` (and the wizard, ``resume``, ``undo``, a fleet
  agent's run) an unsettled run of the journal is reported (exit 6) unless the
  caller says what to do with it: resume it, undo it, or ignore it (marked
  ``abandoned``).  A run another process is running now is never touched.
- :func:`resume`: a new run (mode ``resume``) with the interrupted run's answers
  from its header: the steps plan again, so what is already applied is recognised
  by reading the host, not by trusting the journal; the old run is marked
  ``resumed``.
- :func:`undo`: reverts what a run applied (with the runs it resumed), last
  first, from the journaled ``undo`` commands, each journaled in a new run (mode
  ``undo``) and checked by reading the host again (``observe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wizard.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INTERRUPTED_RUN,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from wizard.journal import (
    JournalRun,
    RunJournal,
    answers_document,
    mark,
    operation,
    read_path,
    runs,
    unsettled,
)

if TYPE_CHECKING:
    from pathlib import Path

    from backends.interfaces import Backends
    from steps.base import Operation, Step
    from wizard.runner import Run

log = logging.getLogger("hostsetup")

AFTER = ("resume", "undo", "ignore")
UNDOABLE_MODES = ("apply", "resume")
HOW = ("run 'hostsetup resume' to finish it, 'hostsetup undo' to revert it, or "
       "--after-interrupted=resume|undo|ignore")


class Refused(Exception):
    """``resume`` or ``undo`` cannot start; nothing was changed.  ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


Say = Callable[[str], None]


def settle(after: str | None, backends: Backends, say: Say, via: str = "cli",
           skip: frozenset[str] = frozenset(), base: Path | None = None) -> int | None:
    """Deal with unsettled runs (other than ``skip``) before a new run starts.

    Returns ``None`` when there is none left, else the exit code to stop with:
    6 when one is found and ``after`` is ``None`` (``say`` names it in one line),
    or a run is running now; the code of a ``resume``/``undo`` that did not end well.
    """
    for run in reversed([r for r in unsettled(base) if r.id not in skip]):
        if run.busy:
            say(f"hostsetup: run {run.id} ({run.mode}, pid {run.header.get('pid')}) is "
                "running now: wait for it to end")
            return EXIT_INTERRUPTED_RUN
        if after is None:
            say(f"hostsetup: {run.notice()}: {HOW}")
            return EXIT_INTERRUPTED_RUN
        if read_path(run.path).state != "interrupted":
            continue  # settled meanwhile (an undo marks the runs it finished)
        say(f"hostsetup: {run.notice()}: {after} it first")
        code = carry_out(run, after, backends, say, via, base)
        if code != EXIT_OK:
            return code
    return None


def carry_out(run: JournalRun, action: str, backends: Backends, say: Say, via: str = "cli",
              base: Path | None = None) -> int:
    """Resume, undo or ignore (mark ``abandoned``) the interrupted ``run``; returns the
    exit code.  An interrupted undo is finished by undoing again, whatever ``action``."""
    try:
        if action == "ignore":
            mark(run, "abandoned")
            say(f"run {run.id} marked abandoned")
            return EXIT_OK
        every = runs(base)
        if run.mode == "undo" or action == "undo":
            result = undo(origin(run, every), backends, via=via, every=every, base=base)
            for line in result.lines():
                say(line)
            return result.exit_code
        done, journal = resume(run, backends, via=via, base=base)
        say(f"run {journal.id} resumed run {run.id}: exit {done.exit_code}")
        return done.exit_code
    except Refused as exc:
        say(f"hostsetup: {exc}")
        return exc.code


def origin(run: JournalRun, every: list[JournalRun]) -> JournalRun:
    """The run an undo run reverts (``run`` itself for an apply or a resume)."""
    undoes = run.header.get("undoes") if run.mode == "undo" else None
    return next((r for r in every if r.id == undoes), run)


def related(target: JournalRun, every: list[JournalRun]) -> frozenset[str]:
    """The runs undoing ``target`` settles: its chain, and the undo runs of it (an
    interrupted undo is finished by the next one)."""
    chain = {r.id for r in chain_of(target, every)}
    return frozenset(chain | {r.id for r in every
                              if r.mode == "undo" and r.header.get("undoes") in chain})


def interrupted(run_id: str | None, base: Path | None = None) -> JournalRun | None:
    """The interrupted run to resume: ``run_id``, or the newest unsettled one."""
    if run_id:
        from wizard.journal import read_run

        return read_run(run_id, base)
    found = [r for r in unsettled(base) if not r.busy]
    return found[-1] if found else None


def resume(run: JournalRun, backends: Backends, via: str = "cli",
           progress: Callable[[float, str], None] = lambda _f, _t: None,
           fleet_run: str = "", base: Path | None = None) -> tuple[Run, JournalRun]:
    """Finish ``run``: plan again with its answers and apply what is left, journaled as a
    new run that resumes it.  Returns the run and its journal read back (the report).
    Raises :class:`Refused` (a run that is running now or settled, answers no
    longer valid: exit 3)."""
    from wizard import answers as answers_mod
    from wizard.exits import EXIT_INVALID
    from wizard.runner import execute

    if run.busy:
        raise Refused(f"run {run.id} is running now: wait for it to end",
                      EXIT_INTERRUPTED_RUN)
    if run.mode not in UNDOABLE_MODES:
        raise Refused(f"run {run.id} is an {run.mode}: only an apply or a resume is resumed "
                      "(run 'hostsetup undo' again to finish an undo)")
    if run.state != "interrupted":
        raise Refused(f"run {run.id} is {run.state}: nothing to resume", EXIT_OK)
    try:
        answers = answers_mod.validate(run.answers)
    except answers_mod.AnswersError as exc:
        raise Refused(f"run {run.id}: its answers are not valid now: "
                      + "; ".join(exc.problems), EXIT_INVALID) from None
    journal = RunJournal.create("resume", answers_document(answers), via=via, resumes=run.id,
                                fleet_run=fleet_run, base=base)
    mark(run, "resumed", journal.id)
    log.info("run %s resumes run %s", journal.id, run.id)
    done = execute(answers, "apply", backends, progress, journal=journal)
    return done, read_path(journal.path)


# ---------------------------------------------------------------- undo


@dataclass
class Pending:
    """One journaled operation to revert: its run, step, operation and whether its
    end was recorded without error (``applied``; else it is read back first)."""

    run: JournalRun
    step: str
    op: Operation
    applied: bool


@dataclass
class Outcome:
    """What undo did with one operation."""

    step: str
    what: str  # the operation's change, as the journal has it
    state: str  # undone, not verifiable, already as before, nothing to revert, ...
    error: str = ""
    revert: Operation | None = None


FAILED_STATES = ("failed", "not undone", "unknown")


@dataclass
class UndoResult:
    """The outcome of ``undo``: per operation, last first; the exit code."""

    target: JournalRun
    chain: list[JournalRun]
    outcomes: list[Outcome] = field(default_factory=list)
    exit_code: int = EXIT_OK
    dry_run: bool = False
    journal: JournalRun | None = None

    def lines(self) -> list[str]:
        """The text ``hostsetup undo`` prints."""
        names = " + ".join(r.id for r in self.chain)
        head = f"undo run {names} ({self.target.mode}, {self.target.when()})"
        out = [f"{head}: {len(self.outcomes)} operation(s)"
               + (" (dry run: nothing is changed)" if self.dry_run else "")]
        for o in self.outcomes:
            out.append(f"  {o.state}: {o.what}" + (f" ({o.error})" if o.error else ""))
        if not self.dry_run:
            verdict = "everything reverted" if self.exit_code == EXIT_OK else \
                "NOT everything reverted: see above, then run 'hostsetup undo' again"
            out.append(f"{verdict} (exit {self.exit_code})")
        return out

    def run(self) -> Run:
        """The undo as a run (for its journal's results and the report)."""
        from wizard.runner import Run, StepResult

        run = Run("undo")
        for o in self.outcomes:
            result = next((s for s in run.steps if s.name == o.step), None)
            if result is None:
                result = StepResult(o.step, "unchanged")
                run.steps.append(result)
            if o.revert is not None and o.state in ("undone", "not verifiable", "failed"):
                result.changes.append(o.revert.change)
                result.status = "applied" if result.status != "failed" else "failed"
            if o.state in FAILED_STATES:
                result.status = "failed"
                result.errors.append(f"{o.state}: {o.what}" + (f": {o.error}" if o.error else ""))
            else:
                result.notes.append(f"{o.state}: {o.what}")
        run.exit_code = self.exit_code
        return run


def target_run(run_id: str | None, base: Path | None = None) -> tuple[JournalRun, list[JournalRun]]:
    """The run ``undo`` reverts (``run_id``, or the last run that applied something
    and is not undone yet) and every run of the journal.  Raises :class:`Refused`."""
    every = runs(base)
    if run_id:
        found = next((r for r in every if r.id == run_id), None)
        if found is None:
            raise Refused(f"no run {run_id} in the journal ('hostsetup report list' lists "
                          "them)", EXIT_USAGE)
        return found, every
    for run in reversed(every):
        if run.mode in UNDOABLE_MODES and run.state not in ("undone", "resumed") \
                and any(r.applied_something() for r in chain_of(run, every)):
            return run, every
    raise Refused("nothing to undo: no run in the journal applied anything that is "
                  "not undone yet", EXIT_OK)


def chain_of(run: JournalRun, every: list[JournalRun]) -> list[JournalRun]:
    """``run`` and the runs it resumed (and they resumed), oldest first."""
    by_id = {r.id: r for r in every}
    chain = [run]
    while chain[0].header.get("resumes") in by_id and len(chain) <= len(every):
        chain.insert(0, by_id[chain[0].header["resumes"]])
    return chain


def _steps(chain: list[JournalRun]) -> dict[str, Step[Any]]:
    """The steps the chain applied; refuses one that does not journal its commands."""
    from steps import by_name
    from steps.base import Step

    known = by_name()
    wanted: list[str] = []
    for run in chain:
        wanted += [*run.steps_started(), *(e.step for e in run.entries())]
    steps: dict[str, Step[Any]] = {}
    for name in dict.fromkeys(wanted):
        step = known.get(name)
        if step is None:
            raise Refused(f"run {chain[-1].id} applied step '{name}', which this hostsetup "
                          "does not have: nothing was undone")
        if type(step).execute is Step.execute:
            raise Refused(f"step '{name}' does not journal how to undo its operations yet "
                          "(it is being converted to step contract v2): run "
                          f"{chain[-1].id} cannot be undone; nothing was undone")
        steps[name] = step
    return steps


def _pending(chain: list[JournalRun]) -> list[Pending]:
    """The operations the chain carried out, in order, without those a step's own
    compensation reverted already (a ``revert`` that ended well)."""
    out: list[Pending] = []
    for run in chain:
        for entry in run.entries():
            op = operation(entry.op)
            if op.change.action != "revert":
                out.append(Pending(run, entry.step, op, entry.ended and not entry.error))
                continue
            if entry.ended and not entry.error:
                undone = next((i for i in range(len(out) - 1, -1, -1)
                               if out[i].step == entry.step and out[i].op.undo == op.do), None)
                if undone is not None:
                    del out[undone]
    return out


def undo(target: JournalRun, backends: Backends, dry_run: bool = False, via: str = "cli",
         every: list[JournalRun] | None = None, fleet_run: str = "",
         base: Path | None = None) -> UndoResult:
    """Revert what ``target`` (and the runs it resumed) applied, last first.

    Each operation recorded as done is reverted with its ``undo`` command unless
    the host already reads as before; one begun but not recorded as done (or
    failed) is reverted only if the host reads as done.  Each revert is journaled
    (a new run, mode ``undo``) and read back.  The first failure stops (the rest is
    "not undone"; a new ``undo`` goes on from there).  Raises :class:`Refused`
    before changing anything (a step that cannot undo, answers no longer valid, a
    run running now).
    """
    from wizard import answers as answers_mod

    chain = chain_of(target, every if every is not None else runs(base))
    if any(r.busy for r in chain):
        raise Refused(f"run {target.id} is running now: wait for it to end",
                      EXIT_INTERRUPTED_RUN)
    if target.mode not in UNDOABLE_MODES:
        raise Refused(f"run {target.id} is an {target.mode}: only an apply or a resume is "
                      "undone (apply the answers again to redo)")
    steps = _steps(chain)
    sections: dict[str, Any] = {}
    for run in chain:
        try:
            sections[run.id] = answers_mod.validate(run.answers).sections
        except answers_mod.AnswersError as exc:
            raise Refused(f"run {run.id}: its answers are not valid now: "
                          + "; ".join(exc.problems)) from None
    result = UndoResult(target, chain, dry_run=dry_run)
    journal = None if dry_run else RunJournal.create(
        "undo", chain[-1].answers, via=via, undoes=target.id, fleet_run=fleet_run, base=base)
    try:
        _revert_all(result, _pending(chain), steps, sections, backends, journal)
    except BaseException:  # Ctrl-C: the undo run ends "interrupted" (130); RUN is not marked
        result.exit_code = EXIT_INTERRUPTED if result.exit_code == EXIT_OK else result.exit_code
        raise
    finally:
        if journal is not None:
            done = result.run()
            done.finished = time.time()
            journal.finish(done)
            result.journal = read_path(journal.path)
    if journal is not None and result.exit_code == EXIT_OK:
        every = every if every is not None else runs(base)
        for run in every:
            if run.id in related(target, every) and run.state in ("interrupted", "finished",
                                                                   "resumed", "abandoned"):
                mark(run, "undone" if run.mode in UNDOABLE_MODES else "resumed", journal.id)
    return result


def _revert_all(result: UndoResult, todo: list[Pending], steps: dict[str, Step[Any]],
                sections: dict[str, Any], backends: Backends, journal: RunJournal | None) -> None:
    from backends.interfaces import BackendError, BackendUnreachable
    from steps.base import Context, StepFailed, inverse

    ctx = Context(backends=backends, journal=journal) if journal else Context(backends=backends)
    stop = False
    for p in reversed(todo):
        step, what = steps[p.step], f"{p.step}: {p.op.change.describe()}"
        answers = sections[p.run.id][p.step]
        back = inverse(p.op)
        outcome = Outcome(p.step, what, "", revert=back)
        result.outcomes.append(outcome)
        if stop:
            outcome.state = "not undone"
            continue
        try:
            outcome.state, outcome.error = _revert_one(step, answers, p, back, ctx,
                                                       result.dry_run)
        except BackendUnreachable as exc:
            outcome.state, outcome.error = "failed", str(exc)
            result.exit_code, stop = EXIT_UNREACHABLE, True
        except (BackendError, StepFailed) as exc:
            outcome.state, outcome.error = "failed", str(exc)
            result.exit_code, stop = EXIT_FAILED, True
        if outcome.state in FAILED_STATES and result.exit_code == EXIT_OK:
            result.exit_code = EXIT_FAILED


def _revert_one(step: Step[Any], answers: Any, p: Pending, back: Operation | None,
                ctx: Any, dry_run: bool) -> tuple[str, str]:
    """Revert one operation; returns its outcome's state and error."""
    if not p.applied:
        seen = step.observe(answers, p.op.do, ctx)
        if seen is False:
            return "not applied", "begun, not carried out"
        if seen is None and back is not None:
            return "unknown", "begun, and whether it took effect cannot be read: not reverted"
    if back is None:
        return "nothing to revert", ""
    if step.observe(answers, back.do, ctx) is True:
        return "already as before", ""
    if dry_run:
        return "would revert", ""
    ctx.journal.begin(step.name, back)
    try:
        step.execute(answers, back.do, ctx)
    except Exception as exc:
        ctx.journal.end(step.name, back, str(exc))
        raise
    ctx.journal.end(step.name, back)
    seen = step.observe(answers, back.do, ctx)
    if seen is False:
        return "failed", "the host does not read as before after the undo"
    return ("undone" if seen else "not verifiable"), ""


__all__ = ["AFTER", "Refused", "UndoResult", "carry_out", "interrupted", "resume", "settle",
           "undo", "target_run"]
