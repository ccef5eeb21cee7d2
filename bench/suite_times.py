"""Where the test suite's time goes: wall and CPU of a parallel run, per module.

Runs ``pytest -n 3 --dist loadgroup tests`` (or the pytest arguments given) with
this file as a plugin, in a cpuacct cgroup of its own (each worker in one below
it), so that the CPU of every process the tests start (hosts, daemons, QEMU) is
counted, and prints the wall time, the CPU seconds, how long each worker was
busy, and per module: the seconds its tests took (setup, call and teardown), the
CPU their worker used meanwhile (a module's shared sandbox counts where it runs),
its tests, the sandbox hosts it booted in the test processes and the workers it
ran on.  Not part of ``make bench`` (it runs the whole suite): ``make bench-suite``.
Run: .venv/bin/python bench/suite_times.py [PYTEST ARGS...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
OUT = "HOSTSETUP_SUITE_TIMES"  # the file the plugin appends its records to
RAW = "HOSTSETUP_SUITE_TIMES_RAW"  # where to keep them (JSON lines), if set
CGROUP = "HOSTSETUP_SUITE_CGROUP"  # the run's cpuacct cgroup (a worker's: below it)
TOP = 15


def _record(**row: Any) -> None:
    with open(os.environ[OUT], "a") as out:
        out.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "-"), **row})
                  + "\n")


_CURRENT = [""]  # the test running in this process


def _cpu() -> float:
    """CPU seconds of this process's cgroup (see pytest_configure), 0 without one."""
    path = os.environ.get(CGROUP)
    return int(Path(path, "cpuacct.usage").read_text()) / 1e9 if path else 0.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Plugin side: a test's start and end (setup to teardown) and the CPU its worker's
    cgroup used meanwhile (with what it started: hosts, daemons, QEMU)."""
    _CURRENT[0] = item.nodeid
    start, cpu = time.time(), _cpu()
    yield
    _record(test=item.nodeid, start=start, end=time.time(), cpu=_cpu() - cpu)


def pytest_configure(config: pytest.Config) -> None:
    """Plugin side: an xdist worker moves to a cpuacct cgroup of its own (below the
    run's); count the hosts booted by this test process, by test."""
    if OUT not in os.environ:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get(CGROUP):
        mine = Path(os.environ[CGROUP], worker)
        mine.mkdir()
        (mine / "cgroup.procs").write_text(str(os.getpid()))
        os.environ[CGROUP] = str(mine)
    from sandbox import host

    boot: Callable[..., int] = host.boot

    def counted(*args: Any, **kwargs: Any) -> int:
        _record(boot=_CURRENT[0])
        return boot(*args, **kwargs)

    host.boot = counted  # type: ignore[assignment]


def module(nodeid: str) -> str:
    return nodeid.split("::")[0].removeprefix("tests/")


def report(rows: list[dict[str, Any]], wall: float, cpu: float | None) -> None:
    """Print the numbers."""
    tests = [r for r in rows if "test" in r]
    boots = defaultdict(int)
    for r in rows:
        if "boot" in r:
            boots[module(r["boot"])] += 1
    busy: dict[str, float] = defaultdict(float)
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"s": 0.0, "cpu": 0.0, "n": 0,
                                                          "w": set()})
    for r in tests:
        busy[r["worker"]] += r["end"] - r["start"]
        m = per[module(r["test"])]
        m["s"] += r["end"] - r["start"]
        m["cpu"] += r.get("cpu", 0.0)
        m["n"] += 1
        m["w"].add(r["worker"])
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s" if cpu is not None else f"wall {wall:.0f} s",
          f"({os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f});",
          f"{len(tests)} tests, {sum(boots.values())} hosts booted in test processes")
    print("busy per worker:", ", ".join(f"{w} {s:.0f} s" for w, s in sorted(busy.items())))
    print(f"{'module':34} {'seconds':>8} {'CPU s':>7} {'tests':>6} {'boots':>6}  workers")
    for name, m in sorted(per.items(), key=lambda kv: -kv[1]["s"])[:TOP]:
        print(f"{name:34} {m['s']:8.1f} {m['cpu']:7.1f} {m['n']:6d} {boots.get(name, 0):6d}  "
              f"{','.join(sorted(m['w']))}")


def main(argv: list[str]) -> int:
    """Run the suite in a cgroup of its own and print where its time went."""
    args = argv or ["-q", "-n", "3", "--dist", "loadgroup", "tests"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.jsonl"
        out.touch()
        cgroup = CPUACCT / f"hostsetup-suite-{os.getpid()}"
        counted = CPUACCT.is_dir()
        if counted:
            cgroup.mkdir()
        env = {**os.environ, OUT: str(out), **({CGROUP: str(cgroup)} if counted else {}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench"),
                                                           os.environ.get("PYTHONPATH")]))}
        enter = f"echo $$ > {cgroup}/cgroup.procs && " if counted else ""
        t0 = time.monotonic()
        code = subprocess.call(["sh", "-c", enter + 'exec "$@"', "sh", sys.executable, "-m",
                                "pytest", "-p", "suite_times", *args], cwd=ROOT, env=env)
        wall = time.monotonic() - t0
        cpu = int((cgroup / "cpuacct.usage").read_text()) / 1e9 if counted else None
        if counted:
            for below in cgroup.iterdir():
                if below.is_dir():
                    below.rmdir()  # a worker's: empty, the suite leaves no process behind
            cgroup.rmdir()
        report([json.loads(line) for line in out.read_text().splitlines()], wall, cpu)
        if os.environ.get(RAW):
            Path(os.environ[RAW]).write_text(out.read_text())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
