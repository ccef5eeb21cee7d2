"""Shared fixtures: the CLI as a subprocess, and a sandbox host (real systemd)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import manage
from sandbox.core import Sandbox

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
    """A freshly booted sandbox host: real systemd, OVS and libvirtd stopped.

    Its system bus is reachable from outside (``HOSTSETUP_DBUS_ADDRESS``) and
    ``DIR/answers.yaml`` holds its answers; taken down (container, cgroups,
    namespaces) also when the test fails.
    """
    directory = tmp_path / "host"
    try:
        yield manage.up(directory, components=[manage.HOST])
    finally:
        manage.down(directory)


def add_unit(sb: Sandbox, name: str, text: str, reload: bool = True) -> Path:
    """Write a unit file into a sandbox host's /etc/systemd/system (its overlay), as an
    operator would; with ``reload``, then ask its systemd to ``Reload``."""
    path = Path(sb.env["HOSTSETUP_HOST_ROOT"], "etc/systemd/system", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if reload:
        systemd_call(sb, "Reload")
    return path


def systemd_call(sb: Sandbox, method: str, signature: str = "", *args: str) -> str:
    """Call a method of a host's systemd Manager with busctl (independently of our backend)."""
    return subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "call",
         "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", method,
         *([signature, *args] if signature else [])],
        capture_output=True, text=True, check=True, timeout=60).stdout
