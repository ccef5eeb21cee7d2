"""The wizard's flow: its pages (declared as data), then apply and the summary.

welcome -> the host check (``hostsetup doctor``; a window only when a check
fails) -> per step: connection, then its questions -> review -> Apply
(confirmed) -> progress -> summary.  Nothing is changed before the operator
presses Apply on the review and confirms; the exit code is the run's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import snack

from wizard.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_USAGE
from wizard.session import Loaded
from wizard.tui.questions import ask, defaults, model_problems, problem_text
from wizard.tui.widgets import (
    KEYS_APPLY,
    KEYS_FIRST,
    KEYS_KEEP,
    KEYS_SUMMARY,
    KEYS_TEXT,
    MESSAGE_ROWS,
    TEXT_ROWS,
    WIDTH,
    Cancelled,
    TextWindow,
    Ui,
    WaitCancelled,
    Window,
    hanging,
)

log = logging.getLogger("hostsetup")
ASK_WAIT = 600.0  # seconds the next step waits while the operator is asked "Stop?"
KEYS_CHECK = " Tab/arrows move | Enter press | Esc back | F1 help | ^C quit"


def welcome_text(steps: list[Any]) -> str:
    """The welcome text, from the registry's steps."""
    return ("hostsetup prepares this virtualization host, in "
            f"{len(steps)} steps: " + "; ".join(s.title for s in steps) + ".\n\n"
            "Each step asks its questions, then you review every planned change. "
            "Nothing changes until you press Apply on the review and confirm.")


@dataclass
class Flow:
    """What the wizard has gathered so far."""

    ui: Ui
    steps: list[Any]
    ctx: Any = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: Any = None
    ask_steps: set[str] = field(default_factory=set)
    selected: list[str] = field(default_factory=list)
    answers_given: bool = False
    # After a plan problem: the step and the question key to reopen at.
    focus: dict[str, str] = field(default_factory=dict)
    prefilled: set[str] = field(default_factory=set)  # steps given the host's current state
    log_path: Path | None = None
    came_back: bool = False  # the page is shown after Back on the page after it
    planned: Any = None  # (answers, prepared, plan run) once the review is confirmed
    # early/late/error_commands and confirm, as in the answers file
    commands: dict[str, Any] = field(default_factory=dict)
    checked: tuple[str, ...] | None = None  # the steps the host check last ran for
    resumes: str = ""  # the interrupted run whose answers these are (wizard/tui/recover.py)

    def step_title(self, step: Any) -> str:
        """The window title: "Step N of M: title", numbered over the selected steps."""
        chosen = [s for s in self.steps if s.name in self.selected]
        n = next((i for i, s in enumerate(chosen, 1) if s is step), 0)
        return f"Step {n} of {len(chosen)}: {step.title}"


@dataclass(frozen=True)
class Page:
    """One page of the flow: when it is shown, and what shows it.

    ``show`` returns "next", "back", "apply" or "goto:STEP" (a plan problem).
    """

    name: str
    show: Callable[[Flow], str]
    when: Callable[[Flow], bool] = lambda _f: True


def pages(steps: list[Any]) -> list[Page]:
    """welcome, the host check, each step (if selected and to be asked), review."""
    def step_page(step: Any) -> Page:
        return Page(step.name, lambda f: step_pages(f, step),
                    lambda f: step.name in f.selected and (
                        step.name in f.ask_steps or not f.answers_given))

    return [Page("welcome", welcome), Page("doctor", host_check),
            *[step_page(s) for s in steps], Page("review", review)]


# ---------------------------------------------------------------- welcome


class Welcome(Window):
    """The steps to run (checkboxes) with Next / Cancel."""

    keys = KEYS_FIRST

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.text = welcome_text(flow.steps)
        self.tree: snack.CheckboxTree | None = None
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form("hostsetup", self.text + "\n\nChoose the steps to run with <Space>.", 1, 3)
        g.add(snack.TextboxReflowed(WIDTH - 4, self.text, maxHeight=9), 0, 0)
        self.tree = snack.CheckboxTree(height=len(self.flow.steps), width=WIDTH - 10)
        for s in self.flow.steps:
            self.tree.append(s.title, s.name, selected=int(s.name in self.flow.selected))
        g.add(self.tree, 0, 1, (0, 1, 0, 0))
        self.bar = snack.ButtonBar(ui.screen, ["Next", "Cancel"])
        g.add(self.bar, 0, 2, (0, 1, 0, 0))
        return g

    def keep(self) -> None:
        if self.tree is not None:
            chosen = set(self.tree.getSelection())
            selected = [s.name for s in self.flow.steps if s.name in chosen]
            if selected != self.flow.selected:
                self.flow.ui.touched = True
            self.flow.selected = selected


def welcome(flow: Flow) -> str:
    """Step selection; preselects what the answers file has (or every step).
    Escape and Cancel leave, after asking."""
    win = Welcome(flow)
    while True:
        result = flow.ui.show(win)
        button = "next" if result == "F12" else (
            win.bar.buttonPressed(result) if win.bar is not None else None)
        if result == "ESC" or button == "cancel":
            flow.ui.quit(always_ask=True)
        elif button == "next":
            if flow.selected:
                return "next"
            flow.ui.message("No step chosen", "Choose at least one step with <Space>.")


# ---------------------------------------------------------------- the host check


def host_check(flow: Flow) -> str:
    """``hostsetup doctor`` for the chosen steps (as answered so far, or their
    defaults), under a 'Please wait' a key stops.  Only when a check fails, a
    window says which: Continue anyway, or Quit (Escape: back to the welcome).
    It runs again when the chosen steps change."""
    from backends.bundle import RealBackends
    from wizard import doctor

    if flow.came_back:
        flow.checked = None
        return "back"
    if flow.checked == tuple(flow.selected):
        return "next"
    flow.checked = tuple(flow.selected)
    target = doctor.from_values(flow.data, "the wizard's answers", flow.selected)
    backends = RealBackends()
    try:
        results = flow.ui.wait("Checking this host (hostsetup doctor)...",
                               lambda: doctor.run(target, backends))
    except WaitCancelled:
        log.info("host check: stopped by the operator")
        return "next"
    finally:
        backends.close()
    for result in results:
        log.info("host check: %s", result.line())
    failed = [r for r in results if r.status == "fail"]
    if not failed:
        return "next"
    text = (f"{len(failed)} of {len(results)} checks failed:\n\n"
            + "\n".join(r.line() for r in failed) + "\n\nThe same checks from a shell: "
            "hostsetup doctor [--answers FILE]. Nothing has been changed.")
    long = len(hanging(text, WIDTH - 2).splitlines()) > MESSAGE_ROWS  # then it scrolls
    win = TextWindow("Host check", text, ["Continue anyway", "Quit"],
                     keys=KEYS_TEXT if long else KEYS_CHECK, rows=MESSAGE_ROWS if long else 0,
                     help_text="hostsetup doctor checked this host, read-only, for the "
                     "chosen steps. Continue anyway: the steps' windows follow (a step whose "
                     "system cannot be reached says so there). Quit: leave, nothing changed.")
    while True:
        result = flow.ui.show(win)
        button = win.pressed(result)
        if result == "ESC":
            flow.checked = None
            return "back"
        if button == "quit":
            raise Cancelled
        if button == "continue anyway":
            return "next"


# ---------------------------------------------------------------- a step


def validate_section(step: Any, questions: list[Any], values: dict[str, Any],
                     facts: Any) -> list[str]:
    """Problems with one section as entered on screen (model, then host checks),
    named by the fields' labels."""
    problems = model_problems(step.Answers, values, questions)
    if problems:
        return problems
    try:
        found = step.validate(step.Answers.model_validate(values), facts)
    except (KeyError, ValueError, TypeError) as exc:  # facts missing: host not read
        return [f"cannot check against the host: {exc}"]
    return [problem_text(p.path, p.message, questions) for p in found]


def discover(flow: Flow, step: Any, values: dict[str, Any]) -> Any:
    """The step's facts, read in a thread under a 'Please wait' that a key stops."""
    from pydantic import ValidationError

    try:
        connection = step.connection(values)
    except ValidationError:
        # Its text would quote the values (a typed password): say it as the
        # connection window does, by label.
        keys = set(step.Connection.model_fields)
        raise ValueError("\n".join(model_problems(step.Answers, values,
                                                   step.connect_questions(), only=keys))) from None
    return flow.ui.wait(f"Reading the host for '{step.title}'...",
                        lambda: step.discover(connection, flow.ctx))


def step_pages(flow: Flow, step: Any) -> str:
    """Connection window, host discovery, then the questions window.

    Coming back from a later page opens the questions window; Back there goes
    to the connection window.  Cancel asks, then leaves.
    """
    from backends.interfaces import BackendError

    ui = flow.ui
    title = flow.step_title(step)
    values = flow.data.setdefault(step.name, {})
    for key, value in defaults(step.Answers).items():
        values.setdefault(key, value)
    connect = step.connect_questions()
    keys = {q.key for q in connect}
    focus = flow.focus.pop(step.name, None)
    stage = 1 if not connect or flow.came_back or (focus is not None and focus not in keys) \
        else 0
    if focus in keys:
        stage = 0
    facts = step.Facts()
    while True:
        if stage == 0:
            button = ask_step(ui, f"{title}: connection", step, connect, values, focus)
            focus = None
            if button == "back":
                return "back"
            problems = model_problems(step.Answers, values, connect, only=keys)
            if problems:
                ui.message("Not accepted", "\n".join(problems))
                continue
        try:
            facts = discover(flow, step, values)
        except WaitCancelled:
            stage = 0 if connect else stage
            if not connect:
                return "back"
            continue
        except Exception as exc:  # noqa: BLE001 - whatever the host says, the form stays
            if not isinstance(exc, (BackendError, ValueError, OSError)):
                log.exception("discover %s", step.name)
            ui.message("Cannot read the host", f"{exc}\n\nCheck the connection settings.")
            if connect:
                stage = 0
                continue
            facts = step.Facts()
        else:
            if step.name not in flow.prefilled:
                flow.prefilled.add(step.name)
                prefill(values, step.current(facts), defaults(step.Answers))
        questions = step.questions(facts)
        while True:
            button = ask_step(ui, title, step, questions, values, focus)
            focus = None
            if button == "back":
                break
            problems = validate_section(step, questions, values, facts)
            if not problems:
                return "next"
            ui.message("Not accepted", "\n".join(problems))
        if not connect:
            return "back"
        stage = 0


# ---------------------------------------------------------------- review


def ask_step(ui: Ui, title: str, step: Any, questions: list[Any], values: dict[str, Any],
             focus: str | None) -> str:
    """One of a step's windows until Next or Back ("next"/"back"); ``values`` takes
    what was entered (an emptied field goes back to its default).  Cancel asks to
    leave; staying opens the window again."""
    while True:
        button, got = ask(ui, title, step.help, questions, values, step.Answers,
                          ["Next", "Back", "Cancel"], focus_key=focus)
        for q in questions:
            values.pop(q.key, None)
        values.update(got)
        if button != "cancel":
            return button
        ui.quit()


def prefill(values: dict[str, Any], current: dict[str, Any], default: dict[str, Any]) -> None:
    """Show what hostsetup already manages on the host (``Step.current``) in the keys
    nothing was answered or entered for (missing, or still the model's default)."""
    for key, value in current.items():
        if key not in values or values[key] == default.get(key):
            values[key] = value


def review_lines(plan_run: Any) -> list[str]:
    """The Review's text: the same as ``hostsetup plan`` prints, wrapped to the window
    (the scrolling text box keeps two columns for its scroll bar)."""
    from wizard.plantext import run_lines

    return run_lines(plan_run, width=WIDTH - 3)


PROBLEM = re.compile(r"^(?P<step>\w+)(?P<path>(?:\.\w+|\[\d+\])*)(?: \(line (?P<line>\d+)\))?: "
                     r"(?P<msg>.*)$", re.S)


def relabel(flow: Flow, text: str) -> str:
    """A runner problem ``ovs_mirror.mirrors[0].output_port (line 9): ...`` told with
    the step's title and the fields' labels (the key path is not on screen)."""
    m = PROBLEM.match(text)
    step = next((s for s in flow.steps if m and s.name == m["step"]), None)
    if m is None or step is None:
        return text
    loc = tuple(int(p) if p.isdigit() else p
                for p in re.findall(r"\w+", m["path"]))
    facts = flow.ctx.facts.get(step.name) or step.Facts()
    questions = step.connect_questions() + step.questions(facts)
    line = int(m["line"]) if m["line"] else None
    return f"{step.title}: " + problem_text(loc, m["msg"], questions, line)


def goto_problem(flow: Flow, problems: list[str], unreachable: str = "") -> str:
    """After a plan problem: the step (and field) at fault, to reopen there.

    A problem names its key path (``ovs_mirror.mirrors[0].output_port (line 9): ...``);
    an ``unreachable`` step reopens at its first connection field.
    """
    for text in problems:
        path = text.split(" ", 1)[0].rstrip(":")
        name, _, rest = path.partition(".")
        if name in flow.data:
            key = rest.split(".", 1)[0].split("[", 1)[0]
            return reopen(flow, name, key)
    step = next((s for s in flow.steps if s.name == unreachable), None)
    if step is not None:
        return reopen(flow, step.name, next((q.key for q in step.connect_questions()), ""))
    return "back"


def reopen(flow: Flow, name: str, key: str) -> str:
    """Ask step ``name`` (even if answered), with the cursor on ``key``."""
    flow.ask_steps.add(name)
    if key:
        flow.focus[name] = key
    return f"goto:{name}"


def review(flow: Flow) -> str:
    """Check and plan every selected step; show every planned change.

    Apply is reached only by the Apply button and a confirmation (No focused);
    F12 does nothing here, Escape is Back.
    """
    from wizard import commands
    from wizard.answers import AnswersError, validate
    from wizard.runner import Run, check, phase1_exit

    ui = flow.ui
    doc = {"version": 1, **flow.commands,
           **{n: flow.data.get(n, {}) for n in flow.selected}}
    try:
        answers = validate(doc)
    except AnswersError as exc:
        ui.message("Answers not accepted", "\n".join(relabel(flow, p) for p in exc.problems))
        return goto_problem(flow, exc.problems)
    answers.raw = flow.raw
    plan_run = Run("apply")
    try:
        prepared = ui.wait("Planning: reading the host...",
                           lambda: check(answers, flow.ctx, plan_run))
    except WaitCancelled:
        return "back"
    if phase1_exit(plan_run) is not None:
        problems = plan_run.problems()
        ui.message("Cannot plan", "\n".join(relabel(flow, p) for p in problems)
                   + "\n\nThe window at fault opens next.")
        unreachable = next((r.name for r in plan_run.steps if r.status == "unreachable"), "")
        return goto_problem(flow, problems, unreachable)
    # The commands around the run are shown where they run ("run: ..."), never run here.
    plan_run.steps[:0] = commands.planned(answers, (commands.EARLY,))
    commands.after(answers, "plan", plan_run, 0)
    pending = sum(len(r.changes) for r in plan_run.steps)
    win = TextWindow("Review", "\n".join(review_lines(plan_run)),
                     ["Apply" if pending else "Finish", "Back", "Cancel"],
                     help_text="Every change that Apply will make, per step, with each "
                     "setting's value before -> after. Lines marked ! delete, restart or add "
                     "a second device; lines marked ~ can cut the connection to the host: "
                     "after Apply you are asked to keep them, and without an answer in time "
                     "they are reverted. Nothing has been changed yet. PgUp/PgDn and the "
                     "arrows scroll; Tab reaches the buttons; Apply asks for confirmation.")
    while True:
        result = ui.show(win)
        button = "back" if result == "ESC" else win.pressed(result)
        if button == "back":
            return "back"
        if button == "cancel":
            ui.quit()
        elif button == "finish":
            flow.planned = (answers, prepared, plan_run)
            return "apply"
        elif button == "apply" and ui.confirm(
                "Apply?", f"Apply {pending} change(s) to host {plan_run.host}?\n\n"
                "This changes the host.", yes="Yes, apply", no="No"):
            flow.planned = (answers, prepared, plan_run)
            return "apply"


# ---------------------------------------------------------------- apply


class Progress(Window):
    """Applying: the running step, a bar and the elapsed time, refreshed on the
    timer while a thread applies.  Ctrl-C returns to the caller (it asks)."""

    keys = KEYS_APPLY
    ctrl_c = "return"

    def __init__(self, total: int, thread: threading.Thread) -> None:
        self.total, self.thread = max(total, 1), thread
        self.started = time.monotonic()
        self.state: dict[str, Any] = {"i": 0, "frac": 0.0, "text": "starting"}
        self.stopping = False
        self.label: snack.Label | None = None
        self.scale: snack.Scale | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = snack.GridForm(ui.screen, "Applying", 1, 2)
        self.label = snack.Label(self._line())
        self.scale = snack.Scale(WIDTH - 10, 100)
        self.scale.set(self._percent())
        g.add(self.label, 0, 0)
        g.add(self.scale, 0, 1, (0, 1, 0, 0))
        return g

    def _percent(self) -> int:
        st = self.state
        return int((st["i"] + max(0.0, min(st["frac"], 1.0))) / self.total * 100)

    def _line(self) -> str:
        """The running step (or what it reports) and the elapsed seconds."""
        text = ("stopping after this step: " if self.stopping else "") + str(self.state["text"])
        elapsed = f"{int(time.monotonic() - self.started)} s"
        return text[: WIDTH - 18].ljust(WIDTH - 17) + elapsed.rjust(7)

    def tick(self, ui: Ui, form: snack.GridFormHelp) -> Any:
        if not self.thread.is_alive():
            return "done"
        if self.label is not None and self.scale is not None:
            self.scale.set(self._percent())
            self.label.setText(self._line())
            form.draw()
            ui.screen.refresh()
        return None


def apply_with_progress(flow: Flow, prepared: list[Any]) -> int:
    """Apply in a worker thread under the progress window; Ctrl-C asks, then stops
    after the running step (the rest "not run").  The commands around the run
    (``early_commands`` ...) run as ``hostsetup apply`` runs them."""
    from wizard import commands
    from wizard.runner import apply_all, not_run

    answers, _prepared, plan_run = flow.planned

    ctx = flow.ctx
    stop, asking = threading.Event(), threading.Event()
    box: dict[str, Any] = {"code": EXIT_FAILED}

    def should_stop() -> bool:
        # While the operator is asked, the next step does not start (bounded).
        deadline = time.monotonic() + ASK_WAIT
        while asking.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return stop.is_set()

    def steps_and_commands() -> int:
        steps = [r for r in plan_run.steps if r.name not in commands.LISTS]
        plan_run.steps[:] = []  # the Review's listing of the commands goes
        code = commands.before(answers, "apply", plan_run)
        plan_run.steps += steps
        if code is None:
            code = apply_all(prepared, ctx, on_step, should_stop=should_stop)
        else:
            code = not_run(prepared, code)
        return commands.after(answers, "apply", plan_run, code)

    def work() -> None:
        try:
            box["code"] = steps_and_commands()
        except Exception:  # noqa: BLE001 - the run fails, the wizard does not
            log.exception("apply failed")
            box["code"] = EXIT_FAILED

    thread = threading.Thread(target=work, daemon=True, name="hostsetup-apply")
    win = Progress(len(prepared), thread)

    def show(frac: float, text: str) -> None:  # called by the worker: no drawing here
        win.state.update(frac=frac, text=text)

    def on_step(i: int, step: Any) -> None:
        win.state.update(i=i, frac=0.0, text=step.title)

    ctx.progress = show
    thread.start()
    while (result := flow.ui.show(win)) != "done":
        if result != "CTRL-C" or win.stopping:  # only Ctrl-C means something here
            continue
        asking.set()
        try:
            if flow.ui.confirm("Stop?", "Stop after the running step? The steps after it "
                               "are not run; the summary says what was applied.",
                               yes="Stop", no="Go on", ctrl_c="yes"):
                win.stopping = True
                stop.set()
        finally:
            asking.clear()
    thread.join()
    return int(box["code"])


class KeepWindow(Window):
    """"Keep these changes? Reverting in NN s": the countdown of a confirmation window
    (wizard/confirm.py), live while the keys work; it closes itself when the window
    ends otherwise (``hostsetup confirm``, the probe, the deadline)."""

    keys = KEYS_KEEP
    ctrl_c = "return"

    def __init__(self, waiter: Any, changes: list[str]) -> None:
        self.waiter, self.changes = waiter, changes
        self.label: snack.Label | None = None
        self.bar: snack.ButtonBar | None = None

    def _line(self) -> str:
        return f"  Reverting in {self.waiter.remaining()} s unless you keep them."

    def build(self, ui: Ui) -> snack.GridFormHelp:
        text = ("These changes can cut the connection to this host:\n"
                + "\n".join(f"  ~ {c}" for c in self.changes[:6])
                + (f"\n  ... and {len(self.changes) - 6} more" if len(self.changes) > 6 else "")
                + f"\n\nIf you can read this, keep them. Or from a new connection: "
                f"hostsetup confirm {self.waiter.record.run}")
        g = ui.form("Keep these changes?", text, 1, 3)
        g.add(snack.TextboxReflowed(WIDTH - 4, text, maxHeight=MESSAGE_ROWS), 0, 0)
        self.label = snack.Label(self._line().ljust(WIDTH - 4))
        g.add(self.label, 0, 1, (0, 1, 0, 0))
        self.bar = snack.ButtonBar(ui.screen, ["Keep", "Revert now"])
        g.add(self.bar, 0, 2, (0, 1, 0, 0))
        return g

    def focus(self) -> Any:
        return self.bar.list[0][0] if self.bar is not None else None

    def tick(self, ui: Ui, form: snack.GridFormHelp) -> Any:
        decided = self.waiter.poll()
        if decided is not None:
            return decided
        if self.label is not None:
            self.label.setText(self._line().ljust(WIDTH - 4))
            form.draw()
            ui.screen.refresh()
        return None


def keep_or_revert(flow: Flow, tracker: Any) -> Any:
    """After Apply, when risky operations were carried out: the :class:`KeepWindow`
    until Keep (or another confirmation) or the deadline; then revert if not kept.
    Returns the :class:`wizard.confirm.Outcome`, or None (nothing risky)."""
    import termios

    from wizard import confirm

    record, window = tracker.record, tracker.window
    if record is None or window is None or not tracker.risky:
        return None
    waiter = confirm.Waiter(record, window.within, window.probe)
    # Reverts in time even if this terminal goes away; a unit of its own under systemd,
    # since the console wizard's unit takes all its processes along when it ends.
    confirm.start_keeper(record, own_unit=True)
    with contextlib.suppress(termios.error):
        termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)  # keys typed before count not
    win = KeepWindow(waiter, [op.change.describe() for _s, op in tracker.risky])
    decided = None
    while decided is None:
        result = flow.ui.show(win)
        button = win.bar.buttonPressed(result) if win.bar is not None else None
        if result in ("kept", "revert"):
            decided = result
        elif button == "keep" and waiter.keep("Keep pressed in the wizard"):
            decided, waiter.how = "kept", "Keep pressed in the wizard"
        elif button == "revert now" or result == "CTRL-C":
            decided = waiter.give_up("reverted at the operator's request")
        # Escape, F12 or a late Keep: the window stays (its next tick tells the end).
    if decided == "kept":
        record.release()
        return confirm.Outcome(record.run, window.within, confirm.probe_text(window.probe),
                               kept=True, how=waiter.how)
    busy = snack.GridForm(flow.ui.screen, "Reverting", 1, 1)  # bounded by each step's timeout
    busy.add(snack.Label(f"{waiter.how}: reverting...".ljust(WIDTH - 4)), 0, 0)
    busy.draw()
    flow.ui.screen.refresh()
    try:
        return confirm.revert(record, flow.ctx.backends)
    finally:
        record.release()
        flow.ui.screen.popWindow()


def revert_expired(flow: Flow) -> None:
    """At start: revert the risky changes of earlier runs whose confirmation window
    closed while their process was gone (wizard/confirm.py), and say so."""
    from wizard import confirm

    state = confirm.state_dir()
    if not confirm.expired_pending(state):
        return
    busy = snack.GridForm(flow.ui.screen, "Reverting", 1, 1)
    busy.add(snack.Label("Reverting unconfirmed changes of an earlier run...".ljust(WIDTH - 4)),
             0, 0)
    busy.draw()
    flow.ui.screen.refresh()
    try:
        outcomes = confirm.settle(state, flow.ctx.backends, log.warning, wait=False)
    finally:
        flow.ui.screen.popWindow()
    flow.ui.message("Unconfirmed changes reverted", "\n".join(
        f"Run {o.run}: {o.text()}" + "".join(f"\n  ! {e}" for e in o.errors)
        for o in outcomes))


def summary(flow: Flow, run_: Any, log_path: Path, report: Path | None,
            head: tuple[str, ...] = ()) -> None:
    """What was done, per step; any key closes it (the exit code is the run's)."""
    from wizard.runner import STATUS_TEXT

    lines = list(head)
    for res in run_.steps:
        lines.append(f"{res.name}: {STATUS_TEXT.get(res.status, res.status)}")
        lines += [f"  {n}" for n in res.notes] + [f"  ! {e}" for e in res.errors]
    lines += ["", "Log:", f"  {log_path}", "Report:", f"  {report or '(none: use --report FILE)'}"]
    win = TextWindow("Summary", "\n".join(lines), ["OK"], keys=KEYS_SUMMARY, rows=TEXT_ROWS,
                     help_text="What was done, per step.")
    win.ctrl_c = "return"
    win.hotkeys = ("ENTER",)  # the text has the focus (it scrolls): Enter closes too
    flow.ui.show(win)


# ---------------------------------------------------------------- start-up


def answers_problems(flow: Flow, loaded: Loaded, path: Path) -> None:
    """Show what is wrong in the answers file, with lines and field labels; offer to
    drop unknown keys.  Raises :class:`Cancelled` if the operator leaves."""
    from wizard.session import drop_keys

    by_step = {s.name: s for s in flow.steps}

    def text(issue: Any) -> str:
        step = by_step.get(str(issue.loc[0])) if issue.loc else None
        if step is None:
            return problem_text(issue.loc, issue.message, [], issue.line)
        questions = step.connect_questions() + step.questions(step.Facts())
        return f"{step.title}: " + problem_text(issue.loc[1:], issue.message, questions,
                                                issue.line)

    for issue in loaded.problems:  # each step asked opens at its first field at fault
        if len(issue.loc) > 1 and isinstance(issue.loc[1], str):
            flow.focus.setdefault(str(issue.loc[0]), issue.loc[1])
    lines = [text(i) for i in loaded.problems]
    for name, entry in loaded.focus.items():  # interactive: section.key
        flow.focus.setdefault(name, entry.partition(".")[2])
    lines += [f"interactive: '{n}' is neither '*', a step ({', '.join(by_step)}) nor "
              "step.key; ignored" for n in loaded.bad_interactive]
    if lines:
        flow.ui.message("Answers file: problems", f"{path}:\n" + "\n".join(lines) +
                        "\n\nThe steps concerned are asked.")
    if loaded.unknown:
        win = TextWindow("Answers file: unknown keys", f"{path} has keys no step knows:\n" +
                         "\n".join(f"  {text(i)}" for i in loaded.unknown) +
                         "\n\nDrop them (the file is not changed) or leave?",
                         ["Drop them", "Leave"], rows=0)
        while True:
            result = flow.ui.show(win)
            button = win.pressed(result)
            if button == "drop them":
                drop_keys(flow.data, [i.loc for i in loaded.unknown])
                break
            if button == "leave" or result == "ESC":
                raise Cancelled


def run_wizard(args: argparse.Namespace) -> int:
    """The interactive wizard; returns the exit code."""
    ui = Ui()
    # The first screen is up: only now load the steps (pydantic & co).
    preview = snack.GridForm(ui.screen, "hostsetup", 1, 1)
    preview.add(snack.Label("hostsetup prepares this virtualization host: starting..."), 0, 0)
    preview.draw()
    ui.screen.refresh()
    flow: Flow | None = None
    last_words = ""  # said on the terminal once newt has given it back
    try:
        from steps import REGISTRY

        ui.screen.popWindow()
        flow = Flow(ui, list(REGISTRY), selected=[s.name for s in REGISTRY])
        return _wizard(flow, args)
    except Cancelled:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: keep the answers, say where
        last_words = internal_error(ui, flow, args, exc)
        return EXIT_FAILED
    finally:
        ui.finish()
        if last_words:
            print(last_words, file=sys.stderr)


def internal_error(ui: Ui, flow: Flow | None, args: argparse.Namespace, exc: Exception) -> str:
    """Log the traceback, offer to save what was typed (secrets as references);
    returns the line for the terminal."""
    from wizard.session import record_data

    log.exception("internal error")
    where = str(args.log or getattr(flow, "log_path", None) or "the log")
    text = (f"hostsetup hit an internal error: {type(exc).__name__}. Nothing more will "
            f"be changed. The traceback is in {where}.")
    save = args.record or Path(f"hostsetup-answers-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    try:
        if flow is not None and flow.data and ui.confirm(
                "Internal error", f"{text}\n\nSave the answers entered so far to {save} "
                "(mode 0600, secrets as references)?", yes="Save", no="Don't save"):
            record_data(save.resolve(), {"version": 1, **flow.data},
                        "# Saved after an internal error: check it before replaying.\n")
    except Exception:  # noqa: BLE001 - the screen itself may be what failed
        log.exception("cannot offer to save the answers")
    return f"hostsetup: internal error: {type(exc).__name__} (traceback in {where})"


def _wizard(flow: Flow, args: argparse.Namespace) -> int:
    from backends.bundle import RealBackends
    from steps.base import Context
    from wizard import confirm
    from wizard.journal import JournalError
    from wizard.reportshow import run_from_dict
    from wizard.runner import reserve
    from wizard.session import Unusable, default_log, load_answers, record, setup_logging
    from wizard.session import write_report as save_report
    from wizard.tui import recover

    ui = flow.ui
    log_path = args.log or default_log()
    if args.log is None:
        setup_logging(log_path)
    flow.log_path = log_path
    log.info("wizard started")
    if args.answers:
        try:
            loaded = load_answers(args.answers)
        except Unusable as exc:
            ui.message("Answers file not usable", str(exc))
            return EXIT_INVALID
        flow.raw, flow.data, flow.ask_steps = loaded.raw, loaded.data, loaded.ask
        flow.commands = loaded.commands
        flow.selected, flow.answers_given = loaded.selected, True
        answers_problems(flow, loaded, args.answers)
    backends = RealBackends()
    flow.ctx = Context(backends=backends, log=log.info)
    try:
        code = recover.earlier_run(flow, backends)
        if code is not None:
            return code
        revert_expired(flow)
        index = 0
        while True:
            shown = [p for p in pages(flow.steps) if p.when(flow)]
            page = shown[min(index, len(shown) - 1)]
            choice = page.show(flow)
            flow.came_back = choice == "back"
            if choice == "apply":
                break
            if choice.startswith("goto:"):
                shown = [p for p in pages(flow.steps) if p.when(flow)]
                index = next(i for i, p in enumerate(shown) if p.name == choice[5:])
            elif choice == "back":
                index = max(0, index - 1)
            else:
                index += 1
        answers, prepared, plan_run = flow.planned
        if args.record:
            record(args.record, answers)
        try:
            journal = recover.start(flow, answers)
        except JournalError as exc:
            ui.message("Run journal", f"{exc}\n\nNothing was changed.")
            return EXIT_USAGE
        # The confirmation window's tracker passes every operation on to the journal.
        tracker = confirm.Tracker.of(journal, None, answers, confirm.DEFAULT_WITHIN)
        if any(r.risky() for r in plan_run.steps):
            try:
                confirm.folder(confirm.state_dir())  # refused before anything changes
            except confirm.ConfirmError as exc:
                ui.message("Cannot apply", f"Changes marked ~ need hostsetup's state "
                           f"directory: {exc}\n\nNothing was changed.")
                return EXIT_FAILED
        flow.ctx.journal = tracker
        # From here on the exit code is the run's, whatever key closes the summary.
        code = reserve(prepared, flow.ctx)  # room in the journal, or nothing is applied
        plan_run.exit_code = apply_with_progress(flow, prepared) if code is None else code
        outcome = keep_or_revert(flow, tracker)
        plan_run.finished = time.time()
        head: tuple[str, ...] = ()
        if outcome is not None and not outcome.kept:
            plan_run.exit_code = EXIT_FAILED
        report = recover.report(journal, plan_run)
        if outcome is not None:
            report["confirm"] = outcome.as_dict()
            head = (f"Changes marked ~: {outcome.text()}", *(f"  ! {e}" for e in outcome.errors),
                    "")
        save_report(args.report, report)
        summary(flow, run_from_dict(report), log_path, args.report, head)  # as the journal has it
        return int(plan_run.exit_code)
    finally:
        backends.close()


