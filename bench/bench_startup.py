"""Start-up cost: `hostsetup --version` and time to the first wizard screen.

Each beside the same measurement of `python3 -c pass` in the same run.
Target: first screen within 300 ms.  Run: .venv/bin/python bench/bench_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
RUNS = 10


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


# A tmux server of the bench's own: another's server shutting down cannot refuse it.
TMUX = ["tmux", "-L", "hostsetup-bench"]


def to_screen(command: str, marker: str) -> float:
    """Seconds from starting ``command`` in an 80x24 tmux pane until ``marker`` shows."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    subprocess.run([*TMUX, "new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                    f"{command}; sleep 30"], check=True)
    try:
        while True:
            screen = subprocess.run([*TMUX, "capture-pane", "-t", name, "-p"],
                                    capture_output=True, text=True).stdout
            if marker in screen:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > 20:
                raise SystemExit(f"no {marker!r} on screen after 20s:\n{screen}")
            time.sleep(0.002)
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", name], capture_output=True)


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms (min {min(samples) * 1000:.1f})"


def main() -> None:
    base = [wall([PY, "-c", "pass"]) for _ in range(RUNS)]
    version = [wall([str(ROOT / ".venv/bin/hostsetup"), "--version"]) for _ in range(RUNS)]
    base_screen = [to_screen(f"{PY} -c \"print('hostsetup prepares')\"", "hostsetup prepares")
                   for _ in range(RUNS)]
    first = [to_screen(f"cd {ROOT} && {PY} -m wizard", "hostsetup prepares")
             for _ in range(RUNS)]
    print(f"runs per measurement: {RUNS}, median")
    print(f"python3 -c pass                 {median_ms(base)}")
    print(f"hostsetup --version             {median_ms(version)}")
    print(f"python3 prints to tmux pane     {median_ms(base_screen)}")
    print(f"hostsetup first screen          {median_ms(first)}")
    extra = statistics.median(first) - statistics.median(base_screen)
    print(f"first screen beyond python start {extra * 1000:6.1f} ms (target: total < 300 ms)")


if __name__ == "__main__":
    sys.exit(main())
