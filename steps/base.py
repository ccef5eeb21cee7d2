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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
)

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from backends.interfaces import BackendError, Backends, BackendUnreachable

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


def ask(model: type[BaseModel], key: str, **kw: Any) -> Question:
    """The question for field ``key`` of ``model``: its label is the field's
    ``title``, its help the field's ``description``, its kind inferred from
    the type (a :data:`SecretRef` is ``secret``, ``bool`` ``yesno``, ``int``
    ``int``, a list of models ``records``, a list with ``choices`` ``multi``,
    a value with ``choices`` ``choice``, else ``text``).  A step passes only
    what the host offers (``choices``, ``choice_notes``, ...) or a ``kind``
    the type cannot tell.  A field without a title is a programming error."""
    info = model.model_fields[key]
    if not info.title:
        raise TypeError(f"{model.__name__}.{key}: a field the wizard asks needs a title=")
    kw.setdefault("kind", _kind(info, bool(kw.get("choices"))))
    return Question(key, info.title, help=info.description or "",
                    required=info.is_required(), **kw)


def _kind(info: FieldInfo, choices: bool) -> QuestionKind:
    if is_secret(info):
        return "secret"
    hint = info.annotation
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is not list and len(args) == 1:  # Optional[X] -> X
        hint = args[0]
    if hint is bool:
        return "yesno"
    if hint is int:
        return "int"
    if get_origin(hint) is list:
        item = get_args(hint)[0] if get_args(hint) else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "records"
        return "multi" if choices else "text"
    return "choice" if choices else "text"


@dataclass(frozen=True)
class Change:
    """One planned change: what, how, and the values before and after."""

    target: str
    # "run": a command of the answers' early/late/error_commands (wizard/commands.py).
    # "revert": the inverse of an earlier operation (:func:`inverse`).
    action: Literal["create", "update", "delete", "start", "restart", "install", "run",
                    "stop", "enable", "disable", "mask", "hot-plug", "revert"]
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


# A step's command, as a JSON value: {"op": NAME, ...arguments}.  Plain data only
# (names, numbers, lists, dicts), so that a journal can record it and a later
# process (undo, resume) can carry it out with the step's :meth:`Step.execute`.
Command = dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """One planned operation: the :class:`Change` the review and the report show,
    and what carrying it out (``do``) and reverting it (``undo``) mean, as
    :data:`Command` values.

    ``undo`` is ``None`` when there is nothing to revert (a restart, a daemon
    reload) or the step cannot revert it; ``undoable`` says which
    (:meth:`Step.apply` and ``hostsetup undo`` skip the first kind).
    ``risky`` says why carrying it out can cut the path the operator or the
    control plane uses (the management port, vmk or unit); empty when it cannot.
    """

    change: Change
    do: Command
    undo: Command | None = None
    risky: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.change.as_dict(), "do": self.do, "undo": self.undo,
                "risky": self.risky}


class Journal(Protocol):
    """Where the runner records each operation around its execution (the
    run's journal, ``wizard/journal.py``); a step's :meth:`Step.apply` calls it
    at every operation boundary."""

    def begin(self, step: str, op: Operation) -> None:
        """``op`` is about to be carried out (written and synced before it is)."""

    def end(self, step: str, op: Operation, error: str = "") -> None:
        """``op`` was carried out (``error`` empty) or failed with ``error``."""


class NoJournal:
    """A journal that records nothing (tests, benchmarks, ``plan``)."""

    def begin(self, step: str, op: Operation) -> None:
        pass

    def end(self, step: str, op: Operation, error: str = "") -> None:
        pass


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
    ``journal`` records every operation around its execution (:class:`Journal`).
    """

    backends: Backends
    facts: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[float, str], None] = lambda _f, _t: None
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda _m: None
    journal: Journal = field(default_factory=NoJournal)


A = TypeVar("A", bound=StepModel)


def inverse(op: Operation) -> Operation | None:
    """The operation that reverts ``op`` (its ``undo`` as ``do``), or ``None`` when
    ``op`` has nothing to revert; its change reads "revert TARGET" with the
    values swapped, for the journal, the report and the review of ``undo``."""
    if op.undo is None:
        return None
    c = op.change
    change = Change(c.target, "revert", c.after, c.before, f"undo of: {c.action}")
    return Operation(change, op.undo, op.do, op.risky)


class Step(Generic[A]):
    """Base class of a step; see the module docstring for the contract.

    The contract, in the order the runner calls it:

    - ``Connection``: the sub-model of ``Answers`` (its base class) holding what
      reaching the host needs; :meth:`connection` validates just those keys.
    - :meth:`discover` (``connection`` -> a frozen, typed facts object, read-only;
      ``Facts()`` with no argument is "nothing read", for a form shown before the
      host could be read).  The runner caches the facts in ``ctx.facts[name]``
      and refreshes them after apply; a step reads that cache and never writes it.
    - :meth:`validate` (answers + facts -> problems), :meth:`plan` (-> operations,
      changing nothing), :meth:`apply` (carries them out, one :meth:`execute` per
      operation, journaled), :meth:`verify` (re-plan finds nothing left).
    - :meth:`execute` and :meth:`observe` take one operation's :data:`Command`:
      ``hostsetup undo`` and ``resume`` use them in a later process, from the journal.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str] = ""
    Answers: ClassVar[type[StepModel]]
    # The connection's model: a base class of Answers.  The default has no field.
    Connection: ClassVar[type[StepModel]] = StepModel
    # The facts' type: a frozen dataclass whose fields all have defaults.
    Facts: ClassVar[type[Any]] = dict
    # A fact an earlier step can make true that this step's backend needs (e.g.
    # "ovs": Open vSwitch runs).  If the backend is unreachable while an earlier
    # step's plan provides it, the runner checks this step after applying those.
    requires: ClassVar[str | None] = None
    # Every fact provides() can return: a later step that requires one of them
    # is checked after this step is planned (the runner checks the others at once).
    may_provide: ClassVar[frozenset[str]] = frozenset()
    # On a failure in apply, revert the operations of this step already carried
    # out (reverse order) before reporting, so that the step is all or nothing.
    compensate: ClassVar[bool] = False

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

    def connection(self, section: Mapping[str, Any]) -> StepModel:
        """The connection model from the connection keys of a (partial) section;
        raises pydantic's ValidationError."""
        keys = self.Connection.model_fields
        return self.Connection.model_validate({k: v for k, v in section.items() if k in keys})

    def connect_questions(self) -> list[Question]:
        """Questions needed before the host can be read (addresses, credentials):
        by default one per field of ``Connection``."""
        return [ask(self.Connection, key) for key in self.Connection.model_fields]

    def discover(self, connection: Any, ctx: Context) -> Any:
        """Read what the host has (read-only), for choices and validation: a
        ``Facts``.  ``connection`` is a ``Connection`` (or the whole answers,
        which are one)."""
        return self.Facts()

    def facts_for(self, answers: A, ctx: Context) -> Any:
        """What validating and planning these (valid) answers needs; the runner's read.

        By default the same as :meth:`discover`; a step overrides it to read less
        than the wizard's choices need (e.g. only the VMs the answers name).
        """
        return self.discover(answers, ctx)

    def facts(self, answers: A, ctx: Context) -> Any:
        """The runner's cached facts for this step, or a fresh read if none."""
        cached = ctx.facts.get(self.name)
        return cached if cached is not None else self.facts_for(answers, ctx)

    def questions(self, facts: Any) -> list[Question]:
        """The questions of this step (:func:`ask`), with choices filled from ``facts``."""
        return []

    def current(self, facts: Any) -> dict[str, Any]:
        """What hostsetup already manages on the host, as values of this step's
        section (records prefilled so that a re-run edits them); ``{}`` if nothing."""
        return {}

    def validate(self, answers: A, facts: Any) -> list[Problem]:
        """Checks against the host, beyond what the answers model checks."""
        return []

    def plan(self, answers: A, ctx: Context) -> list[Operation]:
        """The operations needed to reach ``answers``; must not change anything."""
        raise NotImplementedError

    def execute(self, answers: A, command: Command, ctx: Context) -> None:
        """Carry out one operation's ``do`` (or ``undo``) command.  Raises
        BackendError or :class:`StepFailed` when it cannot."""
        raise NotImplementedError

    def observe(self, answers: A, command: Command, ctx: Context) -> bool | None:
        """Re-read the host: is it in the state ``command`` leads to?  ``None``
        when a command leaves no state to read (a restart, a reload)."""
        return None

    def doing(self, op: Operation) -> str:
        """The progress text while ``op`` is carried out (its change, by default)."""
        return op.change.describe()

    def apply(self, answers: A, ops: list[Operation], ctx: Context) -> None:
        """Carry out ``ops`` (from :meth:`plan`) in order, each journaled before
        and after (:class:`Journal`); idempotent.  A step overrides this to
        batch operations (one transaction), keeping the journal calls.

        On failure raises :class:`StepFailed` listing what remains changed; a
        ``compensate`` step first reverts what it carried out, in reverse order.
        """
        done: list[Operation] = []
        for i, op in enumerate(ops):
            ctx.progress(i / max(len(ops), 1), self.doing(op))
            ctx.journal.begin(self.name, op)
            try:
                self.execute(answers, op.do, ctx)
            except BackendUnreachable:
                raise  # the runner reports it (exit 5); whether it took effect is unknown
            except (BackendError, StepFailed) as exc:
                ctx.journal.end(self.name, op, str(exc))
                left, errors = self.revert(answers, done, ctx) if self.compensate \
                    else (done, [])
                raise StepFailed(str(exc), [o.change for o in left],
                                 [*getattr(exc, "errors", []), *errors]) from None
            ctx.journal.end(self.name, op)
            done.append(op)
            ctx.log(f"{self.name}: {op.change.describe()}")

    def revert(self, answers: A, done: list[Operation],
               ctx: Context) -> tuple[list[Operation], list[str]]:
        """Revert ``done`` in reverse order (journaled).  Returns what remains
        changed (operations without an undo, or whose undo failed; in their
        order) and one error per failed undo."""
        kept: list[Operation] = []
        errors = []
        for op in reversed(done):
            back = inverse(op)
            if back is None:
                kept.insert(0, op)
                continue
            ctx.journal.begin(self.name, back)
            try:
                self.execute(answers, back.do, ctx)
            except (BackendError, StepFailed) as exc:
                ctx.journal.end(self.name, back, str(exc))
                errors.append(f"undo of {op.change.describe()} failed: {exc}")
                kept.insert(0, op)
                continue
            ctx.journal.end(self.name, back)
        return kept, errors

    def verify(self, answers: A, ctx: Context) -> list[str]:
        """Re-read the host after apply; returns problems (empty when good)."""
        left = self.plan(answers, ctx)
        return [f"still pending: {o.change.describe()}" for o in left]
