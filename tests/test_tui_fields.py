"""Every field of every step, left empty, junk, very long or unicode: "Not accepted"
naming the field's label, and the window stays.  The cases are generated from the
steps' questions (``connect_questions()`` + ``questions(facts)``), one tmux
session per step, on one sandbox host shared by the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import wizard_on
from tmux import Terminal

from backends.bundle import RealBackends
from sandbox import manage
from sandbox.core import Sandbox
from steps import REGISTRY
from steps.base import Question
from wizard.tui.questions import LABEL_W, record_model, shorten, show_value

HOST_COMPONENTS = [manage.HOST, "sandbox.vcsim"]
CASES = {"empty": "", "junk": "abc!", "long": "x" * 1500, "unicode": "ñ€✓ü"}


def is_entry(q: Question) -> bool:
    """A row typed into (not a picker, not a checkbox)."""
    return q.kind in ("text", "int", "secret") or (q.kind in ("choice", "multi")
                                                   and not q.choices)


def refused(q: Question, case: str, model: Any) -> bool:
    """Must this value be refused, naming the field?  (Emptied, a field with a
    default goes back to it.)"""
    if not is_entry(q):
        return False
    if case == "empty":
        return bool(model.model_fields[q.key].is_required())
    if q.kind == "secret":
        return False  # typed text is a password: kept in memory, recorded as a reference
    return case == "long" or q.kind == "int"


def fill(t: Terminal, questions: list[Question], text: dict[str, str]) -> None:
    """Type ``text[key]`` into each entry row (from the first row, by Tab)."""
    for q in questions:
        if is_entry(q) and q.key in text:
            t.send("C-a", "C-k")
            if text[q.key]:
                t.type(text[q.key])
        t.send("Tab")


def check_cases(t: Terminal, where: str, questions: list[Question], model: Any) -> None:
    """Each case in every entry at once: Next/OK lists each refused field by label,
    and Enter gives the same window back."""
    for case, value in CASES.items():
        expect = [q for q in questions if refused(q, case, model)]
        if not expect:
            continue  # every value is acceptable here: nothing to refuse
        fill(t, questions, {q.key: value for q in questions if is_entry(q)})
        t.send("F12")
        screen = t.wait_any("Not accepted", "kept in memory", timeout=30)
        if "kept in memory" in screen:  # a typed password: said once, then refused fields
            t.send("Enter")
            screen = t.wait_for("Not accepted")
        for _ in range(4):  # a long list of problems scrolls: read it all
            t.send("NPage")
            screen += t.screen()
        for q in expect:
            assert shorten(q.label, 40)[:30] in screen, f"{where}/{case}: {q.label}\n{screen}"
        assert "Traceback" not in screen and "internal error" not in screen
        t.send("Enter")
        t.wait_gone("Not accepted")
        t.wait_for(shorten(questions[0].label, LABEL_W))  # the same window
        assert t.alive()


def facts_of(sb: Sandbox, step: Any) -> Any:
    """The step's facts, read from the sandbox as the wizard reads them."""
    from steps.base import Context

    backends = RealBackends()
    try:
        section = step.Answers.model_validate(sb.answers[step.name])
        return step.facts_for(section, Context(backends=backends))
    finally:
        backends.close()


@pytest.mark.parametrize("step", REGISTRY, ids=[s.name for s in REGISTRY])
def test_every_field_refuses_bad_values_by_label(host: Sandbox, tmp_path: Path,
                                                 step: Any) -> None:
    values = host.answers[step.name]
    questions = step.questions(facts_of(host, step))
    t = wizard_on(host, tmp_path, step.name)
    try:
        t.wait_for(f"[*] {step.title}")
        t.send("F12")
        connect = step.connect_questions()
        if connect:
            t.wait_for(": connection")
            check_cases(t, f"{step.name} connection", connect, step.Answers)
            fill(t, connect, {q.key: show_value(values.get(q.key)) for q in connect})
            t.send("F12")
        t.wait_for(shorten(questions[0].label, LABEL_W), timeout=30)
        check_cases(t, step.name, questions, step.Answers)
        fill(t, questions, {q.key: show_value(values.get(q.key)) for q in questions})
        at = len(questions)  # fill ends on the Next button; Next, Back, Cancel, then row 0
        for i, q in enumerate(questions):
            if q.kind != "records":
                continue
            t.send(*["Tab"] * (i - at if at < len(questions) else 3 + i), "Enter")  # the list
            t.wait_for("Enter edit")
            at = i  # back from the list, the focus is on its row
            t.wait_for("Done")
            t.send("Tab", "Enter")  # Add
            t.wait_for("Esc cancel this entry")  # the record's form (its help line)
            check_cases(t, f"{step.name}.{q.key}", list(q.fields),
                        record_model(step.Answers, q.key))
            t.send("Escape")  # drops the entry
            t.wait_for("Enter edit")  # the list's help line
            t.send("Escape")  # closes the list
            t.wait_for("F12 next")
        assert t.alive()
    finally:
        t.close()
