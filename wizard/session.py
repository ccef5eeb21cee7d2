"""What a wizard session keeps that is not UI: the answers file it starts from,
the answers it records, its log and its report.

The CLI and the wizard's screens both use this module; neither imports the
other.  Only the standard library is imported at start-up (the first screen
must not wait for pydantic).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wizard.exits import EXIT_FAILED

Loc = tuple[str | int, ...]


def setup_logging(path: Path | None) -> None:
    """Log to ``path`` (INFO) if given; warnings always go to stderr.

    The log is opened with :func:`backends.hostfiles.open_log` (append, mode
    0600 at creation, never through a link); raises ``BackendError`` if refused.
    """
    root = logging.getLogger("hostsetup")
    root.setLevel(logging.INFO)
    if path is not None:
        from backends.hostfiles import open_log

        handler = logging.StreamHandler(open_log(path))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)


def write_report(path: Path | None, report: dict[str, Any]) -> bool:
    """Write the JSON report atomically (mode 0600, never through a link).

    Returns False, after saying why on stderr, if it could not be written.
    """
    if path is None:
        return True
    from backends.hostfiles import atomic_write
    from backends.interfaces import BackendError

    try:
        atomic_write(path, (json.dumps(report, indent=2) + "\n").encode(), 0o600)
    except BackendError as exc:
        print(f"hostsetup: report not written: {exc}", file=sys.stderr)
        logging.getLogger("hostsetup").error("report not written: %s", exc)
        return False
    return True


def reported(path: Path | None, report: dict[str, Any], code: int) -> int:
    """Write the report; a run that was fine but whose report is lost exits 1."""
    return code if write_report(path, report) or code != 0 else EXIT_FAILED


def check_outputs(args: argparse.Namespace) -> str | None:
    """Before anything runs: refuse --report/--record targets a write could be
    redirected through, and open --log.  Returns the problem, if any."""
    targets = [t for t in (args.report, getattr(args, "record", None)) if t is not None]
    if not targets and args.log is None:
        return None  # the first screen waits for no import
    from backends.hostfiles import check_target
    from backends.interfaces import BackendError

    try:
        for target in targets:
            check_target(target)
        setup_logging(args.log)
    except BackendError as exc:
        return str(exc)
    return None


def default_log() -> Path:
    """/var/log/hostsetup when writable, else the user's state dir."""
    base = Path("/var/log/hostsetup")
    if not os.access(base if base.exists() else base.parent, os.W_OK):
        base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "hostsetup"
    base.mkdir(parents=True, exist_ok=True)
    return base / time.strftime("hostsetup-%Y%m%d-%H%M%S.log")


@dataclass(frozen=True)
class Issue:
    """A problem of an answers file: its key path, line (if known) and message."""

    loc: Loc
    line: int | None
    message: str


@dataclass
class Loaded:
    """An answers file as the wizard starts from it.

    ``data`` holds the sections as plain data; ``ask`` the steps to ask (missing,
    invalid or listed under ``interactive:``), ``focus`` per step the first key
    ``interactive:`` names (its window opens there); ``problems`` what is wrong in the
    sections (shown before the first window), ``unknown`` the keys no step knows
    (the operator may drop them), ``bad_interactive`` the ``interactive:``
    entries that name no step nor a step's key, and ``commands`` the lists of
    commands around the run (``early_commands`` ...) and ``confirm``, as in the file.
    """

    raw: Any = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected: list[str] = field(default_factory=list)
    ask: set[str] = field(default_factory=set)
    problems: list[Issue] = field(default_factory=list)
    unknown: list[Issue] = field(default_factory=list)
    bad_interactive: list[str] = field(default_factory=list)
    focus: dict[str, str] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)


class Unusable(Exception):
    """The answers file cannot be used at all (unreadable, not YAML, a fleet file)."""


def load_answers(path: Path) -> Loaded:
    """Prefill from an answers file; sections that are invalid, missing or listed
    under ``interactive:`` are asked.  Raises :class:`Unusable` with the reason."""
    from pydantic import ValidationError
    from pydantic_core import PydanticCustomError

    from steps import REGISTRY
    from wizard.answers import AnswersError, _errors, _plain, line_of, model, read_yaml
    from wizard.commands import LISTS
    from wizard.interactive import ALL, check_entry, interactive_keys

    try:
        raw = read_yaml(path)
    except AnswersError as exc:
        raise Unusable("\n".join(exc.problems)) from None
    plain = _plain(raw)
    if plain.get("hosts") is not None:
        raise Unusable(f"{path} lists hosts: it is for a fleet run.\n\n"
                       "Use 'hostsetup fleet plan|apply --answers FILE'.")
    names = [s.name for s in REGISTRY]
    interactive = plain.get("interactive") or []
    if not isinstance(interactive, list):
        interactive = [interactive]
    out = Loaded(raw=raw, selected=[n for n in names if n in plain],
                 commands={k: plain[k] for k in (*LISTS, "confirm") if k in plain})
    good = []
    for entry in interactive:
        try:
            good.append(check_entry(str(entry)))
        except PydanticCustomError:
            out.bad_interactive.append(str(entry))
    asked = interactive_keys(good)
    for step in REGISTRY:
        section = plain.get(step.name)
        if not isinstance(section, dict):
            out.ask.add(step.name)
            continue
        out.data[step.name] = dict(section)
        keys = asked.get(step.name)
        if keys is not None:
            out.ask.add(step.name)
            if keys != ALL:  # per key: the window opens at the first one listed
                out.focus[step.name] = next(k for k in map(str, good)
                                            if k.partition(".")[2] in keys
                                            and k.startswith(step.name + "."))
    try:
        model().model_validate(plain)
    except ValidationError as exc:
        for loc, msg in _errors(exc, plain):
            issue = Issue(loc, line_of(raw, loc), msg)
            if loc and loc[0] == "interactive":
                continue  # reported as bad_interactive
            if msg == "unknown key":
                out.unknown.append(issue)
            else:
                out.problems.append(issue)
                if loc and loc[0] in out.data:
                    out.ask.add(str(loc[0]))
    return out


def drop_keys(data: dict[str, Any], locs: list[Loc]) -> None:
    """Remove the keys at ``locs`` (unknown keys the operator chose to drop)."""
    for loc in sorted(locs, key=len, reverse=True):
        node: Any = data
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict):
            node.pop(loc[-1], None)


def record(path: Path, answers: Any) -> None:
    """Save the answers used (mode 0600); secrets stay references."""
    data: dict[str, Any] = {"version": 1}
    for name, section in answers.sections.items():
        data[name] = section.model_dump(mode="json")
    record_data(path, data)


def record_data(path: Path, data: dict[str, Any], note: str = "") -> None:
    """Write answers given as plain data (mode 0600), with the replay header.

    Typed secrets are already references (:func:`secret_reference`).
    """
    from wizard.answers import write

    refs = sorted({v for s in data.values() if isinstance(s, dict) for v in _refs(s)})
    header = "# Recorded by the hostsetup wizard. Replay: hostsetup apply --answers FILE\n"
    header += note
    if refs:
        header += "# Secrets are references; set them before replaying: " + ", ".join(refs) + "\n"
    write(path, data, header)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return [node] if isinstance(node, str) and node.startswith("env:HOSTSETUP_SECRET_") else []


def secret_reference(key: str, text: str) -> str:
    """A secret typed in clear stays in this process's environment only.

    The answers (and a recorded file) hold the reference ``env:NAME``.
    """
    from steps.base import SECRET_PATTERN

    if SECRET_PATTERN.match(text):
        return text
    name = "HOSTSETUP_SECRET_" + "".join(c if c.isalnum() else "_" for c in key).upper()
    os.environ[name] = text
    return f"env:{name}"
