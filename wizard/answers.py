"""The answers file: YAML with line numbers, validated by one pydantic model.

The model is built from the step registry (one optional section per step),
so ``hostsetup schema`` and validation share one source of truth.  Every
problem is reported with its key path and line, e.g.
``ovs_mirror.mirrors[0].output_port (line 12): 'tap9' is not a port ...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from steps import REGISTRY
from steps.base import Problem, Step

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


def _top_model() -> type[BaseModel]:
    names = tuple(step_names())
    sections: dict[str, Any] = {
        s.name: (s.Answers | None, Field(None, description=s.title)) for s in REGISTRY
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "HostsetupAnswers",
        __config__=ConfigDict(extra="forbid", title="hostsetup answers file"),
        version=(Literal[1], Field(description="answers file format version")),
        interactive=(
            list[Literal[names]],  # type: ignore[valid-type]
            Field(default_factory=list, description="sections to ask even though answered"),
        ),
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


def errors_of(exc: ValidationError, raw: Any, prefix: Loc = ()) -> list[Located]:
    """Pydantic errors as located problems."""
    out = []
    for err in exc.errors():
        # pydantic adds union/function tags to loc; keep only real keys.
        loc = prefix + tuple(p for p in err["loc"] if not _is_tag(p))
        out.append(Located(dotted(loc), line_of(raw, loc), _message(err)))
    return out


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
class Answers:
    """A validated answers file: the sections present, and the raw YAML for lines."""

    path: Path | None
    raw: Any
    sections: dict[str, BaseModel]
    interactive: list[str]

    def selected(self) -> list[Step]:
        """The registered steps that have a section, in registry order."""
        return [s for s in REGISTRY if s.name in self.sections]


def validate(raw: Any, path: Path | None = None) -> Answers:
    """Validate a parsed answers file; raises :class:`AnswersError` with every problem."""
    try:
        doc = model().model_validate(_plain(raw))
    except ValidationError as exc:
        raise AnswersError([str(p) for p in errors_of(exc, raw)]) from None
    sections = {s.name: getattr(doc, s.name) for s in REGISTRY if getattr(doc, s.name) is not None}
    return Answers(path, raw, sections, list(doc.interactive))  # type: ignore[attr-defined]


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


def write(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write answers as YAML, mode 0600 (they may name secret files or variables)."""
    import io

    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(header + buf.getvalue())


TEMPLATE_HEADER = """\
# hostsetup answers file (format version 1).
# Each section configures one step; leave a section out to skip that step.
# 'interactive' lists sections the wizard asks even though they are answered.
# Secrets are references, never values: env:NAME or file:PATH.
# Check it with: hostsetup plan --answers FILE
"""


def template() -> str:
    """A commented example answers file covering every step (it validates)."""
    import io

    yaml = YAML()
    yaml.default_flow_style = False
    body = CommentedMap(version=1, interactive=[])
    for step in REGISTRY:
        section = CommentedMap(step.example())
        for key, info in step.Answers.model_fields.items():
            if key in section and info.description:
                section.yaml_add_eol_comment(info.description, key)
        body[step.name] = section
        body.yaml_set_comment_before_after_key(step.name, before=f"\n{step.title}")
    buf = io.StringIO()
    yaml.dump(body, buf)
    return TEMPLATE_HEADER + buf.getvalue()
