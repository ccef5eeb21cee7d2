"""The wizard with `interactive:` entries ('*', a section, section.key) and the
commands around the run (shown on Review, run by Apply), in tmux at 80x24."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import ROOT
from ruamel.yaml import YAML
from tmux import Terminal, apply_and_finish

from sandbox.core import Sandbox
from wizard.answers import dump_yaml


def wizard(sb: Sandbox, tmp: Path, **top: object) -> Terminal:
    """The wizard on the sandbox host's services answers (complete) with ``top`` keys
    added."""
    data = YAML(typ="safe").load((sb.dir / "answers.yaml").read_text())
    data = {"version": data["version"], "services": data["services"]}
    answers = tmp / "answers.yaml"
    answers.write_text(dump_yaml({**data, **top}))
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} "
                    f"--log {tmp}/wizard.log --report {tmp}/report.json", cwd=tmp)


def test_complete_answers_go_straight_to_review(dbus_host: Sandbox, tmp_path: Path) -> None:
    """The baseline the entries below change: nothing listed, nothing asked."""
    t = wizard(dbus_host, tmp_path)
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        t.wait_for("Review")
    finally:
        t.close()


def test_wildcard_asks_every_section_prefilled(dbus_host: Sandbox, tmp_path: Path) -> None:
    t = wizard(dbus_host, tmp_path, interactive=["*"])
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        t.wait_for("Host services: connection")
        t.send("F12")
        screen = t.wait_for("Start timeout (s)")
        assert "30" in screen  # prefilled from the answers file
    finally:
        t.close()


def test_per_key_entry_opens_the_window_at_that_key(dbus_host: Sandbox, tmp_path: Path) -> None:
    marker = tmp_path / "late-ran"
    t = wizard(dbus_host, tmp_path, interactive=["services.timeout"],
               late_commands=[["touch", str(marker)]])
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        t.wait_for("Start timeout (s)")
        # The cursor is on the timeout: typing replaces what the field shows.
        t.send("C-e", *["BSpace"] * 4)
        t.type("45")
        row = next(line for line in t.screen().splitlines() if "Start timeout (s)" in line)
        assert "45" in row  # what was typed went into the timeout field
        t.send("F12")
        t.wait_for("Review")
        t.send("NPage")  # the commands come after the steps
        review = t.wait_for("late_commands")
        assert "+ run: touch" in review and "runs after a successful apply" in review
        assert not marker.exists()  # shown, not run, before Apply
        t.send("Tab", "Enter")
        t.wait_for("Apply? ")
        t.send("Left", "Enter")
        t.wait_for("Summary")
        t.send("Enter")
        assert t.exit_code() == 0
    finally:
        t.close()
    assert marker.exists()
    report = json.loads((tmp_path / "report.json").read_text())
    late = next(s for s in report["steps"] if s["name"] == "late_commands")
    assert late["status"] == "applied" and late["changes"][0]["after"]["exit_code"] == 0
    services = next(s for s in report["steps"] if s["name"] == "services")
    assert services["status"] in ("applied", "unchanged")


def test_failing_early_command_stops_before_the_steps(dbus_host: Sandbox,
                                                       tmp_path: Path) -> None:
    t = wizard(dbus_host, tmp_path, interactive=["services"],
               early_commands=[["false"]])
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        t.wait_for("Host services: connection")
        t.send("F12")
        t.wait_for("Start timeout (s)")
        assert apply_and_finish(t) == 1
    finally:
        t.close()
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["steps"]][:2] == ["early_commands", "services"]
    assert report["steps"][0]["status"] == "failed"
    assert report["steps"][1]["status"] == "not run"
