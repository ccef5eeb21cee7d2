"""early_commands / late_commands / error_commands (wizard/commands.py), against the
services step on a real private dbus-daemon (the sandbox's D-Bus host)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import hostsetup, unit_state

from wizard import answers
from wizard.commands import OUTPUT_LIMIT, run_command
from wizard.sandbox.core import Sandbox


def answers_with(sb: Sandbox, tmp_path: Path, extra: str) -> str:
    """The services step (starts libvirtd.service) plus command lists that write a trace."""
    f = tmp_path / "a.yaml"
    f.write_text(f"version: 1\nservices:\n  bus: {sb.env['HOSTSETUP_DBUS_ADDRESS']}\n"
                 "  require: [libvirtd.service]\n" + extra)
    return str(f)


def trace_cmd(trace: Path, word: str) -> str:
    return f"  - {{argv: 'echo {word} >> {trace}; echo out-{word}', shell: true}}\n"


def test_lists_run_in_order_with_output_in_log_and_report(
        dbus_host: Sandbox, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    answers = answers_with(dbus_host, tmp_path,
                           "early_commands:\n" + trace_cmd(trace, "early1")
                           + trace_cmd(trace, "early2")
                           + "late_commands:\n" + trace_cmd(trace, "late")
                           + "error_commands:\n" + trace_cmd(trace, "error"))
    # plan runs none and lists them all as "run:" changes
    res = hostsetup("plan", "--answers", answers)
    assert res.returncode == 4, res.stderr
    assert not trace.exists()
    assert "early_commands: 2 commands to run" in res.stdout
    assert "  + run: sh -c 'echo late >> " in res.stdout
    assert "error_commands: 1 command to run" in res.stdout

    report, log = tmp_path / "r.json", tmp_path / "run.log"
    res = hostsetup("apply", "--answers", answers, "--report", str(report), "--log", str(log))
    assert res.returncode == 0, res.stdout + res.stderr
    assert trace.read_text().split() == ["early1", "early2", "late"]  # no error commands
    assert unit_state(dbus_host, "libvirtd.service") == "active"
    data = json.loads(report.read_text())
    assert [(s["name"], s["status"]) for s in data["steps"]] == [
        ("early_commands", "applied"), ("services", "applied"),
        ("late_commands", "applied"), ("error_commands", "not run")]
    late = data["steps"][2]["changes"][0]
    assert late["action"] == "run" and late["after"]["exit_code"] == 0
    assert late["after"]["output"] == "out-late\n"
    text = log.read_text()
    assert text.index("early_commands: | out-early2") < text.index("services applied") \
        < text.index("late_commands: | out-late")
    assert "  + run: sh -c 'echo late >> " in res.stdout and "| out-late" in res.stdout


def test_failing_late_command_with_stop_fails_after_the_steps(
        dbus_host: Sandbox, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    answers = answers_with(dbus_host, tmp_path,
                           "late_commands:\n  on_failure: stop\n  commands:\n"
                           "  - [sh, -c, 'echo broken; exit 7']\n" + trace_cmd(trace, "after")
                           + "error_commands:\n" + trace_cmd(trace, "diag"))
    report = tmp_path / "r.json"
    res = hostsetup("apply", "--answers", answers, "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    assert unit_state(dbus_host, "libvirtd.service") == "active"  # the step was applied
    assert "late_commands: failed: sh -c 'echo broken; exit 7' (exit 7); on_failure: stop: " \
        "every step was applied; the run fails" in res.stderr
    assert trace.read_text().split() == ["diag"]  # the next late command did not run
    steps = {s["name"]: s for s in json.loads(report.read_text())["steps"]}
    assert steps["services"]["status"] == "applied"
    assert steps["late_commands"]["status"] == "failed"
    assert steps["late_commands"]["changes"][1]["detail"] == "not run"
    assert steps["error_commands"]["status"] == "applied"


def test_early_failure_stops_before_check_continue_goes_on(
        dbus_host: Sandbox, tmp_path: Path) -> None:
    answers = answers_with(dbus_host, tmp_path,
                           "early_commands:\n  - [/nonexistent/tool]\n")
    res = hostsetup("apply", "--answers", answers)
    assert res.returncode == 1
    assert "early_commands: failed: /nonexistent/tool (cannot run: No such file or directory)" \
        in res.stderr and "nothing was checked or applied" in res.stderr
    assert unit_state(dbus_host, "libvirtd.service") == "inactive"

    answers = answers_with(dbus_host, tmp_path,
                           "early_commands:\n  on_failure: continue\n  commands:\n"
                           "  - [/nonexistent/tool]\n")
    res = hostsetup("apply", "--answers", answers)
    assert res.returncode == 0, res.stderr
    assert "failed, went on (on_failure: continue): /nonexistent/tool" in res.stdout
    assert unit_state(dbus_host, "libvirtd.service") == "active"


def gone(pidfile: Path) -> bool:
    """The process of ``pidfile`` has ended (gone or a zombie) within 5 s of a SIGKILL."""
    stat = Path(f"/proc/{pidfile.read_text().strip()}/stat")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_what_the_command_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    code, _out, problem = run_command(
        ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=1)
    assert time.monotonic() - t0 < 5
    assert code is None and problem == "timed out after 1 s"
    assert gone(pidfile)


def test_what_a_command_leaves_running_is_killed_when_it_ends(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    code, out, problem = run_command(
        ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started"], timeout=30)
    assert time.monotonic() - t0 < 5  # not until the timeout
    assert (code, out, problem) == (0, b"started\n", "")
    assert gone(pidfile)


def test_output_is_bounded(tmp_path: Path) -> None:
    code, out, problem = run_command(["head", "-c", "10000000", "/dev/zero"], timeout=30)
    assert code == 0 and not problem
    assert len(out) < OUTPUT_LIMIT + 100
    assert out.endswith(f"[... {10_000_000 - OUTPUT_LIMIT} more bytes of output not kept]"
                        .encode())


def test_invalid_command_lists_exit_3_with_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("version: 1\n"
                 "late_commands:\n"
                 "  on_failure: sometimes\n"
                 "  commands:\n"
                 "  - {argv: [a, b], shell: true}\n"
                 "  - [ok]\n"
                 "error_commands: ['echo hi']\n")
    res = hostsetup("plan", "--answers", str(f))
    assert res.returncode == 3
    assert "late_commands.on_failure (line 3): Input should be 'stop' or 'continue'" in res.stderr
    assert "late_commands.commands[0].argv (line 5): with shell: true, argv is one " \
        "command line (a string)" in res.stderr
    assert "error_commands[0] (line 7): expected an argv list" in res.stderr
    assert "Traceback" not in res.stderr


def test_template_commands_example_validates(tmp_path: Path) -> None:
    text = hostsetup("answers-template").stdout
    start, end = text.index("# early_commands:"), text.index("# Fleet runs")
    f = tmp_path / "a.yaml"
    f.write_text(text[:start] + "\n".join(
        line.removeprefix("# ") for line in text[start:end].splitlines()) + "\n")
    loaded = answers.load(f)
    assert sorted(loaded.commands) == ["early_commands", "error_commands", "late_commands"]
    assert loaded.commands["late_commands"].commands[0].argv == [
        "ovs-vsctl", "set", "port", "vm1", "tag=10"]
    assert loaded.commands["error_commands"].commands[0].shell
