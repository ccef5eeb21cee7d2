"""Drive a program in a real terminal: tmux at 80x24, send-keys, capture-pane."""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from pathlib import Path


class Terminal:
    """One tmux session running a command; its exit code is written to a file."""

    def __init__(self, command: str, cwd: Path, width: int = 80, height: int = 24) -> None:
        self.name = f"hs-{uuid.uuid4().hex[:8]}"
        # A tmux server of its own: other tests' sessions (other worktrees too) can
        # neither end it nor race with it.
        self.tmux = ["tmux", "-L", self.name]
        self.rc_file = cwd / f".{self.name}.rc"
        self.rc_file.unlink(missing_ok=True)
        # The wizard's stdout is the terminal itself (never redirected); only
        # the exit code is kept, and the pane stays open to read the screen.
        # Keys sent after the program ended (a late Ctrl-C) must not end the pane.
        wrapped = (f"{command}; echo $? > {shlex.quote(str(self.rc_file))}; "
                   "trap '' INT; sleep 600")
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
             "-c", str(cwd), "bash", "-c", wrapped],
            check=True,
        )

    def screen(self) -> str:
        """The visible screen as text."""
        return subprocess.run([*self.tmux, "capture-pane", "-t", self.name, "-p"],
                              capture_output=True, text=True, check=True).stdout

    def send(self, *keys: str) -> None:
        """Send tmux key names (e.g. "Tab", "Enter", "F12", "C-c") or literal text."""
        for key in keys:
            subprocess.run([*self.tmux, "send-keys", "-t", self.name, key], check=True)
            time.sleep(0.05)

    def type(self, text: str) -> None:
        """Type text literally."""
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, "-l", text], check=True)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """Wait until ``text`` is on screen; fails with the screen shown."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen}")
            time.sleep(0.1)

    def wait_any(self, *texts: str, timeout: float = 20.0) -> str:
        """Wait until one of ``texts`` is on screen; the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if any(t in screen for t in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"none of {texts!r} on screen after {timeout}s:\n{screen}")
            time.sleep(0.1)

    def wait_gone(self, text: str, timeout: float = 20.0) -> str:
        """Wait until ``text`` is no longer on screen (a window closed); the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text not in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} still on screen after {timeout}s:\n{screen}")
            time.sleep(0.1)

    def exit_code(self, timeout: float = 20.0) -> int:
        """Wait for the program to end; its exit code."""
        deadline = time.monotonic() + timeout
        while not self.rc_file.exists() or not self.rc_file.read_text().strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"program still running after {timeout}s:\n{self.screen()}")
            time.sleep(0.1)
        return int(self.rc_file.read_text())

    def resize(self, width: int, height: int) -> None:
        """Resize the terminal (the program gets SIGWINCH)."""
        subprocess.run([*self.tmux, "resize-window", "-t", self.name, "-x", str(width),
                        "-y", str(height)], check=True)

    def alive(self) -> bool:
        """The program is still running (it has not written its exit code)."""
        return not (self.rc_file.exists() and self.rc_file.read_text().strip())

    def stty(self) -> str:
        """The terminal settings of the pane (to check it was restored)."""
        tty = subprocess.run([*self.tmux, "display", "-p", "-t", self.name, "#{pane_tty}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return subprocess.run(["stty", "-a", "-F", tty], capture_output=True, text=True).stdout

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-session", "-t", self.name], capture_output=True)
        self.rc_file.unlink(missing_ok=True)


def apply_and_finish(t: Terminal, timeout: float = 20.0) -> int:
    """From the questions of the last step (or the welcome window, when nothing is
    asked): Next, Apply on the review, Keep if asked (changes marked ~), OK on the
    summary (within ``timeout``)."""
    t.send("F12")
    t.wait_for("Review")
    t.send("Tab", "Enter")  # the Apply button (the text has the focus, to scroll)
    t.wait_for("Apply? ")
    t.send("Left", "Enter")  # No has the focus: move to Yes
    if "Keep these changes?" in t.wait_any("Summary", "Keep these changes?", timeout=timeout):
        t.send("Enter")  # changes marked ~ (wizard/confirm.py): Keep has the focus
    t.wait_for("Summary", timeout=timeout)
    t.send("Enter")
    return t.exit_code()
