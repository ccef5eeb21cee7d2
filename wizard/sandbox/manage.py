"""``sandbox up|down|status``: start the components, write ``answers.yaml`` and ``env``."""

from __future__ import annotations

import importlib
import io
import shlex
from pathlib import Path
from typing import Any

from wizard.sandbox.core import Sandbox, SandboxError, alive

# Components in start order; each module has ``up(sb: Sandbox) -> None``.
COMPONENTS = [
    "wizard.sandbox.dbus",
    "wizard.sandbox.ovs",
    "wizard.sandbox.libvirt",
]


def up(directory: Path, name: str = "sandbox", tag: str = "hs0") -> Sandbox:
    """Start every component under ``directory``; on failure stop what started."""
    directory = directory.resolve()
    if (directory / "state.json").exists() and any(
        alive(p.pid) for p in Sandbox.load(directory).procs
    ):
        raise SandboxError(f"a sandbox is already running in {directory}; run 'sandbox down' first")
    sb = Sandbox(dir=directory, name=name, tag=tag)
    sb.save()
    try:
        for module in COMPONENTS:
            importlib.import_module(module).up(sb)
    except BaseException:
        sb.stop()
        raise
    write_outputs(sb)
    return sb


def write_outputs(sb: Sandbox) -> None:
    """Write ``DIR/env`` (shell exports) and ``DIR/answers.yaml``."""
    env_lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(sb.env.items())]
    (sb.dir / "env").write_text("\n".join(env_lines) + "\n")
    write_yaml(sb.dir / "answers.yaml", {"version": 1, **sb.answers}, header=ANSWERS_HEADER)
    # For `make demo`: the same answers, every section shown in the wizard.
    write_yaml(sb.dir / "demo-answers.yaml",
               {"version": 1, "interactive": list(sb.answers), **sb.answers},
               header=ANSWERS_HEADER)


ANSWERS_HEADER = "# Answers aimed at the hostsetup sandbox; written by 'hostsetup sandbox up'.\n"


def write_yaml(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write ``data`` as block-style YAML."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    path.write_text(header + buf.getvalue())


def down(directory: Path) -> list[str]:
    """Stop everything ``up`` started in ``directory``, by pid."""
    directory = directory.resolve()
    if not (directory / "state.json").exists():
        return []
    stopped = Sandbox.load(directory).stop()
    for module in COMPONENTS:
        cleanup = getattr(importlib.import_module(module), "down", None)
        if cleanup is not None:
            cleanup(Sandbox.load(directory))
    return stopped


def status(directory: Path) -> list[tuple[str, int, bool]]:
    """Each recorded process: name, pid, running."""
    directory = directory.resolve()
    if not (directory / "state.json").exists():
        return []
    return [(p.name, p.pid, alive(p.pid)) for p in Sandbox.load(directory).procs]
