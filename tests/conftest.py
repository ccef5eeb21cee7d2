"""Shared fixtures (sandbox hosts of real systemd, the ivshmem hook's directory, the
vSphere simulator), the test layers and the order of a parallel run (helpers are in
helpers.py and tmux.py; no test module imports another)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import Start, call, hostsetup, systemctl, virsh

from sandbox import host as host_mod
from sandbox import manage, vcsim
from sandbox.core import Sandbox
from steps.ivshmem import HOOK_SOURCE


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


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox host (its systemd started OVS and libvirtd) and the vSphere simulator,
    for the module (the wizard's windows are filled from them)."""
    directory = tmp_path_factory.mktemp("tuifields") / "host"
    try:
        sb = manage.up(directory, tag="tuifld", components=[manage.HOST, "sandbox.vcsim"])
        systemctl(sb, "start", "openvswitch-switch.service", "libvirtd.service")
        yield sb
    finally:
        manage.down(directory)


@pytest.fixture(scope="module")
def ivs_sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A booted host whose systemd has started libvirtd (domains vm1 and vm2), for the
    module; no QEMU may be left running at the end."""
    directory = tmp_path_factory.mktemp("ivshmem") / "sb"
    try:
        sb = manage.up(directory, tag=f"iv{os.getpid() % 10000}", components=[manage.HOST])
        systemctl(sb, "start", "libvirtd.service")
        yield sb
    finally:
        manage.down(directory)
    assert not host_mod.qemu_pids(sb), "QEMU processes leaked"


@pytest.fixture
def ivs_clean(ivs_sb: Sandbox) -> Iterator[Sandbox]:
    """The module's libvirt host; leaves every domain shut off after the test."""
    yield ivs_sb
    for name, _pid in host_mod.qemu_pids(ivs_sb).items():
        virsh(ivs_sb, "destroy", name)


@pytest.fixture
def ivs_hooks(tmp_path: Path) -> Path:
    """A hooks dir with the hook installed as qemu.d/hostsetup-ivshmem."""
    qemu_d = tmp_path / "hooks" / "qemu.d"
    qemu_d.mkdir(parents=True)
    shutil.copy(HOOK_SOURCE, qemu_d / "hostsetup-ivshmem")
    (qemu_d / "hostsetup-ivshmem").chmod(0o755)
    return qemu_d


@pytest.fixture
def ivs_shm_name() -> Iterator[str]:
    """A unique shared-memory name; its /dev/shm object is removed afterwards."""
    name = f"hs-test-{uuid.uuid4().hex[:8]}"
    yield name
    Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.fixture
def shm_prefix() -> Iterator[str]:
    """A unique object-name prefix for tests that make real /dev/shm objects (the
    ivshmem hook, a hot-plug); the objects under it are removed afterwards."""
    name = f"hs-test-{uuid.uuid4().hex[:8]}"
    yield name
    for path in Path("/dev/shm").glob(f"{name}*"):
        path.unlink()


@pytest.fixture
def vs_start(tmp_path: Path) -> Iterator[Start]:
    """Start simulators for one test (``vs_start(model=..., hosts=..., vms=...)``)."""
    sb = Sandbox(dir=tmp_path / "vs")
    count = 0

    def start(**kwargs: Any) -> vcsim.Vcsim:
        nonlocal count
        count += 1
        return vcsim.start(sb, name=f"vcsim{count}", **kwargs)

    try:
        yield start
    finally:
        sb.stop()


# Modules whose module-scoped sandbox is shared by so many slow tests that one worker
# would run them alone for minutes: their tests are dealt round-robin into this many
# work units (each unit's worker starts the module's sandbox once).
SPLIT = {"test_fleet": 2}
# Fixtures that start real services (a test using one is in the daemons layer).
DAEMON_FIXTURES = {"dbus_host", "host", "ivs_sb", "ivs_clean", "vs_start"}
# Seconds a test is expected to take by layer, until a run has measured it.
GUESS = {"daemons": 10.0, "processes": 1.0, None: 0.1}
DURATIONS = "hostsetup/unit-seconds"  # pytest's cache: seconds per work unit, last run


def layer(module: ModuleType) -> str | None:
    """``daemons`` for a test module that starts real services (it uses the sandbox
    or tmux), ``processes`` for one that runs the CLI or the hook as a process
    (subprocess, or the helpers ``hostsetup`` and ``call``),
    ``None`` for the fast layer.  Read from what the module imports, so a new
    test module is classified without anyone remembering to mark it."""
    found = vars(module).values()
    if any(getattr(v, "__name__" if isinstance(v, ModuleType) else "__module__", "")
           .startswith(("sandbox", "tmux")) for v in found):
        return "daemons"
    if any(v is subprocess or v is hostsetup or v is call for v in found):
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


def units_dir(config: pytest.Config) -> Path | None:
    """Where the workers leave each test's work unit for the scheduler: the run's base
    temporary directory (a worker's own is below it)."""
    if not loadgroup(config) or config.option.basetemp is None:
        return None
    base = Path(config.option.basetemp).resolve()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its layer (``make check`` deselects ``daemons`` and
    ``processes``).  For ``-n N --dist loadgroup``, each test's work unit: the tests
    that share a module's sandbox are one unit (``SPLIT``: a few), every other test
    is a unit of its own; units are handed out longest first, as the last run
    measured them, so that no worker is left alone with a long one at the end."""
    counters: dict[str, int] = {}
    units: list[str] = []
    guessed: dict[str, float] = {}
    for item in items:
        kind = layer(item.module) if item.module is not None else None
        if DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            kind = "daemons"
        if kind is not None:
            item.add_marker(getattr(pytest.mark, kind))
        unit = item.nodeid
        if shares_a_fixture(item) and item.module is not None:
            name = item.module.__name__
            n = counters[name] = counters.get(name, -1) + 1
            unit = f"{name}.{n % SPLIT[name]}" if name in SPLIT else name
        units.append(unit)
        guessed[unit] = guessed.get(unit, 0.0) + GUESS[kind]
    where = units_dir(config)
    if where is not None:
        cache = getattr(config, "cache", None)  # none under -p no:cacheprovider
        measured = cache.get(DURATIONS, {}) if cache else {}
        cost = {unit: measured.get(unit, guess) for unit, guess in guessed.items()}
        order = sorted(range(len(items)), key=lambda i: -cost[units[i]])  # stable
        items[:] = [items[i] for i in order]
        # For the scheduler (pytest-xdist's own loadgroup marks node ids, which
        # pytest 9.2 no longer reads back: pytest-xdist issue #1386).
        mine = where / f"units-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json"
        mine.with_suffix(".tmp").write_text(json.dumps(
            {item.nodeid: unit for item, unit in zip(items, [units[i] for i in order],
                                                     strict=True)}))
        mine.with_suffix(".tmp").replace(mine)


WORK_UNITS: dict[str, str] = {}  # node id -> work unit, on the controller


def work_units(config: pytest.Config) -> dict[str, str]:
    """The work units the workers wrote at collection (identical collections: one file)."""
    where = units_dir(config)
    if not WORK_UNITS and where is not None:
        for path in sorted(where.glob("units-*.json"))[:1]:
            WORK_UNITS.update(json.loads(path.read_text()))
    return WORK_UNITS


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: pytest-xdist's scheduling by scope, the scopes being our work
    units, in the order of the workers' collection (longest first)."""
    if not loadgroup(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_units(config).get(nodeid, nodeid)

    return WorkUnits(config, log)


SPENT: dict[str, float] = {}  # node id -> seconds (setup, call, teardown), on the controller


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each test's seconds."""
    SPENT[report.nodeid] = SPENT.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep what this run measured per work unit for the next run's order."""
    config = session.config
    if (loadgroup(config) and getattr(config, "cache", None) is not None and SPENT
            and not hasattr(config, "workerinput")
            and not (config.option.keyword or config.option.markexpr)):  # a whole run
        units = work_units(config)
        spent: dict[str, float] = {}
        for nodeid, seconds in SPENT.items():
            unit = units.get(nodeid, nodeid)
            spent[unit] = spent.get(unit, 0.0) + seconds
        config.cache.set(DURATIONS, {**config.cache.get(DURATIONS, {}),
                                     **{k: round(v, 2) for k, v in spent.items()}})


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
