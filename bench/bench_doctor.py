"""Benchmark: ``hostsetup doctor`` on a healthy sandbox host, per group and in all.

Starts a full sandbox (D-Bus, Open vSwitch, vSphere simulator, libvirtd, Redis),
applies its answers once, then times the doctor on ``DIR/answers.yaml`` with a
fresh bundle each time (connecting and logging in count): each group of checks
alone, and the whole run (the groups side by side).  Best of REPEAT, seconds.

    .venv/bin/python bench/bench_doctor.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_check import applied_sandbox  # noqa: E402 - the benchmarks' shared sandbox

from backends.bundle import RealBackends  # noqa: E402
from wizard import doctor  # noqa: E402

REPEAT = 5


def best(work: Callable[[Any], list[doctor.Result]]) -> float:
    """The best wall time of ``work(bundle)`` over REPEAT runs, each with a fresh bundle;
    every check must pass."""
    times = []
    for _ in range(REPEAT):
        backends = RealBackends()
        start = time.perf_counter()
        try:
            results = work(backends)
        finally:
            backends.close()
        times.append(time.perf_counter() - start)
        if doctor.exit_code(results):
            raise SystemExit("a check failed:\n" + "\n".join(r.line() for r in results))
    return min(times)


def main() -> int:
    """Each group's best time, their sum, and the whole run's."""
    with applied_sandbox("bd") as answers:
        target = doctor.from_answers(answers, Path("/nonexistent"))
        doctor.run(target, RealBackends())  # imports and caches warm
        groups = {"root, bindings": lambda b: [doctor.root_check(target),
                                               *doctor.binding_checks(target)],
                  **{name: (lambda b, f=fn: f(target, b))
                     for name, fn in (("dbus, units", doctor.dbus_checks),
                                      ("ovsdb", doctor.ovs_checks),
                                      ("libvirt, hook, memory", doctor.libvirt_checks),
                                      ("vsphere, clock", doctor.vsphere_checks))}}
        print(f"{'doctor (best of ' + str(REPEAT) + ')':28} {'seconds':>8}")
        total = 0.0
        for name, work in groups.items():
            took = best(work)
            total += took
            print(f"  {name:26} {took:8.3f}")
        print(f"  {'sum, one after the other':26} {total:8.3f}")
        print(f"  {'doctor.run (side by side)':26} {best(lambda b: doctor.run(target, b)):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
