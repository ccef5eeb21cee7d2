"""The wizard's editable list of records (several OVS mirrors), in tmux at 80x24.

The wizard runs inside a sandbox host, on its terminal, as an operator would:
the answers name no address (the default OVSDB socket of the host's Open vSwitch).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmux import Terminal

from sandbox import host, manage
from sandbox.manage import write_yaml


@pytest.fixture
def ovs_wizard(tmp_path: Path) -> Iterator[Terminal]:
    """A sandbox host whose systemd started OVS, and the wizard in it asking ovs_mirror."""
    directory = tmp_path / "host"
    t = None
    try:
        sb = manage.up(directory, tag="tuirec", components=[manage.HOST])
        host.run_inside(sb, "systemctl", "systemctl", "start", "openvswitch-switch.service")
        answers = directory / "inside.yaml"
        mirrors = sb.answers["ovs_mirror"]["mirrors"]
        write_yaml(answers, {"version": 1, "interactive": ["ovs_mirror"],
                             "ovs_mirror": {"mirrors": mirrors}})
        wizard = host.exec_argv(sb, sys.executable, "-m", "wizard", "--answers", str(answers),
                                "--log", str(directory / "w.log"))
        t = Terminal(shlex.join(wizard), cwd=tmp_path)
        t.wait_for("[*] Open vSwitch port mirrors")
        t.send("F12")
        t.wait_for("unix:/var/run/openvswitch/db.sock")  # the default, on this host
        t.send("F12")
        t.wait_for("1 entry: edit...")
        yield t
    finally:
        if t is not None:
            t.close()
        manage.down(directory)


def add_mirror(t: Terminal, name: str, src_downs: int, out_downs: int,
               expect: str = "") -> str:
    """Add a mirror through the record list: name, bridge, one source port, output port.

    The pickers list the bridge's ports sorted: br0, mon0, vm1, vm2.
    """
    t.send("Enter")  # the "entries" button opens the list
    t.wait_for("Done")
    t.send("Tab", "Enter")  # Add
    t.wait_for("Mirror name")
    t.type(name)
    t.send("Tab", "Enter")  # Bridge picker
    t.wait_for("The bridge whose")
    t.send("Enter")  # br0
    t.wait_for("<br0 ...>")
    t.send("Tab", "Tab", "Tab", "Enter")  # Traffic sent by (src)
    t.wait_for("[ ] vm2")
    t.send(*["Down"] * src_downs, "Space", "Tab", "Enter")
    t.wait_for("Mirror name")
    t.send("Tab", "Tab", "Tab", "Enter")  # Output port (SPAN)
    t.wait_for("The port that receives")
    t.send(*["Down"] * out_downs, "Enter")
    t.wait_for("Mirror name")
    t.send("Tab", "Tab", "Tab", "Enter")  # OK
    return t.wait_for(expect or f"{name}: bridge=br0")


def test_add_a_second_mirror(ovs_wizard: Terminal) -> None:
    t = ovs_wizard
    add_mirror(t, "span-vm2", src_downs=3, out_downs=2)  # src vm2, output mon0
    assert "span-vm1: bridge=br0" in t.wait_for("span-vm2: bridge=br0")
    t.send("Tab", "Tab", "Tab", "Tab", "Enter")  # Done
    t.wait_for("2 entries: edit...")
    t.send("F12")
    review = t.wait_for("create mirror br0/span-vm2: traffic sent by vm2")
    assert "create mirror br0/span-vm1" in review


def test_bad_record_is_refused_when_its_form_closes(ovs_wizard: Terminal) -> None:
    t = ovs_wizard
    # src mon0 and output mon0: the record's own model refuses it, named by its label.
    screen = add_mirror(t, "loop", src_downs=1, out_downs=2, expect="Not accepted")
    assert "Output port (SPAN): 'mon0'" in screen
    t.send("Enter")
    screen = t.wait_for("loop_")  # the record's form again, as typed
    assert "Mirror name" in screen and "<br0 ...>" in screen
    t.send("Escape")  # drops this entry: back to the list, which has only the first
    screen = t.wait_for("Done")
    assert "span-vm1: bridge=br0" in screen and "loop" not in screen


def test_delete_asks_first(ovs_wizard: Terminal) -> None:
    t = ovs_wizard
    t.send("Enter")  # the list, on span-vm1
    t.wait_for("Enter edit")
    t.send("Tab", "Tab", "Tab", "Enter")  # Delete
    screen = t.wait_for("Delete entry?")
    assert "span-vm1" in screen
    t.send("Enter")  # Keep has the focus
    screen = t.wait_gone("Delete entry?")
    assert "span-vm1: bridge=br0" in screen
    t.send("Tab", "Tab", "Tab", "Enter")
    t.wait_for("Delete entry?")
    t.send("Left", "Enter")  # Delete
    screen = t.wait_for("(none yet: Add one)")
    t.send("Escape")
    t.wait_for("0 entries: edit...")
