"""Start-up stays light: the CLI and the first screen import no heavy library."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

HEAVY = ["pydantic", "pyVmomi", "libvirt", "celery", "redis", "gi", "pydbus", "ovs", "ruamel"]


def test_cli_and_tui_modules_import_no_heavy_library() -> None:
    code = (
        "import sys, wizard.cli, wizard.tui\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version() -> None:
    out = subprocess.run([f"{ROOT}/.venv/bin/hostsetup", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("hostsetup ")


def test_wizard_without_a_terminal_refuses_at_once() -> None:
    res = subprocess.run([sys.executable, "-m", "wizard"], cwd=ROOT, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=10)
    assert res.returncode == 2
    assert "the wizard needs a terminal" in res.stderr
