"""The ``hostsetup`` command line; see the README for the contract and exit codes.

Only the standard library is imported at start-up: the interactive wizard
must draw its first screen before pydantic, pyVmomi, libvirt or celery load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wizard import __version__
from wizard.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from wizard.session import check_outputs, reported

if TYPE_CHECKING:
    from wizard.runner import Run



ANSWERS_CA_HELP = "CA certificate(s) to verify an https:// --answers server with"


def answers_arg(text: str) -> Path | str:
    """argparse type of ``--answers``: a URL stays text (a Path would fold its ``//``)."""
    return text if "://" in text else Path(text)


def fetch_answers(args: argparse.Namespace) -> int | None:
    """``--answers https://...`` (or, for the wizard without ``--answers``,
    ``hostsetup.answers=`` on the kernel command line): fetch the answers into a
    private file and point ``args.answers`` at it (``args.answers_source`` keeps
    the URL for messages).  Returns the exit code if they cannot be had."""
    if not hasattr(args, "answers") or getattr(args, "fleet_command", None) == "status":
        return None
    from wizard import fetch

    if args.answers is None and args.command is None:
        found, ca = fetch.cmdline_answers()
        if found:
            args.answers = answers_arg(found)
            args.answers_ca = args.answers_ca or ca
    if not isinstance(args.answers, str):
        return None
    args.answers_source = args.answers
    try:
        args.answers = fetch.private_copy(fetch.fetch(args.answers, args.answers_ca))
    except fetch.FetchError as exc:
        if exc.code == EXIT_INVALID:
            return answers_invalid(args, [str(exc)], {"mode": args.command or "wizard",
                                                      "steps": []})
        print(f"hostsetup: {exc}", file=sys.stderr)
        return reported(args.report, {"version": 1, "mode": args.command or "wizard",
                                      "steps": [], "exit_code": exc.code,
                                      "errors": [str(exc)]}, exc.code)
    return None


def common_options(default: object) -> argparse.ArgumentParser:
    """``--report`` and ``--log``, accepted before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--report", type=Path, metavar="FILE", default=default,
                        help="write a JSON report")
    common.add_argument("--log", type=Path, metavar="FILE", default=default,
                        help="write a log file")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (usage errors exit 2, as argparse does)."""
    p = argparse.ArgumentParser(
        prog="hostsetup",
        description="Set up a virtualization host: services, OVS mirrors, vSphere "
        "networking, ivshmem devices. Without a command: the interactive wizard.",
        parents=[common_options(None)],
    )
    # In a subcommand the options default to "not given", so that
    # `hostsetup --log F apply ...` keeps the F given before the subcommand.
    common = common_options(argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"hostsetup {__version__}")
    p.add_argument("--answers", type=answers_arg, metavar="FILE|URL",
                   help="prefill the wizard; it asks only what is missing or listed "
                   "under 'interactive:' (default: hostsetup.answers= on the kernel "
                   "command line)")
    p.add_argument("--answers-ca", type=Path, metavar="FILE", help=ANSWERS_CA_HELP)
    p.add_argument("--record", type=Path, metavar="FILE",
                   help="save the answers used (mode 0600, secrets as references)")
    p.add_argument("--console", action="store_true",
                   help="the wizard on a fresh host's console (hostsetup-console.service): "
                   "exits at once if the host is configured; exit 0 marks it configured")
    p.add_argument("--reset-console", action="store_true",
                   help="start the console wizard again at the next boot (removes its marker)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for name, text in (("plan", "check mode: print the changes, change nothing "
                                "(exit 4 if changes are pending)"),
                       ("apply", "unattended: apply the answers; never prompts")):
        sp = sub.add_parser(name, help=text, description=text, parents=[common])
        sp.add_argument("--answers", type=answers_arg, metavar="FILE|URL", required=True)
        sp.add_argument("--answers-ca", type=Path, metavar="FILE", help=ANSWERS_CA_HELP)
        if name == "apply":
            sp.add_argument("--confirm-within", type=seconds, metavar="SECONDS",
                            help="keep risky changes (~) only if confirmed within SECONDS "
                            "('hostsetup confirm' or the answers' probe); else revert them")
    cf = sub.add_parser("confirm", help="keep the changes of a run waiting for confirmation",
                        description="Keep the risky changes of a run that waits for its "
                        "confirmation (run it from a new connection: it proves the path).")
    cf.add_argument("run", nargs="?", metavar="RUN", help="the run (default: the one waiting)")
    cf.add_argument("--revert-expired", action="store_true",
                    help="instead: revert the runs whose window closed while their process "
                    "was gone")
    cf.add_argument("--watch", action="store_true", help=argparse.SUPPRESS)  # the keeper

    add_doctor_parser(sub)
    sub.add_parser("schema", help="print the answers file's JSON Schema")
    sub.add_parser("answers-template", help="print a commented example answers file")

    sb = sub.add_parser("sandbox", help="local host of real services for trying and testing",
                        epilog="shell: 'sandbox shell --dir DIR [--host NAME] [-- COMMAND...]' "
                        "runs COMMAND (default: a shell) inside a host")
    sb.add_argument("action", choices=["up", "down", "status", "shell"])
    sb.add_argument("--dir", type=Path, required=True, metavar="DIR")
    sb.add_argument("--hosts", type=int, default=0, metavar="N",
                    help="up: N sandbox hosts with an agent each, one Redis, "
                    "and DIR/fleet-answers.yaml")
    sb.add_argument("--host", metavar="NAME", help="shell: which host of a fleet (default hv1)")
    add_fleet_parsers(sub, common)
    rp = sub.add_parser("report", help="read a JSON report or a run's journal")
    rsub = rp.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    show = rsub.add_parser("show", help="print a report (plan or apply, one host or a fleet, "
                           "or a run of the journal) as the same text as the command that "
                           "wrote it")
    show.add_argument("file", type=Path, metavar="FILE|RUN")
    show.add_argument("--host", metavar="NAME", help="fleet report: this host's own report")
    rsub.add_parser("list", help="the runs in this host's journal (id, mode, time, state)")
    add_recovery_parsers(sub, common)
    return p


def add_doctor_parser(sub: Any) -> None:
    """``doctor [--answers FILE] [--json] [--fleet]``."""
    text = "read-only preflight of this host, one line per check (exit 1 if any fails)"
    dp = sub.add_parser("doctor", help=text, description=text)
    dp.add_argument("--answers", type=answers_arg, metavar="FILE|URL",
                    help="check for these answers (default: each step's defaults)")
    dp.add_argument("--answers-ca", type=Path, metavar="FILE", help=ANSWERS_CA_HELP)
    dp.add_argument("--json", action="store_true", help="a JSON list of {check, status, detail}")
    dp.add_argument("--fleet", action="store_true", help="also the fleet agent's unit and "
                    "broker (implied by answers with hosts:)")
    dp.add_argument("--config", type=Path, default=Path("/etc/hostsetup/agent.conf"),
                    metavar="FILE", help="fleet: agent.conf (default: %(default)s)")
    dp.add_argument("--max-skew", type=float, default=60.0, metavar="S",
                    help="clock difference with the vCenter that fails (default %(default)g s)")
    dp.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="how long the systems get to answer, all together (default "
                    "%(default)g s)")


def cmd_doctor(args: argparse.Namespace) -> int:
    """``doctor``: exit 0 when every check passes, 1 when one fails, 3 for bad answers."""
    from wizard import answers as answers_mod
    from wizard import doctor

    try:
        answers = answers_mod.load(args.answers) if args.answers else None
    except answers_mod.AnswersError as exc:
        return answers_invalid(args, exc.problems, {"mode": "doctor", "steps": []})
    return doctor.command(answers, args)


def add_fleet_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``agent`` and ``fleet plan|apply|status``."""
    broker = argparse.ArgumentParser(add_help=False)
    broker.add_argument("--broker", metavar="URL", help="redis:// or rediss:// URL, no password "
                        "(default: $HOSTSETUP_REDIS_URL, else 'broker' in --config)")
    broker.add_argument("--password", metavar="REF", help="Redis password as env:NAME or "
                        "file:PATH (default: $HOSTSETUP_REDIS_PASSWORD, else --config)")
    broker.add_argument("--config", type=Path, default=Path("/etc/hostsetup/agent.conf"),
                        metavar="FILE", help="agent.conf (default: %(default)s)")
    ag = sub.add_parser("agent", parents=[broker], help="this host's fleet agent (Celery worker)")
    ag.add_argument("--name", help="this host's name in answers files "
                    "(default: 'name' in --config, else the short hostname)")
    ag.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    fl = sub.add_parser("fleet", help="run plan/apply on the hosts of an answers file")
    fsub = fl.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    for name, text in (("plan", "plan on every host (exit 4 if any has changes pending)"),
                       ("apply", "plan everywhere, then apply in batches: canary first"),
                       ("resume", "on each host, finish its interrupted run (its journal)"),
                       ("undo", "on each host, revert its last run that applied something")):
        sp = fsub.add_parser(name, help=text, description=text, parents=[common, broker])
        sp.add_argument("--answers", type=answers_arg, metavar="FILE|URL", required=True)
        sp.add_argument("--answers-ca", type=Path, metavar="FILE", help=ANSWERS_CA_HELP)
        sp.add_argument("--canary", type=int, default=1, metavar="N",
                        help="hosts in the first batch (default 1)")
        sp.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="hosts per later batch (default 0: all the rest at once)")
        sp.add_argument("--max-fail", default="0", metavar="N|P%",
                        help="failed hosts tolerated before later batches are not run: "
                        "a count or a percentage of the hosts (default 0)")
        sp.add_argument("--timeout", type=float, default=3600, metavar="S",
                        help="per host: no result after S seconds -> 'unknown' (default 3600)")
        sp.add_argument("--agent-wait", type=float, default=2.0, metavar="S",
                        help="how long agents get to say they listen (default 2)")
        sp.add_argument("--detach", action="store_true",
                        help="run in the background; print the run id for 'fleet status'")
        sp.add_argument("--run-id", help=argparse.SUPPRESS)
        sp.add_argument("--lines", action="store_true",
                        help="progress as lines even on a terminal (default there: a window)")
        add_fleet_recovery(sp, name)
    st = fsub.add_parser("status", help="state of a (detached) run", parents=[common, broker])
    st.add_argument("run", metavar="RUN", help="the run id printed by --detach")


def on_terminal() -> bool:
    """True when a person can be at the keyboard: stdin and stdout are a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def print_run(run: Run) -> None:
    """The plan/apply result for a terminal or a log: one block per step, the same
    text as the wizard's Review (:mod:`wizard.plantext`); errors go to stderr, one
    line each (for logs and grep).  Wrapped to a terminal's width; not wrapped when
    the output goes to a pipe or a file, so that each change stays one greppable line."""
    import shutil

    from wizard.plantext import step_lines

    width = shutil.get_terminal_size().columns - 2 if sys.stdout.isatty() else 1 << 20
    for result in run.steps:
        print("\n".join(step_lines(result, width=width, errors=False)))
        for err in result.errors:
            print(f"  ! {err}", file=sys.stderr)


def answers_invalid(args: argparse.Namespace, problems: list[str], report: dict[str, Any]) -> int:
    """Every problem of the answers file on stderr (and in the report): exit 3."""
    source = getattr(args, "answers_source", None)
    if source:  # fetched: name the URL, not the private copy
        problems = [p.replace(str(args.answers), source) for p in problems]
    print(f"hostsetup: {source or args.answers}: answers invalid ({len(problems)} problem(s)):",
          file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return reported(args.report, {"version": 1, **report, "exit_code": EXIT_INVALID,
                                  "errors": problems}, EXIT_INVALID)


def cmd_run(args: argparse.Namespace) -> int:
    """``plan`` / ``apply``."""
    from backends.bundle import RealBackends
    from wizard import answers as answers_mod
    from wizard.runner import execute

    try:
        answers = answers_mod.load(args.answers)
    except answers_mod.AnswersError as exc:
        return answers_invalid(args, exc.problems, {"mode": args.command, "steps": []})
    if answers.hosts:
        print(f"hostsetup: {args.answers} lists hosts: run it with "
              f"'hostsetup fleet {args.command}'", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "apply":
        return cmd_apply(args, answers)
    backends = RealBackends()
    try:
        run, extra = run_confirmed(args, answers, backends, execute)
    finally:
        backends.close()
    return reported(args.report, {**run.as_dict(), **extra}, run.exit_code)


# ---- confirm or revert (wizard/confirm.py): apply --confirm-within, hostsetup confirm


def seconds(text: str) -> int:
    """argparse type of ``--confirm-within``: whole seconds, 1 to 3600."""
    from wizard.answers import CONFIRM_MAX

    if not text.isdigit() or not 0 < int(text) <= CONFIRM_MAX:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds from 1 to "
                                         f"{CONFIRM_MAX}")
    return int(text)


def run_confirmed(args: argparse.Namespace, answers: Any, backends: Any, execute: Any,
                  journal: Any = None,
                  show: Callable[[Run], None] = lambda run: print_run(run),
                  ) -> tuple[Run, dict[str, Any]]:
    """Plan, or apply (journaled in ``journal``) under the confirmation window of
    ``--confirm-within`` or the answers' ``confirm:``; ``show`` the run before the
    window opens.  Returns the run and the report's extra keys."""
    from wizard import confirm

    console = confirm.Console()
    if args.command == "plan":
        for data in confirm.expired_pending(confirm.state_dir()):
            print(f"hostsetup: run {data['run']}: its risky changes were not confirmed; the "
                  "next apply (or 'hostsetup confirm --revert-expired') reverts them",
                  file=sys.stderr)
        run = execute(answers, "plan", backends)
        print_run(run)
        return run, {}
    tracker = confirm.Tracker.of(journal, args.confirm_within, answers)
    window = tracker.window
    try:
        if window is not None:
            confirm.folder(window.state)  # refused before anything is changed
            confirm.survive_hangup()  # the window must outlive the operator's SSH session
        settled = confirm.settle(confirm.state_dir(), backends, console.say)
        run = execute(answers, "apply", backends, journal=tracker)
        show(run)
        outcome = confirm.wait_and_decide(tracker, backends, console.say, console.tick)
    except confirm.ConfirmError as exc:
        from wizard.runner import Run

        print(f"hostsetup: confirm: {exc}", file=sys.stderr)
        return Run("apply", exit_code=exc.code), {"errors": [str(exc)]}
    if tracker.risky and window is None:
        print(f"hostsetup: {len(tracker.risky)} operation(s) from the first risky one (~) "
              "applied without a confirmation window (--confirm-within, or confirm: in the "
              "answers): nothing reverts them if they cut the connection", file=sys.stderr)
    extra: dict[str, Any] = {}
    if settled:
        extra["settled"] = [o.as_dict() for o in settled]
    if outcome is not None:
        extra["confirm"] = outcome.as_dict()
        if not outcome.kept:
            run.exit_code = EXIT_INTERRUPTED if outcome.how.startswith("interrupted") \
                else EXIT_FAILED
    return run, extra


def cmd_confirm(args: argparse.Namespace) -> int:
    """``confirm [RUN]`` / ``confirm --revert-expired``."""
    from wizard import confirm

    try:
        if not (args.revert_expired or args.watch):
            print(confirm.confirm(confirm.state_dir(), args.run))
            return 0
        from backends.bundle import RealBackends

        backends = RealBackends()
        try:
            if args.watch:  # the keeper of an open window (confirm.start_keeper)
                out = confirm.watch(confirm.state_dir(), args.run or "", backends)
                return EXIT_FAILED if out is not None and out.errors else 0
            outcomes = confirm.settle(confirm.state_dir(), backends, print, wait=False)
        finally:
            backends.close()
    except confirm.ConfirmError as exc:
        print(f"hostsetup: confirm: {exc}", file=sys.stderr)
        return exc.code
    if not outcomes:
        print("nothing to revert")
    return EXIT_FAILED if any(o.errors for o in outcomes) else 0


# ---------------------------------------------------------------- the journal: apply,
# resume, undo (wizard/journal.py, wizard/recovery.py)

AFTER_HELP = ("what to do first with a run the journal shows as interrupted "
              "(default: say so and exit 6): resume it, undo it, or ignore it "
              "(marked abandoned)")


def add_recovery_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``apply --after-interrupted``, ``resume [RUN]`` and ``undo [RUN]``."""
    from wizard.recovery import AFTER

    sub.choices["apply"].add_argument("--after-interrupted", choices=AFTER, help=AFTER_HELP)
    rs = sub.add_parser("resume", parents=[common], help="finish an interrupted run: plan "
                        "again with its answers and apply what is left")
    rs.add_argument("run", nargs="?", metavar="RUN",
                    help="the run (default: the last interrupted one)")
    ud = sub.add_parser("undo", parents=[common], help="revert what a run applied, last "
                        "first, from the journal (checked by reading the host again)")
    ud.add_argument("run", nargs="?", metavar="RUN", help="the run (default: the last "
                    "one that applied something and is not undone)")
    ud.add_argument("--dry-run", action="store_true", help="list what would be reverted; "
                    "change nothing")
    for parser in (rs, ud):
        parser.add_argument("--after-interrupted", choices=("ignore",),
                            help="another interrupted run: ignore it (marked abandoned)")


def add_fleet_recovery(sp: argparse.ArgumentParser, name: str) -> None:
    """``fleet apply --after-interrupted``; ``fleet resume|undo --hosts``, ``undo --run``
    and ``--dry-run``."""
    from wizard.recovery import AFTER

    if name == "apply":
        sp.add_argument("--after-interrupted", choices=AFTER, help=AFTER_HELP)
        sp.add_argument("--confirm-within", type=seconds, metavar="SECONDS",
                        help="on each host, keep risky changes (~) only if the agent takes "
                        "this run's confirmation (or the answers' probe answers) within "
                        "SECONDS; else the host reverts them")
    if name in ("resume", "undo"):
        sp.add_argument("--hosts", metavar="NAME,...", help="only these hosts (default: all)")
    if name == "undo":
        sp.add_argument("--run", metavar="RUN", help="the run to revert: a host's run id or "
                        "a fleet run id (default: each host's last run)")
        sp.add_argument("--dry-run", action="store_true", help="list what would be reverted")


def fleet_extra(args: argparse.Namespace) -> dict[str, Any]:
    """What a fleet resume/undo (or apply --after-interrupted) adds to each task."""
    return {k: v for k, v in (("after_interrupted", getattr(args, "after_interrupted", None)),
                              ("target", getattr(args, "run", None)),
                              ("dry_run", getattr(args, "dry_run", False)),
                              ("confirm_within", getattr(args, "confirm_within", None))) if v}


def fleet_hosts(args: argparse.Namespace, hosts: dict[str, Any]) -> dict[str, Any]:
    """``--hosts a,b``: those hosts of the answers file; raises ValueError for an unknown one."""
    wanted = [h for h in (getattr(args, "hosts", None) or "").split(",") if h]
    unknown = [h for h in wanted if h not in hosts]
    if unknown:
        raise ValueError(f"--hosts: {', '.join(unknown)} not in the answers file's hosts "
                         f"({', '.join(hosts)})")
    return {h: v for h, v in hosts.items() if not wanted or h in wanted}


def fleet_argv(args: argparse.Namespace) -> list[str]:
    """The same options, for a detached run."""
    argv = [f"{flag}={getattr(args, key)}" for flag, key in (
        ("--after-interrupted", "after_interrupted"), ("--run", "run"), ("--hosts", "hosts"),
        ("--confirm-within", "confirm_within"))
        if getattr(args, key, None)]
    return argv + (["--dry-run"] if getattr(args, "dry_run", False) else [])


def say(line: str) -> None:
    """A line about the journal, on stderr."""
    print(line, file=sys.stderr, flush=True)


def cmd_apply(args: argparse.Namespace, answers: Any) -> int:
    """``apply``: after the start-up check, a journaled run; its report is read
    back from the journal."""
    from backends.bundle import RealBackends
    from wizard.exits import EXIT_INTERRUPTED_RUN
    from wizard.journal import JournalError, RunJournal, answers_document, read_path
    from wizard.recovery import settle
    from wizard.runner import execute

    backends = RealBackends()
    try:
        code = settle(args.after_interrupted, backends, say)
        if code is not None:
            return reported(args.report, {"version": 1, "mode": "apply", "steps": [],
                                          "exit_code": code, "errors": [
                                              "an earlier run was interrupted"
                                              if code == EXIT_INTERRUPTED_RUN else
                                              "dealing with an earlier run failed"]}, code)
        journal = RunJournal.create("apply", answers_document(answers))
        report: dict[str, Any] = {}

        def show(run: Run) -> None:
            # What the journal has, before the confirmation window (if any) opens.
            try:
                report.update(read_path(journal.path).report())
            except JournalError as exc:  # the run is reported as it ran
                say(f"hostsetup: {exc}")
                report.update(run.as_dict())
            print_report(report)

        run, extra = run_confirmed(args, answers, backends, execute, journal, show)
    except JournalError as exc:
        say(f"hostsetup: {exc}")
        return EXIT_USAGE
    finally:
        backends.close()
    return reported(args.report, {**(report or run.as_dict()), **extra,
                                  "exit_code": run.exit_code}, run.exit_code)


def cmd_recovery(args: argparse.Namespace) -> int:
    """``resume [RUN]`` / ``undo [RUN] [--dry-run]``."""
    from backends.bundle import RealBackends
    from wizard import recovery
    from wizard.journal import JournalError

    backends = RealBackends()
    try:
        if args.command == "resume":
            return resume_run(args, backends)
        return undo_run(args, backends)
    except recovery.Refused as exc:
        say(f"hostsetup: {args.command}: {exc}")
        return exc.code
    except JournalError as exc:
        say(f"hostsetup: {args.command}: {exc}")
        return EXIT_USAGE
    finally:
        backends.close()


def resume_run(args: argparse.Namespace, backends: Any) -> int:
    """``resume``: the interrupted run, finished as a new run."""
    from wizard import recovery

    run = recovery.interrupted(args.run)
    if run is None:
        print("hostsetup: resume: no interrupted run in the journal: nothing to resume")
        return 0
    code = recovery.settle(args.after_interrupted, backends, say, skip=frozenset({run.id}))
    if code is not None:
        return code
    if run.mode == "undo":  # finishing an undo is undoing again
        say(f"hostsetup: resume: {run.notice()}: undoing again")
        return recovery.carry_out(run, "undo", backends, print)
    done, journal = recovery.resume(run, backends)
    print(f"run {journal.id} resumes run {run.id} ({run.when()})")
    print_report(journal.report())
    return reported(args.report, journal.report(), done.exit_code)


def print_report(report: dict[str, Any]) -> None:
    """What a journaled run did, as ``apply`` prints it: from its report, which comes
    from the journal."""
    from wizard.reportshow import run_from_dict

    print_run(run_from_dict(report))


def undo_run(args: argparse.Namespace, backends: Any) -> int:
    """``undo``: revert a run (and the runs it resumed)."""
    from wizard import recovery

    try:
        target, every = recovery.target_run(args.run)
    except recovery.Refused as exc:
        if exc.code != 0:
            raise
        print(f"hostsetup: undo: {exc}")
        return 0
    if not args.dry_run:
        code = recovery.settle(args.after_interrupted, backends, say,
                               skip=recovery.related(target, every))
        if code is not None:
            return code
    result = recovery.undo(target, backends, dry_run=args.dry_run, every=every)
    print("\n".join(result.lines()))
    report = result.journal.report() if result.journal else result.run().as_dict()
    return reported(args.report, report, result.exit_code)


SANDBOX_MISSING = (
    "hostsetup: sandbox: the sandbox is not installed with hostsetup; it is part of the "
    "source checkout (the top-level 'sandbox/' directory): get the source and run "
    "'make demo' or '.venv/bin/hostsetup sandbox ...' from it")


def load_sandbox() -> Any:
    """The sandbox's ``manage`` module, or ``None`` when this is not a source checkout.

    The sandbox is not part of the installed product: it is imported only here, from
    the checkout this program runs from (an editable install), never otherwise.
    """
    try:
        return importlib.import_module("sandbox.manage")
    except ModuleNotFoundError as exc:
        if exc.name not in ("sandbox", "sandbox.manage"):
            raise
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "sandbox" / "manage.py").exists():
            return None
        sys.path.insert(0, str(checkout))
        return importlib.import_module("sandbox.manage")


def cmd_sandbox(args: argparse.Namespace) -> int:
    """``sandbox up|down|status|shell --dir DIR``."""
    manage = load_sandbox()
    if manage is None:
        print(SANDBOX_MISSING, file=sys.stderr)
        return EXIT_USAGE
    SandboxError = manage.SandboxError  # noqa: N806 - the sandbox's exception class

    try:
        if args.inside and args.action != "shell":
            print(f"hostsetup: sandbox {args.action}: unexpected arguments: "
                  f"{' '.join(args.inside)}", file=sys.stderr)
            return EXIT_USAGE
        if args.action == "shell":
            return manage.shell(args.dir, args.host, args.inside)
        if args.action == "up":
            t0 = time.monotonic()
            sb = manage.up_fleet(args.dir, args.hosts) if args.hosts else manage.up(args.dir)
            print(f"sandbox up in {time.monotonic() - t0:.1f}s: {sb.dir}")
            answers = "fleet-answers.yaml" if args.hosts else "answers.yaml"
            print(f"  answers: {sb.dir / answers}\n  env:     {sb.dir / 'env'}")
        elif args.action == "down":
            for name in manage.down(args.dir):
                print(f"stopped {name}")
        else:
            procs = manage.status(args.dir)
            for name, pid, running in procs:
                print(f"{name:24} pid {pid:<8} {'running' if running else 'STOPPED'}")
            return 0 if procs and all(r for _n, _p, r in procs) else 1
    except SandboxError as exc:
        print(f"hostsetup: sandbox {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    """``agent``: this host's Celery worker, in the foreground (systemd runs it)."""
    import socket

    from wizard import fleet

    try:
        conf = fleet.load_config(args.config)
        cfg = fleet.broker_config(args.broker, args.password, conf, dict(os.environ))
        name = args.name or conf.get("name") or socket.gethostname().split(".")[0]
        return fleet.run_agent(cfg, [name], args.loglevel)
    except fleet.FleetError as exc:
        print(f"hostsetup: agent: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_fleet(args: argparse.Namespace) -> int:
    """``fleet plan|apply|resume|undo|status``."""
    from wizard import answers as answers_mod
    from wizard import fleet

    try:
        cfg = fleet.broker_config(args.broker, args.password, fleet.load_config(args.config),
                                  dict(os.environ))
        if args.fleet_command != "status":
            fleet.parse_max_fail(args.max_fail)
            answers = answers_mod.load(args.answers)
        app = fleet.connect(cfg)
    except answers_mod.AnswersError as exc:
        return answers_invalid(args, exc.problems,
                               {"kind": "fleet", "mode": args.fleet_command, "hosts": []})
    except (fleet.FleetError, ValueError) as exc:
        print(f"hostsetup: fleet: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, fleet.BrokerUnreachable) else EXIT_USAGE
    if args.fleet_command == "status":
        return fleet_status(app, args)
    if not answers.hosts:
        print(f"hostsetup: {args.answers}: no 'hosts:' list, nothing to fan out to",
              file=sys.stderr)
        return EXIT_INVALID
    options = fleet.Options(canary=args.canary, batch_size=args.batch_size,
                            max_fail=args.max_fail, timeout=args.timeout,
                            agent_wait=args.agent_wait)
    try:
        hosts = fleet_hosts(args, fleet.host_payloads(answers))
    except ValueError as exc:
        print(f"hostsetup: fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run = fleet.FleetRun(app, args.fleet_command, hosts, options, args.run_id,
                         on_event=lambda host, text: print(f"[{host}] {text}", flush=True),
                         extra=fleet_extra(args))
    if args.detach:
        from backends.interfaces import BackendError

        try:
            run.runner_pid = fleet_detach(args, run.run_id)
        except BackendError as exc:  # its log refused: nothing was started
            print(f"hostsetup: fleet: {exc}", file=sys.stderr)
            return EXIT_USAGE
        run.save(initial=True)  # so that 'fleet status' knows the run at once
        return 0
    print(f"fleet {args.fleet_command}: run {run.run_id}, {len(run.hosts)} host(s)", flush=True)
    if on_terminal() and not args.lines:
        from wizard.tui import FleetProgress

        window = FleetProgress(f"fleet {args.fleet_command}: run {run.run_id}", list(run.hosts))
        run.on_event = window
        try:
            code = run.run()
        finally:
            window.close()
    else:
        code = run.run()
    report = run.report()
    print_fleet(report)
    return reported(args.report, report, code)


def fleet_detach(args: argparse.Namespace, run_id: str) -> int:
    """Start the same run in the background; print its id; returns its pid."""
    import subprocess
    import tempfile

    # Fetched answers: the background run fetches them again (the private copy
    # goes away with this process).
    source = getattr(args, "answers_source", None) or str(args.answers.resolve())
    argv = [sys.executable, "-m", "wizard", "fleet", args.fleet_command,
            "--answers", source, "--run-id", run_id,
            "--canary", str(args.canary), "--batch-size", str(args.batch_size),
            "--max-fail", args.max_fail, "--timeout", str(args.timeout),
            "--agent-wait", str(args.agent_wait), "--config", str(args.config),
            *fleet_argv(args)]
    for flag, value in (("--broker", args.broker), ("--password", args.password),
                        ("--answers-ca", args.answers_ca and args.answers_ca.resolve()),
                        ("--report", args.report and args.report.resolve())):
        if value:
            argv += [flag, str(value)]
    log_path = args.log or Path(tempfile.gettempdir()) / f"hostsetup-fleet-{run_id}.log"
    from backends.hostfiles import open_log

    with open_log(log_path) as out:  # a predictable name in /tmp: never through a link
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)
    print(run_id)
    print(f"fleet {args.fleet_command} running in the background; log: {log_path}\n"
          f"  hostsetup fleet status {run_id}", file=sys.stderr)
    return proc.pid


def print_fleet(report: dict[str, Any]) -> None:
    """Per host: status and per-step results; then the totals (as `report show`)."""
    from wizard.reportshow import fleet_lines

    print("\n".join(fleet_lines(report)))


def cmd_report(args: argparse.Namespace) -> int:
    """``report show FILE|RUN [--host NAME]`` and ``report list``: exit 0, or 2 if
    FILE is not a report (nor RUN a run of the journal)."""
    import shutil

    from wizard.reportshow import ReportError, list_lines, load_report, report_lines

    width = shutil.get_terminal_size().columns - 2 if sys.stdout.isatty() else 1 << 20
    try:
        if args.report_command == "list":
            lines = list_lines()
        else:
            lines = report_lines(load_report(args.file), args.host, width)
    except ReportError as exc:
        print(f"hostsetup: report {args.report_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(lines))
    return 0


def fleet_status(app: Any, args: argparse.Namespace) -> int:
    """``fleet status RUN``: exit 0 while running, then the run's exit code (1 if abandoned)."""
    from wizard.fleet import load_run

    report = load_run(app, args.run)
    if report is None:
        print(f"hostsetup: fleet status: no run '{args.run}' (unknown or expired)",
              file=sys.stderr)
        return EXIT_USAGE
    print_fleet(report)
    return reported(args.report, report,
                    0 if report["state"] == "running" else int(report["exit_code"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hostsetup`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    inside: list[str] = []
    if "--" in argv and "sandbox" in argv[:argv.index("--")]:
        # `sandbox shell --dir D -- COMMAND...`: what follows -- is run inside the host.
        argv, inside = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = build_parser().parse_args(argv)
    args.inside = inside
    if args.reset_console or args.console:
        from wizard import console

        if args.reset_console:
            return console.reset()
        if console.configured():  # at every boot: nothing to do, at once
            return 0
    problem = check_outputs(args)
    if problem:
        print(f"hostsetup: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = fetch_answers(args)
        if code is not None:
            return code
        if args.command in ("plan", "apply"):
            return cmd_run(args)
        if args.command == "confirm":
            return cmd_confirm(args)
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command in ("resume", "undo"):
            return cmd_recovery(args)
        if args.command == "schema":
            from wizard.answers import json_schema

            print(json.dumps(json_schema(), indent=2))
            return 0
        if args.command == "answers-template":
            from wizard.answers import template

            print(template(), end="")
            return 0
        if args.command == "sandbox":
            return cmd_sandbox(args)
        if args.command == "agent":
            return cmd_agent(args)
        if args.command == "fleet":
            return cmd_fleet(args)
        if args.command == "report":
            return cmd_report(args)
        if not on_terminal():
            # Never wait for a person who is not there: scripts use plan/apply.
            print("hostsetup: the wizard needs a terminal; without one use "
                  "'hostsetup plan|apply --answers FILE'", file=sys.stderr)
            return EXIT_USAGE
        from wizard.tui import run_wizard

        code = run_wizard(args)
        if args.console:
            from wizard.console import mark

            mark(code)
        return code
    except KeyboardInterrupt:
        print("hostsetup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug must still end with a clear line
        if args.log:
            logging.getLogger("hostsetup").exception("internal error")
        print(f"hostsetup: internal error: {type(exc).__name__}: {exc} "
              + (f"(traceback in {args.log})" if args.log else "(--log FILE keeps the traceback)"),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
