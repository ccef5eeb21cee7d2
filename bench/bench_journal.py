"""Benchmark: what the run journal costs (wizard/journal.py).

- per operation: its ``begin`` and ``end`` records, each written whole and fsync'd, on
  a directory of the disk that holds /var/lib (ext4 here), and the bytes it takes;
- the start-up check (``unsettled()``, run before every apply) and ``report list``
  (``runs()``, reads every file) over a full journal: KEEP runs of 50 operations;
- an apply of the services step on the in-memory fakes (5 operations) with and
  without its journal: the journal's share of a run whose operations cost nothing.

    .venv/bin/python bench/bench_journal.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakes import sample_backends  # noqa: E402

from steps.base import Change, Operation  # noqa: E402
from wizard import answers as answers_mod  # noqa: E402
from wizard import journal  # noqa: E402
from wizard.runner import Run, execute  # noqa: E402

OPS = 200
REPEAT = 5
SERVICES = {"require": ["ovs-vswitchd.service", "libvirtd.service"],
            "enable": ["libvirtd.service"],
            "dropins": [{"unit": "libvirtd.service", "name": "50-hs",
                         "content": "[Service]\nEnvironment=A=1\n"}]}


def operation(i: int) -> Operation:
    """An operation the size of a services start."""
    command = {"op": "job", "action": "start", "unit": f"unit{i}.service", "timeout": 30.0}
    return Operation(Change(f"unit unit{i}.service", "start", "inactive (dead)", "active"),
                     command, {**command, "action": "stop"})


def records(base: Path) -> tuple[float, int]:
    """Seconds and bytes per operation (its begin and end), best of REPEAT."""
    best = float("inf")
    size = 0
    for _ in range(REPEAT):
        run = journal.RunJournal.create("apply", {"version": 1}, base=base, keep=REPEAT + 1)
        ops = [operation(i) for i in range(OPS)]
        start = time.perf_counter()
        for op in ops:
            run.begin("services", op)
            run.end("services", op)
        best = min(best, (time.perf_counter() - start) / OPS)
        size = (run.size - len(journal._line({"t": "run"}))) // OPS
        run.finish(Run("apply"))
    return best, size


def full_journal(base: Path) -> tuple[float, float]:
    """Seconds of the start-up check and of reading every run, over KEEP runs of 50 ops."""
    for _ in range(journal.KEEP):
        run = journal.RunJournal.create("apply", {"version": 1}, base=base)
        for i in range(50):
            run.begin("services", operation(i))
            run.end("services", operation(i))
        run.finish(Run("apply"))
    times = {}
    for name, fn in (("check", journal.unsettled), ("list", journal.runs)):
        best = float("inf")
        for _ in range(REPEAT):
            start = time.perf_counter()
            fn(base)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return times["check"], times["list"]


def apply_on_fakes(base: Path) -> tuple[float, float]:
    """Seconds of an apply (5 operations) on the fakes without and with its journal."""
    answers = answers_mod.validate({"version": 1, "services": SERVICES})
    out = []
    for with_journal in (False, True):
        best = float("inf")
        for _ in range(REPEAT):
            run = journal.RunJournal.create("apply", journal.answers_document(answers),
                                            base=base) if with_journal else None
            start = time.perf_counter()
            result = execute(answers, "apply", sample_backends(), journal=run)
            best = min(best, time.perf_counter() - start)
            assert result.exit_code == 0, result.as_dict()
        out.append(best)
    return out[0], out[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir="/var/tmp") as tmp:
        per_op, size = records(Path(tmp) / "a")
        check, listing = full_journal(Path(tmp) / "b")
        bare, journaled = apply_on_fakes(Path(tmp) / "c")
    fits = journal.JOURNAL_LIMIT // (2 * (size + journal.END_ROOM))
    print(f"journal, {os.uname().sysname} on /var/tmp (best of {REPEAT}):")
    print(f"  per operation (begin + end, 2 fsyncs)  {per_op * 1000:8.2f} ms  {size} bytes")
    print(f"  operations one run may hold            {fits:8d}   (limit "
          f"{journal.JOURNAL_LIMIT // (1024 * 1024)} MiB, room reserved per operation)")
    print(f"  start-up check, {journal.KEEP} runs of 50 ops    {check * 1000:8.2f} ms")
    print(f"  report list, the same                  {listing * 1000:8.2f} ms")
    print(f"  apply on the fakes, 5 ops: bare        {bare * 1000:8.2f} ms")
    print(f"  apply on the fakes, 5 ops: journaled   {journaled * 1000:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
