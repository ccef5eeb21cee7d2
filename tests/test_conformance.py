"""The step contract over the whole registry, on the fakes.

Every step's example validates, plans and applies on a sample host; every
required answer has a question; every backend interface has an adapter in the
bundle's table and an in-memory fake that implements all of its protocol.
"""

from __future__ import annotations

import importlib
import inspect
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
from steps.base import Context, Question, Step, StepModel
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
    facts = step.discover(step.example(), ctx)
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
