"""Shared fixtures: the CLI as a subprocess, and a D-Bus-only sandbox host."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wizard.sandbox import dbus as dbus_component
from wizard.sandbox.core import Sandbox
from wizard.sandbox.manage import write_outputs

ROOT = Path(__file__).resolve().parent.parent


def hostsetup(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m wizard``) with no terminal and no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "wizard", *args],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def dbus_host(tmp_path: Path) -> Iterator[Sandbox]:
    """A fresh sandbox host with only the private bus (systemd + NetworkManager mocks)."""
    sb = Sandbox(dir=tmp_path / "host")
    try:
        dbus_component.up(sb)
        write_outputs(sb)
        yield sb
    finally:
        sb.stop()
