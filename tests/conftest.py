"""Shared fixtures: a D-Bus-only sandbox host (helpers are in helpers.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from wizard.sandbox import dbus as dbus_component
from wizard.sandbox.core import Sandbox
from wizard.sandbox.manage import write_outputs


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


# Modules whose sandboxes share names (fleet host tags hs1..hsN): one worker runs them.
SAME_WORKER = {"test_fleet": "fleet", "test_fleet_sandbox": "fleet"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``-n N --dist loadgroup``, a module's tests stay on one worker (its
    module-scoped sandbox is started once), and the fleet modules share one."""
    for item in items:
        module = item.module.__name__ if item.module else ""
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(module, module)))


SHORT_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, a short base directory of our own: the workers' ``popen-gwN``
    level would push the sandboxes' socket paths past their length limit
    (dbus-daemon: "Socket name too long")."""
    if getattr(config, "workerinput", None) is None and config.getoption(
            "numprocesses", None) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="hs-")
        config.stash[SHORT_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the base directory made by :func:`pytest_configure`."""
    made = config.stash.get(SHORT_BASETEMP, None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
