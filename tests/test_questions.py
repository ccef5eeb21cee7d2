"""The words of every step's questions: labels fit their 26 columns, every choice has help."""

from __future__ import annotations

from steps import REGISTRY
from steps.base import Question

LABEL_WIDTH = 26  # the label column of a step window at 80x24


def all_questions() -> list[tuple[str, Question]]:
    out = []
    for step in REGISTRY:
        todo = [*step.connect_questions(), *step.questions(step.Facts())]
        while todo:
            q = todo.pop()
            out.append((step.name, q))
            todo += q.fields
    return out


def test_labels_fit_without_cutting_a_word() -> None:
    long = [f"{name}.{q.key}: {q.label!r}" for name, q in all_questions()
            if len(q.label) > LABEL_WIDTH]
    assert long == []


def test_every_choice_question_has_its_own_help() -> None:
    bare = [f"{name}.{q.key}" for name, q in all_questions()
            if q.kind in ("choice", "multi", "records") and len(q.help) < 20]
    assert bare == []
