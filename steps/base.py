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
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema
from pydantic.fields import FieldInfo
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
    """A secret reference cannot be resolved: an answer is missing (exit 3).

    ``path`` is the key of the reference in the step's section, when known.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


SECRET_MAX_BYTES = 64 * 1024  # a password, a key or a certificate fits many times over

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class InputRefused(ValueError):
    """A file given as input cannot be used: unreadable, not a regular file, or too large."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes, never blocking.

    It is opened with ``O_NONBLOCK`` (opening a FIFO does not wait for a
    writer) and checked with ``fstat`` before any read: a FIFO, a device, a
    socket or a directory is refused, as is a file longer than ``limit``
    (at most ``limit + 1`` bytes are read).  Raises :class:`InputRefused`,
    whose text never holds the content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputRefused(exc.strerror or "cannot open") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "special")
            raise InputRefused(f"not a regular file ({kind})")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise InputRefused(exc.strerror or "cannot read") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputRefused(f"larger than {limit} bytes")
    return data


def resolve_secret(ref: str, key: str | None = None) -> str:
    """Read the secret a reference points to; raises :class:`SecretUnavailable`.

    ``key`` is the answer holding ``ref`` (for the error's key path and line).
    A ``file:`` secret is read with :func:`read_regular` (regular files of at
    most :data:`SECRET_MAX_BYTES`, UTF-8); errors name the reference, never
    the content.
    """
    path = (key,) if key else ()
    kind, _, where = ref.partition(":")
    if kind == "env":
        if where not in os.environ:
            raise SecretUnavailable(f"secret {ref}: environment variable {where} is not set",
                                    path)
        return os.environ[where]
    if kind == "file":
        try:
            return read_regular(where, SECRET_MAX_BYTES).decode().rstrip("\n")
        except InputRefused as exc:
            raise SecretUnavailable(f"secret {ref}: cannot read {where}: {exc}", path) from None
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {ref}: {where} is not UTF-8 text", path) from None
    raise SecretUnavailable("a secret is not a reference (env:NAME or file:PATH; "
                            "value not shown)", path)


def is_secret(info: FieldInfo) -> bool:
    """True for a field typed :data:`SecretRef`: its value is never shown."""
    return any(getattr(m, "func", None) is _check_ref for m in info.metadata)


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
    # "run": a command of the answers' early/late/error_commands (wizard/commands.py).
    action: Literal["create", "update", "delete", "start", "restart", "install", "run",
                    "stop", "enable", "disable", "mask", "hot-plug"]
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

    ``facts`` is the runner's cache of what each step read of the host, by step
    name: the runner fills it in the check phase (:meth:`Step.facts_for`) and
    refreshes a step's entry after its apply, before its verify.  Steps read
    it (e.g. ``plan`` reuses the check phase's read) and never write it.
    ``progress`` takes a fraction 0..1 and a text.
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
    # Every fact provides() can return: a later step that requires one of them
    # is checked after this step is planned (the runner checks the others at once).
    may_provide: ClassVar[frozenset[str]] = frozenset()

    def provides(self, changes: list[Change]) -> set[str]:
        """The facts that carrying out ``changes`` makes true (see ``requires``)."""
        return set()

    def example(self) -> dict[str, Any]:
        """A valid example section for ``answers-template``: the model's defaults.

        A step whose ``Answers`` has required fields must override this (the
        defaults alone are not a valid section); otherwise this raises a
        TypeError naming the step and the fields.
        """
        required = [k for k, f in self.Answers.model_fields.items() if f.is_required()]
        if required:
            raise TypeError(f"step '{self.name}': Answers has required field(s) "
                            f"{', '.join(required)}: the step must define example()")
        return self.Answers().model_dump(mode="json")

    def connect_questions(self) -> list[Question]:
        """Questions needed before the host can be read (addresses, credentials)."""
        return []

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Read what the host has (read-only), for choices and validation.

        ``answers`` may be partial: only the connection keys are relied on.
        """
        return {}

    def facts_for(self, answers: A, ctx: Context) -> dict[str, Any]:
        """What validating and planning these (valid) answers needs; the runner's read.

        By default the same as :meth:`discover`; a step overrides it to read less
        than the wizard's choices need (e.g. only the VMs the answers name).
        """
        return self.discover(answers.model_dump(), ctx)

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
