"""Shared fixtures: a sandbox host (real systemd) and the test layers (helpers are in
helpers.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# Re-exported for test modules that still import them from here; new tests
# import helpers (ROOT, hostsetup, ...) from helpers.py.
from helpers import ROOT, hostsetup  # noqa: F401

from sandbox import manage
from sandbox.core import Sandbox


@pytest.fixture(scope="session", autouse=True)
def session_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run journal of the session's processes (module fixtures included) goes to a
    directory of its own, never to this machine's /var/lib/hostsetup."""
    path = tmp_path_factory.mktemp("state")
    old = os.environ.get("HOSTSETUP_STATE_DIR")
    os.environ["HOSTSETUP_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HOSTSETUP_STATE_DIR", None)
    else:
        os.environ["HOSTSETUP_STATE_DIR"] = old


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's runs have a journal of their own (an interrupted run in one test
    must not stop another's apply with exit 6)."""
    path = tmp_path / "state"
    monkeypatch.setenv("HOSTSETUP_STATE_DIR", str(path))
    return path


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


# Modules whose sandboxes share names (fleet host tags hs1..hsN): one worker runs them.
SAME_WORKER = {"test_fleet": "fleet", "test_fleet_sandbox": "fleet"}
# Fixtures that start real services.
DAEMON_FIXTURES = {"dbus_host"}


def layer(module: ModuleType) -> str | None:
    """``daemons`` for a test module that starts real services (it uses the sandbox
    or tmux), ``processes`` for one that runs the CLI or the hook as a process,
    ``None`` for the fast layer.  Read from what the module imports, so a new
    test module is classified without anyone remembering to mark it."""
    found = vars(module).values()
    if any(getattr(v, "__name__" if isinstance(v, ModuleType) else "__module__", "")
           .startswith(("sandbox", "tmux")) for v in found):
        return "daemons"
    if any(v is subprocess or v is hostsetup for v in found):
        return "processes"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer (``make check`` deselects ``daemons`` and
    ``processes``).  Under ``-n N --dist loadgroup``, a module's tests stay on one
    worker (its module-scoped sandbox is started once); the fleet modules share one."""
    for item in items:
        module = item.module
        if module is None:
            continue
        kind = layer(module)
        if kind is None and DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            kind = "daemons"
        if kind is not None:
            item.add_marker(getattr(pytest.mark, kind))
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(module.__name__,
                                                                module.__name__)))


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
