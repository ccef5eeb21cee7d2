"""The sandbox's bookkeeping: processes started by pid, exports, answers.

A component (``sandbox/<name>.py``) has ``up(sb: Sandbox) -> None``;
it starts its daemons with :meth:`Sandbox.spawn`, publishes how to reach them
with :meth:`Sandbox.export` and adds its step's answers section with
:meth:`Sandbox.set_answers`.  Everything is recorded in ``DIR/state.json`` so
that ``down`` stops exactly what ``up`` started, by pid.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wizard.procs import alive  # re-exported: the sandbox's users import it from here


class SandboxError(Exception):
    """A sandbox daemon could not be started or stopped; says which and why."""


@dataclass
class Proc:
    name: str
    pid: int
    argv: list[str]


@dataclass
class Sandbox:
    """One sandbox host under ``dir``: its processes, exports and answers."""

    dir: Path
    name: str = "sandbox"
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    # For a host of a fleet sandbox: a short unique tag for names that live
    # outside DIR (tap devices, namespaces), so hosts do not collide.
    tag: str = "hs0"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def logs(self) -> Path:
        path = self.dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, *parts: str) -> Path:
        """A path under the sandbox dir; parents are created."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Start a daemon in its own session, logging to ``logs/<name>.log``.

        Waits until ``ready()`` is true (bounded by ``timeout``); on failure
        raises :class:`SandboxError` with the tail of the daemon's log.
        """
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=self.dir,
            )
        self.procs.append(Proc(name, proc.pid, argv))
        self.save()
        deadline = time.monotonic() + timeout
        while ready is not None and not ready():
            if proc.poll() is not None:
                raise SandboxError(
                    f"{name} exited with {proc.returncode}: {shlex.join(argv)}\n"
                    + tail(log_path)
                )
            if time.monotonic() > deadline:
                raise SandboxError(f"{name} not ready after {timeout:.0f}s\n" + tail(log_path))
            time.sleep(0.05)
        return proc.pid

    def run(self, name: str, argv: list[str], timeout: float = 60.0) -> str:
        """Run a one-shot set-up command; raises :class:`SandboxError` on failure."""
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if res.returncode != 0:
            raise SandboxError(
                f"{name} failed ({res.returncode}): {shlex.join(argv)}\n{res.stderr}")
        return res.stdout

    def export(self, key: str, value: str) -> None:
        """Publish a variable in ``DIR/env``."""
        self.env[key] = value
        self.save()

    def set_answers(self, section: str, data: Any) -> None:
        """Set this host's answers for one step (written to ``DIR/answers.yaml``)."""
        self.answers[section] = data
        self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "name": self.name,
            "tag": self.tag,
            "procs": [p.__dict__ for p in self.procs],
            "env": self.env,
            "answers": self.answers,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, directory: Path) -> Sandbox:
        data = json.loads((directory / "state.json").read_text())
        return cls(
            dir=directory,
            name=data["name"],
            tag=data.get("tag", "hs0"),
            procs=[Proc(**p) for p in data["procs"]],
            env=data["env"],
            answers=data["answers"],
        )

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Stop every recorded process (newest first); returns what was stopped."""
        stopped = []
        for proc in reversed(self.procs):
            if alive(proc.pid):
                kill_group(proc.pid, timeout)
                stopped.append(f"{proc.name} (pid {proc.pid})")
        self.procs = []
        self.save()
        return stopped


def kill_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until true; raise :class:`SandboxError` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
