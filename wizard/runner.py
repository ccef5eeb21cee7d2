"""Runs steps: check everything first, then apply, verify and report.

Phase 1 (no side effects), for every selected step: discover the host,
validate the answers against it, plan.  Any invalid answer stops the run
before anything is changed (exit 3); an unreachable backend likewise (exit 5).
Phase 2 (``apply`` only): each step applies its plan, then ``verify`` checks
that planning again finds nothing left.  The first failing step stops the
run; the steps after it are reported as not run.  A backend lost during
phase 2 makes that step "unreachable" (exit 5, the message names the backend
and its address); the steps applied before it keep their "applied" results.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from backends.interfaces import BackendError, Backends, BackendUnreachable
from steps.base import (
    Change,
    Context,
    Journal,
    NoJournal,
    Operation,
    Problem,
    SecretUnavailable,
    Step,
    StepFailed,
)
from wizard import commands
from wizard.answers import Answers, AnswersError, located
from wizard.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
)
from wizard.journal import JournalError, RunJournal

log = logging.getLogger("hostsetup")


Status = Literal["unchanged", "pending", "deferred", "applied", "failed", "invalid",
                 "unreachable", "interrupted", "not run"]
# How a status reads in the CLI's output and on the wizard's screens.
STATUS_TEXT = {"pending": "would change", "applied": "changed", "unchanged": "nothing to change",
               "deferred": "to be checked during apply"}
# How long a deferred step waits for the system an earlier step started.
DEFER_WAIT = 30.0


@dataclass
class StepResult:
    """One step's outcome, as it appears in the JSON report."""

    name: str
    status: Status = "not run"
    changes: list[Change] = field(default_factory=list)
    # The plan's operations (``changes`` are their changes, for the report).
    ops: list[Operation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def risky(self) -> dict[int, str]:
        """The risky changes: ``id(change)`` -> why it needs confirmation (its
        operation's ``risky``: it can cut the connection to the host)."""
        return {id(op.change): op.risky for op in self.ops if op.risky}

    def as_dict(self) -> dict[str, Any]:
        risky = self.risky()
        return {
            "name": self.name,
            "status": self.status,
            # Each change with "risky": why it needs confirmation ("" if it does not).
            "changes": [{**c.as_dict(), "risky": risky.get(id(c), "")} for c in self.changes],
            "errors": self.errors,
            "notes": self.notes,
            "durations": {k: round(v, 4) for k, v in self.durations.items()},
        }


@dataclass
class Run:
    """A whole run: per-step results and the exit code."""

    mode: str
    host: str = field(default_factory=socket.gethostname)
    steps: list[StepResult] = field(default_factory=list)
    exit_code: int = EXIT_OK
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "mode": self.mode,
            "host": self.host,
            "exit_code": self.exit_code,
            "started": self.started,
            "duration": round(self.finished - self.started, 4),
            "steps": [s.as_dict() for s in self.steps],
        }

    def problems(self) -> list[str]:
        return [e for s in self.steps for e in s.errors]


class Timer:
    """Records the duration of named phases into a result."""

    def __init__(self, result: StepResult, phase: str) -> None:
        self.result, self.phase = result, phase

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        self.result.durations[self.phase] = time.perf_counter() - self.t0


@dataclass
class Prepared:
    """A step checked and planned in phase 1 (or deferred to phase 2)."""

    step: Step[Any]
    answers: BaseModel
    result: StepResult
    raw: Any = None
    deferred: bool = False


def prepare(item: Prepared, ctx: Context) -> None:
    """Discover, validate and plan one step (read-only); the outcome goes in its result."""
    step, section, result = item.step, item.answers, item.result
    result.errors = []
    try:
        with Timer(result, "discover"):
            facts = step.facts_for(section, ctx)
            ctx.facts[step.name] = facts
        problems = step.validate(section, facts)
        if problems:
            result.status = "invalid"
            result.errors = [str(p) for p in located(problems, step.name, item.raw)]
            return
        with Timer(result, "plan"):
            result.ops = step.plan(section, ctx)
            result.changes = [op.change for op in result.ops]
    except BackendUnreachable as exc:
        result.status, result.errors = "unreachable", [str(exc)]
    except SecretUnavailable as exc:
        problem = Problem(exc.path, str(exc))
        result.status, result.errors = "invalid", [str(located([problem], step.name, item.raw)[0])]
    except (BackendError, StepFailed, ValueError) as exc:
        result.status, result.errors = "failed", [str(exc)]
    else:
        result.status = "pending" if result.changes else "unchanged"


def check(answers: Answers, ctx: Context, run: Run, concurrent: bool = True) -> list[Prepared]:
    """Phase 1 for every selected step: discover, validate, plan (read-only).

    Steps are checked at the same time (``concurrent``), so the phase costs
    about its slowest step; see :func:`prepare_concurrently` for who waits.
    A step whose system is unreachable but will be started by an earlier step
    (e.g. the services step starts Open vSwitch) is deferred: it is checked in
    phase 2, right after the steps before it are applied.
    """
    items = [Prepared(step, answers.sections[step.name], StepResult(step.name), answers.raw)
             for step in answers.selected()]
    run.steps.extend(item.result for item in items)
    if concurrent and len(items) > 1:
        prepare_concurrently(items, ctx)
    else:
        for item in items:
            prepare(item, ctx)
    prepared = []
    coming: set[str] = set()  # facts the plans so far will make true
    for item in items:
        step = item.step
        if item.result.status == "unreachable" and step.requires in coming:
            item.deferred = True
            item.result.status = "deferred"
            item.result.notes.append(
                f"checked after the steps before it start what it needs ({step.requires}): "
                f"now {item.result.errors[0]}")
            item.result.errors = []
        if item.result.status in ("pending", "unchanged", "deferred"):
            prepared.append(item)
            coming |= step.provides(item.result.changes)
    return prepared


def prepare_concurrently(items: list[Prepared], ctx: Context) -> None:
    """:func:`prepare` every item in a thread of its own (the work is waiting on
    daemons).  A step whose ``requires`` an earlier step may provide (its
    ``may_provide``) waits until that step is planned: it depends on it."""
    pool = ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="check")
    try:
        futures: list[Future[None]] = []
        for i, item in enumerate(items):
            needs = [futures[j] for j in range(i)
                     if item.step.requires in items[j].step.may_provide]
            futures.append(pool.submit(_prepare_after, needs, item, ctx))
        for future in futures:
            future.result()  # re-raises what a step raised, as the sequential loop would
    finally:
        # On Ctrl-C, do not wait for the threads: each read is bounded by its backend.
        pool.shutdown(wait=False, cancel_futures=True)


def _prepare_after(needs: list[Future[None]], item: Prepared, ctx: Context) -> None:
    wait(needs)
    prepare(item, ctx)


def phase1_exit(run: Run) -> int | None:
    """The exit code if phase 1 found a reason to stop, else ``None``."""
    statuses = {s.status for s in run.steps}
    for status, code in (("invalid", EXIT_INVALID), ("unreachable", EXIT_UNREACHABLE),
                         ("failed", EXIT_FAILED)):
        if status in statuses:
            return code
    return None


def apply_all(
    prepared: list[Prepared], ctx: Context, on_step: Callable[[int, Step[Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Phase 2: apply each step's plan and verify it; stop at the first failure.

    ``should_stop`` is asked between steps (the wizard's "stop after the running
    step"): when true, the rest is not run and the run is interrupted (130).
    The steps after a failure or a stop are reported as "not run".
    """
    for i, item in enumerate(prepared):
        if should_stop():
            log.warning("stopped by the operator before %s", item.step.name)
            return not_run(prepared[i:], EXIT_INTERRUPTED)
        on_step(i, item.step)
        code = apply_one(item, ctx)
        if code == EXIT_UNREACHABLE:
            applied = [f"{p.result.name} ({len(p.result.changes)} change(s))"
                       for p in prepared[:i] if p.result.status == "applied"]
            item.result.notes.append("applied before it: " + (", ".join(applied) or "nothing"))
        if code is not None:
            return not_run(prepared[i + 1:], code)
    return EXIT_OK


def not_run(rest: list[Prepared], code: int) -> int:
    """Mark the steps ``rest`` "not run"; returns ``code``."""
    for item in rest:
        item.result.status = "not run"
    return code


def apply_one(item: Prepared, ctx: Context) -> int | None:
    """Apply and verify one step; returns an exit code when the run must stop."""
    result = item.result
    if item.deferred:
        code = prepare_deferred(item, ctx)
        if code is not None:
            return code
    if not result.changes:
        return None
    log.info("%s: applying %d change(s)", item.step.name, len(result.changes))
    try:
        journal = run_journal(ctx.journal)
        if journal is not None:
            if item.deferred:  # its plan is new: the room for it was not reserved yet
                journal.reserve(result.ops)
            journal.step(item.step.name, len(result.ops))
        with Timer(result, "apply"):
            item.step.apply(item.answers, result.ops, ctx)
        with Timer(result, "verify"):
            # The facts cache is the runner's: re-read what the step changed, so that
            # verify (and the steps after it) do not plan against the state before.
            ctx.facts.pop(item.step.name, None)
            ctx.facts[item.step.name] = item.step.facts_for(item.answers, ctx)
            left = item.step.verify(item.answers, ctx)
    except BackendUnreachable as exc:
        return unreachable(item, exc, ctx)
    except (StepFailed, BackendError, ValueError, JournalError) as exc:
        result.status = "failed"
        result.errors.append(str(exc))
        result.errors.extend(getattr(exc, "errors", []))
        done = getattr(exc, "done", None)
        if done is not None:
            result.notes.append(
                "remains changed: " + (", ".join(c.describe() for c in done) or "nothing")
            )
        log.error("%s failed: %s", item.step.name, exc)
        return EXIT_FAILED
    result.notes.extend(ctx.notes)
    ctx.notes.clear()
    if left:
        result.status = "failed"
        result.errors.extend(left)
        return EXIT_FAILED
    result.status = "applied"
    log.info("%s applied %d change(s)", item.step.name, len(result.changes))
    return None


def unreachable(item: Prepared, exc: BackendUnreachable, ctx: Context) -> int:
    """A backend was lost while the step applied: exit 5, naming it and its address.

    Whether the step's own change took effect is unknown (a transaction may
    have been committed just before the connection broke): say how to find out.
    """
    result = item.result
    result.status = "unreachable"
    result.errors.append(f"{item.step.name}: {exc} (lost during apply)")
    result.notes.extend(ctx.notes)
    ctx.notes.clear()
    result.notes.append("whether this step's changes took effect is unknown: run 'plan' "
                        "once the backend is back")
    log.error("%s: %s during apply", item.step.name, exc)
    return EXIT_UNREACHABLE


def prepare_deferred(item: Prepared, ctx: Context) -> int | None:
    """Check a deferred step now; a daemon just started may need a moment to listen,
    so an unreachable backend is retried (bounded).  Returns an exit code to stop."""
    deadline = time.monotonic() + DEFER_WAIT
    while True:
        prepare(item, ctx)
        if item.result.status != "unreachable" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    codes = {"invalid": EXIT_INVALID, "unreachable": EXIT_UNREACHABLE, "failed": EXIT_FAILED}
    return codes.get(item.result.status)


def execute(
    answers: Answers,
    mode: Literal["plan", "apply"],
    backends: Backends,
    progress: Callable[[float, str], None] = lambda _f, _t: None,
    concurrent: bool = True,
    journal: Journal | None = None,
) -> Run:
    """Run ``plan`` or ``apply`` for the answered steps; never prompts.

    ``concurrent=False`` checks the steps one after the other (benchmarks).
    ``journal`` records each operation around its execution (apply); a
    :class:`~wizard.journal.RunJournal` also gets each step's start, and the
    results and exit code at the end (it is then closed)."""
    run = Run(mode)
    ctx = Context(backends=backends, progress=progress, log=log.info,
                  journal=journal or NoJournal())
    try:
        # Commands around the run (wizard/commands.py): early ones before the check
        # phase, late or error ones after the steps; plan only lists them.
        code = commands.before(answers, mode, run)
        if code is None:
            prepared = check(answers, ctx, run, concurrent)
            code = phase1_exit(run)
            if code is None and mode == "plan":
                code = EXIT_PENDING if any(p.result.changes for p in prepared) else EXIT_OK
            if code is None:
                code = reserve(prepared, ctx)
            if code is None:
                code = apply_all(prepared, ctx, lambda i, s: progress(i / len(prepared), s.title))
        run.exit_code = commands.after(answers, mode, run, code)
    except KeyboardInterrupt:
        # Report what is known: the step that was running may be half done.
        run.exit_code = EXIT_INTERRUPTED
        for result in run.steps:
            if result.status in ("pending", "deferred"):
                result.status = "interrupted"
                result.errors.append("interrupted: run 'plan' to see what took effect")
                break
    finally:
        run.finished = time.time()
        ours = run_journal(journal)
        if ours is not None:
            try:
                ours.finish(run)
            except JournalError as exc:  # the run is done; its file will read "interrupted"
                log.error("%s", exc)
    return run


def run_journal(journal: Any) -> RunJournal | None:
    """The run's :class:`RunJournal` behind ``journal``: itself, or the journal a
    wrapper passes every call on to (``inner``, e.g. the confirmation tracker)."""
    while journal is not None and not isinstance(journal, RunJournal):
        journal = getattr(journal, "inner", None)
    return journal


def reserve(prepared: list[Prepared], ctx: Context) -> int | None:
    """Before anything is applied: room in the run journal for every planned
    operation, or the run fails here (exit 1, nothing applied)."""
    journal = run_journal(ctx.journal)
    if journal is None:
        return None
    try:
        journal.reserve([op for p in prepared for op in p.result.ops], len(prepared) + 3)
    except JournalError as exc:
        log.error("%s", exc)
        first = next((p for p in prepared if p.result.changes), None)
        if first is not None:
            first.result.status = "failed"
            first.result.errors.append(str(exc))
        return not_run([p for p in prepared if p is not first], EXIT_FAILED)
    return None


__all__ = ["AnswersError", "Run", "StepResult", "execute", "check", "apply_all"]
