"""The screen and the small windows every page is made of.

Every window is a :class:`Window`: built afresh each time it is drawn, so a
terminal resize can close newt, open it again at the new size and draw the
window again (newt's own resize handling can crash: we handle SIGWINCH here).
:meth:`Ui.show` runs a window with the keys that mean the same everywhere:

- Escape is Back (the window's ``"ESC"`` result), never OK, Next or Apply;
- Ctrl-C asks before leaving once anything was entered (newt turns ISIG off,
  so it arrives as a key); some windows take it themselves (``ctrl_c``);
- a timer lets a window poll (a wait, a progress) and notices a resize.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import snack

# newt keeps the terminal in raw mode, so Ctrl-C arrives as a key, not SIGINT.
snack.hotkeys["CTRL-C"] = 3
snack.hotkeys[3] = "CTRL-C"

WIDTH = 70  # inner width of the windows: fits 80 columns with borders
TEXT_ROWS = 12  # scrolling text in review/summary: the window fits 24 rows
MESSAGE_ROWS = 12  # a message's text; a longer one scrolls
MIN_COLS, MIN_ROWS = 80, 24
TICK_MS = 200  # how often a running window looks at resizes, waits and progress

# The help line of each kind of window: exactly what the keys do there.
KEYS_FORM = " Tab move | Enter press | F12 next | Esc back | F1 help | ^C quit"
KEYS_FIRST = " Space choose | Tab move | F12 next | Esc quit | F1 help | ^C quit"
KEYS_RECORD = " Tab move | Enter press | F12 OK | Esc cancel this entry | F1 help | ^C quit"
KEYS_PICK = " Up/Down move | Enter choose | Esc back, unchanged | F1 help | ^C quit"
KEYS_PICK_MANY = " Space toggle | Tab move | F12 OK | Esc back, unchanged | F1 help | ^C quit"
KEYS_LIST = " Up/Down move | Enter edit | Tab buttons | Esc done | F1 help | ^C quit"
KEYS_TEXT = " PgUp/PgDn/arrows scroll | Tab buttons | Enter press | Esc back | ^C quit"
KEYS_MESSAGE = " Enter/Esc close | ^C quit"
KEYS_LONG_MESSAGE = " PgUp/PgDn/arrows scroll | Enter/Esc close | ^C quit"
KEYS_CONFIRM = " Tab/arrows move | Enter press | Esc no | ^C quit"
KEYS_WAIT = " Esc/Enter/^C stop waiting"
KEYS_APPLY = " Applying: ^C stop after the running step"
KEYS_KEEP = " Enter keep | Tab move | no key: reverted when the time is up"
KEYS_SUMMARY = " PgUp/PgDn/arrows scroll | Enter/Esc/^C close"
KEYS_HELP = " PgUp/PgDn/arrows scroll | Enter/Esc close | ^C quit"


class Cancelled(Exception):
    """The operator chose to leave (Cancel or Ctrl-C, confirmed)."""


class WaitCancelled(Exception):
    """The operator stopped a 'Please wait' (a key)."""


def paragraphs(text: str) -> str:
    """Join hard-wrapped lines so the window can wrap them; keep blank lines and
    lines that start a list item."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if out and out[-1] and line and not line.startswith(("-", "*")):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def hanging(text: str, width: int) -> str:
    """Wrap each line to ``width``, continuation lines indented under their line's
    text (a wrapped change stays visibly part of its step)."""
    import textwrap

    out = []
    for line in text.splitlines():
        lead = line[: len(line) - len(line.lstrip())]
        # The indent is kept also when a long word (a path) comes first; such a
        # word stays whole (copied, not read), the text box wraps it at its edge.
        out += textwrap.wrap(line.lstrip(), width, initial_indent=lead,
                             subsequent_indent=lead + "    ", break_on_hyphens=False,
                             break_long_words=False) or [""]
    return "\n".join(out)


def terminal_size() -> tuple[int, int]:
    """Columns and rows of the wizard's terminal (its stdout)."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return MIN_COLS, MIN_ROWS
    return size.columns, size.lines


def wait_for_size() -> None:
    """Below 80x24 newt cannot draw the windows: say so and wait until the terminal
    is big enough (newt is closed meanwhile; keys are not echoed, Ctrl-C is ignored:
    nothing could be confirmed now, and nothing is lost)."""
    import termios
    import tty

    if terminal_size() >= (MIN_COLS, MIN_ROWS) and terminal_size()[1] >= MIN_ROWS:
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    shown = None
    try:
        tty.setcbreak(fd)
        while (size := terminal_size())[0] < MIN_COLS or size[1] < MIN_ROWS:
            if size != shown:
                sys.stdout.write(f"\033[2J\033[Hhostsetup: terminal too small: need "
                                 f"{MIN_COLS}x{MIN_ROWS} (now {size[0]}x{size[1]}).\r\n"
                                 "Make it bigger to go on; nothing was lost.\r\n")
                sys.stdout.flush()
                shown = size
            time.sleep(0.2)
        termios.tcflush(fd, termios.TCIFLUSH)  # keys typed meanwhile meant nothing
        sys.stdout.write("\033[2J\033[H")
        sys.stdout.flush()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGINT, old)


class Window:
    """A window that :meth:`Ui.show` can draw again at any time.

    ``build`` makes the form and its widgets; ``keep`` reads what the widgets
    show before they are freed; ``tick`` runs on the timer and may return a
    result that closes the window.  ``ctrl_c``: "quit" (ask, then leave) or
    "return" (the window's caller decides).
    """

    keys = KEYS_FORM
    ctrl_c = "quit"
    hotkeys: tuple[str, ...] = ()  # more keys that close the window (e.g. "ENTER")

    def build(self, ui: Ui) -> snack.GridFormHelp:
        raise NotImplementedError

    def keep(self) -> None:
        """Keep the widgets' values (they are freed with the form)."""

    def focus(self) -> Any:
        """The widget to focus first, if not the first one."""
        return None

    def tick(self, ui: Ui, form: snack.GridFormHelp) -> Any:
        """Called on the timer; a non-None result closes the window with it."""
        return None


class Ui:
    """The screen, the per-window help texts (F1), and whether anything was entered."""

    def __init__(self) -> None:
        self.helps: dict[str, str] = {}
        self.touched = False  # something was entered: leaving asks first
        self.resized = False
        self.quit_from_help = False
        self.in_help = False
        # The values of the step window whose record list is open: pickers inside a
        # record offer the records answered under another key (Question.refs).
        self.section: dict[str, Any] = {}
        self.screen = self._open()

    def _open(self) -> snack.SnackScreen:
        wait_for_size()
        screen = snack.SnackScreen()
        # After newt's init, which installs a SIGWINCH handler that redraws from
        # inside the C library (and can crash): only note it, redraw ourselves.
        signal.signal(signal.SIGWINCH, self._on_winch)
        screen.helpCallback(self._help)
        screen.pushHelpLine(KEYS_FORM)
        return screen

    def _on_winch(self, *_args: Any) -> None:
        self.resized = True

    def restart(self) -> None:
        """Close newt and open it again at the terminal's new size."""
        self.resized = False
        self.screen.finish()
        self.screen = self._open()

    def finish(self) -> None:
        """Give the terminal back in its normal mode, for good: the wizard is leaving
        and its exit code is decided, so a Ctrl-C typed meanwhile (now a signal again)
        must not turn it into 130 or a traceback."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        self.screen.finish()

    def form(self, title: str, help_text: str, cols: int, rows: int) -> snack.GridFormHelp:
        """A form whose F1 shows ``help_text``."""
        tag = next((t for t, h in self.helps.items() if h == help_text), "")
        if not tag:  # one tag per text: windows drawn again reuse theirs
            tag = f"help{len(self.helps)}"
            self.helps[tag] = help_text
        return snack.GridFormHelp(self.screen, title, tag, cols, rows)

    def show(self, win: Window) -> Any:
        """Run ``win`` until a key or widget closes it; returns that result.

        Escape returns "ESC"; Ctrl-C asks (or returns "CTRL-C", see ``ctrl_c``);
        a resize draws the window again at the new size, keeping its values.
        """
        while True:
            form = win.build(self)
            for key in ("ESC", "F12", "CTRL-C", *win.hotkeys):
                form.addHotKey(key)
            form.setTimer(TICK_MS)
            form.create()  # newt can focus only a widget already in the form
            target = win.focus()
            if target is not None:
                form.setCurrent(target)
            self.screen.pushHelpLine(win.keys)
            result = self._run(form, win)
            self.screen.popWindow()
            self.screen.popHelpLine()
            win.keep()
            if result == "RESIZE":
                if self.in_help:  # inside newt's F1 callback: the outer window redraws
                    return "ESC"
                self.restart()
                continue
            if result == "CTRL-C" and win.ctrl_c == "quit" and not self.in_help:
                self.quit()
                continue
            return result

    def _run(self, form: snack.GridFormHelp, win: Window) -> Any:
        while True:
            result = form.run()
            if result != "TIMER":
                return result
            if self.resized:
                return "RESIZE"
            if self.quit_from_help and not self.in_help:
                self.quit_from_help = False
                return "CTRL-C"
            done = win.tick(self, form)
            if done is not None:
                return done

    def quit(self, always_ask: bool = False) -> None:
        """Leave (raise :class:`Cancelled`), after asking if anything was entered."""
        if (self.touched or always_ask) and not self.confirm(
                "Leave hostsetup?", "Leave without changing anything on this host? "
                "What you entered is not kept (--record FILE keeps the answers of a "
                "completed run).", yes="Leave", no="Stay", ctrl_c="yes"):
            return
        raise Cancelled

    def confirm(self, title: str, text: str, yes: str = "Yes", no: str = "No",
                ctrl_c: str = "quit") -> bool:
        """A yes/no question with **No** focused; Escape is No.  Ctrl-C asks to
        leave (``"quit"``) or means ``"yes"``."""
        win = TextWindow(title, text, [yes, no], focus_button=1, keys=KEYS_CONFIRM,
                         rows=0)
        if ctrl_c == "yes":
            win.ctrl_c = "return"
        result = self.show(win)
        if result == "CTRL-C":
            return True
        return win.pressed(result) == yes.lower()

    def message(self, title: str, text: str) -> None:
        """A modal message with OK; Escape and Enter close it.  A message longer
        than the window is a scrolling text that has the focus (PgDn/arrows)."""
        long = len(hanging(text, WIDTH - 2).splitlines()) > MESSAGE_ROWS
        win = TextWindow(title, text, ["OK"], keys=KEYS_LONG_MESSAGE if long else KEYS_MESSAGE,
                         rows=MESSAGE_ROWS if long else 0)
        if long:
            win.hotkeys = ("ENTER",)  # the text has the focus (it scrolls): Enter closes
        self.show(win)

    def _help(self, _screen: Any, tag: Any) -> None:
        """F1: the window's help.  Runs inside newt's form loop, so it must not
        raise: Ctrl-C is handed to the window below (``quit_from_help``)."""
        text = paragraphs(self.helps.get(str(tag)) or "No help for this window.")
        self.in_help = True
        try:
            win = TextWindow("Help", text, ["OK"], keys=KEYS_HELP)
            win.ctrl_c = "return"
            if self.show(win) == "CTRL-C":
                self.quit_from_help = True
        finally:
            self.in_help = False

    def wait(self, text: str, work: Callable[[], Any]) -> Any:
        """Run ``work`` in a thread under a 'Please wait' window; a key stops the
        wait (:class:`WaitCancelled`; the work is abandoned: every connect it
        makes is bounded by the backends' timeouts)."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc

        thread = threading.Thread(target=target, daemon=True, name="hostsetup-wait")
        thread.start()
        win = WaitWindow(text, thread)
        if self.show(win) != "done":
            raise WaitCancelled
        if "error" in box:
            raise box["error"]
        return box.get("result")


class TextWindow(Window):
    """A text (scrolling when long) and a row of buttons.

    With ``rows`` > 0 the text is a scrolling box of that height that has the
    focus (PgUp/PgDn/arrows scroll at once; Tab reaches the buttons); with 0 it
    is reflowed to fit and the focus is on button ``focus_button``.
    """

    def __init__(self, title: str, text: str, buttons: list[str], focus_button: int = 0,
                 keys: str = KEYS_TEXT, rows: int = TEXT_ROWS, help_text: str = "") -> None:
        self.title, self.text, self.buttons = title, text, buttons
        self.focus_button, self.keys, self.rows = focus_button, keys, rows
        self.help_text = help_text or text
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form(self.title, self.help_text, 1, 2)
        if self.rows:
            g.add(snack.Textbox(WIDTH, self.rows, hanging(self.text, WIDTH - 2), scroll=1,
                                wrap=1), 0, 0)
        else:
            g.add(snack.TextboxReflowed(WIDTH - 4, self.text, maxHeight=MESSAGE_ROWS), 0, 0)
        self.bar = snack.ButtonBar(ui.screen, self.buttons)
        g.add(self.bar, 0, 1, (0, 1, 0, 0))
        return g

    def focus(self) -> Any:
        if self.rows or self.bar is None:
            return None  # the text box: it scrolls without a Tab first
        return self.bar.list[self.focus_button][0]

    def pressed(self, result: Any) -> str | None:
        """The button pressed (its lower-case name), or None."""
        return self.bar.buttonPressed(result) if self.bar is not None else None


class WaitWindow(Window):
    """'Please wait' while a thread works; any of Escape, Enter, Ctrl-C stops waiting."""

    keys = KEYS_WAIT
    ctrl_c = "return"

    def __init__(self, text: str, thread: threading.Thread) -> None:
        self.text, self.thread = text, thread
        self.started = time.monotonic()
        self.label: snack.Label | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = snack.GridForm(ui.screen, "Please wait", 1, 2)
        self.label = snack.Label(self._line())
        g.add(self.label, 0, 0)
        g.add(snack.Button("Stop waiting"), 0, 1, (0, 1, 0, 0))
        return g

    def _line(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        return f"{self.text} {elapsed} s"[: WIDTH - 4].ljust(WIDTH - 4)

    def tick(self, ui: Ui, form: snack.GridFormHelp) -> Any:
        if not self.thread.is_alive():
            return "done"
        if self.label is not None:
            self.label.setText(self._line())
            form.draw()
            ui.screen.refresh()
        return None


Item = tuple[str, Any]  # a picker's line: the text shown and the value it stands for


def pick_one(ui: Ui, label: str, help_text: str, choices: list[Item], current: Any,
             required: bool) -> Any:
    """Choose one of ``choices`` (or "(none)" when not required); Escape keeps ``current``."""
    items = list(choices) if required else [("(none)", None), *choices]
    values = [v for _t, v in items]
    win = PickOne(label, help_text, [t for t, _v in items],
                  values.index(current) if current in values else 0)
    result = ui.show(win)
    if result in ("ESC", None) or win.button(result) == "cancel":
        return current
    return values[win.index]


class PickOne(Window):
    """A list to choose one item from: Enter on an item, or OK."""

    keys = KEYS_PICK

    def __init__(self, title: str, help_text: str, items: list[str], index: int) -> None:
        self.title, self.help_text, self.items, self.index = title, help_text, items, index
        self.box: snack.Listbox | None = None
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form(self.title, self.help_text, 1, 3)
        g.add(snack.TextboxReflowed(50, self.help_text, maxHeight=4), 0, 0)
        self.box = snack.Listbox(height=min(10, max(1, len(self.items))), scroll=1,
                                 width=50, returnExit=1)
        for i, item in enumerate(self.items):
            self.box.append(item[:48], i)
        self.box.setCurrent(self.index)
        g.add(self.box, 0, 1, (0, 1, 0, 0))
        self.bar = snack.ButtonBar(ui.screen, ["OK", "Cancel"])
        g.add(self.bar, 0, 2, (0, 1, 0, 0))
        return g

    def keep(self) -> None:
        if self.box is not None and self.items:
            self.index = int(self.box.current())

    def button(self, result: Any) -> str:
        """"ok" for Enter on the list, F12 or OK; else the button's name."""
        if result is self.box or result == "F12":
            return "ok"
        return (self.bar.buttonPressed(result) if self.bar else None) or "cancel"


def pick_many(ui: Ui, label: str, help_text: str, choices: list[Item],
              current: list[Any]) -> list[Any]:
    """Choose any of ``choices`` (Space toggles); Escape keeps ``current``."""
    win = PickMany(label, help_text, choices, current)
    result = ui.show(win)
    if result == "F12" or (win.bar is not None and win.bar.buttonPressed(result) == "ok"):
        return win.selected
    return current


class PickMany(Window):
    """A checkbox list: Space toggles, OK keeps the selection."""

    keys = KEYS_PICK_MANY

    def __init__(self, title: str, help_text: str, choices: list[Item],
                 current: list[Any]) -> None:
        self.title, self.help_text, self.items = title, help_text, choices
        self.choices = [v for _t, v in choices]
        self.selected = [c for c in self.choices if c in current]
        self.tree: snack.CheckboxTree | None = None
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form(self.title, self.help_text, 1, 3)
        self.tree = snack.CheckboxTree(height=min(10, max(3, len(self.choices))), scroll=1,
                                       width=50)
        for text, choice in self.items:
            self.tree.append(text[:46], choice, selected=int(choice in self.selected))
        g.add(snack.TextboxReflowed(50, self.help_text or "Space toggles an item.",
                                    maxHeight=4), 0, 0)
        g.add(self.tree, 0, 1, (0, 1, 0, 0))
        self.bar = snack.ButtonBar(ui.screen, ["OK", "Cancel"])
        g.add(self.bar, 0, 2, (0, 1, 0, 0))
        return g

    def keep(self) -> None:
        if self.tree is not None:
            chosen = set(self.tree.getSelection())
            self.selected = [c for c in self.choices if c in chosen]
