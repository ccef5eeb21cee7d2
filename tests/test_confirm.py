"""Confirm or revert (wizard/confirm.py) on the fakes: the marking of risky
operations, the record, the window's outcomes, the next start's revert, the probes.

The same mechanism on a real host (real systemd, real OVS) is in
test_confirm_sandbox.py; these check the logic fast.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackends, sample_backends, unit

from steps.services import MANAGEMENT_UNITS, risky
from wizard import answers as answers_mod
from wizard import confirm
from wizard.plantext import run_lines
from wizard.runner import execute


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "state"
    monkeypatch.setenv(confirm.STATE_ENV, str(where))
    return where


@pytest.fixture
def host() -> FakeBackends:
    fb = sample_backends()
    fb.dbus.units["ssh.service"] = unit("ssh.service")
    fb.dbus.units["cron.service"] = unit("cron.service")
    return fb


def no_keeper(_record: confirm.Record) -> int:
    """No keeper process in the fast tests (test_confirm_sandbox.py has them)."""
    return 0


def doc(**confirm_key: Any) -> answers_mod.Answers:
    """Stop cron (not risky), then ssh (risky); start libvirtd after it."""
    data: dict[str, Any] = {"version": 1, "services": {
        "require": ["libvirtd.service"], "stop": ["cron.service", "ssh.service"]}}
    if confirm_key:
        data["confirm"] = confirm_key
    return answers_mod.validate(data)


def apply(host: FakeBackends, state: Path, within: int = 1,
          probe: dict[str, str] | None = None) -> tuple[confirm.Tracker, Any]:
    answers = doc()
    window = confirm.Window("run1", within, probe or {}, state)
    tracker = confirm.Tracker(window=window, sections=answers.sections)
    run = execute(answers, "apply", host, journal=tracker)
    return tracker, run


def test_services_marks_the_units_carrying_the_connection() -> None:
    assert risky("stop", "ssh.service") == "ssh.service carries the operator's SSH connections"
    for action in ("stop", "restart", "disable", "mask"):
        assert risky(action, "ovs-vswitchd.service")
        assert not risky(action, "cron.service")
    assert not risky("start", "ssh.service") and not risky("enable", "sshd.service")
    assert "hostsetup-agent.service" in MANAGEMENT_UNITS


def test_plan_text_and_report_show_what_needs_confirmation(host: FakeBackends) -> None:
    run = execute(doc(), "plan", host)
    lines = run_lines(run, width=1 << 20)
    assert lines[0] == "services: 3 changes, 1 destructive (!), 1 to confirm (~)"
    assert ("  ~ stop unit ssh.service [needs confirmation: ssh.service carries the "
            "operator's SSH connections]") in lines
    assert "  ! stop unit cron.service" in lines
    changes = run.as_dict()["steps"][0]["changes"]
    assert [c["risky"] for c in changes] == ["", risky("stop", "ssh.service"), ""]
    from wizard.reportshow import run_from_dict

    assert run_lines(run_from_dict(json.loads(json.dumps(run.as_dict()))),
                     width=1 << 20) == lines


def test_confirm_answers_are_checked() -> None:
    assert doc(within=5, tcp="[2001:db8::1]:443").confirm.tcp == "[2001:db8::1]:443"
    for bad, message in (({"within": 0}, "confirm.within"), ({"within": 3601}, "3600"),
                         ({"tcp": "vcenter"}, "is not HOST:PORT"),
                         ({"tcp": "a:70000"}, "PORT 1-65535"),
                         ({"ping": "a b"}, "not a host name"),
                         ({"tcp": "a:1", "ping": "b"}, "one probe"),
                         ({"http": "x"}, "confirm.http: unknown key")):
        with pytest.raises(answers_mod.AnswersError) as err:
            doc(**bad)
        assert message in str(err.value), err.value


def test_no_confirmation_in_time_reverts_from_the_first_risky_operation(
        host: FakeBackends, state: Path) -> None:
    said: list[str] = []
    tracker, run = apply(host, state)
    assert run.exit_code == 0
    assert [o.change.describe() for _s, o in tracker.risky] == [
        "stop unit ssh.service", "start unit libvirtd.service"]
    record = confirm.Record(state / "confirm", "run1").read()
    assert record["state"] == "applying" and len(record["ops"]) == 2
    for name in ("run1.json", "run1.ops"):
        assert os.stat(state / "confirm" / name).st_mode & 0o777 == 0o600
    assert os.stat(state / "confirm").st_mode & 0o777 == 0o700
    t0 = time.monotonic()
    out = confirm.wait_and_decide(tracker, host, said.append, keeper=no_keeper)
    assert out is not None and not out.kept
    assert 1.0 <= time.monotonic() - t0 < 5
    assert out.text() == "not confirmed within 1 s: reverted 2 operation(s)"
    assert out.reverted == ["start unit libvirtd.service", "stop unit ssh.service"]
    units = host.dbus.units
    # Reverted: ssh runs again, libvirtd is stopped; cron (before the risky one) stays.
    assert (units["ssh.service"].active, units["libvirtd.service"].active,
            units["cron.service"].active) == ("active", "inactive", "inactive")
    assert said[-1] == "confirm: not confirmed within 1 s: reverted 2 operation(s)"
    assert json.loads((state / "confirm" / "run1.json").read_text())["state"] == "reverted"
    with pytest.raises(confirm.ConfirmError, match="too late: run run1 was not confirmed"):
        confirm.confirm(state, "run1")


def test_hostsetup_confirm_keeps_the_changes(host: FakeBackends, state: Path) -> None:
    tracker, _run = apply(host, state, within=30)
    with pytest.raises(confirm.ConfirmError, match="still applying") as err:
        confirm.confirm(state, None)  # before the window opens
    assert err.value.code == 1
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.append(
        confirm.wait_and_decide(tracker, host, lambda _t: None, keeper=no_keeper)))  # type: ignore[func-returns-value]
    thread.start()
    deadline = time.monotonic() + 10
    while json.loads((state / "confirm" / "run1.json").read_text())["state"] != "waiting":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(confirm.ConfirmError, match="run other is not waiting .*waiting: run1"):
        confirm.confirm(state, "other")
    assert confirm.confirm(state, None) == "run run1 confirmed: its changes are kept"
    thread.join(10)
    out: Any = answers[0]
    assert out.kept and out.how == "'hostsetup confirm'"
    assert host.dbus.units["ssh.service"].active == "inactive"
    assert "already confirmed" in confirm.confirm(state, "run1")


def test_a_probe_that_answers_confirms(host: FakeBackends, state: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        tracker, _run = apply(host, state, within=10, probe={"tcp": f"127.0.0.1:{port}"})
        out = confirm.wait_and_decide(tracker, host, lambda _t: None, keeper=no_keeper)
    assert out is not None and out.kept
    assert out.how == f"the probe reached tcp 127.0.0.1:{port}"
    assert host.dbus.units["ssh.service"].active == "inactive"


def test_a_probe_that_does_not_answer_does_not_confirm(host: FakeBackends, state: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = closed.getsockname()[1]
        tracker, _run = apply(host, state, within=2, probe={"tcp": f"127.0.0.1:{port}"})
        out = confirm.wait_and_decide(tracker, host, lambda _t: None, keeper=no_keeper)
    assert out is not None and not out.kept and out.probe == f"tcp 127.0.0.1:{port}"
    assert host.dbus.units["ssh.service"].active == "active"


def test_ping_probe() -> None:
    assert confirm.ping_reachable("127.0.0.1") and confirm.ping_reachable("::1")
    t0 = time.monotonic()
    assert not confirm.ping_reachable("198.51.100.7", timeout=0.5)  # TEST-NET-2: no answer
    assert time.monotonic() - t0 < 2
    assert not confirm.ping_reachable("no-such-host.invalid")


def test_killed_while_applying_is_reverted_at_the_next_start(
        host: FakeBackends, state: Path) -> None:
    tracker, _run = apply(host, state)
    assert confirm.expired_pending(state) == []  # its process (this one) holds it
    assert tracker.record is not None
    tracker.record.release()  # as a kill -9 would
    found = confirm.expired_pending(state)
    assert [(d["run"], d["state"]) for d in found] == [("run1", "applying")]
    said: list[str] = []
    outs = confirm.settle(state, host, said.append)
    assert [o.text() for o in outs] == ["its apply was interrupted after a risky operation: "
                                        "reverted 2 operation(s)"]
    assert host.dbus.units["ssh.service"].active == "active"
    assert confirm.expired_pending(state) == []
    assert confirm.settle(state, host, said.append) == []


def test_killed_while_waiting(host: FakeBackends, state: Path) -> None:
    tracker, _run = apply(host, state, within=2)
    assert tracker.record is not None
    confirm.Waiter(tracker.record, 2, {})
    tracker.record.release()  # killed inside its window
    assert confirm.expired_pending(state) == []  # it can still be confirmed
    said: list[str] = []
    assert confirm.settle(state, host, said.append, wait=False) == []
    assert "waits for its confirmation" in said[0]
    t0 = time.monotonic()
    outs = confirm.settle(state, host, said.append)  # waits for the rest of its window
    assert time.monotonic() - t0 > 0.5
    assert [o.text() for o in outs] == ["not confirmed within 2 s: reverted 2 operation(s)"]
    assert host.dbus.units["ssh.service"].active == "active"


def test_confirmed_after_its_process_died(host: FakeBackends, state: Path) -> None:
    tracker, _run = apply(host, state, within=30)
    assert tracker.record is not None
    confirm.Waiter(tracker.record, 30, {})
    tracker.record.release()
    assert confirm.confirm(state, "run1") == "run run1 confirmed: its changes are kept"
    assert confirm.settle(state, host, lambda _t: None) == []
    assert host.dbus.units["ssh.service"].active == "inactive"


def test_nothing_risky_leaves_no_record(host: FakeBackends, state: Path) -> None:
    answers = answers_mod.validate({"version": 1, "services": {"require": [],
                                                               "stop": ["cron.service"]}})
    tracker = confirm.Tracker(window=confirm.Window("run2", 1, {}, state),
                              sections=answers.sections)
    execute(answers, "apply", host, journal=tracker)
    assert tracker.risky == [] and not (state / "confirm" / "run2.json").exists()
    assert confirm.wait_and_decide(tracker, host, lambda _t: None, keeper=no_keeper) is None
    with pytest.raises(confirm.ConfirmError, match="nothing is waiting"):
        confirm.confirm(state, None)


def test_a_state_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s" / "confirm").mkdir(parents=True)
    os.chmod(tmp_path / "s", 0o777)
    with pytest.raises(confirm.ConfirmError, match="is not private"):
        confirm.folder(tmp_path / "s")
    os.chmod(tmp_path / "s", 0o700)
    (tmp_path / "s" / "confirm").rmdir()
    (tmp_path / "s" / "confirm").symlink_to(tmp_path)
    with pytest.raises(confirm.ConfirmError, match="not a directory"):
        confirm.folder(tmp_path / "s")
    with pytest.raises(confirm.ConfirmError, match="not a run id"):
        confirm.Record(tmp_path, "../etc/passwd")


def test_old_finished_records_are_pruned(host: FakeBackends, state: Path) -> None:
    where = confirm.folder(state)
    for i in range(confirm.KEEP + 5):
        (where / f"old{i}.json").write_text(json.dumps({"run": f"old{i}",
                                                        "state": "reverted"}))
    confirm.prune(where)
    assert len(list(where.glob("*.json"))) == confirm.KEEP


def test_a_record_that_cannot_be_written_stops_before_the_risky_operation(
        host: FakeBackends, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confirm, "RECORD_LIMIT", 100)  # the first operation does not fit
    tracker, run = apply(host, state)
    assert run.exit_code == 1
    step = run.as_dict()["steps"][0]
    assert step["status"] == "failed"
    assert "more operations than its record holds (100 bytes)" in step["errors"][0]
    assert host.dbus.units["ssh.service"].active == "active"  # never stopped
    assert host.dbus.units["cron.service"].active == "inactive"  # before it: done


def test_template_confirm_example_validates(tmp_path: Path) -> None:
    text = answers_mod.template()
    line = next(t for t in text.splitlines() if t.startswith("# confirm: "))
    f = tmp_path / "a.yaml"
    f.write_text(text + line.removeprefix("# ") + "\n")
    assert answers_mod.load(f).confirm == answers_mod.ConfirmAnswers(
        within=120, tcp="vcenter.example.net:443")
