"""``hostsetup doctor`` on a real sandbox host (systemd, Open vSwitch, libvirtd, the
vSphere simulator, Redis and the fleet agent): healthy inside and out, then broken
on purpose one check at a time (each restored before the next), and the wizard's
window in tmux.  One host for the module: booted, checked fresh, applied."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, hostsetup
from tmux import Terminal

from sandbox import host as host_mod
from sandbox import manage
from sandbox import redis as redis_mod
from sandbox.core import Sandbox, wait_for
from sandbox.manage import write_yaml
from wizard.answers import read_yaml
from wizard.doctor import CLOCK_OFFSET_ENV

HOSTSETUP = str(ROOT / ".venv" / "bin" / "hostsetup")
CheckRun = tuple[int, list[dict[str, str]], str]


@dataclass
class Host:
    """The module's host, and what the doctor said before anything was applied."""

    sb: Sandbox
    fresh_inside: CheckRun
    fresh_outside: CheckRun

    def path(self, name: str) -> Path:
        return self.sb.dir / name

    def inside(self, *args: str, env: dict[str, str] | None = None) -> CheckRun:
        """``hostsetup doctor --json ARGS`` inside the host: exit code, checks, stderr."""
        assigns = [f"{k}={v}" for k, v in (env or {}).items()]
        res = subprocess.run(host_mod.exec_argv(self.sb, *assigns, HOSTSETUP, "doctor",
                                                "--json", *args),
                             capture_output=True, text=True, timeout=180)
        return parsed(res)

    def outside(self, *args: str, env: dict[str, str] | None = None) -> CheckRun:
        """``hostsetup doctor --json ARGS`` on this machine (the sandbox's addresses)."""
        return parsed(hostsetup("doctor", "--json", *args, env=env, timeout=180))

    def systemctl(self, *args: str) -> None:
        host_mod.run_inside(self.sb, "systemctl", "systemctl", *args)

    def answers(self, name: str, change: Any, inside: bool = False) -> str:
        """A copy of the sandbox's (inside) answers, changed by ``change(data)``; its path."""
        data = read_yaml(self.path("inside-answers.yaml" if inside else "answers.yaml"))
        change(data)
        write_yaml(self.path(name), data)
        return str(self.path(name))


def parsed(res: subprocess.CompletedProcess[str]) -> CheckRun:
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


def status(run: CheckRun) -> dict[str, str]:
    return {c["check"]: c["status"] for c in run[1]}


def detail(run: CheckRun, check: str) -> str:
    return next(c["detail"] for c in run[1] if c["check"] == check)


def failed(run: CheckRun) -> set[str]:
    return {c["check"] for c in run[1] if c["status"] == "fail"}


def no_services(data: dict[str, Any]) -> None:
    """Nothing in these answers starts a daemon that is down."""
    del data["services"]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    directory = tmp_path_factory.mktemp("doctor") / "sb"
    try:
        sb = manage.up(directory, tag="doc")
        h = Host(sb, (0, [], ""), (0, [], ""))
        h.fresh_inside = h.inside()
        h.fresh_outside = h.outside("--answers", str(h.path("answers.yaml")))
        res = subprocess.run(host_mod.exec_argv(sb, HOSTSETUP, "apply", "--answers",
                                                str(h.path("inside-answers.yaml"))),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        host_mod.install_agent(sb, sb.env["HOSTSETUP_REDIS_URL"], redis_mod.password_file(sb))
        yield h
    finally:
        manage.down(directory)


def test_a_fresh_host_whose_daemons_the_services_step_starts(host: Host) -> None:
    code, _checks, _err = host.fresh_inside
    assert code == 0, host.fresh_inside
    run = host.fresh_inside  # no answers: each step's defaults
    assert detail(run, "answers").startswith("the steps' defaults (no --answers)")
    assert status(run)["unit ovs-vswitchd.service"] == "skip"
    assert detail(run, "unit libvirtd.service") == (
        "libvirtd.service inactive (dead); the services step starts it first")
    assert detail(run, "ovsdb").startswith(
        "OVSDB unreachable at unix:/var/run/openvswitch/db.sock")
    assert status(run)["vsphere"] == "skip" and detail(run, "vsphere") == "not answered"
    run = host.fresh_outside  # the sandbox's answers, from this machine
    assert run[0] == 0, run
    assert status(run)["vsphere"] == "ok" and status(run)["hook file"] == "skip"
    assert host.sb.env["HOSTSETUP_DBUS_ADDRESS"] in detail(run, "dbus")


def test_a_healthy_host_inside_and_from_outside(host: Host) -> None:
    run = host.inside()
    assert run[0] == 0, run
    skipped = {c for c, s in status(run).items() if s == "skip"}
    assert skipped == {"hugetlbfs", "vsphere", "clock skew", "broker"}
    assert detail(run, "hook file") == (
        "/etc/libvirt/hooks/qemu.d/hostsetup-ivshmem: identical to hostsetup 0.1.0's")
    assert detail(run, "libvirt").startswith("qemu:///system: libvirt 9.")
    assert "netdev" in detail(run, "ovs datapath types")
    run = host.inside("--answers", str(host.path("inside-answers.yaml")))
    assert run[0] == 0, run
    assert status(run)["vsphere"] == status(run)["clock skew"] == "ok"
    assert detail(run, "vsphere").endswith(" as root: VMware ESXi 6.5.0 build-5969303")
    run = host.outside("--answers", str(host.path("answers.yaml")))
    assert run[0] == 0, run
    assert "ok" == status(run)["hook config"] == status(run)["unit ovs-vswitchd.service"]
    # Text for people: one line per check, then the tally.
    res = subprocess.run(host_mod.exec_argv(host.sb, HOSTSETUP, "doctor"),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout
    assert re.fullmatch(r"doctor: no check failed \(\d+ checks\)", res.stdout.splitlines()[-1])
    assert "ok    hooks dir: /etc/libvirt/hooks: root's, not writable" in res.stdout


def test_hooks_directory_writable_by_group(host: Host) -> None:
    hooks = host.path("libvirt/hooks")  # the host's /etc/libvirt/hooks
    hooks.chmod(0o775)
    try:
        run = host.inside()
    finally:
        hooks.chmod(0o755)
    assert run[0] == 1 and failed(run) == {"hooks dir"}, run
    assert detail(run, "hooks dir").startswith(
        "/etc/libvirt/hooks is writable by group or others")


def test_hook_file_changed_by_hand(host: Host) -> None:
    hook = host.path("libvirt/hooks/qemu.d/hostsetup-ivshmem")
    ours = hook.read_bytes()
    hook.write_bytes(ours + b"import libvirt  # added by hand\n")
    try:
        run = host.inside()
    finally:
        hook.write_bytes(ours)
    assert run[0] == 1 and failed(run) == {"hook file", "hook rules"}, run
    line = ours.count(b"\n") + 1
    assert f"1 line(s) differ, the first at line {line}: 'import libvirt  # added by hand' " \
        "instead of nothing" in detail(run, "hook file")
    assert detail(run, "hook rules") == "imports libvirt (a call back into libvirtd)"


def test_no_free_huge_pages_for_a_size(host: Host) -> None:
    def huge(data: dict[str, Any]) -> None:
        data["ivshmem"].update(backing="hugepages", method="commandline", size=8192)

    run = host.outside("--answers", host.answers("huge.yaml", huge))
    assert run[0] == 1 and failed(run) == {"hugetlbfs"}, run
    assert detail(run, "hugetlbfs").startswith(
        f"4096 free huge pages of 2048 KiB needed on {host.path('hugepages')}, ")


def test_open_vswitch_stopped(host: Host) -> None:
    host.systemctl("stop", "ovs-vswitchd.service")
    try:
        run = host.inside("--answers", host.answers("no-services.yaml", no_services, True))
        defaults = host.inside()  # the services step's defaults start it
    finally:
        host.systemctl("start", "openvswitch-switch.service")
    assert run[0] == 1, run
    assert failed(run) == {"unit ovsdb-server.service", "unit ovs-vswitchd.service", "ovsdb"}
    assert detail(run, "unit ovs-vswitchd.service").startswith(
        "ovs-vswitchd.service inactive (dead): start it (systemctl start ovs-vswitchd.service)")
    assert defaults[0] == 0 and status(defaults)["ovsdb"] == "skip", defaults


def test_libvirtd_stopped(host: Host) -> None:
    # Its sockets too: libvirtd.socket would start it again for the doctor's connection.
    host.systemctl("stop", "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket",
                   "libvirtd-admin.socket")
    try:
        run = host.inside("--answers", host.answers("no-services.yaml", no_services, True))
    finally:
        host.systemctl("start", "libvirtd.service")
    assert run[0] == 1 and failed(run) == {"unit libvirtd.service", "libvirt"}, run
    assert detail(run, "libvirt").startswith("libvirt unreachable at qemu:///system: ")


def test_vcenter_unreachable_and_clock_skew(host: Host) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    try:
        def elsewhere(data: dict[str, Any]) -> None:
            data["vsphere_network"]["port"] = port

        run = host.outside("--answers", host.answers("vc-down.yaml", elsewhere))
    finally:
        closed.close()
    assert run[0] == 1 and failed(run) == {"vsphere"}, run
    assert detail(run, "vsphere").startswith(f"vSphere unreachable at 127.0.0.1:{port}: ")
    # The simulator's clock cannot be set: this host's is offset (a test-only variable).
    answers = str(host.path("answers.yaml"))
    run = host.outside("--answers", answers, env={CLOCK_OFFSET_ENV: "-300"})
    assert run[0] == 1 and failed(run) == {"clock skew"}, run
    url = host.sb.env["HOSTSETUP_VSPHERE_URL"].split("//")[1].split("/")[0]
    assert detail(run, "clock skew").startswith("+300.")
    assert f"s against {url} (it is ahead): more than 60 s" in detail(run, "clock skew")
    assert host.outside("--answers", answers, "--max-skew", "600",
                        env={CLOCK_OFFSET_ENV: "-300"})[0] == 0
    password = Path(host.sb.env["HOSTSETUP_VSPHERE_PASSWORD_FILE"]).read_text().strip()
    assert password not in json.dumps(run[1])


def test_fleet_agent_stopped_and_broker_unreachable(host: Host) -> None:
    wait_for(lambda: status(host.inside("--fleet"))["agent unit"] == "ok", 60, "the agent")
    run = host.inside("--fleet")
    assert run[0] == 0 and status(run)["broker"] == "ok", run
    assert detail(run, "broker").endswith("answers (from /etc/hostsetup/agent.conf)")
    host.systemctl("stop", "hostsetup-agent.service")
    try:
        run = host.inside("--fleet")
    finally:
        host.systemctl("start", "hostsetup-agent.service")
    assert run[0] == 1 and failed(run) == {"agent unit"}, run
    conf = host.path("elsewhere.conf")  # a broker nobody serves
    conf.write_text("[agent]\nbroker = redis://127.0.0.1:1/0\n")
    run = host.inside("--fleet", "--config", str(conf))
    assert run[0] == 1 and failed(run) == {"broker"}, run
    assert detail(run, "broker").startswith("broker unreachable at redis://127.0.0.1:1/0: ")


def test_the_wizard_shows_what_fails_before_the_first_step(host: Host, tmp_path: Path) -> None:
    answers = host.path("answers.yaml")
    command = f"{ROOT}/.venv/bin/python -m wizard --answers {answers} --log {tmp_path}/w.log"
    hooks = host.path("libvirt/hooks")
    hooks.chmod(0o775)
    try:
        t = Terminal(command, cwd=tmp_path)
        try:
            t.wait_for("[*] Host services")
            t.send("F12")
            screen = t.wait_for("Host check", timeout=60)
            assert "1 of 24 checks failed" in screen and "FAIL  hooks dir:" in screen
            assert "Continue anyway" in screen and "Quit" in screen
            t.send("Enter")  # Continue anyway: every step is answered, the Review follows
            t.wait_for("Review", timeout=90)
            t.send("C-c")  # nothing entered: it leaves without asking
            assert t.exit_code() == 130
        finally:
            t.close()
        t = Terminal(command, cwd=tmp_path)
        try:
            t.wait_for("[*] Host services")
            t.send("F12")
            t.wait_for("Host check", timeout=60)
            t.send("Tab", "Enter")  # Quit
            assert t.exit_code() == 130
        finally:
            t.close()
    finally:
        hooks.chmod(0o755)
    assert "host check: FAIL  hooks dir:" in (tmp_path / "w.log").read_text()


def test_many_failures_scroll_and_escape_goes_back(tmp_path: Path) -> None:
    """No host at all: every answered system is unreachable.  The window's text
    scrolls; Escape goes back to the welcome, and Next checks again."""
    nothing = tmp_path / "nothing"
    write_yaml(tmp_path / "answers.yaml", {
        "version": 1, "services": {"bus": f"unix:path={nothing}"},
        "ovs_mirror": {"db": f"unix:{nothing}"},
        "vsphere_network": {"server": "127.0.0.1", "port": 9, "password": "env:NO_SUCH_PW",
                            "insecure": True},
        "ivshmem": {"uri": f"qemu:///system?socket={nothing}",
                    "hooks_dir": str(tmp_path / "hooks")}})
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {tmp_path}/answers.yaml "
                 f"--log {tmp_path}/w.log", cwd=tmp_path)
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        screen = t.wait_for("Host check", timeout=60)
        assert "PgUp/PgDn/arrows scroll" in screen and "FAIL  dbus:" in screen
        t.send("Escape")
        t.wait_for("[*] Host services")  # the welcome again
        t.send("F12")
        screen = t.wait_for("Host check", timeout=60)
        t.send("PgDn", "PgDn")
        screen = t.wait_for("FAIL  vsphere: password: secret env:NO_SUCH_PW")
        t.send("Tab", "Tab", "Enter")  # Quit
        assert t.exit_code() == 130
    finally:
        t.close()
    assert (tmp_path / "w.log").read_text().count("host check: FAIL  dbus:") == 2


def test_a_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A vSphere address that accepts and never answers: the doctor names it after
    --timeout and exits at once (the hung connection does not hold it up)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever speaks TLS
    port = silent.getsockname()[1]
    write_yaml(tmp_path / "vc.yaml", {"version": 1, "vsphere_network": {
        "server": "127.0.0.1", "port": port, "password": "env:HS_PW", "insecure": True}})
    try:
        start = time.monotonic()
        run = parsed(hostsetup("doctor", "--json", "--answers", str(tmp_path / "vc.yaml"),
                               "--timeout", "2", env={"HS_PW": "pw"}, timeout=60))
        took = time.monotonic() - start
    finally:
        silent.close()
    assert run[0] == 1 and failed(run) == {"vsphere"}, run
    assert detail(run, "vsphere") == f"127.0.0.1:{port}: no answer within 2 s"
    assert took < 15, took  # not the adapter's own 30 s
