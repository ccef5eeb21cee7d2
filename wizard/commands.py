"""Commands around a run: ``early_commands``, ``late_commands``, ``error_commands``.

As in subiquity's autoinstall, debian-installer's preseed and kickstart, an
answers file may list commands for ``apply`` to run:

- ``early_commands`` before the check phase (load a module, wait for a NIC);
- ``late_commands`` after every step applied (what the steps do not model);
- ``error_commands`` after a failure (collect diagnostics).

Each list is either a plain list of commands or a mapping with ``commands``,
``on_failure`` (``stop`` or ``continue``) and ``timeout`` (seconds, per
command).  A command is an argv list (``[modprobe, openvswitch]``, no shell)
or a mapping ``{argv: [...], timeout: 10}``, or ``{argv: "a | b", shell: true}``
run by ``/bin/sh -c``.  Commands run as the wizard's own user, with no stdin,
in a session of their own (so a timeout kills what they started); their output
(stdout and stderr) is kept up to :data:`OUTPUT_LIMIT` bytes, logged line by
line and put in the report.  ``plan`` runs none: it lists them as ``run:``
changes.  In a fleet, they are part of each host's answers: each agent runs
them on its host.

Each list's outcome is a :class:`wizard.runner.StepResult` named after it, in
the run's ``steps`` (before the steps for ``early_commands``, after them for
the others), so the report, the CLI's text and the fleet roll-up show them
like a step.  A ``run`` :class:`~steps.base.Change` per command has the command
line as its target, its outcome as detail (``exit 0``, ``timed out after 5 s``)
and ``{"exit_code", "output", "duration"}`` as ``after``.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steps.base import Change
from wizard.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

if TYPE_CHECKING:
    from wizard.answers import Answers
    from wizard.runner import Run, StepResult

log = logging.getLogger("hostsetup")

EARLY, LATE, ERROR = "early_commands", "late_commands", "error_commands"
LISTS = (EARLY, LATE, ERROR)
# When each list runs, in words (plan text, schema).
WHEN = {EARLY: "before the check phase of apply", LATE: "after a successful apply",
        ERROR: "if apply fails"}
# A failing early or late command stops the run; error commands all run by default.
DEFAULT_POLICY: dict[str, Literal["stop", "continue"]] = {
    EARLY: "stop", LATE: "stop", ERROR: "continue"}
OUTPUT_LIMIT = 16 * 1024  # bytes of a command's output kept for the log and the report
DEFAULT_TIMEOUT = 300
EXIT_GRACE = 1.0  # seconds to read the output left after the command ended
MAX_TIMEOUT = 3600


class Command(BaseModel):
    """One command: an argv list, or a command line for ``/bin/sh -c`` with ``shell: true``."""

    model_config = ConfigDict(extra="forbid")

    shell: bool = Field(False, description="run 'argv' (a string) with /bin/sh -c")
    argv: list[str] | str = Field(description="the program and its arguments (a list), "
                                  "or a command line with shell: true")
    timeout: int | None = Field(None, ge=1, le=MAX_TIMEOUT,
                                description="seconds before it is killed (default: the list's)")

    @model_validator(mode="before")
    @classmethod
    def _bare_argv(cls, data: Any) -> Any:
        # The short form: a command is just its argv list.
        if isinstance(data, list):
            return {"argv": data}
        if not isinstance(data, dict):
            raise ValueError("expected an argv list such as [modprobe, openvswitch], or a "
                             "mapping {argv: 'a | b', shell: true}")
        return data

    @field_validator("argv", mode="before")
    @classmethod
    def _argv_shape(cls, value: Any, info: Any) -> Any:
        # Checked here, before the union, so that a bad argv gets one clear message.
        if info.data.get("shell"):
            if not isinstance(value, str) or not value.strip():
                raise ValueError("with shell: true, argv is one command line (a string)")
            return value
        words = value if isinstance(value, list) else None
        if not words or not all(isinstance(w, (str, int, float)) and not isinstance(w, bool)
                                and str(w) for w in words):
            raise ValueError("expected a list of strings: the program and its arguments "
                             "(a string is run by /bin/sh only with shell: true)")
        return [str(w) for w in words]

    def text(self) -> str:
        """The command as shown in the plan and the log."""
        if isinstance(self.argv, str):
            return f"sh -c {shlex.quote(self.argv)}"
        return shlex.join(self.argv)

    def argv_list(self) -> list[str]:
        """What is executed."""
        return ["/bin/sh", "-c", self.argv] if isinstance(self.argv, str) else list(self.argv)


class CommandList(BaseModel):
    """A list of commands with its failure policy and per-command timeout."""

    model_config = ConfigDict(extra="forbid")

    commands: list[Command] = Field(description="run in order")
    on_failure: Literal["stop", "continue"] | None = Field(
        None, description="a failing command stops the list (and fails the run, except "
        "error_commands) or the list goes on (default: stop; continue for error_commands)")
    timeout: int = Field(DEFAULT_TIMEOUT, ge=1, le=MAX_TIMEOUT,
                         description="seconds each command may run before it is killed")

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        # The short form: the list itself, with the default policy and timeout.
        return {"commands": data} if isinstance(data, list) else data

    def policy(self, name: str) -> Literal["stop", "continue"]:
        """``on_failure``, or the list's default."""
        return self.on_failure or DEFAULT_POLICY[name]


TEMPLATE = """
# Commands around 'apply' (plan lists them, runs none): argv lists, no shell
# unless {argv: "...", shell: true}; per list on_failure: stop|continue, timeout.
# early_commands: [[modprobe, openvswitch]]
# late_commands:
#   on_failure: stop
#   timeout: 60
#   commands:
#   - [ovs-vsctl, set, port, vm1, tag=10]
# error_commands:
# - {argv: "journalctl -b -n 500 > /root/hostsetup-diag.txt", shell: true}
"""


def field_description(name: str) -> str:
    """The answers model's description of a list."""
    return (f"commands run {WHEN[name]}: a list of argv lists, or "
            "{commands: [...], on_failure: stop|continue, timeout: seconds}")


# -- running


def run_command(argv: list[str], timeout: float) -> tuple[int | None, bytes, str]:
    """Run ``argv`` (no stdin, own session) for at most ``timeout`` seconds.

    Returns ``(exit code or None, output kept, problem)``: the output is stdout
    and stderr together, the first :data:`OUTPUT_LIMIT` bytes (the rest is read
    and counted, never stored); ``problem`` says why it has no exit code (cannot
    start, timed out).  Whatever it started is killed at the deadline (and on
    Ctrl-C), so the run never waits longer than ``timeout``; what it leaves
    running when it ends is killed too, after :data:`EXIT_GRACE` (services are
    started with systemctl or systemd-run, not left behind by a command).
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return None, b"", f"cannot run: {exc.strerror or exc}"
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    kept, extra = bytearray(), 0
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if proc.poll() is not None:
                    # It ended; what it left running may hold the output open:
                    # take what comes within a moment, then stop reading.
                    deadline = min(deadline, time.monotonic() + EXIT_GRACE)
                if not sel.select(min(left, 0.2)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # everything that held the output is done
                room = OUTPUT_LIMIT - len(kept)
                kept += chunk[:room]
                extra += max(0, len(chunk) - room)
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
    finally:
        _kill_group(proc)
        proc.stdout.close()
    if extra:
        kept += f"\n[... {extra} more bytes of output not kept]".encode()
    if code is None:
        return None, bytes(kept), f"timed out after {timeout:g} s"
    return code, bytes(kept), ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command's session (what it left running too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _result(name: str, status: str, changes: list[Change]) -> StepResult:
    from wizard.runner import StepResult

    result = StepResult(name, status, changes)  # type: ignore[arg-type]
    result.notes.append(f"runs {WHEN[name]}")
    return result


def planned(answers: Answers, names: tuple[str, ...], status: str = "pending") -> list[StepResult]:
    """The lists of ``names`` present in ``answers``, with a ``run`` change per command
    and nothing run (``plan``, the Review; ``not run`` in an apply that skipped them)."""
    return [_result(name, status, [Change(c.text(), "run") for c in spec.commands])
            for name in names if (spec := answers.commands.get(name)) is not None]


def run_list(answers: Answers, name: str, run: Run) -> int | None:
    """Run the list ``name`` (if answered) in order; its result goes in ``run.steps``.

    Returns :data:`EXIT_FAILED` when a command failed under ``on_failure: stop``
    in ``early_commands`` or ``late_commands`` (the run fails), else ``None``.
    """
    spec = answers.commands.get(name)
    if spec is None:
        return None
    [result] = planned(answers, (name,))
    run.steps.append(result)
    policy = spec.policy(name)
    t0 = time.perf_counter()
    for i, cmd in enumerate(spec.commands):
        text = cmd.text()
        log.info("%s: run: %s", name, text)
        began = time.perf_counter()
        code, output, problem = run_command(cmd.argv_list(), cmd.timeout or spec.timeout)
        shown = output.decode(errors="replace")
        for line in shown.splitlines():
            log.info("%s: | %s", name, line)
        detail = problem or f"exit {code}"
        result.changes[i] = Change(text, "run", None, {
            "exit_code": code, "output": shown,
            "duration": round(time.perf_counter() - began, 4)}, detail)
        if code == 0:
            continue
        log.error("%s: %s: %s", name, text, detail)
        if policy == "continue":
            result.notes.append(f"failed, went on (on_failure: continue): {text} ({detail})")
            continue
        result.status = "failed"
        result.errors.append(f"{name}: failed: {text} ({detail}); on_failure: stop: "
                             + STOPPED[name])
        for j in range(i + 1, len(spec.commands)):
            result.changes[j] = Change(spec.commands[j].text(), "run", detail="not run")
        break
    else:
        result.status = "applied"
    result.durations["run"] = time.perf_counter() - t0
    if result.status == "failed" and name != ERROR:
        return EXIT_FAILED
    return None


STOPPED = {EARLY: "nothing was checked or applied",
           LATE: "every step was applied; the run fails",
           ERROR: "the error commands after it were not run"}


def before(answers: Answers, mode: str, run: Run) -> int | None:
    """Before the check phase: ``apply`` runs ``early_commands``; ``plan`` lists them."""
    if mode != "apply":
        run.steps += planned(answers, (EARLY,))
        return None
    return run_list(answers, EARLY, run)


def after(answers: Answers, mode: str, run: Run, code: int) -> int:
    """After the steps: ``apply`` runs ``late_commands`` if all went well, else
    ``error_commands`` (also after a failing late command); ``plan`` lists them.
    Returns the run's exit code."""
    if mode != "apply":
        run.steps += planned(answers, (LATE, ERROR))
        return code
    if code == EXIT_OK:
        code = run_list(answers, LATE, run) or EXIT_OK
    else:
        run.steps += planned(answers, (LATE,), "not run")
    if code in (EXIT_OK, EXIT_INTERRUPTED):
        run.steps += planned(answers, (ERROR,), "not run")
    else:
        run_list(answers, ERROR, run)
    return code
