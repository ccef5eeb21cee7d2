"""Helpers shared by the tests (no test module imports another test module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from backends.interfaces import Backends
from wizard import answers as answers_mod
from wizard.runner import Run, execute
from wizard.sandbox.core import Sandbox

ROOT = Path(__file__).resolve().parent.parent


def hostsetup(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m wizard``) with no terminal and no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "wizard", *args],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def unit_state(sb: Sandbox, unit: str) -> str:
    """ActiveState read with busctl, independently of our backend."""
    path = "/org/freedesktop/systemd1/unit/" + unit.replace(".", "_").replace("-", "_")
    out = subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "get-property",
         "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Unit", "ActiveState"],
        capture_output=True, text=True, check=True).stdout
    return out.split()[1].strip('"')


def run(mode: Literal["plan", "apply"], sections: dict[str, Any], backends: Backends) -> Run:
    """The runner on an answers document (``version: 1`` added), in process."""
    return execute(answers_mod.validate({"version": 1, **sections}), mode, backends)


def statuses(run_: Run) -> dict[str, str]:
    """Step name -> status of a run."""
    return {s.name: s.status for s in run_.steps}
