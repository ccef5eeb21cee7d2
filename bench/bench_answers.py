"""Hostile answers files: time to rejection and peak resident memory of `hostsetup plan`.

Target: every input rejected (exit 3) in under 2 s and under 200 MB resident.
Each case runs `hostsetup plan --answers FILE` once in a fresh process; peak RSS
is that process's ru_maxrss (os.wait4).  Run: .venv/bin/python bench/bench_answers.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
MB = 1024 * 1024


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def big_file(d: Path) -> Path:
    """50 MB of a valid-looking answers file (a huge comment)."""
    with open(d / "big.yaml", "w") as f:
        f.write("version: 1\n")
        line = "# " + "x" * 98 + "\n"
        for _ in range(50 * MB // len(line)):
            f.write(line)
    return d / "big.yaml"


def alias_bomb(d: Path) -> Path:
    lines = ["version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return write(d / "bomb.yaml", "\n".join(lines) + "\n")


def lines_of(item: str, count: int, width: int = 60_000) -> str:
    """``count`` copies of ``item`` on lines of at most ``width`` characters."""
    per = width // len(item)
    return "\n".join(item * min(per, count - i) for i in range(0, count, per))


def deep(d: Path) -> Path:
    return write(d / "deep.yaml", "version: 1\nx: " + lines_of("[", 400_000) + "\n")


def many_values(d: Path) -> Path:
    """Half a million one-character list items: stopped by the value count."""
    return write(d / "many.yaml", "version: 1\nx: [" + lines_of("1,", 500_000) + "1]\n")


def comments(d: Path) -> Path:
    """Just under 1 MiB of comments, on lines as long as allowed."""
    return write(d / "comments.yaml", "version: 1\n"
                 + "\n".join("#" + "x" * 65_000 for _ in range(16)) + "\nx: 1\n")


def spaces(d: Path) -> Path:
    return write(d / "spaces.yaml", "version: 1\nx:" + " " * (MB - 100) + "1\n")


def long_comment(d: Path) -> Path:
    return write(d / "comment.yaml", "version: 1\n#" + "x" * (MB - 100) + "\nx: 1\n")


def long_string(d: Path) -> Path:
    return write(d / "string.yaml", "version: 1\nservices: {bus: '" + "a" * 65_000 + "'}\n")


def wide_fleet(d: Path) -> Path:
    """A fleet within the limits: a large base section times many hosts."""
    units = lines_of("u.service, ", 4900)
    hosts = "".join(f"- name: h{i}\n" for i in range(1600))
    return write(d / "fleet.yaml", f"version: 1\nservices:\n  bus: bad\n  require: [{units}]\n"
                 f"hosts:\n{hosts}")


CASES: list[tuple[str, Callable[[Path], Path]]] = [
    ("50 MB file", big_file),
    ("--answers /dev/zero", lambda _d: Path("/dev/zero")),
    ("alias bomb (9^10)", alias_bomb),
    ("nesting 400k deep", deep),
    ("500k list items", many_values),
    ("500k comment lines", lambda d: write(d / "lines.yaml", "#\\n" * 500_000)),
    ("1 MB of long comments", comments),
    ("64 KB string value", long_string),
    ("1 MB of spaces", spaces),
    ("1 MB comment line", long_comment),
    ("fleet 1.6k hosts x 4.9k", wide_fleet),
]


def run(path: Path) -> tuple[int, float, float, str]:
    """Exit code, seconds, peak RSS in MB and the first problem line of one plan run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "wizard", "plan", "--answers", str(path)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = err.splitlines()
    problem = lines[1].strip() if len(lines) > 1 else err
    return proc.returncode, seconds, usage.ru_maxrss / 1024, problem


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'input':24} {'exit':>4} {'time':>8} {'peak RSS':>9}  problem")
        worst_t = worst_m = 0.0
        for name, make in CASES:
            code, seconds, rss, problem = run(make(Path(tmp)))
            worst_t, worst_m = max(worst_t, seconds), max(worst_m, rss)
            print(f"{name:24} {code:4} {seconds:7.2f}s {rss:6.0f} MB  {problem[:70]}")
        print(f"worst: {worst_t:.2f} s, {worst_m:.0f} MB (target: under 2 s and 200 MB; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    sys.exit(0)


if __name__ == "__main__":
    main()
