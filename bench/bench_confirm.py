"""Benchmark: what confirm-or-revert costs and how quickly it reacts.

1. The record (wizard/confirm.py): an apply of N operations after a risky one, each
   recorded (and synced) before it runs, against the same apply without a window
   (in-memory fakes for the host, so that only the record's file I/O is measured).
2. On a sandbox host (real systemd), ssh.service a small server, stopped by the
   apply under a window:
   - confirm latency: from ``hostsetup confirm`` returning to the waiting apply
     deciding "kept";
   - revert time: from the deadline to ssh.service running again, re-read.

    .venv/bin/python bench/bench_confirm.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakes import sample_backends, unit  # noqa: E402

from backends.bundle import RealBackends  # noqa: E402
from backends.interfaces.dbus import dbus_api  # noqa: E402
from sandbox import manage  # noqa: E402
from sandbox.core import Sandbox  # noqa: E402
from wizard import answers as answers_mod  # noqa: E402
from wizard import confirm  # noqa: E402
from wizard.runner import execute  # noqa: E402

N = 200  # operations after the risky one
REPEAT = 3


def record_cost(state: Path) -> tuple[float, float]:
    """Seconds of an apply stopping ssh then N units, without and with a window."""
    names = [f"u{i}.service" for i in range(N)]
    answers = answers_mod.validate({"version": 1, "services": {
        "require": [], "stop": ["ssh.service", *names]}})
    best = {False: 1e9, True: 1e9}
    for i in range(REPEAT):
        for windowed in (False, True):
            fb = sample_backends()
            for name in ["ssh.service", *names]:
                fb.dbus.units[name] = unit(name)
            window = confirm.Window(f"bench{i}", 60, {}, state) if windowed else None
            tracker = confirm.Tracker(window=window, sections=answers.sections)
            t0 = time.perf_counter()
            run = execute(answers, "apply", fb, journal=tracker)
            best[windowed] = min(best[windowed], time.perf_counter() - t0)
            assert run.exit_code == 0 and len(tracker.risky) == N + 1
            if tracker.record is not None:
                tracker.record.release()
    return best[False], best[True]


def on_host(sb: Sandbox, state: Path) -> tuple[float, float]:
    """Confirm latency and revert time, in seconds, on the host's real systemd."""
    root = Path(sb.env["HOSTSETUP_HOST_ROOT"])
    (root / "lib/systemd/system/ssh.service").write_text(
        "[Service]\nExecStart=/usr/bin/python3 -m http.server 2222 --bind 127.0.0.1\n")
    section = {"bus": sb.env["HOSTSETUP_DBUS_ADDRESS"], "require": [], "stop": ["ssh.service"]}
    answers = answers_mod.validate({"version": 1, "services": section})
    backends = RealBackends()
    try:
        dbus = dbus_api(backends, sb.env["HOSTSETUP_DBUS_ADDRESS"])
        dbus.reload()
        latency, revert = [], []
        for i in range(REPEAT):
            for keep in (True, False):
                dbus.start_unit("ssh.service", 30)
                window = confirm.Window(f"host{i}{keep}", 2, {}, state)
                tracker = confirm.Tracker(window=window, sections=answers.sections)
                execute(answers, "apply", backends, journal=tracker)
                box: dict[str, Any] = {}

                def wait(tracker: confirm.Tracker = tracker, box: dict[str, Any] = box) -> None:
                    box["out"] = confirm.wait_and_decide(tracker, backends, lambda _t: None,
                                                         keeper=lambda _r: 0)
                    box["t"] = time.perf_counter()
                thread = threading.Thread(target=wait)
                thread.start()
                while (confirm.Record(state / "confirm", window.run).read()["state"]
                       != "waiting"):
                    time.sleep(0.01)
                if keep:
                    confirm.confirm(state, window.run)
                    t0 = time.perf_counter()
                    thread.join()
                    latency.append(box["t"] - t0)
                else:
                    deadline = confirm.Record(state / "confirm", window.run).read()["deadline"]
                    thread.join()
                    assert not box["out"].kept and not box["out"].errors
                    revert.append(time.time() - deadline)
        return min(latency), min(revert)
    finally:
        backends.close()


def main() -> int:
    logging.getLogger("hostsetup").addHandler(logging.NullHandler())  # no revert lines
    with tempfile.TemporaryDirectory(prefix="bench-confirm-") as tmp:
        state = Path(tmp) / "state"
        plain, windowed = record_cost(state)
        print(f"apply of {N + 1} operations after a risky one (fakes): {plain * 1000:.1f} ms "
              f"without a window, {windowed * 1000:.1f} ms with the record "
              f"({(windowed - plain) / (N + 1) * 1000:.2f} ms per operation)")
        sb = manage.up(Path(tmp) / "sb", tag=f"cf{os.getpid() % 1000}",
                       components=[manage.HOST])
        try:
            latency, revert = on_host(sb, state)
        finally:
            manage.down(sb.dir)
        print(f"real host: 'hostsetup confirm' -> decided kept in {latency * 1000:.0f} ms; "
              f"deadline -> reverted and re-read in {revert * 1000:.0f} ms (best of {REPEAT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
