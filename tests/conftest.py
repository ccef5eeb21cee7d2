"""Shared fixtures: a D-Bus-only sandbox host (helpers are in helpers.py)."""

from __future__ import annotations

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
