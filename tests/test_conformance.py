"""The step contract over the whole registry, on the fakes.

Every step's example validates, plans and applies on a sample host; every
required answer has a question; every backend interface has an adapter in the
bundle's table and an in-memory fake that implements all of its protocol.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import typing
from types import ModuleType
from typing import Any

import pytest
from fakes import FAKES, sample_backends
from helpers import run

import backends.interfaces
from backends.bundle import ADAPTERS
from steps import REGISTRY, by_name
from steps.base import Context, Operation, Question, Step, StepModel, inverse
from wizard.exits import EXIT_OK, EXIT_PENDING

STEPS = [pytest.param(s, id=s.name) for s in REGISTRY]


@pytest.fixture(autouse=True)
def example_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSPHERE_PASSWORD", "example")  # vsphere_network's example


@pytest.mark.parametrize("step", STEPS)
def test_example_validates_plans_applies_on_the_fakes(step: Step[Any]) -> None:
    example = step.example()
    step.Answers.model_validate(example)
    fb = sample_backends()
    planned = run("plan", {step.name: example}, fb)
    assert planned.exit_code == EXIT_PENDING, planned.as_dict()
    assert run("apply", {step.name: example}, fb).exit_code == EXIT_OK
    assert run("plan", {step.name: example}, fb).exit_code == EXIT_OK


@pytest.mark.parametrize("step", STEPS)
def test_steps_read_the_facts_cache_and_never_write_it(step: Step[Any]) -> None:
    answers = step.Answers.model_validate(step.example())
    ctx = Context(backends=sample_backends())
    facts = {step.name: step.facts_for(answers, ctx)}
    ctx.facts = dict(facts)
    changes = step.plan(answers, ctx)
    step.apply(answers, changes, ctx)
    assert ctx.facts == facts




@pytest.mark.parametrize("step", STEPS)
def test_operations_are_values_that_apply_observe_and_undo(step: Step[Any]) -> None:
    """Each operation's commands survive JSON (a journal can keep them); after apply
    the host is observed in each ``do`` state; carrying out the undos in reverse
    (as ``hostsetup undo`` does, in a fresh context) brings back the first plan."""
    answers = step.Answers.model_validate(step.example())
    fb = sample_backends()
    ctx = Context(backends=fb)
    first = step.plan(answers, ctx)
    assert first, "the example changes something on the sample host"
    for op in first:
        assert json.loads(json.dumps([op.do, op.undo])) == [op.do, op.undo], op
    step.apply(answers, first, ctx)
    again = Context(backends=fb)
    assert step.plan(answers, again) == []
    assert [step.observe(answers, op.do, again) for op in first
            if step.observe(answers, op.do, again) is not None] != []
    assert all(step.observe(answers, op.do, again) in (True, None) for op in first)
    for op in reversed(first):
        back = inverse(op)
        if back is not None:
            step.execute(answers, back.do, Context(backends=fb))
            assert step.observe(answers, back.do, Context(backends=fb)) in (True, None)
    assert [o.change for o in step.plan(answers, Context(backends=fb))] == \
        [o.change for o in first]


@dataclasses.dataclass
class Recorder:
    """A journal that keeps what it is told."""

    lines: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def begin(self, step: str, op: Operation) -> None:
        self.lines.append(("begin", op.change.describe(), ""))

    def end(self, step: str, op: Operation, error: str = "") -> None:
        self.lines.append(("end", op.change.describe(), error))


@pytest.mark.parametrize("step", STEPS)
def test_apply_journals_every_operation_before_and_after(step: Step[Any]) -> None:
    answers = step.Answers.model_validate(step.example())
    journal = Recorder()
    ctx = Context(backends=sample_backends(), journal=journal)
    ops = step.plan(answers, ctx)
    step.apply(answers, ops, ctx)
    assert journal.lines == [(k, op.change.describe(), "") for op in ops
                             for k in ("begin", "end")]


def interfaces() -> list[ModuleType]:
    """Every module of backends.interfaces that names a backend kind."""
    found = [importlib.import_module(f"backends.interfaces.{m.name}")
             for m in pkgutil.iter_modules(backends.interfaces.__path__)]
    return [m for m in found if hasattr(m, "KIND")]


def protocol_of(module: ModuleType) -> type:
    """The protocol the module's accessor returns."""
    accessor = getattr(module, f"{module.KIND}_api")
    hints = typing.get_type_hints(accessor)
    return hints["return"]  # type: ignore[no-any-return]


def test_every_interface_has_an_adapter_and_a_fake() -> None:
    kinds = {m.KIND for m in interfaces()}
    assert kinds == set(ADAPTERS) == set(FAKES)
    for kind, (module, cls) in ADAPTERS.items():
        assert module.startswith("backends.adapters."), kind
        assert importlib.util.find_spec(module) is not None, module
        assert f"class {cls}" in inspect.getsource(importlib.import_module(module)), cls


@pytest.mark.parametrize("module", interfaces(), ids=lambda m: m.KIND)
def test_fakes_implement_the_whole_protocol(module: ModuleType) -> None:
    proto, fake = protocol_of(module), FAKES[module.KIND]
    for name, member in vars(proto).items():
        if name.startswith("_") or not callable(member):
            continue
        assert hasattr(fake, name), f"{fake.__name__} lacks {name}"
        want = list(inspect.signature(member).parameters)
        got = list(inspect.signature(getattr(fake, name)).parameters)
        assert got == want, f"{fake.__name__}.{name}{got} != {proto.__name__}.{name}{want}"


def _questions(step: Step[Any], facts: dict[str, Any]) -> list[Question]:
    return [*step.connect_questions(), *step.questions(facts)]


def _record_model(model: type[StepModel], key: str) -> type[StepModel] | None:
    """For a ``list[Model]`` field, the record model."""
    args = typing.get_args(model.model_fields[key].annotation)
    return next((a for a in args if isinstance(a, type) and issubclass(a, StepModel)), None)


def _unasked(model: type[StepModel], questions: list[Question], where: str) -> list[str]:
    asked = {q.key: q for q in questions}
    missing = [f"{where}{k}" for k, f in model.model_fields.items()
               if f.is_required() and k not in asked]
    for q in questions:
        record = _record_model(model, q.key) if q.kind == "records" else None
        if record is not None:
            missing += _unasked(record, list(q.fields), f"{where}{q.key}[].")
    return missing


@pytest.mark.parametrize("step", STEPS)
def test_every_required_field_has_a_question(step: Step[Any]) -> None:
    ctx = Context(backends=sample_backends())
    facts = step.facts_for(step.Answers.model_validate(step.example()), ctx)
    assert _unasked(step.Answers, _questions(step, facts), f"{step.name}.") == []


def test_registry_names_are_unique_and_by_name_finds_them() -> None:
    assert list(by_name()) == [s.name for s in REGISTRY]
    assert all(by_name()[s.name] is s for s in REGISTRY)


def test_a_step_with_required_fields_must_give_its_example() -> None:
    class Needs(StepModel):
        path: str

    class NoExample(Step[Needs]):
        name, title, Answers = "needs", "Needs", Needs

    with pytest.raises(TypeError, match="step 'needs': Answers has required field"
                                        r"\(s\) path: the step must define example\(\)"):
        NoExample().example()


class Counter(StepModel):
    """A toy section: no field."""


class CountingStep(Step[Counter]):
    """Three increments of a counter; the third fails. Reverting is a decrement."""

    name, title, Answers = "counting", "Counting", Counter
    compensate = True

    def __init__(self) -> None:
        self.value = 0

    def plan(self, answers: Counter, ctx: Context) -> list[Operation]:
        from steps.base import Change

        return [Operation(Change(f"counter {i}", "update", i, i + 1), {"op": "add", "n": 1},
                          {"op": "add", "n": -1}) for i in range(3)]

    def execute(self, answers: Counter, command: dict[str, Any], ctx: Context) -> None:
        from steps.base import StepFailed

        if command["n"] > 0 and self.value == 2:
            raise StepFailed("the third increment fails")
        self.value += command["n"]


def test_a_compensating_step_reverts_what_it_did_in_reverse_and_journals_it() -> None:
    from steps.base import StepFailed

    step, journal = CountingStep(), Recorder()
    ctx = Context(backends=sample_backends(), journal=journal)
    with pytest.raises(StepFailed) as failed:
        step.apply(Counter(), step.plan(Counter(), ctx), ctx)
    assert step.value == 0 and failed.value.done == []
    assert [(k, what.split(":")[0]) for k, what, _ in journal.lines] == [
        ("begin", "update counter 0"), ("end", "update counter 0"),
        ("begin", "update counter 1"), ("end", "update counter 1"),
        ("begin", "update counter 2"), ("end", "update counter 2"),
        ("begin", "revert counter 1"), ("end", "revert counter 1"),
        ("begin", "revert counter 0"), ("end", "revert counter 0")]
    assert journal.lines[5][2] == "the third increment fails"
