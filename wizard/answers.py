"""The answers file: YAML with line numbers, validated by one pydantic model.

The model is built from the step registry (one optional section per step),
so ``hostsetup schema`` and validation share one source of truth.  Every
problem is reported with its key path and line, e.g.
``ovs_mirror.mirrors[0].output_port (line 12): 'tap9' is not a port ...``.

For a fleet, ``hosts:`` lists the hosts, each a ``name`` plus optional
overrides of the base sections, deep-merged onto the base (mappings merged,
lists replaced, ``null`` removes a key or a whole section).  Each host's
merged answers are validated by the same model; a problem in an override is
named with its host, e.g. ``hosts[1] (hv2).ovs_mirror.db (line 30): ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.scanner import RoundTripScanner

from steps import REGISTRY
from steps.base import InputRefused, Problem, Step, is_secret, read_regular
from steps.validators import is_host
from wizard import commands as commands_mod
from wizard.interactive import InteractiveEntry

Loc = tuple[str | int, ...]


class AnswersError(Exception):
    """The answers file cannot be used; ``problems`` lists every reason (exit 3)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Located:
    """A problem with its dotted key path and (when known) its line."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path or 'top level'} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}" if self.path else self.message


def dotted(loc: Loc) -> str:
    """``("a", 0, "b")`` -> ``a[0].b``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(raw: Any, loc: Loc) -> int | None:
    """The 1-based line of the deepest part of ``loc`` found in the YAML tree.

    A key that is missing gets the line of its nearest ancestor that exists
    (line 1 for a top-level key); ``None`` only when ``raw`` has no lines.
    """
    line, node = None, raw
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line, node = node.lc.key(part)[0] + 1, node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, node = node.lc.item(part)[0] + 1, node[part]
        else:
            break
    if line is None and isinstance(raw, CommentedMap):
        return 1
    return line


def step_names() -> list[str]:
    return [s.name for s in REGISTRY]


HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
CONFIRM_MAX = 3600  # seconds: the longest confirmation window


class ConfirmAnswers(BaseModel):
    """``confirm:``: how long ``apply`` (and the wizard) waits, after applying
    operations that can cut the connection to the host, for a confirmation
    (``hostsetup confirm``, or the probe reaching its target) before reverting
    them (wizard/confirm.py).  At most one probe: ``tcp`` or ``ping``."""

    model_config = ConfigDict(extra="forbid")

    within: int = Field(120, ge=1, le=CONFIRM_MAX, description="seconds to wait for the "
                        "confirmation before the risky operations are reverted")
    tcp: str | None = Field(None, description="HOST:PORT ([V6ADDR]:PORT) that confirms "
                            "once a TCP connection to it succeeds, e.g. vcenter.example.net:443")
    ping: str | None = Field(None, description="HOST or address that confirms once it "
                             "answers an ICMP echo")

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, value: str | None) -> str | None:
        host, _, port = (value or "").rpartition(":")
        if value is not None and not (is_host(host) and port.isdigit()
                                      and 0 < int(port) < 65536):
            raise ValueError(f"'{value}' is not HOST:PORT (HOST a name or an address, "
                             "an IPv6 one in brackets; PORT 1-65535)")
        return value

    @field_validator("ping")
    @classmethod
    def _ping(cls, value: str | None) -> str | None:
        if value is not None and (not is_host(value) or value.startswith("[")):
            raise ValueError(f"'{value}' is not a host name or an address")
        return value

    @model_validator(mode="after")
    def _one_probe(self) -> ConfirmAnswers:
        if self.tcp is not None and self.ping is not None:
            raise ValueError("give one probe: tcp or ping, not both")
        return self


def _host_model() -> type[BaseModel]:
    """One entry of ``hosts:``: a name and partial sections (checked once merged)."""
    overlays: dict[str, Any] = {
        s.name: (dict[str, Any] | None, Field(
            None, description=f"this host's overrides of the base '{s.name}' section "
            "(deep-merged: mappings merged, lists replaced, null removes)"))
        for s in REGISTRY
    }
    # The command lists too (issue 16): a host may have its own.
    overlays.update({name: (Any, Field(None, description=f"this host's {name}"))
                     for name in commands_mod.LISTS})
    return create_model(  # type: ignore[call-overload, no-any-return]
        "FleetHost",
        __config__=ConfigDict(extra="forbid"),
        name=(str, Field(pattern=HOST_NAME, description="the host's name, as its agent's --name")),
        **overlays,
    )


def _hosts_type() -> Any:
    return list[_host_model()]  # type: ignore[misc]


def _top_model() -> type[BaseModel]:
    sections: dict[str, Any] = {
        s.name: (s.Answers | None, Field(None, description=s.title)) for s in REGISTRY
    }
    # Commands around the run (issue 16, wizard/commands.py).
    sections.update({
        name: (commands_mod.CommandList | None,
               Field(None, description=commands_mod.field_description(name)))
        for name in commands_mod.LISTS})
    return create_model(  # type: ignore[call-overload, no-any-return]
        "HostsetupAnswers",
        __config__=ConfigDict(extra="forbid", title="hostsetup answers file"),
        version=(Literal[1], Field(description="answers file format version")),
        interactive=(
            list[InteractiveEntry],
            Field(default_factory=list, description="what the wizard asks even though "
                  "answered: '*' (everything), a section, or section.key"),
        ),
        confirm=(ConfirmAnswers | None, Field(
            None, description="risky operations (they can cut the connection to the host) "
            "are reverted unless confirmed within 'within' seconds after apply")),
        hosts=(_hosts_type() | None, Field(
            None, description="fleet runs: the hosts, each with optional per-host overrides "
            "of the sections above")),
        **sections,
    )


_MODEL: type[BaseModel] | None = None


def model() -> type[BaseModel]:
    """The pydantic model of a whole answers file (built once)."""
    global _MODEL
    if _MODEL is None:
        _MODEL = _top_model()
    return _MODEL


def json_schema() -> dict[str, Any]:
    """The JSON Schema printed by ``hostsetup schema``."""
    return model().model_json_schema()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``A | None``, ``list[A]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _secret_paths(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths (list indexes left out) of every ``SecretRef`` field of ``cls``."""
    found = set()
    for name, info in cls.model_fields.items():
        here = (*prefix, name)
        if is_secret(info):
            found.add(here)
        for sub in _models_in(info.annotation):
            found |= _secret_paths(sub, here)
    return found


_SECRETS: set[tuple[str, ...]] | None = None


def secret_paths() -> set[tuple[str, ...]]:
    """Where the answers file holds secrets, read from the models (built once)."""
    global _SECRETS
    if _SECRETS is None:
        _SECRETS = _secret_paths(model())
    return _SECRETS


def _is_secret(loc: Loc) -> bool:
    keys = tuple(p for p in loc if isinstance(p, str))
    return any(keys[:len(s)] == s for s in secret_paths())


def _clip(text: str, size: int = 80) -> str:
    return text if len(text) <= size else text[:size] + "..."


def _message(err: Any, loc: Loc = ()) -> str:
    """The text of one pydantic error; the value is shown unless it is a secret's."""
    msg = _clip(str(err["msg"]).removeprefix("Value error, "), 300)
    if err["type"] == "missing":
        return "required answer missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "secret_ref" or _is_secret(loc):
        return msg
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
        return f"{msg} (got {_clip(repr(value))})"
    return msg


def _errors(exc: ValidationError, data: Any = None) -> list[tuple[Loc, str]]:
    """Each error's key path (without pydantic's tags) and message.

    ``data`` is what was validated: with it, a part of pydantic's ``loc`` is a
    key when the data has it, so a key such as ``a[b]`` is kept.
    """
    out = []
    for err in exc.errors():
        loc = _real_keys(err["loc"], data, err["type"] == "missing")
        out.append((loc, _message(err, loc)))
    return out


def _real_keys(loc: Loc, data: Any, missing: bool) -> Loc:
    """``loc`` without the union and validator tags pydantic puts in it."""
    if data is None:  # nothing to compare with: tags look like 'list[str]', 'function-...'
        return tuple(p for p in loc if not (isinstance(p, str) and
                                            ("[" in p or p.startswith("function-"))))
    keys: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (missing and i == len(loc) - 1):
            continue  # a tag (or the missing key's own name, kept below)
        keys.append(part)
    return tuple(keys)


def errors_of(exc: ValidationError, raw: Any, prefix: Loc = ()) -> list[Located]:
    """Pydantic errors as located problems (``raw``: the YAML tree, or None)."""
    data = raw
    for part in prefix:
        data = data[part] if data is not None else None
    return [Located(dotted(prefix + loc), line_of(raw, prefix + loc), msg)
            for loc, msg in _errors(exc, data)]


def located(problems: list[Problem], section: str, raw: Any) -> list[Located]:
    """Problems found by a step's ``validate()`` with path and line."""
    return [
        Located(dotted((section, *p.path)), line_of(raw, (section, *p.path)), p.message)
        for p in problems
    ]


# --- Reading the file: the one YAML loader, bounded in size, depth and work. ---

MAX_BYTES = 1024 * 1024  # an answers file is a few KB; a large fleet well under this
MAX_LINES = 20_000  # bounds parse time with MAX_NODES: ruamel reads ~50k lines or values/s
MAX_LINE = 64 * 1024  # characters; ruamel reads a longer comment in quadratic time
MAX_NODES = 10_000  # YAML values (mappings, lists, scalars): ~1,000 fleet hosts
MAX_DEPTH = 32  # the deepest real key path is hosts[i].section.list[j].key (5)
MAX_KEY = 256  # characters in a key
MAX_NUMBER = 64  # characters in a number (int() of a long digit string is slow)
CORE = "tag:yaml.org,2002:"
# Explicit tags that mean what the untagged value means; any other is refused.
PLAIN_TAGS = {CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
KNOWN_TAGS = {"!!" + t for t in ("omap", "set", "pairs", "binary", "timestamp", "merge", "value")}
# YAML's printable set (YAML 1.2 section 5.1); anything else is refused with its place.
NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A quoted bit of a YAML error text longer than one character (an escape such as
# '\\t' counts as one) may be part of a value: it is never shown.
QUOTED = re.compile(r"""'(?!<[a-z ]+>')[^']{3,}'|"[^"]{3,}\"""")


def _tag_name(tag: str) -> str:
    """A refused tag as it may be shown: a password in clear may start with '!'."""
    name = tag.replace(CORE, "!!")
    if name in KNOWN_TAGS:
        return name
    return "!!python/..." if name.startswith("!!python/") else "(a tag of its own, not shown)"


class _Refused(MarkedYAMLError):
    """Something the answers file may not contain; the text names it, never a value."""


def _refuse(what: str, mark: Any) -> NoReturn:
    raise _Refused(problem=what, problem_mark=mark)


class _Composer(Composer):  # type: ignore[misc]
    """ruamel's composer with the answers file's rules, checked as the file is read.

    Anchors and aliases are refused outright (no alias bomb can be expanded),
    so are merge keys and tags other than the core ones (``!!omap``, ``!!set``,
    ``!!python/...``), keys that are not strings or are repeated, nesting deeper
    than :data:`MAX_DEPTH` and more than :data:`MAX_NODES` values.  Dates stay
    strings (no answer is a date, and an invalid one would not construct).
    """

    nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent) or event.anchor is not None:
            _refuse("anchors and aliases (&name, *name) are not allowed", event.start_mark)
        tag = None if event.ctag is None else str(event.ctag)
        if tag is not None and tag not in PLAIN_TAGS:
            _refuse(f"the tag {_tag_name(tag)} is not allowed: only plain mappings, lists and "
                    "scalars", event.start_mark)
        if self.depth >= MAX_DEPTH:
            _refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            _refuse(f"more than {MAX_NODES} values in the file", event.start_mark)
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            bad = NOT_PRINTABLE.search(node.value)
            if bad:  # written as an escape ("\0", "\ud800") in a quoted string
                _refuse(f"control character U+{ord(bad.group()):04X} in a value is not allowed",
                        node.start_mark)
            if node.tag == CORE + "timestamp":
                node.tag = CORE + "str"
            elif node.tag in (CORE + "int", CORE + "float") and len(node.value) > MAX_NUMBER:
                _refuse(f"a number longer than {MAX_NUMBER} characters", node.start_mark)
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, int] = {}
        for key, _value in node.value:
            if key.tag == CORE + "merge":
                _refuse("merge keys (<<) are not allowed: write the keys out", key.start_mark)
            if not isinstance(key, ScalarNode) or key.tag != CORE + "str":
                _refuse("a key must be a string (quote it)", key.start_mark)
            if not 0 < len(key.value) <= MAX_KEY:
                _refuse(f"a key must have 1 to {MAX_KEY} characters", key.start_mark)
            if key.value in seen:
                _refuse(f"the key '{key.value}' is repeated (first on line "
                        f"{seen[key.value]})", key.start_mark)
            seen[key.value] = key.start_mark.line + 1
        return node


class _Scanner(RoundTripScanner):  # type: ignore[misc]
    """ruamel's scanner, stopping at the first bracket nested too deep.

    The composer sees a nesting only after the scanner has read ahead over the
    rest of the line, a long way on a line of ``[[[[...``.
    """

    def fetch_flow_collection_start(self, token: Any, to_push: Any) -> None:
        if len(self.flow_context) >= MAX_DEPTH:
            _refuse(f"nested deeper than {MAX_DEPTH} levels", self.reader.get_mark())
        super().fetch_flow_collection_start(token, to_push)


def _yaml() -> YAML:
    """The one YAML loader of answers files (round-trip: it keeps lines)."""
    yaml = YAML(typ="rt")
    yaml.Scanner = _Scanner
    yaml.Composer = _Composer
    return yaml


def _at(path: Path, line: int, column: int, what: str) -> str:
    """A problem of the file itself, with its place (lines and columns from 1)."""
    return f"{path} (line {line}): {what} (column {column})"


def _at_offset(path: Path, data: bytes | str, pos: int, what: str) -> str:
    """A problem at offset ``pos`` of ``data``."""
    nl: Any = b"\n" if isinstance(data, bytes) else "\n"
    return _at(path, data.count(nl, 0, pos) + 1, pos - data.rfind(nl, 0, pos), what)


def _text(path: Path) -> str:
    """The file as text: a regular file of at most MAX_BYTES, UTF-8, printable."""
    try:
        data = read_regular(path, MAX_BYTES)
    except InputRefused as exc:
        raise AnswersError([f"{path}: cannot read: {exc}"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnswersError([_at_offset(path, data, exc.start,
                                       "not UTF-8 text (answers files are UTF-8)")]) from None
    lines = text.count("\n")
    if lines > MAX_LINES:
        raise AnswersError([_at(path, MAX_LINES + 1, 1, f"more than {MAX_LINES} lines")])
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE:
            raise AnswersError([_at(path, number, MAX_LINE + 1,
                                    f"a line longer than {MAX_LINE} characters")])
    bad = NOT_PRINTABLE.search(text)
    if bad:
        raise AnswersError([_at_offset(path, text, bad.start(), f"control character "
                                       f"U+{ord(bad.group()):04X} is not allowed")]) from None
    return text


def _yaml_problem(exc: MarkedYAMLError) -> str:
    """A YAML error as its problem text only: never the source snippet ruamel adds."""
    text = exc.problem or exc.context or "not valid YAML"
    if not isinstance(exc, _Refused):
        text = "not valid YAML: " + QUOTED.sub("(not shown)", text)
    return text


def read_yaml(path: Path) -> Any:
    """Parse ``path`` keeping line numbers; raises :class:`AnswersError`.

    Bounded: see :data:`MAX_BYTES`, :data:`MAX_NODES`, :data:`MAX_DEPTH` and
    :class:`_Composer`.  A message names a line, a column and what is wrong,
    never a value: the file may hold a password written in clear by mistake.
    """
    text = _text(path)
    try:
        data = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise AnswersError([_at(path, line, column, _yaml_problem(exc))]) from None
    if not isinstance(data, dict):
        raise AnswersError([f"{path} (line 1): expected a mapping with 'version: 1' at the top"])
    return data


@dataclass
class HostAnswers:
    """One host of a fleet: its merged answers, validated, and as plain data."""

    name: str
    answers: Answers
    data: dict[str, Any]


@dataclass
class Answers:
    """A validated answers file: the sections present, and the raw YAML for lines.

    A fleet file (with ``hosts:``) has its per-host answers in ``hosts``.
    """

    path: Path | None
    raw: Any
    sections: dict[str, BaseModel]
    interactive: list[str]
    hosts: list[HostAnswers] = field(default_factory=list)
    # early_commands / late_commands / error_commands, when answered.
    commands: dict[str, commands_mod.CommandList] = field(default_factory=dict)
    # confirm: the confirmation window of risky operations, when answered.
    confirm: ConfirmAnswers | None = None

    def selected(self) -> list[Step]:
        """The registered steps that have a section, in registry order."""
        return [s for s in REGISTRY if s.name in self.sections]


def validate(raw: Any, path: Path | None = None) -> Answers:
    """Validate a parsed answers file; raises :class:`AnswersError` with every problem."""
    plain = _plain(raw)
    if isinstance(plain, dict) and plain.get("hosts") is not None:
        return _validate_fleet(raw, plain, path)
    try:
        doc = model().model_validate(plain)
    except ValidationError as exc:
        raise AnswersError([str(p) for p in errors_of(exc, raw)]) from None
    return _answers(doc, path, raw)


def _answers(doc: Any, path: Path | None, raw: Any) -> Answers:
    sections = {s.name: getattr(doc, s.name) for s in REGISTRY if getattr(doc, s.name) is not None}
    lists = {n: getattr(doc, n) for n in commands_mod.LISTS if getattr(doc, n) is not None}
    return Answers(path, raw, sections, list(doc.interactive), commands=lists,
                   confirm=doc.confirm)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` onto ``base``: mappings merged, anything else replaced, ``None`` removes."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _found(node: Any, loc: Loc) -> bool:
    """True if every key of ``loc`` is present in the plain tree ``node``."""
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _host_entries(raw: Any, entries: Any) -> list[Located]:
    """Shape of ``hosts:`` (names, known sections, no duplicates)."""
    if not isinstance(entries, list) or not entries:
        return [Located("hosts", line_of(raw, ("hosts",)), "expected a list of hosts, "
                        "each with a 'name' (and optional per-host overrides)")]
    try:
        TypeAdapter(_hosts_type()).validate_python(entries)
    except ValidationError as exc:
        return errors_of(exc, raw, ("hosts",))
    seen: dict[str, int] = {}
    problems = []
    for i, entry in enumerate(entries):
        name = entry["name"]
        if name in seen:
            problems.append(Located(f"hosts[{i}].name", line_of(raw, ("hosts", i, "name")),
                                    f"'{name}' is listed twice (also hosts[{seen[name]}])"))
        seen.setdefault(name, i)
    return problems


def _check(data: dict[str, Any]) -> tuple[Any, list[tuple[Loc, str]]]:
    """``data`` validated by the whole-file model: (the model, []) or (None, errors)."""
    try:
        return model().model_validate(data), []
    except ValidationError as exc:
        return None, _errors(exc, data)


def _validate_fleet(raw: Any, plain: dict[str, Any], path: Path | None) -> Answers:
    """Validate each host's base + overrides; a problem names its host when it is theirs."""
    entries = plain["hosts"]
    problems = _host_entries(raw, entries)
    if problems:
        raise AnswersError([str(p) for p in problems])
    base = {k: v for k, v in plain.items() if k != "hosts"}
    # Sections are independent: each base section is checked once, and per host only
    # the sections it overrides, so the work grows with the file, not hosts x base.
    steps = set(step_names())
    top = {k: v for k, v in base.items() if k not in steps}
    top_doc, top_errors = _check(top)
    checked = {s: _check({**top, s: v}) for s, v in base.items() if s in steps}
    # Problems in the base are listed once, with the hosts they affect.
    from_base: dict[Located, list[str]] = {}
    hosts = []
    for i, entry in enumerate(entries):
        name, overlay = entry["name"], {k: v for k, v in entry.items() if k != "name"}
        data = deep_merge(base, overlay)
        mine = {s: checked[s] if s not in overlay else _check({**top, s: data[s]})
                for s in data if s in steps}
        errors = top_errors + [(loc, msg) for s, (_doc, errs) in mine.items()
                               for loc, msg in errs if loc[:1] == (s,)]
        if not errors:
            sections = {s.name: getattr(mine[s.name][0], s.name) for s in REGISTRY
                        if s.name in mine and getattr(mine[s.name][0], s.name) is not None}
            hosts.append(HostAnswers(name, Answers(path, data, sections,
                                                   list(top_doc.interactive)), data))
            continue
        for loc, msg in errors:
            # The host's own problem: a key it overrides, or one missing from a section
            # it overrides; anything else comes from the base.
            if _found(overlay, loc) or (_found(overlay, loc[:1]) and not _found(base, loc)):
                problems.append(Located(f"hosts[{i}] ({name}).{dotted(loc)}",
                                        line_of(raw, ("hosts", i, *loc)), msg))
            else:
                from_base.setdefault(Located(dotted(loc), line_of(raw, loc), msg), []).append(name)
    for where, names in from_base.items():
        suffix = "" if len(names) == len(entries) else f" (hosts {', '.join(names)})"
        problems.append(Located(where.path, where.line, where.message + suffix))
    if problems:
        raise AnswersError([str(p) for p in problems])
    return Answers(path, raw, {}, list(base.get("interactive", [])), hosts)


def load(path: Path) -> Answers:
    """Read and validate an answers file."""
    return validate(read_yaml(path), path)


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers as plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML (ruamel keeps the comments of commented maps).

    A value used twice is written out twice, never as an anchor and alias:
    the loader refuses those (see :func:`read_yaml`).
    """
    import io

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.representer.ignore_aliases = lambda _data: True
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def write(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write answers as YAML, mode 0600 (they may name secret files or variables).

    Atomic and never through a link (:func:`backends.hostfiles.atomic_write`);
    raises ``BackendError`` if the target is refused.
    """
    from backends.hostfiles import atomic_write

    atomic_write(path, (header + dump_yaml(data)).encode(), 0o600)


TEMPLATE_HEADER = """\
# hostsetup answers file (format version 1).
# Each section configures one step; leave a section out to skip that step.
# 'interactive' lists what the wizard asks although answered: '*', sections, section.key.
# Secrets are references, never values: env:NAME or file:PATH.
# Check it with: hostsetup plan --answers FILE
"""


def template() -> str:
    """A commented example answers file covering every step (it validates)."""
    body = CommentedMap(version=1, interactive=[])
    for step in REGISTRY:
        section = CommentedMap(step.example())
        for key, info in step.Answers.model_fields.items():
            if key in section and info.description:
                section.yaml_add_eol_comment(info.description, key)
        body[step.name] = section
        body.yaml_set_comment_before_after_key(step.name, before=f"\n{step.title}")
    return (TEMPLATE_HEADER + dump_yaml(body) + TEMPLATE_CONFIRM + commands_mod.TEMPLATE
            + TEMPLATE_HOSTS)


TEMPLATE_CONFIRM = """
# Risky operations (those that can cut the connection to the host, marked ~ by plan)
# are reverted unless confirmed in time: 'hostsetup confirm' from a new connection,
# or the probe (tcp: HOST:PORT, or ping: ADDRESS) reaching its target.
# confirm: {within: 120, tcp: "vcenter.example.net:443"}
"""

TEMPLATE_HOSTS = """
# Fleet runs (hostsetup fleet plan|apply): the sections above are the base; each
# host may override parts of them (mappings merged, lists replaced, null removes).
# hosts:
# - name: hv1
# - name: hv2
#   services: {require: [libvirtd.service]}
# - name: hv3
#   ovs_mirror: null
"""
