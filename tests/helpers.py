"""Helpers shared by the tests (no test module imports another test module)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from backends.interfaces import Backends
from sandbox.core import Sandbox
from wizard import answers as answers_mod
from wizard.runner import Run, execute

ROOT = Path(__file__).resolve().parent.parent


def hostsetup(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m wizard``) with no terminal and no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "wizard", *args],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def systemd_call(sb: Sandbox, method: str, signature: str = "", *args: str) -> str:
    """Call a method of a host's systemd Manager with busctl (independently of our backend)."""
    return subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "call",
         "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", method,
         *([signature, *args] if signature else [])],
        capture_output=True, text=True, check=True, timeout=60).stdout


def add_unit(sb: Sandbox, name: str, text: str, reload: bool = True) -> Path:
    """Write a unit file (or drop-in, ``NAME.d/x.conf``) into a sandbox host's
    /etc/systemd/system (its overlay), as an operator would; with ``reload``, then
    ask its systemd to ``Reload``."""
    path = Path(sb.env["HOSTSETUP_HOST_ROOT"], "etc/systemd/system", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if reload:
        systemd_call(sb, "Reload")
    return path


def unit_prop(sb: Sandbox, unit: str, prop: str) -> str:
    """A unit's property read with busctl, independently of our backend.

    ``LoadUnit`` first: real systemd has no object for a unit nothing references.
    """
    path = systemd_call(sb, "LoadUnit", "s", unit).split()[1].strip('"')
    out = subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "get-property",
         "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Unit", prop],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return out.split()[1].strip('"')


def unit_state(sb: Sandbox, unit: str) -> str:
    """ActiveState, read with busctl."""
    return unit_prop(sb, unit, "ActiveState")


def run(mode: Literal["plan", "apply"], sections: dict[str, Any], backends: Backends) -> Run:
    """The runner on an answers document (``version: 1`` added), in process."""
    return execute(answers_mod.validate({"version": 1, **sections}), mode, backends)


def statuses(run_: Run) -> dict[str, str]:
    """Step name -> status of a run."""
    return {s.name: s.status for s in run_.steps}


@pytest.fixture
def shm_prefix() -> Iterator[str]:
    """A unique object-name prefix for tests that make real /dev/shm objects (the
    ivshmem hook, a hot-plug); the objects under it are removed afterwards."""
    name = f"hs-test-{uuid.uuid4().hex[:8]}"
    yield name
    for path in Path("/dev/shm").glob(f"{name}*"):
        path.unlink()
