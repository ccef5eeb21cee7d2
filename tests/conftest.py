"""Shared fixtures: a sandbox host (real systemd) and the test layers (helpers are in
helpers.py)."""

from __future__ import annotations

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


# Modules whose module-scoped sandbox is shared by so many slow tests that one worker
# would run them alone for minutes: their tests are dealt round-robin into this many
# groups (each group's worker starts the module's sandbox once).
SPLIT = {"test_fleet": 2, "test_tui_keymash": 2}
# Fixtures that start real services.
DAEMON_FIXTURES = {"dbus_host"}
# Seconds a test is expected to take by layer, until a run has measured it.
GUESS = {"daemons": 10.0, "processes": 1.0, None: 0.1}
DURATIONS = "hostsetup/unit-seconds"  # pytest's cache: seconds per work unit, last run


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


def shares_a_fixture(item: pytest.Item) -> bool:
    """The test uses a fixture of ours wider than a test (a module's sandbox)."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        defs[-1].scope != "function" and defs[-1].baseid  # baseid "": pytest's own
        for defs in info.name2fixturedefs.values())


def loadgroup(config: pytest.Config) -> bool:
    """Run with ``--dist loadgroup`` (xdist's workers see it as ``option.loadgroup``)."""
    return bool(getattr(config.option, "loadgroup", False)
                or config.getoption("dist", "no") == "loadgroup")


def unit_of(nodeid: str) -> str:
    """The work unit of a test as pytest-xdist's loadgroup reads it: its group (after
    ``@``) or, for a test of no group, the test itself."""
    return nodeid.rsplit("@", 1)[1] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its layer (``make check`` deselects ``daemons`` and
    ``processes``).  For ``-n N --dist loadgroup``: the tests that share a module's
    sandbox go to one worker (``SPLIT``: to a few), the others are dealt one by one,
    and the work is handed out longest first, as the last run measured it, so that
    no worker is left alone with a long group at the end."""
    counters: dict[str, int] = {}
    units: list[str] = []
    guessed: dict[str, float] = {}
    for item in items:
        kind = layer(item.module) if item.module is not None else None
        if kind is None and DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            kind = "daemons"
        if kind is not None:
            item.add_marker(getattr(pytest.mark, kind))
        unit = item.nodeid
        if shares_a_fixture(item):
            name = item.module.__name__ if item.module is not None else unit
            n = counters[name] = counters.get(name, -1) + 1
            unit = f"{name}.{n % SPLIT[name]}" if name in SPLIT else name
            item.add_marker(pytest.mark.xdist_group(unit))
        units.append(unit)
        guessed[unit] = guessed.get(unit, 0.0) + GUESS[kind]
    if loadgroup(config):
        measured = config.cache.get(DURATIONS, {}) if config.cache else {}
        cost = {unit: measured.get(unit, guess) for unit, guess in guessed.items()}
        order = sorted(range(len(items)), key=lambda i: -cost[units[i]])  # stable
        items[:] = [items[i] for i in order]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each work unit's seconds (setup, call, teardown) on the controller."""
    SPENT[unit_of(report.nodeid)] = SPENT.get(unit_of(report.nodeid), 0.0) + report.duration


SPENT: dict[str, float] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep what this run measured per work unit for the next run's order."""
    config = session.config
    if (loadgroup(config) and config.cache is not None
            and getattr(config, "workerinput", None) is None and SPENT
            and not (config.option.keyword or config.option.markexpr)):  # a whole run
        config.cache.set(DURATIONS, {**config.cache.get(DURATIONS, {}),
                                     **{k: round(v, 2) for k, v in SPENT.items()}})


SHORT_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, a short base directory of our own: the workers' ``popen-gwN``
    level would push the sandboxes' socket paths past their length limit
    (dbus-daemon: "Socket name too long").  Under ``--dist loadgroup``, xdist keeps
    the order of :func:`pytest_collection_modifyitems` (longest first)."""
    if loadgroup(config):
        config.option.loadscopereorder = False
    if getattr(config, "workerinput", None) is None and config.getoption(
            "numprocesses", None) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="hs-")
        config.stash[SHORT_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the base directory made by :func:`pytest_configure`."""
    made = config.stash.get(SHORT_BASETEMP, None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
