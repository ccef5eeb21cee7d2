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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from steps import REGISTRY
from steps.base import Problem, Step
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
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}" if self.path else self.message


def dotted(loc: Loc) -> str:
    """``("a", 0, "b")`` -> ``a[0].b``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(raw: Any, loc: Loc) -> int | None:
    """The 1-based line of the deepest part of ``loc`` found in the YAML tree."""
    line, node = None, raw
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line, node = node.lc.key(part)[0] + 1, node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, node = node.lc.item(part)[0] + 1, node[part]
        else:
            break
    return line


def step_names() -> list[str]:
    return [s.name for s in REGISTRY]


HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


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


def _message(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return "required answer missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] in ("secret_ref",):
        return msg
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
        return f"{msg} (got {value!r})"
    return msg


def _errors(exc: ValidationError) -> list[tuple[Loc, str]]:
    # pydantic adds union/function tags to loc; keep only real keys.
    return [(tuple(p for p in err["loc"] if not _is_tag(p)), _message(err))
            for err in exc.errors()]


def errors_of(exc: ValidationError, raw: Any, prefix: Loc = ()) -> list[Located]:
    """Pydantic errors as located problems."""
    return [Located(dotted(prefix + loc), line_of(raw, prefix + loc), msg)
            for loc, msg in _errors(exc)]


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def located(problems: list[Problem], section: str, raw: Any) -> list[Located]:
    """Problems found by a step's ``validate()`` with path and line."""
    return [
        Located(dotted((section, *p.path)), line_of(raw, (section, *p.path)), p.message)
        for p in problems
    ]


def read_yaml(path: Path) -> Any:
    """Parse ``path`` keeping line numbers; raises :class:`AnswersError`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AnswersError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" (line {mark.line + 1})" if mark else ""
        raise AnswersError([f"{path}{line}: not valid YAML: {exc.problem}"]) from None
    if not isinstance(data, dict):
        raise AnswersError([f"{path}: expected a mapping with 'version: 1' at the top"])
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
    return Answers(path, raw, sections, list(doc.interactive), commands=lists)


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


def _validate_fleet(raw: Any, plain: dict[str, Any], path: Path | None) -> Answers:
    """Validate each host's base + overrides; a problem names its host when it is theirs."""
    entries = plain["hosts"]
    problems = _host_entries(raw, entries)
    if problems:
        raise AnswersError([str(p) for p in problems])
    base = {k: v for k, v in plain.items() if k != "hosts"}
    # Problems in the base are listed once, with the hosts they affect.
    from_base: dict[Located, list[str]] = {}
    hosts = []
    for i, entry in enumerate(entries):
        name, overlay = entry["name"], {k: v for k, v in entry.items() if k != "name"}
        data = deep_merge(base, overlay)
        try:
            hosts.append(HostAnswers(name, _answers(model().model_validate(data), path, data),
                                     data))
            continue
        except ValidationError as exc:
            errors = _errors(exc)
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
    """``data`` as block-style YAML (ruamel keeps the comments of commented maps)."""
    import io

    yaml = YAML()
    yaml.default_flow_style = False
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
    return TEMPLATE_HEADER + dump_yaml(body) + commands_mod.TEMPLATE + TEMPLATE_HOSTS


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
