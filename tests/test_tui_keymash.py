"""Key-mash: from each window, random sequences of Escape, F12, Tab, Space, letters,
arrows, Ctrl-C and resizes never crash the wizard, never leave the terminal raw,
and never change the host (``hostsetup plan`` shows the same pending changes).

The driver never sends the exact Apply + Yes sequence: while the Apply
confirmation is on screen it sends only Escape.  ``make test`` runs a seeded
sample; ``make fuzz`` (HOSTSETUP_FUZZ=1) runs a few hundred sequences.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_tui import restored
from test_tui_fields import host  # noqa: F401 - the module's sandbox fixture
from test_tui_keys import pending
from tmux import Terminal

from sandbox.core import Sandbox
from sandbox.manage import write_yaml

LONG = os.environ.get("HOSTSETUP_FUZZ") == "1"
SEQUENCES = int(os.environ.get("HOSTSETUP_FUZZ_SEQUENCES", 60 if LONG else 1))  # per window
LENGTH = 40 if LONG else 20  # keys per sequence
SEED = int(os.environ.get("HOSTSETUP_FUZZ_SEED", "20261125"))
KEYS = ["Escape", "F12", "Tab", "BTab", "Space", "Up", "Down", "Left", "Right", "NPage",
        "C-c", "a", "7", "ñ", "F1", "Enter", "resize"]
SIZES = [(80, 24), (70, 20), (100, 30), (81, 25)]
# How to reach each start window from the launch, and what shows it is there.
STARTS = {
    "welcome": ([], "Space choose"),
    "connection": (["F12"], "OVSDB remote"),
    "questions": (["F12", "F12"], "1 entry: edit..."),
    "records": (["F12", "F12", "Enter"], "Enter edit"),
    "review": (["F12", "F12", "F12"], "Tab buttons"),
}
BAD = ("Traceback", "Segmentation fault", "internal error", "send_attr_str")


def settled(t: Terminal) -> str:
    """The screen once it stopped changing (the last key is handled)."""
    screen = t.screen()
    for _ in range(20):
        time.sleep(0.08)
        again = t.screen()
        if again == screen:
            return screen
        screen = again
    return screen


def leave(t: Terminal) -> int:
    """Back to 80x24, then Ctrl-C until the wizard has left; its exit code."""
    t.resize(80, 24)
    for _ in range(8):
        if not t.alive():
            break
        time.sleep(0.5)
        t.send("C-c")
    return t.exit_code()


def mash(sb: Sandbox, tmp: Path, start: str, rng: random.Random) -> list[str]:
    """One sequence from ``start``; returns the keys sent."""
    answers = tmp / "answers.yaml"
    write_yaml(answers, {**sb.answers, "version": 1, "interactive": ["ovs_mirror"]})
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} --log {tmp}/w.log",
                 cwd=tmp)
    sent: list[str] = []
    try:
        t.wait_for("Space choose")
        prefix, marker = STARTS[start]
        for i, key in enumerate(prefix):
            # Each key waits for the window it leads to: the next key must not land
            # in a 'Please wait' between them (the host check after the welcome).
            t.send(key)
            t.wait_for(next(m for p, m in STARTS.values() if p == prefix[:i + 1]), timeout=60)
        for _ in range(LENGTH):
            screen = settled(t)
            assert not any(b in screen for b in BAD), f"after {sent}:\n{screen}"
            if not t.alive():
                break
            key = "Escape" if "Apply? " in screen else rng.choice(KEYS)
            sent.append(key)
            (tmp / "keys").write_text(" ".join(sent))  # to replay a failure
            if key == "resize":
                t.resize(*rng.choice(SIZES))
            else:
                t.send(key)
        code = leave(t)
        assert code == 130, f"exit {code} after {sent}:\n{t.screen()}"
        assert restored(t), f"terminal left raw after {sent}"
        assert not any(b in t.screen() for b in BAD), f"after {sent}:\n{t.screen()}"
    finally:
        t.close()
    return sent


@pytest.mark.parametrize("start", list(STARTS))
def test_key_mash_never_crashes_nor_changes_the_host(host: Sandbox, tmp_path: Path,  # noqa: F811
                                                     start: str) -> None:
    before = pending(host)
    rng = random.Random(f"{SEED}-{start}")
    for i in range(SEQUENCES):
        run_dir = tmp_path / str(i)
        run_dir.mkdir()
        mash(host, run_dir, start, rng)
    assert pending(host) == before
