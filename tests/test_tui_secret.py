"""A password typed into the wizard: used, never written; the record holds a reference."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, hostsetup
from tmux import Terminal, apply_and_finish

from sandbox import vcsim
from sandbox.core import Sandbox
from sandbox.manage import write_yaml


@pytest.fixture
def vsphere_host(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(dir=tmp_path / "host")
    try:
        vcsim.up(sb)
        yield sb
    finally:
        sb.stop()


def test_typed_password_is_recorded_as_reference(vsphere_host: Sandbox, tmp_path: Path) -> None:
    password = Path(vsphere_host.env["HOSTSETUP_VSPHERE_PASSWORD_FILE"]).read_text().strip()
    section = dict(vsphere_host.answers["vsphere_network"])
    del section["password"]  # missing: the wizard must ask for it
    answers, rec = tmp_path / "answers.yaml", tmp_path / "recorded.yaml"
    write_yaml(answers, {"version": 1, "vsphere_network": section})
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} --record {rec} "
                 f"--log {tmp_path}/w.log --report {tmp_path}/r.json", cwd=tmp_path)
    try:
        screen = t.wait_for("Answers file: problems")  # with the field's label and line
        assert "vSphere networking: Password (line 2): required answer missing" in screen
        t.send("Enter")
        t.wait_for("[*] vSphere networking")
        t.send("F12")
        t.wait_for("Password")
        t.type(password)  # the window opens at the field the answers file lacks
        screen = t.screen()
        assert password not in screen  # typed as stars
        t.send("F12")
        t.wait_for("held as env:HOSTSETUP_SECRET_PASSWORD")  # said on screen, once
        t.send("Enter")
        t.wait_for("vSwitches")
        assert apply_and_finish(t) == 0
    finally:
        t.close()
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    recorded = rec.read_text()
    assert "password: env:HOSTSETUP_SECRET_PASSWORD" in recorded
    assert "set them before replaying: env:HOSTSETUP_SECRET_PASSWORD" in recorded
    for f in (rec, tmp_path / "w.log", tmp_path / "r.json"):
        assert password not in f.read_text(), f

    # Replay: without the variable, a clear error naming it; with it, nothing left to do.
    res = hostsetup("plan", "--answers", str(rec))
    assert res.returncode == 3 and "HOSTSETUP_SECRET_PASSWORD is not set" in res.stderr
    res = hostsetup("plan", "--answers", str(rec), env={"HOSTSETUP_SECRET_PASSWORD": password})
    assert res.returncode == 0, res.stdout + res.stderr
    assert password not in res.stdout + res.stderr
