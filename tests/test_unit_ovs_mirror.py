"""The ovs_mirror step on the OVSDB fake: plan, apply, verify, undo, validation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fakes import FakeBackends, FakeOvsdb
from helpers import run, statuses

from backends.interfaces.ovsdb import Mirror, MirrorEdit
from steps.ovs_mirror import MANAGED, RSPAN_VLANS
from wizard.exits import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_PENDING

SPAN = {"name": "span-vm1", "bridge": "br0", "select_src_port": ["vm1"],
        "select_dst_port": ["vm1"], "output_port": "mon0"}


def switch() -> FakeBackends:
    ovs = FakeOvsdb()
    ovs.add_bridge("br0", "vm1", "vm2", "mon0")
    ovs.add_bridge("br1", "eth9")
    return FakeBackends({"ovsdb": ovs})


def section(*mirrors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"ovs_mirror": {"db": "unix:/fake/db.sock", "mirrors": list(mirrors), **extra}}


def by_name(ovs: FakeOvsdb) -> dict[str, Mirror]:
    return {m.name: m for m in ovs.mirrors()}


def test_create_in_one_transaction_then_nothing_left() -> None:
    fb = switch()
    planned = run("plan", section(SPAN), fb)
    assert planned.exit_code == EXIT_PENDING
    assert [(c.action, c.target) for c in planned.steps[0].changes] == [
        ("create", "mirror br0/span-vm1")]
    assert fb.ovsdb.transactions == 0
    applied = run("apply", section(SPAN), fb)
    assert statuses(applied) == {"ovs_mirror": "applied"}
    assert fb.ovsdb.transactions == 1
    made = by_name(fb.ovsdb)["span-vm1"]
    assert (made.select_src_port, made.output_port) == (("vm1",), "mon0")
    assert made.external_ids == {MANAGED: "true"}
    assert fb.ovsdb.revalidated == ["ovs-vswitchd"]  # a unix: db: the switch is local
    assert applied.steps[0].notes == ["mirror br0/span-vm1: tx_packets=0 tx_bytes=0"]
    assert run("plan", section(SPAN), fb).exit_code == EXIT_OK


def test_update_in_place_keeps_the_row() -> None:
    fb = switch()
    run("apply", section(SPAN), fb)
    uuid = by_name(fb.ovsdb)["span-vm1"].uuid
    changed = {**SPAN, "select_dst_port": [], "select_vlan": [10]}
    planned = run("plan", section(changed), fb)
    change = planned.steps[0].changes[0]
    assert (change.action, change.before, change.after) == (
        "update", {"select_dst_port": ["vm1"], "select_vlan": []},
        {"select_dst_port": [], "select_vlan": [10]})
    run("apply", section(changed), fb)
    assert by_name(fb.ovsdb)["span-vm1"].uuid == uuid
    assert by_name(fb.ovsdb)["span-vm1"].select_vlan == (10,)


def test_absent_and_prune_delete_only_hostsetups_mirrors() -> None:
    fb = switch()
    fb.ovsdb.add_mirror(Mirror("by-hand", "br0", select_all=True, output_port="mon0"))
    other = {**SPAN, "name": "span-vm2", "select_src_port": ["vm2"], "select_dst_port": []}
    run("apply", section(SPAN, other), fb)
    gone = run("apply", section({**SPAN, "state": "absent"}, other), fb)
    assert [(c.action, c.target) for c in gone.steps[0].changes] == [
        ("delete", "mirror br0/span-vm1")]
    pruned = run("apply", section(prune=True), fb)
    assert [c.target for c in pruned.steps[0].changes] == ["mirror br0/span-vm2"]
    assert set(by_name(fb.ovsdb)) == {"by-hand"}


def test_rspan_adds_its_vlan_to_flood_vlans_and_removes_only_that() -> None:
    fb = switch()
    # A VLAN the operator floods himself stays.
    fb.ovsdb.bridges_["br0"] = replace(fb.ovsdb.bridges_["br0"], flood_vlans=(5,))
    rspan = {"name": "rspan", "bridge": "br0", "select_all": True, "output_vlan": 999}
    run("apply", section(rspan), fb)
    br0 = fb.ovsdb.bridges()["br0"]
    assert br0.flood_vlans == (5, 999)
    assert br0.external_ids[RSPAN_VLANS] == "999"
    assert run("plan", section(rspan), fb).exit_code == EXIT_OK
    run("apply", section({**rspan, "state": "absent"}), fb)
    br0 = fb.ovsdb.bridges()["br0"]
    assert br0.flood_vlans == (5,)
    assert RSPAN_VLANS not in br0.external_ids


def test_host_problems_are_all_listed_with_their_keys() -> None:
    fb = switch()
    fb.ovsdb.snaplen = False
    fb.ovsdb.add_mirror(Mirror("by-hand", "br0", select_all=True, output_port="mon0"))
    result = run("plan", section(
        {**SPAN, "select_src_port": ["eth9"], "snaplen": 100},
        {**SPAN, "name": "x", "bridge": "br7"},
        {**SPAN, "name": "by-hand"}), fb)
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "ovs_mirror.mirrors[0].select_src_port[0]: 'eth9' is not a port on bridge 'br0'",
        "ovs_mirror.mirrors[0].snaplen: this Open vSwitch has no Mirror.snaplen: remove snaplen",
        "ovs_mirror.mirrors[1].bridge: bridge 'br7' does not exist (bridges: br0, br1)",
        "ovs_mirror.mirrors[2].name: mirror 'by-hand' on bridge 'br0' was not made by "
        "hostsetup and is never changed by it: pick another name, or adopt it with "
        "'ovs-vsctl set Mirror by-hand external_ids:hostsetup-managed=true'",
    ]
    assert fb.ovsdb.transactions == 0


def test_refused_transaction_changes_nothing() -> None:
    fb = switch()
    # Port vm1 goes away after the check phase, just before the transaction.
    ovs = fb.ovsdb
    real_apply = ovs.apply

    def port_gone_then_apply(edit: MirrorEdit, timeout: float) -> int:
        ovs.bridges_["br0"] = replace(ovs.bridges_["br0"], ports=("vm2", "mon0"))
        return real_apply(edit, timeout)

    ovs.apply = port_gone_then_apply  # type: ignore[method-assign]
    result = run("apply", section(SPAN), fb)
    assert result.exit_code == EXIT_FAILED
    assert "no port 'vm1'" in result.steps[0].errors[0]
    assert result.steps[0].notes == ["remains changed: nothing"]
    assert ovs.mirrors() == []


def test_unreachable_revalidation_becomes_a_note() -> None:
    fb = switch()
    fb.ovsdb.revalidate_error = "ovs-vswitchd control socket unreachable"
    applied = run("apply", section(SPAN), fb)
    assert applied.exit_code == EXIT_OK
    assert applied.steps[0].notes[0].startswith(
        "Note: ovs-vswitchd control socket unreachable: ovs-vswitchd may keep flows")
