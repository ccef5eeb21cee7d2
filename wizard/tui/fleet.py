"""The fleet run's progress window: per host, its latest state."""

from __future__ import annotations

import sys

import snack

from wizard.tui.widgets import WIDTH


class FleetProgress:
    """Per-host progress of a fleet run in a snack window (on a terminal).

    Call it with ``(host, text)`` for each event; :meth:`close` restores the
    terminal.  No form runs while the fleet works, so Ctrl-C is given back to
    the terminal as SIGINT (newt turns it off) and interrupts the wait.
    """

    def __init__(self, title: str, hosts: list[str]) -> None:
        import termios

        self.hosts = {h: "waiting" for h in hosts}
        self.screen = snack.SnackScreen()
        self.screen.pushHelpLine(" Fleet run in progress | ^C stops waiting (agents finish "
                                 "what they started)")
        fd = sys.stdin.fileno()  # newt's terminal
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ISIG
        attrs[6][termios.VINTR] = 3
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.form = snack.GridForm(self.screen, title, 1, 1)
        self.text = snack.Textbox(WIDTH, min(len(hosts), 16), "", scroll=1)
        self.form.add(self.text, 0, 0)
        self.draw()

    def draw(self) -> None:
        self.text.setText("\n".join(f"{h:14} {t}"[:WIDTH] for h, t in self.hosts.items()))
        self.form.draw()
        self.screen.refresh()

    def __call__(self, host: str, text: str) -> None:
        self.hosts[host] = text
        self.draw()

    def close(self) -> None:
        self.screen.finish()

