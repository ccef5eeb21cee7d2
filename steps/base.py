"""The step contract every setup step implements.

A step is one module in ``steps/``: a :class:`Step` subclass with a ``name``
(its key in the answers file), a pydantic ``Answers`` model, its questions,
and ``plan`` / ``apply`` / ``verify``.  Steps talk to the host only through
the :class:`backends.interfaces.Backends` bundle they are handed, never
through a backend library, and never through the UI: the wizard renders any
step from its :meth:`Step.questions`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema
from pydantic_core import PydanticCustomError

from backends.interfaces import Backends

QuestionKind = Literal["text", "secret", "yesno", "choice", "multi", "records", "int"]


SECRET_PATTERN = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")


def _check_ref(value: str) -> str:
    # The error must not echo the value: it may be a password typed in clear.
    if not SECRET_PATTERN.match(value):
        raise PydanticCustomError(
            "secret_ref", "must be a secret reference env:NAME or file:PATH (value not shown)"
        )
    return value


# A secret is a reference, never a value: ``env:NAME`` or ``file:PATH``.  The
# value is read only when a backend needs it (:func:`resolve_secret`).
SecretRef = Annotated[
    str,
    AfterValidator(_check_ref),
    WithJsonSchema({"type": "string", "pattern": SECRET_PATTERN.pattern,
                    "description": "a secret reference: env:NAME or file:PATH"}),
]


class SecretUnavailable(ValueError):
    """A secret reference cannot be resolved: an answer is missing (exit 3)."""


def resolve_secret(ref: str) -> str:
    """Read the secret a reference points to; raises :class:`SecretUnavailable`."""
    kind, _, where = ref.partition(":")
    if kind == "env":
        if where not in os.environ:
            raise SecretUnavailable(f"secret {ref}: environment variable {where} is not set")
        return os.environ[where]
    if kind == "file":
        try:
            return Path(where).read_text().rstrip("\n")
        except OSError as exc:
            raise SecretUnavailable(
                f"secret {ref}: cannot read {where}: {exc.strerror}") from None
    raise SecretUnavailable(f"secret {ref!r} is not a reference (env:NAME or file:PATH)")


class StepModel(BaseModel):
    """Base for answers models: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Question:
    """One thing to ask the operator.

    ``key`` is the field in the step's answers section.  ``choices`` are
    filled from what the host really has (facts).  For ``records`` (an
    editable list such as "several mirrors"), ``fields`` are the questions
    asked per record and ``summary`` names the field that labels a record.
    """

    key: str
    label: str
    kind: QuestionKind = "text"
    help: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False
    fields: tuple[Question, ...] = ()
    summary: str = ""
    # Per choice, a word on its current state shown beside it in pickers
    # (e.g. a unit -> "inactive").
    choice_notes: tuple[tuple[str, str], ...] = ()
    # For a choice inside a record: also offer the ``name`` of the records
    # answered under this key of the same section (objects this run creates),
    # marked "(new)".
    refs: str = ""


@dataclass(frozen=True)
class Change:
    """One planned change: what, how, and the values before and after."""

    target: str
    action: Literal["create", "update", "delete", "start", "restart", "install", "hot-plug"]
    before: Any = None
    after: Any = None
    detail: str = ""
    # Why a change that is not a delete/restart still disrupts something (e.g. a
    # second device in a domain that has one); the review marks it with "!".
    destructive: str = ""

    def describe(self) -> str:
        """A one-line human description (progress, logs, verify); the review and
        `plan` show the full text of :mod:`wizard.plantext`."""
        text = f"{self.action} {self.target}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "action": self.action,
            "before": self.before,
            "after": self.after,
            "detail": self.detail,
            "destructive": self.destructive,
        }


@dataclass(frozen=True)
class Problem:
    """A validation problem, located by its key path inside the step's section."""

    path: tuple[str | int, ...]
    message: str


class StepFailed(Exception):
    """A step could not complete; the message is for the operator.

    ``done`` lists the changes that took effect before the failure (after any
    compensation), so the report can say exactly what remains changed.
    ``errors`` are further errors for the report (e.g. each undo call that failed).
    """

    def __init__(self, message: str, done: list[Change] | None = None,
                 errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.done = done or []
        self.errors = errors or []


@dataclass
class Context:
    """What a step receives at run time.

    ``facts`` is shared across the steps of one run: a step records what it
    learned about the host (e.g. ``facts["services"]["ovs"] = True``) and
    later steps read it.  ``progress`` takes a fraction 0..1 and a text.
    ``notes`` collects lines for the summary (e.g. mirror statistics).
    """

    backends: Backends
    facts: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[float, str], None] = lambda _f, _t: None
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda _m: None


A = TypeVar("A", bound=StepModel)


class Step(Generic[A]):
    """Base class of a step; see the module docstring for the contract."""

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str] = ""
    Answers: ClassVar[type[StepModel]]
    # A fact an earlier step can make true that this step's backend needs (e.g.
    # "ovs": Open vSwitch runs).  If the backend is unreachable while an earlier
    # step's plan provides it, the runner checks this step after applying those.
    requires: ClassVar[str | None] = None

    def provides(self, changes: list[Change]) -> set[str]:
        """The facts that carrying out ``changes`` makes true (see ``requires``)."""
        return set()

    def example(self) -> dict[str, Any]:
        """A valid example section for ``answers-template`` (defaults by default)."""
        return self.Answers().model_dump(mode="json")

    def connect_questions(self) -> list[Question]:
        """Questions needed before the host can be read (addresses, credentials)."""
        return []

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Read what the host has (read-only), for choices and validation.

        ``answers`` may be partial: only the connection keys are relied on.
        """
        return {}

    def questions(self, facts: dict[str, Any]) -> list[Question]:
        """The questions of this step, with choices filled from ``facts``."""
        return []

    def current(self, facts: dict[str, Any]) -> dict[str, Any]:
        """What hostsetup already manages on the host, as values of this step's
        section (records prefilled so that a re-run edits them); ``{}`` if nothing."""
        return {}

    def validate(self, answers: A, facts: dict[str, Any]) -> list[Problem]:
        """Checks against the host, beyond what the answers model checks."""
        return []

    def plan(self, answers: A, ctx: Context) -> list[Change]:
        """The changes needed to reach ``answers``; must not change anything."""
        raise NotImplementedError

    def apply(self, answers: A, changes: list[Change], ctx: Context) -> None:
        """Carry out ``changes`` (from :meth:`plan`); idempotent.

        Raises :class:`StepFailed` with what remains changed on failure.
        """
        raise NotImplementedError

    def verify(self, answers: A, ctx: Context) -> list[str]:
        """Re-read the host after apply; returns problems (empty when good)."""
        left = self.plan(answers, ctx)
        return [f"still pending: {c.describe()}" for c in left]
