"""The plan as text: one formatter for ``hostsetup plan/apply`` and the wizard's Review.

Per step a head line with its count (``ovs_mirror: 2 changes``), then each
change as ``+ ACTION TARGET: DETAIL`` followed by its settings in words,
``key: before -> after`` (only the keys that change; a created or deleted
object lists what it has).  Destructive changes (delete, restart, stop, mask,
or a change its step marks ``destructive``, e.g. a second device) start with
``!`` instead of ``+``; risky ones (the operation's ``risky``: it can cut the
connection to the host) start with ``~`` and say ``needs confirmation: REASON``
(wizard/confirm.py).  Lines are wrapped to a width with a hanging indent.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from wizard.commands import LISTS
from wizard.runner import STATUS_TEXT

if TYPE_CHECKING:
    from steps.base import Change
    from wizard.runner import Run, StepResult

DESTRUCTIVE = frozenset({"delete", "restart", "stop", "mask"})
# The head line of a command list (wizard/commands.py), by status.
LIST_HEAD = {"pending": "{n} command{s} to run", "applied": "ran {n} command{s}",
             "not run": "not run ({n} command{s})"}
NONE = "(none)"


def words(value: Any) -> str:
    """A value as an operator reads it: yes/no, ``a, b``, ``(none)``, ``30`` not ``30.0``."""
    if value is None or value == "" or value == [] or value == () or value == {}:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(words(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{label(k)} {words(v)}" for k, v in value.items())
    return str(value)


def label(key: Any) -> str:
    """A settings key in words (``mac_changes`` -> ``mac changes``)."""
    return str(key).replace("_", " ")


def is_destructive(change: Change) -> bool:
    """Whether the review marks the change: it removes, interrupts or doubles something."""
    return change.action in DESTRUCTIVE or bool(change.destructive)


def field_lines(change: Change) -> list[str]:
    """The change's settings in words: ``key: before -> after``, or ``key: value``
    for what a created object gets or a deleted one had."""
    before, after = change.before, change.after
    if isinstance(before, dict) or isinstance(after, dict):
        old, new = before or {}, after or {}
        if before is None or after is None:  # created or deleted: what it has
            whole = new or old
            return [f"{label(k)}: {words(v)}" for k, v in whole.items()
                    if words(v) != NONE]
        keys = [*new, *(k for k in old if k not in new)]
        return [f"{label(k)}: {words(old.get(k))} -> {words(new.get(k))}"
                for k in keys if words(old.get(k)) != words(new.get(k))]
    if before is None and after is None:
        return []
    if before is None:
        return [words(after)]
    return [f"{words(before)} -> {words(after)}"]


def wrap(text: str, indent: int, width: int) -> list[str]:
    """``text`` at ``indent`` columns, wrapped to ``width`` with continuation lines
    two columns further in: under the text after a mark such as ``+ ``, and clear
    of the first column of a ``key: value`` line."""
    head = " " * indent
    hang = head + "  "
    # A path or an address longer than a line stays whole (copied, not read).
    return textwrap.wrap(text, width=width, initial_indent=head, subsequent_indent=hang,
                         break_on_hyphens=False, break_long_words=False) or [head.rstrip()]


OUTPUT_LINES = 20  # of a command's output shown in the text (the report keeps it all)


def run_change_lines(change: Change, width: int = 78) -> list[str]:
    """A command of the answers: ``+ run: CMD (exit 0)`` and the end of its output."""
    text = f"+ run: {change.target}" + (f" ({change.detail})" if change.detail else "")
    output = (change.after or {}).get("output") or ""
    tail = output.splitlines()[-OUTPUT_LINES:]
    return wrap(text, 2, width) + [f"      | {line}"[:width] for line in tail]


def change_lines(change: Change, width: int = 78, risky: str = "") -> list[str]:
    """One change: its action line (marked ``~`` when ``risky`` says why it needs
    confirmation, else ``!`` or ``+``), then its settings."""
    if change.action == "run":
        return run_change_lines(change, width)
    mark = "~" if risky else "!" if is_destructive(change) else "+"
    text = f"{mark} {change.action} {change.target}"
    if change.detail:
        text += f": {change.detail}"
    if change.destructive:
        text += f" [{change.destructive}]"
    if risky:
        text += f" [needs confirmation: {risky}]"
    lines = wrap(text, 2, width)
    for line in field_lines(change):
        lines += wrap(line, 6, width)
    return lines


def count(n: int) -> str:
    """``1 change``, ``2 changes``."""
    return f"{n} change" + ("" if n == 1 else "s")


def step_lines(result: StepResult, width: int = 78, errors: bool = True) -> list[str]:
    """One step: head line with its count or status, changes, notes (and errors)."""
    n = len(result.changes)
    if result.name in LISTS:
        head = f"{result.name}: " + LIST_HEAD.get(result.status, "{status}").format(
            n=n, s="" if n == 1 else "s", status=STATUS_TEXT.get(result.status, result.status))
    elif result.status == "pending":
        head = f"{result.name}: {count(n)}"
    else:
        head = f"{result.name}: {STATUS_TEXT.get(result.status, result.status)}"
        if n:
            head += f" ({count(n)})"
    risky = result.risky()
    destructive = sum(is_destructive(c) and id(c) not in risky for c in result.changes)
    if destructive:
        head += f", {destructive} destructive (!)"
    if risky:
        head += f", {len(risky)} to confirm (~)"
    lines = wrap(head, 0, width)
    for change in result.changes:
        lines += change_lines(change, width, risky.get(id(change), ""))
    for note in result.notes:
        lines += wrap(f". {note}", 2, width)
    if errors:
        for err in result.errors:
            lines += wrap(f"! {err}", 2, width)
    return lines


def run_lines(run: Run, width: int = 78, errors: bool = True) -> list[str]:
    """Every step of a run, as ``hostsetup plan`` prints it and the Review shows it."""
    return [line for result in run.steps for line in step_lines(result, width, errors)]
