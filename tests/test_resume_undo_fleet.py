"""Resume and undo through fleet agents: two sandbox hosts, each with the agent unit of
``deploy/`` (a Celery worker under the host's systemd) and its own journal in the
host's /var/lib/hostsetup.  hv1's agent is given the test-only pause point (a drop-in),
so its apply is killed after its first operation took effect; before that, an apply run on
hv1 itself is killed the same way."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, hostsetup

from sandbox import host as host_mod
from sandbox import manage
from sandbox.core import Sandbox
from wizard import journal
from wizard.answers import write

HOSTS = ("hv1", "hv2")
DROPIN = "/etc/systemd/system/hostsetup-agent.service.d/test-kill.conf"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("ruf") / "fleet"
    try:
        manage.up_fleet(directory, len(HOSTS), components=[manage.HOST])
        yield directory
    finally:
        manage.down(directory)


def member(fleet: Path, name: str) -> Sandbox:
    return Sandbox.load(fleet / name)


def env(fleet: Path) -> dict[str, str]:
    sb = Sandbox.load(fleet)
    return {k: sb.env[k] for k in ("HOSTSETUP_REDIS_URL", "HOSTSETUP_REDIS_PASSWORD")}


def restart_agent(fleet: Path, name: str, kill_at: int | None) -> None:
    """hv1's agent again, with (or without) the pause point in its environment."""
    sb = member(fleet, name)
    script = (f"mkdir -p {Path(DROPIN).parent} && printf '[Service]\\nEnvironment=HOSTSETUP_TEST=1"
              f" HOSTSETUP_TEST_KILL_AT={kill_at}\\n' > {DROPIN}" if kill_at else f"rm -f {DROPIN}")
    host_mod.run_inside(sb, "agent pause point", "sh", "-ec",
                        f"{script}\nsystemctl daemon-reload\nsystemctl restart hostsetup-agent")
    manage.wait_listening(Sandbox.load(fleet), {name}, lambda: None)


def runs(fleet: Path, name: str) -> list[journal.JournalRun]:
    """The host's journal, read from outside (its root)."""
    root = Path(member(fleet, name).env["HOSTSETUP_HOST_ROOT"], "var/lib/hostsetup")
    return journal.runs(root)


def fleet_cmd(fleet: Path, *args: str, report: Path) -> tuple[int, dict[str, Any], str]:
    res = hostsetup("fleet", *args, "--answers", str(fleet / "services.yaml"), "--lines",
                    "--report", str(report), env=env(fleet), timeout=300)
    data = json.loads(report.read_text())
    return res.returncode, data, res.stdout + res.stderr


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: h["status"] for h in data["hosts"]}


def local_apply_killed(fleet: Path, name: str, services: dict[str, Any]) -> None:
    """``hostsetup apply`` run on the host itself (its own journal, the one its agent
    reads), killed by the pause point after its first operation took effect."""
    sb = member(fleet, name)
    path = sb.dir / "local.yaml"  # DIR is bound at the same path inside
    write(path, {"version": 1, "services": services})
    res = subprocess.run(host_mod.exec_argv(
        sb, "env", "HOSTSETUP_TEST=1", "HOSTSETUP_TEST_KILL_AT=2",
        str(ROOT / ".venv/bin/hostsetup"), "apply", "--answers", str(path)),
        capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stdout + res.stderr


@pytest.mark.timeout(900)  # a sequence of runs, on 2 shared cores
def test_fleet_resume_and_undo_from_each_hosts_journal(fleet: Path, tmp_path: Path) -> None:
    hv1 = member(fleet, "hv1")
    services = host_mod.inside_answers({"services": hv1.answers["services"]})["services"]
    write(fleet / "services.yaml", {"version": 1, "services": services,
                                    "hosts": [{"name": n} for n in HOSTS]})
    report = tmp_path / "r.json"
    code, first, out = fleet_cmd(fleet, "plan", report=report)
    assert code == 4 and statuses(first) == dict.fromkeys(HOSTS, "pending"), out

    # An interrupted run on hv1: the agent reports it, and the fleet applies nothing.
    local_apply_killed(fleet, "hv1", services)
    [interrupted] = [r for r in runs(fleet, "hv1") if r.state == "interrupted"]
    code, data, out = fleet_cmd(fleet, "apply", report=report)
    assert code == 6 and statuses(data) == {"hv1": "interrupted run", "hv2": "pending"}, out
    assert data["stopped"] == "plan failed on some host: nothing applied"
    hv1_errors = data["hosts"][0]["errors"]
    assert any(f"run {interrupted.id} (apply" in e and "was interrupted" in e
               for e in hv1_errors), hv1_errors

    code, data, out = fleet_cmd(fleet, "resume", report=report)
    assert code == 0 and statuses(data) == {"hv1": "resumed", "hv2": "unchanged"}, out
    assert journal.read_path(interrupted.path).state == "resumed"
    code, data, out = fleet_cmd(fleet, "plan", report=report)
    assert code == 4 and statuses(data) == {"hv1": "unchanged", "hv2": "pending"}, out

    code, data, out = fleet_cmd(fleet, "undo", "--hosts", "hv1", "--dry-run", report=report)
    assert code == 0 and statuses(data) == {"hv1": "unchanged"}, out
    assert any("would revert: services: start unit" in n
               for s in data["hosts"][0]["apply"]["steps"] for n in s["notes"]), out
    code, data, out = fleet_cmd(fleet, "undo", "--hosts", "hv1", report=report)
    assert code == 0 and statuses(data) == {"hv1": "undone"}, out
    assert journal.read_path(interrupted.path).state == "undone"
    code, data, out = fleet_cmd(fleet, "plan", report=report)
    assert code == 4 and statuses(data) == dict.fromkeys(HOSTS, "pending"), out
    assert changes(data, "hv1") == changes(first, "hv1")

    # hv1's worker process dies after each first operation (the pause point in its
    # agent's environment): the task is handed out again and finishes its own run.
    restart_agent(fleet, "hv1", 2)
    try:
        code, data, out = fleet_cmd(fleet, "apply", report=report)
    finally:
        restart_agent(fleet, "hv1", None)
    assert code == 0 and statuses(data) == dict.fromkeys(HOSTS, "applied"), out
    chain = [r for r in runs(fleet, "hv1") if r.header["fleet_run"] == data["run_id"]]
    assert [r.mode for r in chain] == ["apply", "resume", "resume"], out
    assert [r.state for r in chain] == ["resumed", "resumed", "finished"]
    assert chain[1].header["resumes"] == chain[0].id
    code, data, out = fleet_cmd(fleet, "undo", "--run", data["run_id"], report=report)
    assert code == 0 and statuses(data) == dict.fromkeys(HOSTS, "undone"), out
    code, data, out = fleet_cmd(fleet, "plan", report=report)
    assert code == 4 and changes(data, "hv1") == changes(first, "hv1"), out
    code, data, out = fleet_cmd(fleet, "undo", "--hosts", "hv1", report=report)
    assert code == 0 and statuses(data) == {"hv1": "unchanged"}, out
    assert "nothing to undo" in " ".join(data["hosts"][0]["apply"].get("notes", [])), out


def changes(data: dict[str, Any], name: str) -> list[Any]:
    """A host's planned changes in a fleet report."""
    host = next(h for h in data["hosts"] if h["name"] == name)
    return [s["changes"] for s in host["plan"]["steps"]]
