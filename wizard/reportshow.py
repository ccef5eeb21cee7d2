"""``hostsetup report show FILE|RUN``: a JSON report as the CLI's human text.

A single-host report (``plan``, ``apply``, the wizard, an agent's) is turned
back into a :class:`wizard.runner.Run` and printed by :mod:`wizard.plantext`,
as ``hostsetup plan/apply`` print it; a fleet report (``"kind": "fleet"``)
is printed by :func:`fleet_lines`, as ``hostsetup fleet`` prints it, and one
host's own report with ``--host NAME``.  The file is read bounded in size,
never through a FIFO or a device, so a console can read a report without jq.
A run's journal (``wizard/journal.py``) is shown as its report: given as the
file, or by its run id; an interrupted run from the operations it recorded.
``hostsetup report list`` lists the runs of the journal.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

REPORT_LIMIT = 64 * 1024 * 1024  # bytes: a fleet report of a few hundred hosts fits


class ReportError(Exception):
    """The file cannot be shown; the message names it and says why."""


def load_report(arg: Path) -> dict[str, Any]:
    """The report ``arg`` names: a report file, a run's journal file, or a run id
    of this host's journal."""
    from wizard import journal

    if not arg.exists() and journal.RUN_NAME.match(str(arg)):
        try:
            return journal.read_run(str(arg)).report()
        except journal.JournalError as exc:
            raise ReportError(str(exc)) from None
    return read_report(arg)


def list_lines() -> list[str]:
    """``report list``: one line per run of the journal, oldest first."""
    from wizard import journal

    try:
        found = journal.runs()
    except journal.JournalError as exc:
        raise ReportError(str(exc)) from None
    lines = []
    for run in found:
        ops = len(run.entries())
        extra = "".join(f", {k} {run.header[k]}" for k in ("resumes", "undoes", "fleet_run")
                        if run.header.get(k))
        lines.append(f"{run.id}  {run.mode:7} {run.when()}  {run.state:11} "
                     f"{ops} operation(s){extra}")
    return lines or [f"no runs in {journal.journal_dir()}"]


def read_report(path: Path, limit: int = REPORT_LIMIT) -> dict[str, Any]:
    """Read and parse a report (or a run journal): a regular file of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReportError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ReportError(f"{path}: larger than {limit // (1024 * 1024)} MiB: not a report")
    if data.startswith(b'{"t":"run"'):
        from wizard.journal import JournalError, JournalRun, records

        try:
            return JournalRun(path.name.removesuffix(".jsonl"), path,
                              records(data, path)).report()
        except (JournalError, KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{path}: a damaged run journal ({exc})") from None
    try:
        report = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("version") != 1 or "mode" not in report:
        raise ReportError(f"{path}: not a hostsetup report (expected a JSON object with "
                          "'version': 1 and 'mode')")
    return report


def run_from_dict(report: dict[str, Any]) -> Any:
    """The :class:`wizard.runner.Run` a single-host report was made from."""
    from steps.base import Change, Operation
    from wizard.runner import Run, StepResult

    run = Run(str(report["mode"]), host=str(report.get("host") or "?"),
              exit_code=int(report.get("exit_code") or 0),
              started=float(report.get("started") or 0))
    run.finished = run.started + float(report.get("duration") or 0)
    for s in report.get("steps") or []:
        # "risky" is the operation's, not the change's (shown as '~' by plantext).
        ops = [Operation(Change(**{k: v for k, v in c.items() if k != "risky"}), {},
                         risky=str(c.get("risky") or "")) for c in s.get("changes") or []]
        run.steps.append(StepResult(
            str(s["name"]), s["status"], [op.change for op in ops], ops,
            errors=list(s.get("errors") or []), notes=list(s.get("notes") or []),
            durations=dict(s.get("durations") or {})))
    return run


def exit_words(code: Any) -> str:
    """``exit 1 (a step failed)``."""
    from wizard import exits

    meaning = {exits.EXIT_OK: "done", exits.EXIT_FAILED: "a step failed",
               exits.EXIT_USAGE: "usage error", exits.EXIT_INVALID: "answers invalid",
               exits.EXIT_PENDING: "changes pending", exits.EXIT_UNREACHABLE:
               "a backend is unreachable", exits.EXIT_INTERRUPTED_RUN:
               "an earlier run was interrupted", exits.EXIT_INTERRUPTED: "interrupted"}
    return f"exit {code}" + (f" ({meaning[code]})" if code in meaning else "")


def run_report_lines(report: dict[str, Any], width: int) -> list[str]:
    """A single-host report: a head line, then every step as ``plan``/``apply`` print it
    (errors inline, marked ``!``), then the errors of the run itself (invalid answers)."""
    from wizard.plantext import run_lines

    run = run_from_dict(report)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started)) \
        if run.started else "time unknown"
    ran = f" (run {report['run']})" if report.get("run") else ""
    end = exit_words(run.exit_code)
    if report.get("state") in ("interrupted", "running"):
        end = f"{report['state']}, no end recorded; last operation begun: " \
            f"{report.get('last_begun', '?')}"
    lines = [f"{run.mode} on {run.host}{ran}, {when}, "
             f"{run.finished - run.started:.1f} s: {end}"]
    lines += run_lines(run, width=width)
    lines += [f"  ! {err}" for err in report.get("errors") or []]
    return lines


def fleet_lines(report: dict[str, Any]) -> list[str]:
    """A fleet run (``hostsetup fleet`` and ``report show``): per host its status and
    per-step results; then the totals."""
    lines = [f"run {report['run_id']} ({report['mode']}): {report['state']}"
             + (f", exit {report['exit_code']}" if report["exit_code"] is not None else "")]
    for host in report["hosts"]:
        steps = " ".join(f"{k}={v}" for k, v in host["steps"].items())
        lines.append(f"  {host['name']:20} {host['status']:12} {steps}")
        lines += [f"    ! {err}" for err in host["errors"]]
    if report["stopped"]:
        lines.append(f"  stopped: {report['stopped']}")
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(report["counts"].items())))
    return lines


def report_lines(report: dict[str, Any], host: str | None, width: int) -> list[str]:
    """Any report as text; ``host``: that host's own report in a fleet report."""
    try:
        if report.get("kind") != "fleet":
            if host:
                raise ReportError("--host is for fleet reports; this one is of a single host")
            return run_report_lines(report, width)
        if not host:
            return fleet_lines(report)
        entry = next((h for h in report["hosts"] if h["name"] == host), None)
        if entry is None:
            names = ", ".join(h["name"] for h in report["hosts"])
            raise ReportError(f"no host '{host}' in this fleet report (hosts: {names})")
        last = entry.get("apply") or entry.get("plan")
        if not last:
            return [f"{host}: {entry['status']}, no report from its agent"] + [
                f"  ! {err}" for err in entry["errors"]]
        return run_report_lines(last, width)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError) as exc:
        raise ReportError(f"not a hostsetup report: unexpected content ({exc!r})") from None
