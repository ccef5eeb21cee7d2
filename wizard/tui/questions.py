"""A step's questions on screen: one row per question, pickers, lists of records,
and problems told with the fields' labels (not the answers file's key paths)."""

from __future__ import annotations

import typing
from typing import Any

import snack

from wizard.session import Loc, secret_reference
from wizard.tui.widgets import (
    KEYS_FORM,
    KEYS_LIST,
    KEYS_RECORD,
    WIDTH,
    Ui,
    Window,
    pick_many,
    pick_one,
)

LABEL_W = 32  # the label column; the widget column is the rest of the window
FIELD_W = 34
MAX_TEXT = 1024  # a typed value longer than this is refused (input is bounded)


def shorten(text: str, width: int) -> str:
    """``text`` in ``width`` columns, cut at a word boundary with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 3].rsplit(" ", 1)[0]
    return cut + "..."


def show_value(value: Any) -> str:
    """A value as the operator reads it: ``30`` not ``30.0``, lists comma-separated."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(show_value(v) for v in value)
    return str(value)


def entries(n: int) -> str:
    """``1 entry``, ``2 entries``."""
    return f"{n} entry" if n == 1 else f"{n} entries"


def _list_field(model: Any, key: str) -> bool:
    info = getattr(model, "model_fields", {}).get(key)
    ann = getattr(info, "annotation", None)
    return typing.get_origin(ann) is list or list in typing.get_args(ann)


def record_model(model: Any, key: str) -> Any:
    """The model of one record of the list field ``key``."""
    ann = model.model_fields[key].annotation
    args = typing.get_args(ann)
    return args[0] if args else None


def defaults(model: Any) -> dict[str, Any]:
    """The default of every optional field of an answers model (shown prefilled)."""
    out = {}
    for key, info in model.model_fields.items():
        if not info.is_required():
            value = info.get_default(call_default_factory=True)
            if value is not None:
                out[key] = value
    return out


def label_path(loc: Loc, questions: list[Any]) -> str:
    """A key path as the fields' labels: ``("mirrors", 0, "select_vlan", 1)`` ->
    ``Port mirrors #1 > Only VLANs (item 2)``."""
    parts: list[str] = []
    by_key = {q.key: q for q in questions}
    i = 0
    while i < len(loc):
        part = loc[i]
        q = by_key.get(str(part)) if isinstance(part, str) else None
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else 'item'} (item {part + 1})"]
        elif q is not None and q.kind == "records" and i + 1 < len(loc) \
                and isinstance(loc[i + 1], int):
            parts.append(f"{q.label} #{int(loc[i + 1]) + 1}")
            by_key = {f.key: f for f in q.fields}
            i += 1
        else:
            parts.append(q.label if q is not None else str(part))
        i += 1
    return " > ".join(parts)


def problem_text(loc: Loc, message: str, questions: list[Any], line: int | None = None) -> str:
    """One problem as the operator reads it: the field's label, then what is wrong
    (a message quoting a long value is cut: the window must keep its title)."""
    where = label_path(loc, questions) or "answers"
    return f"{where}{f' (line {line})' if line else ''}: {shorten(message, 160)}"


def model_problems(model: Any, values: dict[str, Any], questions: list[Any],
                   only: set[str] | None = None) -> list[str]:
    """What the answers model refuses in ``values`` (limited to the keys ``only``).

    A typed value longer than :data:`MAX_TEXT` is refused by its length alone.
    """
    from pydantic import ValidationError

    from wizard.answers import _errors

    long = {k for k, v in values.items() if isinstance(v, str) and len(v) > MAX_TEXT
            and (only is None or k in only)}
    problems = [problem_text((k,), f"too long ({len(values[k])} characters; at most "
                             f"{MAX_TEXT})", questions) for k in sorted(long)]
    try:
        model.model_validate(values)
    except ValidationError as exc:
        problems += [problem_text(loc, msg, questions) for loc, msg in _errors(exc, values)
                     if (only is None or (loc and loc[0] in only))
                     and not (loc and loc[0] in long)]
    return problems


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
            self.widget = snack.Entry(FIELD_W, show_value(self.value),
                                      password=int(self.q.kind == "secret"))
        return snack.Label(shorten(self.q.label, LABEL_W)), self.widget

    def _caption(self) -> str:
        if self.q.kind == "records":
            return f"{entries(len(self.value or []))}: edit..."
        return shorten(show_value(self.value) or "(none)", FIELD_W - 6) + " ..."

    def activate(self) -> None:
        """The row's button was pressed: open its picker or record list."""
        help_text = self.q.help or (f"{self.q.label}: choose any with <Space>."
                                    if self.q.kind == "multi" else
                                    f"{self.q.label}: choose one with <Enter>.")
        if self.q.kind == "choice":
            new = pick_one(self.ui, self.q.label, help_text, choice_items(self.ui, self.q),
                           self.value, self.q.required)
        elif self.q.kind == "multi":
            new = pick_many(self.ui, self.q.label, help_text, choice_items(self.ui, self.q),
                            self.value or [])
        else:
            new = edit_records(self.ui, self.q, list(self.value or []),
                               record_model(self.model, self.q.key))
        self._set(new)

    def _set(self, value: Any) -> None:
        if value != self.value:
            self.ui.touched = True
        self.value = value

    def capture(self) -> None:
        """Keep what the widget shows (before its form is freed)."""
        if isinstance(self.widget, snack.Checkbox):
            if bool(self.widget.selected()) != bool(self.value):  # unset stays unset
                self._set(bool(self.widget.selected()))
        elif isinstance(self.widget, snack.Entry):
            text = self.widget.value().strip()
            if text == show_value(self.value):
                return  # unchanged (keeps e.g. 30.0 a number, a list a list)
            if text == "":
                self._set(None)
            elif self.q.kind == "secret":
                self._set(secret_reference(self.q.key, text))
                if self.value != text:
                    self.ui.message("Password kept in memory only", (
                        f"What you typed in '{self.q.label}' is kept in this program's memory "
                        f"only. The answers (and a --record file) have it "
                        f"held as {self.value}: set that variable to replay them."))
            elif _list_field(self.model, self.q.key) or isinstance(self.value, list):
                self._set([v.strip() for v in text.split(",") if v.strip()])
            else:
                self._set(text)


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


class QuestionsWindow(Window):
    """A window of one-row questions and a button bar."""

    def __init__(self, ui: Ui, title: str, help_text: str, rows: list[Row],
                 buttons: list[str], keys: str) -> None:
        self.title, self.rows, self.buttons, self.keys = title, rows, buttons, keys
        self.help_text = help_text + "".join(
            f"\n\n{r.q.label}: {r.q.help}" for r in rows if r.q.help)
        self.focus_row: Row | None = None
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form(self.title, self.help_text, 1, 2)
        grid = snack.Grid(2, max(1, len(self.rows)))
        for i, row in enumerate(self.rows):
            label, widget = row.build()
            grid.setField(label, 0, i, (0, 0, 1, 0), anchorLeft=1)
            grid.setField(widget, 1, i, anchorLeft=1)
        g.add(grid, 0, 0)
        self.bar = snack.ButtonBar(ui.screen, self.buttons)
        g.add(self.bar, 0, 1, (0, 1, 0, 0), growx=1)
        return g

    def focus(self) -> Any:
        return self.focus_row.widget if self.focus_row is not None else None

    def keep(self) -> None:
        for row in self.rows:
            row.capture()


def ask(ui: Ui, title: str, help_text: str, questions: list[Any], values: dict[str, Any],
        model: Any, buttons: list[str], keys: str = KEYS_FORM,
        focus_key: str | None = None) -> tuple[str, dict[str, Any]]:
    """A window of questions; returns the button ("ESC" -> the second button, F12 ->
    the first) and the values entered.  ``focus_key`` puts the cursor on that row."""
    rows = [Row(ui, q, values.get(q.key), model) for q in questions]
    win = QuestionsWindow(ui, title, help_text, rows, buttons, keys)
    win.focus_row = next((r for r in rows if r.q.key == focus_key), None)
    while True:
        result = ui.show(win)
        hit = next((r for r in rows if r.picker and r.widget is result), None)
        if hit is not None:
            if hit.q.kind == "records":
                ui.section = {r.q.key: r.value for r in rows}
            hit.activate()
            win.focus_row = hit  # back from a picker: focus the row it came from
            continue
        if result == "ESC":
            button: str | None = buttons[1].lower()
        elif result == "F12":
            button = buttons[0].lower()
        else:
            button = win.bar.buttonPressed(result) if win.bar is not None else None
        if button is not None:
            return button, {r.q.key: r.value for r in rows if r.value is not None}


class RecordList(Window):
    """The list of records (e.g. several mirrors) with Add / Edit / Delete / Done."""

    keys = KEYS_LIST

    def __init__(self, q: Any, records: list[dict[str, Any]], index: int) -> None:
        self.q, self.records, self.index = q, records, index
        self.box: snack.Listbox | None = None
        self.bar: snack.ButtonBar | None = None

    def build(self, ui: Ui) -> snack.GridFormHelp:
        g = ui.form(self.q.label, self.q.help or "Add, edit or delete entries.", 1, 2)
        self.box = snack.Listbox(height=8, scroll=1, width=60, returnExit=1)
        for i, rec in enumerate(self.records):
            self.box.append(record_label(self.q, rec, i), i)
        if not self.records:
            self.box.append("(none yet: Add one)", -1)
        elif self.index < len(self.records):
            self.box.setCurrent(self.index)
        g.add(self.box, 0, 0)
        self.bar = snack.ButtonBar(ui.screen, ["Add", "Edit", "Delete", "Done"])
        g.add(self.bar, 0, 1, (0, 1, 0, 0))
        return g

    def keep(self) -> None:
        if self.box is not None and self.records:
            self.index = int(self.box.current())


def edit_records(ui: Ui, q: Any, records: list[dict[str, Any]], model: Any) -> list[Any]:
    """Add / Edit / Delete records; Enter on a record edits it, Escape or Done
    closes the list.  A record is checked by its model when its form is closed
    (the host checks come with the step's Next); Delete asks first."""
    win = RecordList(q, records, 0)
    while True:
        result = ui.show(win)
        if result is win.box:
            choice = "edit"
        elif result in ("ESC", "F12"):
            choice = "done"
        else:
            choice = (win.bar.buttonPressed(result) if win.bar is not None else None) or ""
        current = win.index if records else -1
        if choice == "done":
            return records
        if choice == "delete" and current >= 0:
            if ui.confirm("Delete entry?", f"Delete {record_label(q, records[current], current)}"
                          f" from {q.label}?", yes="Delete", no="Keep"):
                records.pop(current)
                win.index = max(0, current - 1)
                ui.touched = True
        elif choice == "add" or (choice == "edit" and current >= 0):
            start = records[current] if choice == "edit" else defaults(model)
            rec = edit_record(ui, q, start, model)
            if rec is None:
                continue
            if choice == "edit":
                records[current] = rec
            else:
                records.append(rec)
                win.index = len(records) - 1


def edit_record(ui: Ui, q: Any, start: dict[str, Any], model: Any) -> dict[str, Any] | None:
    """One record's form; OK keeps it once its model accepts it, Cancel/Escape drops the edit."""
    shown = {f.key for f in q.fields}
    values = dict(start)
    while True:
        button, got = ask(ui, q.label, q.help, list(q.fields), values, model, ["OK", "Cancel"],
                          keys=KEYS_RECORD)
        if button != "ok":
            return None
        # Keys this window does not show are kept as they were.
        values = {**{k: v for k, v in start.items() if k not in shown}, **got}
        problems = model_problems(model, values, list(q.fields))
        if not problems:
            return values
        ui.message("Not accepted", "\n".join(problems))


def record_label(q: Any, rec: dict[str, Any], i: int) -> str:
    """One line for a record: its summary field, then the rest as key=value."""
    key = q.summary or "name"
    head = str(rec.get(key, f"#{i + 1}"))
    rest = ", ".join(f"{k}={show_value(v)}" for k, v in rec.items() if k != key)
    return shorten(f"{head}: {rest}", WIDTH - 12)
