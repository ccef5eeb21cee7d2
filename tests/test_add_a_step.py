"""The README's recipe, done: a fifth step ("sysctl") from one interface file, one
adapter file, one step file, one bundle table line and one registry line, with
no edit in wizard/.  The schema, the template, fleet overlays and the runner
(with the REAL bundle, which loads the new adapter lazily) pick it up.

In the repository the three files would be ``backends/interfaces/sysctl.py``,
``backends/adapters/sysctl.py`` and ``steps/sysctl.py``; here they are written
to a temporary directory so the test leaves the tree as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import steps
from backends import bundle
from backends.bundle import RealBackends
from wizard import answers as answers_mod
from wizard.exits import EXIT_OK, EXIT_PENDING
from wizard.runner import execute

INTERFACE = '''
"""Interface of the sysctl backend: kernel parameters by dotted name."""
from typing import Protocol, cast

from backends.interfaces import Backends

KIND = "sysctl"


class SysctlAPI(Protocol):
    def read(self, key: str) -> str | None: ...
    def write(self, key: str, value: str) -> None: ...


def sysctl_api(backends: Backends, root: str) -> SysctlAPI:
    return cast(SysctlAPI, backends.get(KIND, root))
'''

ADAPTER = '''
"""The sysctl adapter: files under a /proc/sys-like root."""
from pathlib import Path


class SysctlBackend:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key.replace(".", "/")

    def read(self, key: str) -> str | None:
        path = self._path(key)
        return path.read_text().strip() if path.exists() else None

    def write(self, key: str, value: str) -> None:
        self._path(key).write_text(value + "\\n")

    def close(self) -> None:
        pass
'''

STEP = '''
"""Step ``sysctl``: kernel parameters."""
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from hs_demo_sysctl_iface import sysctl_api
from steps.base import Change, Command, Context, Operation, Problem, Step, StepModel


class SysctlConnection(StepModel):
    root: str = Field("/proc/sys", title="Parameters root", description="where they are")


class SysctlAnswers(SysctlConnection):
    settings: dict[str, str] = Field(description="parameter -> value")


@dataclass(frozen=True)
class SysctlFacts:
    values: Mapping[str, str | None] = field(default_factory=dict)


class SysctlStep(Step[SysctlAnswers]):
    name, title, Answers = "sysctl", "Kernel parameters", SysctlAnswers
    Connection, Facts = SysctlConnection, SysctlFacts

    def example(self) -> dict[str, Any]:
        return {"root": "/proc/sys", "settings": {"net.ipv4.ip_forward": "1"}}

    def discover(self, connection: SysctlConnection, ctx: Context) -> SysctlFacts:
        api = sysctl_api(ctx.backends, connection.root)
        keys = connection.settings if isinstance(connection, SysctlAnswers) else {}
        return SysctlFacts({k: api.read(k) for k in keys})

    def validate(self, answers: SysctlAnswers, facts: SysctlFacts) -> list[Problem]:
        return [Problem(("settings", k), f"no parameter {k}")
                for k, v in facts.values.items() if v is None]

    def plan(self, answers: SysctlAnswers, ctx: Context) -> list[Operation]:
        now = self.facts(answers, ctx).values
        return [Operation(Change(f"sysctl {k}", "update", now[k], v),
                          {"op": "write", "key": k, "value": v},
                          {"op": "write", "key": k, "value": now[k]})
                for k, v in answers.settings.items() if now[k] != v]

    def execute(self, answers: SysctlAnswers, command: Command, ctx: Context) -> None:
        sysctl_api(ctx.backends, answers.root).write(command["key"], command["value"])

    def observe(self, answers: SysctlAnswers, command: Command, ctx: Context) -> bool:
        return sysctl_api(ctx.backends, answers.root).read(command["key"]) == command["value"]
'''


@pytest.fixture
def sysctl_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The three new files, plus the two one-line table entries."""
    code = tmp_path / "code"
    code.mkdir()
    for name, text in (("iface", INTERFACE), ("adapter", ADAPTER), ("step", STEP)):
        (code / f"hs_demo_sysctl_{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(code))
    # The bundle's table line and the registry line:
    monkeypatch.setitem(bundle.ADAPTERS, "sysctl", ("hs_demo_sysctl_adapter", "SysctlBackend"))
    from hs_demo_sysctl_step import SysctlStep  # type: ignore[import-not-found]

    monkeypatch.setattr(answers_mod, "_MODEL", None)  # the answers model is built once
    steps.REGISTRY.append(SysctlStep())
    try:
        root = tmp_path / "proc"
        (root / "net" / "ipv4").mkdir(parents=True)
        (root / "net" / "ipv4" / "ip_forward").write_text("0\n")
        yield str(root)
    finally:
        steps.REGISTRY.pop()
        answers_mod._MODEL = None
        for name in ("iface", "adapter", "step"):
            sys.modules.pop(f"hs_demo_sysctl_{name}", None)


def test_a_new_step_needs_no_wizard_edit(sysctl_step: str, tmp_path: Path) -> None:
    schema = answers_mod.json_schema()
    assert "sysctl" in schema["properties"]
    template = answers_mod.template()
    assert "\nsysctl:\n" in template and "parameter -> value" in template
    (tmp_path / "template.yaml").write_text(template)
    assert "sysctl" in answers_mod.load(tmp_path / "template.yaml").sections

    fleet = answers_mod.validate({"version": 1, "sysctl": {"settings": {"a.b": "1"}},
                                  "hosts": [{"name": "hv1", "sysctl": {"root": "/x"}}]})
    assert fleet.hosts[0].answers.sections["sysctl"].root == "/x"  # type: ignore[attr-defined]

    doc = answers_mod.validate({"version": 1, "sysctl": {
        "root": sysctl_step, "settings": {"net.ipv4.ip_forward": "1"}}})
    real = RealBackends()
    try:
        assert execute(doc, "plan", real).exit_code == EXIT_PENDING
        assert execute(doc, "apply", real).exit_code == EXIT_OK
        assert execute(doc, "plan", real).exit_code == EXIT_OK
    finally:
        real.close()
    assert (Path(sysctl_step) / "net" / "ipv4" / "ip_forward").read_text() == "1\n"
