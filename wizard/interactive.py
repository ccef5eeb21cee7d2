"""``interactive:`` entries: what the wizard asks even though it is answered.

As subiquity's ``interactive-sections`` and debconf's ``seen`` flag, an entry is

- ``"*"``: every section, every key (the wizard asks everything, prefilled);
- a section (``ovs_mirror``): that step's windows;
- a key of a section (``vsphere_network.password``, ``ovs_mirror.mirrors``):
  that question only, the rest of the section stays as answered.

Anything else is invalid (exit 3, with its line).  :func:`interactive_keys`
turns the entries into what the wizard must ask, per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from steps import REGISTRY

ALL: Literal["*"] = "*"
# Per step: ALL (the whole section) or the keys to ask.
Asked = frozenset[str] | Literal["*"]


def _sections() -> dict[str, set[str]]:
    return {s.name: set(s.Answers.model_fields) for s in REGISTRY}


def check_entry(entry: str) -> str:
    """Validate one entry (pydantic validator); the error says what is expected."""
    sections = _sections()
    section, dot, key = entry.partition(".")
    if entry == ALL or (section in sections and (not dot or key in sections[section])):
        return entry
    if section in sections:
        raise PydanticCustomError(
            "interactive_key", "'{entry}': section {section} has no key '{key}' "
            "(its keys: {keys})", {"entry": entry, "section": section, "key": key,
                                   "keys": ", ".join(sorted(sections[section]))})
    raise PydanticCustomError(
        "interactive_entry", "'{entry}': expected '*', a section ({names}) or "
        "section.key", {"entry": entry, "names": ", ".join(sections)})


InteractiveEntry = Annotated[
    str,
    AfterValidator(check_entry),
    WithJsonSchema({"type": "string", "description": "'*', a section, or section.key"}),
]


def interactive_keys(entries: Any) -> dict[str, Asked]:
    """What the wizard asks although answered, per step name: :data:`ALL` (the
    whole section) or a set of keys.  Steps not in the result are asked only for
    what is missing or invalid.

    ``entries`` is an :class:`wizard.answers.Answers` (its ``interactive``) or
    the list itself, already validated (unknown entries are ignored here).
    """
    items: Iterable[str] = getattr(entries, "interactive", entries) or []
    names = [s.name for s in REGISTRY]
    asked: dict[str, Asked] = {}
    for entry in items:
        section, dot, key = str(entry).partition(".")
        if entry == ALL:
            return dict.fromkeys(names, ALL)
        if section not in names:
            continue
        if not dot:
            asked[section] = ALL
        elif asked.get(section) != ALL:
            asked[section] = frozenset({*asked.get(section, frozenset()), key})
    return asked
