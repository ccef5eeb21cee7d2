"""Benchmark: a no-change `apply` of the full sandbox answers, sequential vs concurrent.

Starts a full sandbox (D-Bus, Open vSwitch, vSphere simulator, libvirtd),
applies its answers once (so that nothing is left to change), then times
no-change applies as `hostsetup apply` runs them (a fresh bundle each time, so
connecting and logging in count), alternately with the check phase one step
after the other and all steps at once.  Prints, per step, its discover + plan
time and the wall time of the whole run (best of REPEAT for each mode).

    .venv/bin/python bench/bench_check.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.bundle import RealBackends  # noqa: E402
from sandbox import manage  # noqa: E402
from wizard import answers as answers_mod  # noqa: E402
from wizard.runner import Run, execute  # noqa: E402

REPEAT = 5
MODES = {"sequential": False, "concurrent": True}


def no_change_apply(answers: answers_mod.Answers, concurrent: bool) -> tuple[float, Run]:
    """Wall time of one no-change apply, bundle opened and closed as the CLI does."""
    backends = RealBackends()
    start = time.perf_counter()
    try:
        run = execute(answers, "apply", backends, concurrent=concurrent)
    finally:
        backends.close()
    wall = time.perf_counter() - start
    if run.exit_code != 0 or any(s.status != "unchanged" for s in run.steps):
        raise SystemExit(f"not a no-change apply: {run.as_dict()}")
    return wall, run


@contextmanager
def applied_sandbox(tag: str) -> Iterator[answers_mod.Answers]:
    """A full sandbox whose answers (``DIR/answers.yaml``, yielded) were applied once,
    so that nothing is left to change; taken down after."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{tag}-") as tmp:
        sb = manage.up(Path(tmp) / "sb", tag=f"{tag}{os.getpid() % 1000}")
        try:
            answers = answers_mod.load(sb.dir / "answers.yaml")
            backends = RealBackends()
            try:
                first = execute(answers, "apply", backends)
            finally:
                backends.close()
            if first.exit_code != 0:
                raise SystemExit(f"the sandbox answers did not apply: {first.as_dict()}")
            yield answers
        finally:
            manage.down(sb.dir)


def main() -> int:
    """One column per mode: each step's discover + plan, then the total wall time."""
    with applied_sandbox("bc") as answers:
        best: dict[str, tuple[float, Run]] = {}
        for _ in range(REPEAT):
            for mode, concurrent in MODES.items():
                wall, run = no_change_apply(answers, concurrent)
                if mode not in best or wall < best[mode][0]:
                    best[mode] = (wall, run)
    print(f"no-change apply of the sandbox answers (best of {REPEAT}, seconds)")
    print(f"{'step (discover + plan)':<24}" + "".join(f"{m:>12}" for m in MODES))
    steps = [s.name for s in best["sequential"][1].steps]
    for i, name in enumerate(steps):
        cells = [sum(best[m][1].steps[i].durations.get(k, 0.0) for k in ("discover", "plan"))
                 for m in MODES]
        print(f"{name:<24}" + "".join(f"{c:>12.3f}" for c in cells))
    print(f"{'total (wall)':<24}" + "".join(f"{best[m][0]:>12.3f}" for m in MODES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
