"""The wizard on screen: a stack of newt/snack modal windows.

welcome -> per step: connection, then its questions -> review -> apply
(progress) -> summary.  Every step is rendered generically from its
``questions()``; each question takes one row (a choice opens a picker), so
any step fits in 80x24.  Ctrl-C (a hotkey: newt turns ISIG off) and Cancel
restore the terminal and exit 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import snack

from wizard.exits import EXIT_INTERRUPTED, EXIT_INVALID

# newt keeps the terminal in raw mode, so Ctrl-C arrives as a key, not SIGINT.
snack.hotkeys["CTRL-C"] = 3
snack.hotkeys[3] = "CTRL-C"

HELP_LINE = " <Tab> move | <Space> toggle | <Enter> press | <F1> help | <F12> next | ^C quit"
WIDTH = 70  # inner width of the windows: fits 80 columns with borders
TEXT_ROWS = 12  # scrolling text in review/summary: the window fits 24 rows
WELCOME = (
    "hostsetup prepares this virtualization host: its services, Open vSwitch "
    "port mirrors, vSphere networking and ivshmem devices for VMs.\n\n"
    "Each step asks its questions, then you review every planned change before "
    "anything is applied. Nothing changes until you press Apply on the review "
    "screen. Back keeps what you entered; Cancel leaves without changes."
)


class Cancelled(Exception):
    """The operator chose Cancel or pressed Ctrl-C."""


@dataclass
class Ui:
    """The screen and the per-window help texts (shown on F1)."""

    screen: snack.SnackScreen
    helps: dict[str, str] = field(default_factory=dict)
    # The values of the step window whose record list is open: pickers inside a
    # record offer the records answered under another key (Question.refs).
    section: dict[str, Any] = field(default_factory=dict)

    def form(self, title: str, help_text: str, cols: int, rows: int) -> snack.GridFormHelp:
        tag = f"help{len(self.helps)}"
        self.helps[tag] = help_text
        g = snack.GridFormHelp(self.screen, title, tag, cols, rows)
        g.addHotKey("F12")
        g.addHotKey("CTRL-C")
        return g

    def show_help(self, _screen: Any, tag: Any) -> None:
        """F1: the window's help, scrollable.  Runs inside newt's form loop, so
        it must not raise: any key that closes it (Ctrl-C too) just closes it."""
        text = paragraphs(self.helps.get(str(tag)) or "No help for this screen.")
        g = snack.GridForm(self.screen, "Help", 1, 2)
        g.addHotKey("CTRL-C")
        g.addHotKey("ESC")
        text_and_buttons(g, self.screen, text, ["OK"])
        g.runOnce()

    def message(self, title: str, text: str) -> None:
        """A modal message with OK (Ctrl-C still quits)."""
        g = self.form(title, text, 1, 2)
        g.add(snack.TextboxReflowed(WIDTH - 4, text, maxHeight=16), 0, 0)
        g.add(snack.ButtonBar(self.screen, ["OK"]), 0, 1, (0, 1, 0, 0))
        run(g)

    def busy(self, text: str) -> None:
        """Draw a 'working' window (popped by the caller)."""
        g = snack.GridForm(self.screen, "Please wait", 1, 1)
        g.add(snack.Label(text[: WIDTH - 4]), 0, 0)
        g.draw()
        self.screen.refresh()


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


def run(g: snack.GridFormHelp) -> Any:
    """Run a form once; Ctrl-C raises :class:`Cancelled`; F12 means Next."""
    result = g.runOnce()
    if result == "CTRL-C":
        raise Cancelled
    return result


def pressed(bar: snack.ButtonBar, result: Any) -> str | None:
    """The button pressed ('next' for F12)."""
    return "next" if result == "F12" else bar.buttonPressed(result)


# ---------------------------------------------------------------- questions


def _list_field(model: Any, key: str) -> bool:
    info = getattr(model, "model_fields", {}).get(key)
    ann = getattr(info, "annotation", None)
    return typing.get_origin(ann) is list or list in typing.get_args(ann)


def _record_model(model: Any, key: str) -> Any:
    ann = model.model_fields[key].annotation
    args = typing.get_args(ann)
    return args[0] if args else None


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a timeout of 30 seconds reads 30, not 30.0
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


class Row:
    """One question on screen: a label and a one-line widget.

    newt frees a form's widgets with the form, so widgets are made afresh for
    every window (:meth:`build`); the row keeps the value in between.
    """

    def __init__(self, ui: Ui, q: Any, value: Any, model: Any) -> None:
        self.ui, self.q, self.value, self.model = ui, q, value, model
        self.widget: Any = None
        self.picker = q.kind == "records" or (q.kind in ("choice", "multi")
                                              and bool(q.choices or q.refs))

    def build(self) -> tuple[Any, Any]:
        """Fresh label and widget showing the current value."""
        if self.q.kind == "yesno":
            self.widget = snack.Checkbox("", isOn=int(bool(self.value)))
        elif self.picker:
            self.widget = snack.CompactButton(self._caption())
        else:
            self.widget = snack.Entry(36, _show(self.value), password=int(self.q.kind == "secret"))
        return snack.Label(self.q.label[:26]), self.widget

    def _caption(self) -> str:
        if self.q.kind == "records":
            n = len(self.value or [])
            return f"{n} {'entry' if n == 1 else 'entries'}: edit..."
        return (_show(self.value) or "(none)")[:34] + " ..."

    def activate(self) -> None:
        """The row's button was pressed: open its picker or record list."""
        if self.q.kind == "choice":
            self.value = pick_one(self.ui, self.q, self.value)
        elif self.q.kind == "multi":
            self.value = pick_many(self.ui, self.q, self.value or [])
        else:
            self.value = edit_records(self.ui, self.q, list(self.value or []),
                                      _record_model(self.model, self.q.key))

    def capture(self) -> None:
        """Keep what the widget shows (before its form is freed)."""
        if isinstance(self.widget, snack.Checkbox):
            self.value = bool(self.widget.selected())
        elif isinstance(self.widget, snack.Entry):
            text = self.widget.value().strip()
            if text == "":
                self.value = None
            elif self.q.kind == "secret":
                self.value = secret_reference(self.q.key, text)
            elif _list_field(self.model, self.q.key) or isinstance(self.value, list):
                self.value = [v.strip() for v in text.split(",") if v.strip()]
            else:
                self.value = text


def defaults(model: Any) -> dict[str, Any]:
    """The default of every optional field of an answers model (shown prefilled)."""
    out = {}
    for key, info in model.model_fields.items():
        if not info.is_required():
            value = info.get_default(call_default_factory=True)
            if value is not None:
                out[key] = value
    return out


def secret_reference(key: str, text: str) -> str:
    """A secret typed in clear stays in this process's environment only.

    The answers (and a recorded file) hold the reference ``env:NAME``.
    """
    from steps.base import SECRET_PATTERN

    if SECRET_PATTERN.match(text):
        return text
    name = "HOSTSETUP_SECRET_" + "".join(c if c.isalnum() else "_" for c in key).upper()
    os.environ[name] = text
    return f"env:{name}"


def ask(ui: Ui, title: str, help_text: str, questions: list[Any], values: dict[str, Any],
        model: Any, buttons: list[str]) -> tuple[str, dict[str, Any]]:
    """A window of one-row questions; returns the button and the entered values."""
    rows = [Row(ui, q, values.get(q.key), model) for q in questions]
    full_help = help_text + "".join(f"\n\n{q.label}: {q.help}" for q in questions if q.help)
    hit: Row | None = None
    while True:
        g = ui.form(title, full_help, 1, 2)
        grid = snack.Grid(2, len(rows))
        for i, row in enumerate(rows):
            label, widget = row.build()
            grid.setField(label, 0, i, (0, 0, 1, 0), anchorLeft=1)
            grid.setField(widget, 1, i, anchorLeft=1)
        g.add(grid, 0, 0)
        bar = snack.ButtonBar(ui.screen, buttons)
        g.add(bar, 0, 1, (0, 1, 0, 0), growx=1)
        if hit is not None:  # back from a picker: focus the row it came from
            g.create()
            g.setCurrent(hit.widget)
        result = run(g)
        for row in rows:
            row.capture()
        hit = next((r for r in rows if r.picker and r.widget is result), None)
        if hit is not None:
            if hit.q.kind == "records":
                ui.section = {r.q.key: r.value for r in rows}
            hit.activate()
            continue
        choice = pressed(bar, result) or "next"
        return choice, {r.q.key: r.value for r in rows if r.value is not None}


def text_and_buttons(g: snack.GridFormHelp, screen: snack.SnackScreen, text: str,
                     buttons: list[str]) -> snack.ButtonBar:
    """Fill a 1x2 form: a scrolling text, then a button bar with the focus on its first."""
    g.add(snack.Textbox(WIDTH, TEXT_ROWS, text, scroll=1, wrap=1), 0, 0)
    bar = snack.ButtonBar(screen, buttons)
    g.add(bar, 0, 1, (0, 1, 0, 0))
    g.create()  # newt can focus only a widget already in the form
    g.setCurrent(bar.list[0][0])
    return bar


def text_window(ui: Ui, title: str, help_text: str, lines: list[str], buttons: list[str]) -> str:
    """A scrolling text with a button bar, focus on the first button."""
    g = ui.form(title, help_text, 1, 2)
    bar = text_and_buttons(g, ui.screen, "\n".join(lines), buttons)
    return pressed(bar, run(g)) or buttons[0].lower()


def choice_items(ui: Ui, q: Any) -> list[tuple[str, Any]]:
    """A picker's (text, value) items: the host's choices with their state
    (``choice_notes``), then what this run creates (``refs``) marked "(new)"."""
    notes = dict(q.choice_notes)
    items = [(f"{c}  ({notes[c]})" if c in notes else str(c), c) for c in q.choices]
    answered = (ui.section.get(q.refs) or []) if q.refs else []
    for rec in answered:
        name = rec.get("name") if isinstance(rec, dict) else None
        if name and rec.get("state") != "absent" and name not in q.choices:
            items.append((f"{name} (new)", name))
    return items


def pick_one(ui: Ui, q: Any, current: Any) -> Any:
    items = choice_items(ui, q) if q.required else [("(none)", None), *choice_items(ui, q)]
    values = [v for _t, v in items]
    default = values.index(current) if current in values else 0
    button, idx = snack.ListboxChoiceWindow(
        ui.screen, q.label, q.help or "Pick one with the arrow keys, then OK.",
        [t for t, _v in items], buttons=["OK", "Cancel"], width=50,
        height=min(10, len(items)), scroll=1, default=default, help=None)
    if button == "cancel":
        return current
    return values[idx]


def pick_many(ui: Ui, q: Any, current: list[Any]) -> list[Any]:
    items = choice_items(ui, q)
    g = ui.form(q.label, q.help or "Space toggles an item.", 1, 3)
    tree = snack.CheckboxTree(height=min(12, max(3, len(items))), scroll=1, width=50)
    for text, choice in items:
        tree.append(text, choice, selected=int(choice in current))
    g.add(snack.TextboxReflowed(50, q.help or "Space toggles an item.", maxHeight=4), 0, 0)
    g.add(tree, 0, 1, (0, 1, 0, 0))
    bar = snack.ButtonBar(ui.screen, ["OK", "Cancel"])
    g.add(bar, 0, 2, (0, 1, 0, 0))
    if pressed(bar, run(g)) == "cancel":
        return current
    return list(tree.getSelection())


def edit_records(ui: Ui, q: Any, records: list[dict[str, Any]], model: Any) -> list[Any]:
    """The list of records (e.g. several mirrors): Add / Edit / Delete / Done.

    Enter on a record edits it.  A record is checked with the whole step on Next.
    """
    keys = {f.key for f in q.fields}
    while True:
        g = ui.form(q.label, q.help or "Add, edit or delete entries.", 1, 2)
        box = snack.Listbox(height=8, scroll=1, width=60, returnExit=1)
        for i, rec in enumerate(records):
            box.append(_record_label(q, rec, i), i)
        if not records:
            box.append("(none yet: Add one)", -1)
        g.add(box, 0, 0)
        bar = snack.ButtonBar(ui.screen, ["Add", "Edit", "Delete", "Done"])
        g.add(bar, 0, 1, (0, 1, 0, 0))
        result = run(g)
        choice = "edit" if result is box else pressed(bar, result) or "done"
        current = box.current() if records else -1
        if choice in ("done", "next"):
            return records
        if choice == "delete" and current >= 0:
            records.pop(current)
        elif choice == "add" or (choice == "edit" and current >= 0):
            start = records[current] if choice == "edit" else defaults(model)
            button, got = ask(ui, q.label, q.help, list(q.fields), start, model, ["OK", "Cancel"])
            if button == "cancel":
                continue
            # Keys this window does not show are kept as they were.
            rec = {**{k: v for k, v in start.items() if k not in keys}, **got}
            if choice == "edit":
                records[current] = rec
            else:
                records.append(rec)


def _record_label(q: Any, rec: dict[str, Any], i: int) -> str:
    head = str(rec.get(q.summary or "name", f"#{i + 1}"))
    rest = ", ".join(f"{k}={_show(v)}" for k, v in rec.items() if k != (q.summary or "name"))
    return f"{head}: {rest}"[:58]


# ---------------------------------------------------------------- the flow


@dataclass
class Flow:
    """What the wizard has gathered so far."""

    ui: Ui
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: Any = None
    ask_steps: set[str] = field(default_factory=set)
    selected: list[str] = field(default_factory=list)
    prefilled: set[str] = field(default_factory=set)  # steps given the host's current state


def welcome(flow: Flow, steps: list[Any]) -> str:
    """Step selection; preselects what the answers file has (or every step)."""
    ui = flow.ui
    g = ui.form("hostsetup", WELCOME + "\n\nChoose the steps to run with <Space>.", 1, 3)
    g.add(snack.TextboxReflowed(WIDTH - 4, WELCOME, maxHeight=9), 0, 0)
    tree = snack.CheckboxTree(height=len(steps), width=WIDTH - 10)
    for s in steps:
        tree.append(s.title, s.name, selected=int(s.name in flow.selected))
    g.add(tree, 0, 1, (0, 1, 0, 0))
    bar = snack.ButtonBar(ui.screen, ["Next", "Cancel"])
    g.add(bar, 0, 2, (0, 1, 0, 0))
    choice = pressed(bar, run(g))
    flow.selected = [n for n in (s.name for s in steps) if n in tree.getSelection()]
    return choice or "next"


def validate_section(step: Any, values: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Problems with one section as entered on screen (model, then host checks)."""
    from pydantic import ValidationError

    from wizard.answers import errors_of, located

    try:
        model = step.Answers.model_validate(values)
    except ValidationError as exc:
        return [str(p) for p in errors_of(exc, None, (step.name,))]
    return [str(p) for p in located(step.validate(model, facts), step.name, None)]


def discover(ui: Ui, step: Any, values: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """The step's facts, read under a 'Please wait' window."""
    ui.busy(f"Reading the host for '{step.title}'...")
    try:
        return step.discover(values, ctx)
    finally:
        ui.screen.popWindow()


def step_pages(flow: Flow, step: Any, ctx: Any, backwards: bool = False) -> str:
    """Connection window, host discovery, then the questions window.

    Coming back from a later page (``backwards``) opens the questions window.
    """
    from backends.interfaces import BackendError

    values = flow.data.setdefault(step.name, {})
    for key, value in defaults(step.Answers).items():
        values.setdefault(key, value)
    stage = 1 if backwards or not step.connect_questions() else 0
    while True:
        if stage == 0:
            button, got = ask(flow.ui, f"{step.title}: connection", step.help,
                              step.connect_questions(), values, step.Answers,
                              ["Next", "Back", "Cancel"])
            if button != "next":
                return button
            values.update(got)
        try:
            facts = discover(flow.ui, step, values, ctx)
        except (BackendError, ValueError) as exc:
            flow.ui.message("Cannot read the host", f"{exc}\n\nCheck the connection settings.")
            if stage == 0:
                continue
            facts = {}
        else:
            if step.name not in flow.prefilled:
                flow.prefilled.add(step.name)
                prefill(values, step.current(facts), defaults(step.Answers))
        questions = step.questions(facts)
        button, got = ask(flow.ui, step.title, step.help, questions, values, step.Answers,
                          ["Next", "Back", "Cancel"])
        for q in questions:  # an emptied field goes back to its default
            values.pop(q.key, None)
        values.update(got)
        if button == "back":
            if not step.connect_questions():
                return "back"
            stage = 0
            continue
        if button != "next":
            return button
        problems = validate_section(step, values, facts)
        if not problems:
            return "next"
        flow.ui.message("Not accepted", "\n".join(problems))
        stage = 1


def prefill(values: dict[str, Any], current: dict[str, Any], default: dict[str, Any]) -> None:
    """Show what hostsetup already manages on the host (``Step.current``) in the keys
    nothing was answered or entered for (missing, or still the model's default)."""
    for key, value in current.items():
        if key not in values or values[key] == default.get(key):
            values[key] = value


def review(flow: Flow, ctx: Any) -> tuple[str, Any, Any]:
    """Check and plan every selected step; show every planned change."""
    from wizard.answers import AnswersError, validate
    from wizard.runner import Run, check, phase1_exit

    doc = {"version": 1, **{n: flow.data[n] for n in flow.selected}}
    try:
        answers = validate(doc)
    except AnswersError as exc:
        flow.ui.message("Answers not accepted", "\n".join(exc.problems))
        return "back", None, None
    answers.raw = flow.raw
    plan_run = Run("apply")
    flow.ui.busy("Planning: reading the host...")
    prepared = check(answers, ctx, plan_run)
    flow.ui.screen.popWindow()
    if phase1_exit(plan_run) is not None:
        # Ask the steps that could not be planned, even if they were answered.
        flow.ask_steps.update(r.name for r in plan_run.steps if r.errors)
        flow.ui.message("Cannot plan", "\n".join(plan_run.problems()))
        return "back", None, None
    lines = review_lines(plan_run)
    pending = any(r.changes for r in plan_run.steps)
    choice = text_window(flow.ui, "Review", "Every change that Apply will make, per step, "
                         "with each setting's value before -> after. Lines marked ! delete, "
                         "restart or add a second device. Nothing has been changed yet.", lines,
                         ["Apply" if pending else "Finish", "Back", "Cancel"])
    if choice in ("apply", "finish", "next"):
        return "apply", answers, (prepared, plan_run)
    return choice or "back", None, None


def review_lines(plan_run: Any) -> list[str]:
    """The Review's text: the same as ``hostsetup plan`` prints, wrapped to the window
    (the scrolling text box keeps two columns for its scroll bar)."""
    from wizard.plantext import run_lines

    return run_lines(plan_run, width=WIDTH - 3)


def apply_with_progress(flow: Flow, ctx: Any, prepared: list[Any]) -> int:
    """Apply in a progress window."""
    from wizard.runner import apply_all

    ui = flow.ui
    g = snack.GridForm(ui.screen, "Applying", 1, 2)
    label = snack.Label(" " * (WIDTH - 10))
    scale = snack.Scale(WIDTH - 10, 100)
    g.add(label, 0, 0)
    g.add(scale, 0, 1, (0, 1, 0, 0))
    g.draw()
    ui.screen.refresh()
    state = {"i": 0}

    def show(frac: float, text: str) -> None:
        total = (state["i"] + max(0.0, min(frac, 1.0))) / max(len(prepared), 1)
        scale.set(int(total * 100))
        label.setText(text[: WIDTH - 10].ljust(WIDTH - 10))
        g.draw()
        ui.screen.refresh()

    def on_step(i: int, step: Any) -> None:
        state["i"] = i
        show(0.0, step.title)

    ctx.progress = show
    code = apply_all(prepared, ctx, on_step)
    show(1.0, "done")
    ui.screen.popWindow()
    return code


def summary(flow: Flow, run_: Any, log_path: Path, report: Path | None) -> None:
    from wizard.runner import STATUS_TEXT

    lines = []
    for res in run_.steps:
        lines.append(f"{res.name}: {STATUS_TEXT.get(res.status, res.status)}")
        lines += [f"  {n}" for n in res.notes] + [f"  ! {e}" for e in res.errors]
    lines += ["", "Log:", f"  {log_path}", "Report:", f"  {report or '(none: use --report FILE)'}"]
    text_window(flow.ui, "Summary", "What was done, per step.", lines, ["OK"])


def default_log() -> Path:
    """/var/log/hostsetup when writable, else the user's state dir."""
    base = Path("/var/log/hostsetup")
    if not os.access(base if base.exists() else base.parent, os.W_OK):
        base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "hostsetup"
    base.mkdir(parents=True, exist_ok=True)
    return base / time.strftime("hostsetup-%Y%m%d-%H%M%S.log")


def run_wizard(args: argparse.Namespace) -> int:
    """The interactive wizard; returns the exit code."""
    screen = snack.SnackScreen()
    ui = Ui(screen)
    screen.helpCallback(ui.show_help)
    screen.pushHelpLine(HELP_LINE)
    # The first screen is up: only now load the steps (pydantic & co).
    preview = snack.GridForm(screen, "hostsetup", 1, 1)
    preview.add(snack.TextboxReflowed(WIDTH - 4, WELCOME, maxHeight=9), 0, 0)
    preview.draw()
    screen.refresh()
    try:
        return _wizard(ui, args)
    except Cancelled:
        return EXIT_INTERRUPTED
    finally:
        screen.finish()


def _wizard(ui: Ui, args: argparse.Namespace) -> int:
    import logging

    from steps import REGISTRY
    from steps.base import Context
    from wizard.backends import RealBackends
    from wizard.cli import setup_logging, write_report

    ui.screen.popWindow()
    log_path = args.log or default_log()
    if args.log is None:
        setup_logging(log_path)
    logging.getLogger("hostsetup").info("wizard started")
    flow = Flow(ui, selected=[s.name for s in REGISTRY])
    if args.answers:
        error = load_answers(flow, args.answers)
        if error:
            ui.message("Answers file not usable", error)
            return EXIT_INVALID
    backends = RealBackends()
    ctx = Context(backends=backends, log=logging.getLogger("hostsetup").info)
    try:
        page, came_back = 0, False
        while True:
            pages = ["welcome", *[n for n in flow.selected if n in flow.ask_steps
                                  or not args.answers], "review"]
            name = pages[min(page, len(pages) - 1)]
            if name == "welcome":
                choice = welcome(flow, REGISTRY)
            elif name == "review":
                choice, answers, planned = review(flow, ctx)
                if choice == "apply":
                    break
            else:
                step = next(s for s in REGISTRY if s.name == name)
                choice = step_pages(flow, step, ctx, backwards=came_back)
            if choice == "cancel":
                raise Cancelled
            came_back = choice == "back"
            page = max(0, page - 1) if came_back else page + (choice == "next")
        if args.record:
            record(args.record, answers)
        prepared, plan_run = planned
        plan_run.exit_code = apply_with_progress(flow, ctx, prepared)
        plan_run.finished = time.time()
        write_report(args.report, plan_run.as_dict())
        summary(flow, plan_run, log_path, args.report)
        return int(plan_run.exit_code)
    finally:
        backends.close()


def load_answers(flow: Flow, path: Path) -> str | None:
    """Prefill from an answers file; sections that are invalid, missing or listed
    under ``interactive:`` are asked.  Returns an error text if unusable."""
    from pydantic import ValidationError

    from steps import REGISTRY
    from wizard.answers import AnswersError, _plain, read_yaml

    try:
        raw = read_yaml(path)
    except AnswersError as exc:
        return "\n".join(exc.problems)
    flow.raw = raw
    plain = _plain(raw)
    if plain.get("hosts") is not None:
        return (f"{path} lists hosts: it is for a fleet run.\n\n"
                "Use 'hostsetup fleet plan|apply --answers FILE'.")
    interactive = plain.get("interactive") or []
    flow.selected = [s.name for s in REGISTRY if s.name in plain]
    for step in REGISTRY:
        section = plain.get(step.name)
        if section is None:
            flow.ask_steps.add(step.name)
            continue
        flow.data[step.name] = dict(section)
        try:
            step.Answers.model_validate(section)
        except ValidationError:
            flow.ask_steps.add(step.name)
        if step.name in interactive:
            flow.ask_steps.add(step.name)
    return None


def record(path: Path, answers: Any) -> None:
    """Save the answers used (mode 0600); secrets stay references."""
    from wizard.answers import write

    data: dict[str, Any] = {"version": 1}
    for name, section in answers.sections.items():
        data[name] = section.model_dump(mode="json")
    refs = sorted({v for s in data.values() if isinstance(s, dict) for v in _refs(s)})
    header = "# Recorded by the hostsetup wizard. Replay: hostsetup apply --answers FILE\n"
    if refs:
        header += "# Secrets are references; set them before replaying: " + ", ".join(refs) + "\n"
    write(path, data, header)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return [node] if isinstance(node, str) and node.startswith("env:HOSTSETUP_SECRET_") else []




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

