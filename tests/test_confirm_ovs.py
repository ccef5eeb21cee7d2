"""Confirm or revert on a real Open vSwitch: the change moves the port that carries the
probe's target.

In a sandbox host (real systemd, ovsdb-server and ovs-vswitchd, userspace datapath),
the host's own address 10.250.0.254 is on bridge br0's internal port, and
10.250.0.1 is a "VM" behind port vm1 (a veth into its namespace): the path an
operator or a control plane would use.  The answers give vm1 the access VLAN 10, a
risky change (it rewrites an existing port) that cuts that path; ``hostsetup apply``
runs inside the host, its probe pings 10.250.0.1.  The OVSDB is re-read with
``ovs-vsctl`` from outside, independently of our backend.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT
from test_ovs_mirror import running_host, vsctl

from sandbox.core import Sandbox
from sandbox.host import exec_argv
from steps.ovs_mirror import MANAGED
from wizard.answers import write

HOSTSETUP = str(ROOT / ".venv" / "bin" / "hostsetup")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TARGET = "10.250.0.1"  # vm1's peer, in its namespace
ANALYSER = "10.251.0.2"  # behind the other bridge (wan0): the change does not cut it


def inside(sb: Sandbox, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command inside the host (a new connection to it)."""
    return subprocess.run(exec_argv(sb, *argv), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def reachable(sb: Sandbox, address: str) -> bool:
    """One ICMP echo from the host to ``address`` is answered (as the probe pings)."""
    res = inside(sb, PYTHON, "-c", "import sys; from wizard.confirm import ping_reachable; "
                 f"sys.exit(0 if ping_reachable({address!r}) else 1)")
    return res.returncode == 0


def wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Sandbox]:
    """Open vSwitch running; the host's address on br0; the VM answers pings; vm1
    adopted by hostsetup (it changes only ports it manages)."""
    with running_host(tmp_path / "host") as sb:
        for argv in (("ip", "addr", "add", "10.250.0.254/24", "dev", "br0"),
                     ("ip", "link", "set", "br0", "up")):
            res = inside(sb, *argv)
            assert res.returncode == 0, res.stderr
        wait(lambda: reachable(sb, TARGET), f"{TARGET} answers through br0")
        vsctl(sb, "set", "Port", "vm1", f"external_ids:{MANAGED}=true")  # adopted
        yield sb


def answers(sb: Sandbox, **confirm: Any) -> str:
    """Answers inside the host (its default OVSDB socket): vm1 gets VLAN 10."""
    path = Path(sb.dir, "answers-confirm.yaml")
    data: dict[str, Any] = {"version": 1, "ovs_mirror": {
        "ports": [{"name": "vm1", "bridge": "br0", "tag": 10}]}}
    if confirm:
        data["confirm"] = confirm
    write(path, data)
    return str(path)


def tag(sb: Sandbox) -> str:
    return vsctl(sb, "get", "port", "vm1", "tag")


def test_cut_probe_not_confirmed_is_reverted(switch: Sandbox) -> None:
    report = Path(switch.dir, "report.json")
    res = inside(switch, HOSTSETUP, "apply", "--answers",
                 answers(switch, within=5, ping=TARGET), "--report", str(report))
    assert res.returncode == 1, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "~ update port br0/vm1" in out
    assert "needs confirmation: rewrites existing port vm1" in out
    assert "confirm: not confirmed within 5 s: reverted 1 operation(s)" in out
    assert tag(switch) == "[]"  # back as it was, read from the OVSDB itself
    assert reachable(switch, TARGET)
    got = json.loads(report.read_text())
    assert got["confirm"]["outcome"] == "reverted" and got["confirm"]["probe"] == f"ping {TARGET}"
    assert got["confirm"]["errors"] == []  # the revert was observed on the host


def test_confirmed_from_a_new_connection_is_kept(switch: Sandbox) -> None:
    proc = subprocess.Popen(exec_argv(switch, HOSTSETUP, "apply", "--answers", answers(switch),
                                      "--confirm-within", "60"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        wait(lambda: tag(switch) == "10", "the change is applied", 60)
        assert not reachable(switch, TARGET)  # the change does cut the path
        wait(lambda: inside(switch, HOSTSETUP, "confirm").returncode == 0, "confirmed", 30)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0, out
    assert "the changes are kept" in out
    assert tag(switch) == "10"


def test_probe_reachable_after_the_change_keeps_it(switch: Sandbox) -> None:
    wait(lambda: reachable(switch, ANALYSER), f"{ANALYSER} answers through wan0")
    res = inside(switch, HOSTSETUP, "apply", "--answers",
                 answers(switch, within=30, ping=ANALYSER))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"confirm: confirmed (the probe reached ping {ANALYSER})" in res.stdout
    assert tag(switch) == "10"
