"""The ``hostsetup`` command line; see the README for the contract and exit codes.

Only the standard library is imported at start-up: the interactive wizard
must draw its first screen before pydantic, pyVmomi, libvirt or celery load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wizard import __version__

if TYPE_CHECKING:
    from wizard.runner import Run

EXIT_USAGE, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 2, 3, 5, 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (usage errors exit 2, as argparse does)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report")
    common.add_argument("--log", type=Path, metavar="FILE", help="write a log file")

    p = argparse.ArgumentParser(
        prog="hostsetup",
        description="Set up a virtualization host: services, OVS mirrors, vSphere "
        "networking, ivshmem devices. Without a command: the interactive wizard.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"hostsetup {__version__}")
    p.add_argument("--answers", type=Path, metavar="FILE",
                   help="prefill the wizard; it asks only what is missing or listed "
                   "under 'interactive:'")
    p.add_argument("--record", type=Path, metavar="FILE",
                   help="save the answers used (mode 0600, secrets as references)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for name, text in (("plan", "check mode: print the changes, change nothing "
                                "(exit 4 if changes are pending)"),
                       ("apply", "unattended: apply the answers; never prompts")):
        sp = sub.add_parser(name, help=text, description=text, parents=[common])
        sp.add_argument("--answers", type=Path, metavar="FILE", required=True)

    sub.add_parser("schema", help="print the answers file's JSON Schema")
    sub.add_parser("answers-template", help="print a commented example answers file")

    sb = sub.add_parser("sandbox", help="local host of real services for trying and testing")
    sb.add_argument("action", choices=["up", "down", "status"])
    sb.add_argument("--dir", type=Path, required=True, metavar="DIR")
    return p


def setup_logging(path: Path | None) -> None:
    """Log to ``path`` (INFO) if given; warnings always go to stderr."""
    root = logging.getLogger("hostsetup")
    root.setLevel(logging.INFO)
    if path is not None:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write the JSON report atomically."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def print_run(run: Run) -> None:
    """The plan/apply result for a terminal or a log: one block per step."""
    verbs = {"pending": "would change", "applied": "changed", "unchanged": "nothing to change"}
    for result in run.steps:
        verb = verbs.get(result.status, result.status)
        print(f"{result.name}: {verb}" + (f" ({len(result.changes)})" if result.changes else ""))
        for change in result.changes:
            before = "" if change.before is None else f"  [{change.before} -> {change.after}]"
            print(f"  {'+' if result.status != 'unchanged' else ' '} {change.describe()}{before}")
        for note in result.notes:
            print(f"  . {note}")
        for err in result.errors:
            print(f"  ! {err}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """``plan`` / ``apply``."""
    from wizard import answers as answers_mod
    from wizard.backends import RealBackends
    from wizard.runner import execute

    try:
        answers = answers_mod.load(args.answers)
    except answers_mod.AnswersError as exc:
        print(f"hostsetup: {args.answers}: answers invalid "
              f"({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        write_report(args.report, {"version": 1, "mode": args.command,
                                   "exit_code": EXIT_INVALID, "errors": exc.problems,
                                   "steps": []})
        return EXIT_INVALID
    backends = RealBackends()
    try:
        run = execute(answers, args.command, backends)
    finally:
        backends.close()
    print_run(run)
    write_report(args.report, run.as_dict())
    return run.exit_code


def cmd_sandbox(args: argparse.Namespace) -> int:
    """``sandbox up|down|status --dir DIR``."""
    from wizard.sandbox import manage
    from wizard.sandbox.core import SandboxError

    try:
        if args.action == "up":
            t0 = time.monotonic()
            sb = manage.up(args.dir)
            print(f"sandbox up in {time.monotonic() - t0:.1f}s: {sb.dir}")
            print(f"  answers: {sb.dir / 'answers.yaml'}\n  env:     {sb.dir / 'env'}")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hostsetup`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    try:
        if args.command in ("plan", "apply"):
            return cmd_run(args)
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
        from wizard.tui import run_wizard

        return run_wizard(args)
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
