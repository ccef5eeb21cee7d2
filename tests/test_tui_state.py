"""What the wizard shows of the host, in tmux at 80x24 against sandbox services:
hostsetup's objects prefilled on a re-run, unit states in the picker, objects
answered earlier in the run offered as "(new)", and the Review's before -> after.

The wizard is left by closing its tmux session (not through Cancel/Escape).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, hostsetup
from tmux import Terminal

from sandbox import host, manage, vcsim
from sandbox.core import Sandbox
from sandbox.manage import write_yaml


def wizard(tmp: Path, doc: dict[str, Any]) -> Terminal:
    """The wizard on an answers file (every section listed is asked)."""
    answers = tmp / "wizard-answers.yaml"
    write_yaml(answers, {"version": 1, "interactive": [k for k in doc], **doc})
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} "
                    f"--log {tmp}/wizard.log", cwd=tmp)


def apply(tmp: Path, doc: dict[str, Any]) -> None:
    """A first run: ``hostsetup apply`` of these sections."""
    answers = tmp / "first-run.yaml"
    write_yaml(answers, {"version": 1, **doc})
    res = hostsetup("apply", "--answers", str(answers))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def ovs_host(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox host whose systemd started Open vSwitch."""
    directory = tmp_path / "host"
    try:
        sb = manage.up(directory, tag="tuist", components=[manage.HOST])
        host.run_inside(sb, "systemctl", "systemctl", "start", "openvswitch-switch.service")
        yield sb
    finally:
        manage.down(directory)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[vcsim.Vcsim]:
    sb = Sandbox(dir=tmp_path / "vs")
    try:
        yield vcsim.start(sb, model="esx", hosts=1, vms=2)
    finally:
        sb.stop()


@pytest.fixture
def closing() -> Iterator[list[Terminal]]:
    """Terminals to close after the test, whatever happened."""
    terms: list[Terminal] = []
    yield terms
    for t in terms:
        t.close()


def test_rerun_prefills_hostsetup_mirrors(ovs_host: Sandbox, tmp_path: Path,
                                          closing: list[Terminal]) -> None:
    section = ovs_host.answers["ovs_mirror"]
    apply(tmp_path, {"ovs_mirror": section})
    # The re-run's answers list no mirror and prune them: without the host's
    # current state the plan would delete span-vm1.
    rerun = {k: v for k, v in section.items() if k != "mirrors"}
    t = wizard(tmp_path, {"ovs_mirror": {**rerun, "prune": True}})
    closing.append(t)
    t.wait_for("[*] Open vSwitch port mirrors")
    t.send("F12")
    t.wait_for("OVSDB remote")
    t.send("F12")
    t.wait_for("1 entry: edit...")
    t.send("Enter")  # the record list
    assert "span-vm1: bridge=br0" in t.wait_for("Done")
    t.send("Tab", "Tab", "Tab", "Tab", "Enter")  # Done
    t.wait_for("1 entry: edit...")
    t.send("F12")
    assert "ovs_mirror: nothing to change" in t.wait_for("Review")


def test_unit_picker_shows_states_and_review_before_after(
        dbus_host: Sandbox, tmp_path: Path, closing: list[Terminal]) -> None:
    answers = (dbus_host.dir / "answers.yaml").read_text().replace(
        "version: 1", "version: 1\ninteractive: [services]")
    (tmp_path / "answers.yaml").write_text(answers)
    t = Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {tmp_path}/answers.yaml "
                 f"--log {tmp_path}/wizard.log", cwd=tmp_path)
    closing.append(t)
    t.wait_for("[*] Host services")
    t.send("F12")
    t.wait_for("Host services: connection")
    t.send("F12")
    row = next(line for line in t.wait_for("Start timeout (s)").splitlines()
               if "Start timeout (s)" in line)
    assert " 30___" in row  # whole seconds: 30, not 30.0
    t.send("Enter")  # the Required units picker
    # A real host's units (scrolled list): each with its state, the required ones checked.
    picker = t.wait_for("[*] NetworkManager.service  (active)")
    assert "apt-daily.timer  (inactive)" in picker
    t.send("Tab", "Enter")  # OK
    t.wait_for("Start timeout (s)")
    t.send("F12")
    review = t.wait_for("Review")
    lines = review.splitlines()
    at = next(i for i, line in enumerate(lines) if "+ start unit libvirtd.service" in line)
    assert "      inactive (dead) -> active" in lines[at + 1]
    assert "services: 2 changes" in review  # openvswitch-switch and libvirtd


def test_same_run_portgroup_offered_new_and_review_shows_the_diff(
        sim: vcsim.Vcsim, tmp_path: Path, closing: list[Terminal]) -> None:
    section = vcsim.answers(sim)
    apply(tmp_path, {"vsphere_network": {**section, "portgroups": section["portgroups"][1:],
                                         "vm_adapters": []}})
    section["portgroups"][1]["allow_promiscuous"] = True  # EastWest-20: no -> yes
    t = wizard(tmp_path, {"vsphere_network": section})  # Monitoring: created in this run
    closing.append(t)
    t.wait_for("[*] vSphere networking")
    t.send("F12")
    t.wait_for("vSphere networking: connection")
    t.send("F12")
    t.wait_for("VM adapters  <")
    t.send("Tab", "Tab", "Tab", "Enter")  # VM adapters: the record list
    t.wait_for("Done")
    t.send("Enter")  # edit the record
    t.wait_for("Port group  <Monitoring")
    t.send("Tab", "Tab", "Enter")  # the Port group picker
    picker = t.wait_for("Monitoring (new)")
    assert "EastWest-20" in picker and "EastWest-20 (new)" not in picker  # it exists
    assert "VM Network" in picker and "VM Network (new)" not in picker
    t.send("Enter")  # keeps Monitoring (stored without the mark)
    t.wait_for("Port group  <Monitoring ...>")
    t.send("Tab", "Enter")  # OK
    t.wait_for("Done")
    t.send("Tab", "Tab", "Tab", "Tab", "Enter")  # Done
    t.wait_for("VM adapters  <")
    t.send("F12")
    review = t.wait_for("Review")
    assert "vsphere_network: 3 changes" in review
    assert "      promiscuous: no -> yes" in review
    assert "      port group: VM Network -> Monitoring" in review
    assert "  + create localhost.localdomain: port group Monitoring" in review


def test_rerun_prefills_port_groups_and_vswitches(
        sim: vcsim.Vcsim, tmp_path: Path, closing: list[Terminal]) -> None:
    section = {**vcsim.answers(sim), "vm_adapters": []}
    apply(tmp_path, {"vsphere_network": section})
    rerun = {k: v for k, v in section.items() if k not in ("vswitches", "portgroups")}
    t = wizard(tmp_path, {"vsphere_network": rerun})
    closing.append(t)
    t.wait_for("[*] vSphere networking")
    t.send("F12")
    t.wait_for("vSphere networking: connection")
    t.send("F12")
    screen = t.wait_for("Port groups  <2 entries: edit...>")
    assert "vSwitches    <1 entry: edit...>" in screen
    t.send("Tab", "Tab", "Enter")  # Port groups: the record list
    records = t.wait_for("Done")
    assert "EastWest-20: vswitch=vSwitch1, vlan=20" in records
    assert "Monitoring: vswitch=vSwitch1, vlan=4095" in records
    assert "VM Network" not in records  # ESXi's own is not offered as hostsetup's
    t.send("Tab", "Tab", "Tab", "Tab", "Enter")  # Done
    t.wait_for("VM adapters  <")
    t.send("F12")
    assert "vsphere_network: nothing to change" in t.wait_for("Review")
