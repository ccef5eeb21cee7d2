"""The ovs_mirror step on the OVSDB fake: plan, apply, verify, undo, validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fakes import FakeBackends, FakeOvsdb
from helpers import run, statuses

from backends.interfaces.ovsdb import Mirror, MirrorEdit
from steps.base import Context, Operation, StepFailed, inverse
from steps.ovs_mirror import (
    MANAGED,
    RSPAN_VLANS,
    MirrorAnswers,
    OvsMirrorAnswers,
    OvsMirrorFacts,
    OvsMirrorStep,
)
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


# -- operations: commands, undo, observe, journal ------------------------------

STEP = OvsMirrorStep()
DB = {"db": "unix:/fake/db.sock"}
# What hostsetup built on the switch earlier: a bridge to delete (with a port, an
# RSPAN mirror and so a flood VLAN), one to update, ports and mirrors to change.
BEFORE = {
    "bridges": [{"name": "br-old", "datapath_type": "netdev", "fail_mode": "secure",
                 "other_config": {"mac-aging-time": "30"}},
                {"name": "br-upd", "fail_mode": "secure", "other_config": {"a": "1"}}],
    "ports": [{"name": "old-p", "bridge": "br-old", "type": "internal", "tag": 5},
              {"name": "gre1", "bridge": "br0", "type": "gre", "remote_ip": "10.0.0.1",
               "key": 1},
              {"name": "p-gone", "bridge": "br0", "type": "internal", "trunks": [7, 8]}],
    "mirrors": [{"name": "m-upd", "bridge": "br0", "select_src_port": ["vm1"],
                 "output_port": "mon0"},
                {"name": "m-gone", "bridge": "br0", "select_dst_port": ["vm2"],
                 "output_port": "mon0", "snaplen": 100},
                {"name": "m-old", "bridge": "br-old", "select_all": True, "output_vlan": 7}],
}
# Every kind of operation: create, update and delete of bridges, ports and
# mirrors, and an RSPAN VLAN flooded on br0.
CHANGE = {
    "bridges": [{"name": "br-old", "state": "absent"},
                {"name": "br-upd", "fail_mode": "standalone", "other_config": {"a": "2", "b": "x"}},
                {"name": "br-new", "datapath_type": "netdev"}],
    "ports": [{**BEFORE["ports"][1], "key": 2},
              {"name": "p-gone", "bridge": "br0", "state": "absent"},
              {"name": "in0", "bridge": "br-new", "type": "internal", "tag": 10}],
    "mirrors": [{**BEFORE["mirrors"][0], "select_dst_port": ["vm2"], "output_port": "gre1"},
                {"name": "m-gone", "bridge": "br0", "state": "absent"},
                {"name": "rspan", "bridge": "br0", "select_src_port": ["vm2"],
                 "output_vlan": 999},
                {"name": "m-new", "bridge": "br-new", "select_src_port": ["in0"],
                 "output_port": "br-new"}],
}


def answers(section: dict[str, Any]) -> OvsMirrorAnswers:
    return OvsMirrorAnswers.model_validate({**DB, **section})


def built() -> FakeBackends:
    """The switch with BEFORE applied (through the step, as an earlier run would)."""
    fb = switch()
    assert statuses(run("apply", {"ovs_mirror": {**DB, **BEFORE}}, fb)) == {
        "ovs_mirror": "applied"}
    return fb


def state(ovs: FakeOvsdb) -> tuple[Any, ...]:
    """Everything the switch has, without row UUIDs and statistics."""
    return ({n: replace(b, uuid="") for n, b in ovs.bridges().items()},
            {n: replace(p, uuid="") for n, p in ovs.ports().items()},
            {(m.bridge, m.name): replace(m, uuid="", statistics={}) for m in ovs.mirrors()})


def test_undos_in_reverse_from_json_bring_back_the_switch_as_it_was() -> None:
    fb = built()
    before, change = state(fb.ovsdb), answers(CHANGE)
    first = STEP.plan(change, Context(backends=fb))
    assert [(o.change.action, o.change.target) for o in first] == [
        ("update", "bridge br-upd"), ("create", "bridge br-new"), ("update", "port br0/gre1"),
        ("create", "port br-new/in0"), ("update", "mirror br0/m-upd"),
        ("create", "mirror br0/rspan"), ("create", "mirror br-new/m-new"),
        ("delete", "mirror br0/m-gone"), ("delete", "port br0/p-gone"),
        ("delete", "bridge br-old"), ("update", "bridge br0 flood_vlans")]
    assert not any(STEP.observe(change, o.do, Context(backends=fb)) for o in first)
    STEP.apply(change, first, Context(backends=fb))
    assert fb.ovsdb.transactions == 2  # BEFORE's, and this one
    assert STEP.plan(change, Context(backends=fb)) == []
    assert all(STEP.observe(change, o.do, Context(backends=fb)) for o in first)
    # As ``hostsetup undo`` will: only the JSON of each undo, a fresh context each.
    for op in reversed(first):
        back = inverse(op)
        assert back is not None, op
        undo = json.loads(json.dumps(back.do))
        STEP.execute(change, undo, Context(backends=fb))
        assert STEP.observe(change, undo, Context(backends=fb)), undo
    assert state(fb.ovsdb) == before
    assert STEP.plan(change, Context(backends=fb)) == first


def test_risky_operations_are_the_ones_that_change_or_delete_existing_bridges_and_ports(
        ) -> None:
    fb = built()
    risky = {o.change.target: o.risky for o in STEP.plan(answers(CHANGE), Context(backends=fb))
             if o.risky}
    assert list(risky) == ["bridge br-upd", "port br0/gre1", "port br0/p-gone", "bridge br-old"]
    assert risky["bridge br-old"] == "deletes bridge br-old with its ports: traffic through " \
        "it stops"
    assert "rewrites existing port gre1" in risky["port br0/gre1"]


def test_undo_of_an_update_restores_only_what_it_changed() -> None:
    fb = built()
    op = STEP.plan(answers(CHANGE), Context(backends=fb))[0]
    assert op.do == {"op": "put_bridge", "bridge": {
        "name": "br-upd", "fail_mode": "standalone", "other_config": {"a": "2", "b": "x"},
        "external_ids": {}}}
    # "b" was not there: the undo removes it (None); the fail mode goes back.
    assert op.undo == {"op": "put_bridge", "bridge": {
        "name": "br-upd", "fail_mode": "secure", "other_config": {"a": "1", "b": None},
        "external_ids": {}}}


@dataclass
class Journal:
    """A journal that keeps what it is told."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def begin(self, step: str, op: Operation) -> None:
        self.lines.append(("begin", op.change.target, ""))

    def end(self, step: str, op: Operation, error: str = "") -> None:
        self.lines.append(("end", op.change.target, error))


def test_apply_is_one_transaction_journaled_begin_all_then_end_all() -> None:
    fb, journal = built(), Journal()
    ctx = Context(backends=fb, journal=journal)
    ops = STEP.plan(answers(CHANGE), ctx)
    STEP.apply(answers(CHANGE), ops, ctx)
    targets = [o.change.target for o in ops]
    assert journal.lines == [("begin", t, "") for t in targets] + [("end", t, "") for t in targets]
    assert fb.ovsdb.transactions == 2


def test_a_refused_transaction_ends_every_operation_with_its_error() -> None:
    fb, journal = built(), Journal()
    ctx = Context(backends=fb, journal=journal)
    ops = STEP.plan(answers(CHANGE), ctx)
    ovs = fb.ovsdb
    ovs.bridges_["br0"] = replace(ovs.bridges_["br0"], ports=("vm1", "mon0", "gre1", "p-gone"))
    with pytest.raises(StepFailed, match="no port 'vm2'") as failed:
        STEP.apply(answers(CHANGE), ops, ctx)
    assert failed.value.done == []
    ends = [line for line in journal.lines if line[0] == "end"]
    assert len(ends) == len(ops) and all("no port 'vm2'" in e for _k, _t, e in ends)
    assert STEP.observe(answers(CHANGE), ops[1].do, Context(backends=fb)) is False


def test_a_command_never_touches_what_hostsetup_did_not_make() -> None:
    fb = switch()
    made = fb.ovsdb.add_mirror(Mirror("by-hand", "br0", select_all=True, output_port="mon0"))
    put = {"op": "put_mirror", "mirror": {
        "name": "by-hand", "bridge": "br0", "select_all": False, "select_src_port": ["vm1"],
        "select_dst_port": [], "select_vlan": [], "output_port": "mon0", "output_vlan": None,
        "snaplen": None, "filter": None, "external_ids": {MANAGED: "true"}}}
    for command in (put, {"op": "delete_mirror", "bridge": "br0", "name": "by-hand"},
                    {"op": "delete_bridge", "name": "br0"},
                    {"op": "delete_port", "name": "vm1", "bridge": "br0"}):
        with pytest.raises(StepFailed, match="exists and was not made by hostsetup"):
            STEP.execute(answers({}), command, Context(backends=fb))
    assert fb.ovsdb.mirrors() == [made] and fb.ovsdb.transactions == 0
    with pytest.raises(StepFailed, match="unknown command 'frobnicate'"):
        STEP.execute(answers({}), {"op": "frobnicate"}, Context(backends=fb))


def test_a_malformed_command_fails_with_its_name_and_changes_nothing() -> None:
    fb = built()
    before = state(fb.ovsdb)
    for command in ({"op": "put_port", "port": {"name": "x"}}, {"op": "delete_mirror"},
                    {"op": "flood", "bridge": "br0", "add": 5, "remove": [],
                     "rspan_vlans": None}):
        with pytest.raises(StepFailed, match=f"malformed command '{command['op']}'"):
            STEP.execute(answers({}), command, Context(backends=fb))
    with pytest.raises(StepFailed, match="malformed command 'put_mirror'"):
        STEP.observe(answers({}), {"op": "put_mirror"}, Context(backends=fb))
    assert state(fb.ovsdb) == before


def test_a_port_found_on_another_bridge_is_not_rewritten() -> None:
    fb = built()
    op = next(o for o in STEP.plan(answers(CHANGE), Context(backends=fb))
              if o.change.target == "port br0/gre1")
    moved = {**op.do["port"], "bridge": "br1"}
    with pytest.raises(StepFailed, match="port gre1 is on bridge br0, not br1"):
        STEP.execute(answers({}), {"op": "put_port", "port": moved}, Context(backends=fb))


def test_a_mirror_command_reads_neither_bridges_nor_ports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An undo is a transaction per command: it reads only the table it needs (a
    switch may have thousands of ports)."""
    fb = built()
    op = next(o for o in STEP.plan(answers(CHANGE), Context(backends=fb))
              if o.change.target == "mirror br0/m-upd")
    for table in ("bridges", "ports"):
        monkeypatch.setattr(fb.ovsdb, table, lambda t=table: pytest.fail(f"{t} read"))
    STEP.execute(answers({}), op.do, Context(backends=fb))
    assert STEP.observe(answers({}), op.do, Context(backends=fb))


def test_undo_of_an_update_whose_bridge_is_gone_does_not_create_it() -> None:
    fb = switch()
    undo = {"op": "put_bridge", "bridge": {"name": "br-upd", "fail_mode": "secure",
                                           "other_config": {}, "external_ids": {}}}
    with pytest.raises(StepFailed, match="bridge br-upd does not exist"):
        STEP.execute(answers({}), undo, Context(backends=fb))
    assert "br-upd" not in fb.ovsdb.bridges()


# -- facts and questions --------------------------------------------------------


def test_discover_reads_typed_facts_from_the_connection() -> None:
    fb = switch()
    facts = STEP.discover(STEP.connection(DB), Context(backends=fb))
    assert isinstance(facts, OvsMirrorFacts)
    assert sorted(facts.bridges) == ["br0", "br1"] and facts.ports["vm1"].bridge == "br0"
    assert fb.opened == [("ovsdb", DB["db"], None)]


def test_questions_come_from_the_fields_choices_from_the_host() -> None:
    fb = switch()
    fb.ovsdb.snaplen = False
    facts = STEP.discover(STEP.connection(DB), Context(backends=fb))
    top = {q.key: q for q in STEP.questions(facts)}
    assert [q.key for q in STEP.connect_questions()] == ["db", "ssl_key", "ssl_cert", "ssl_ca"]
    assert top["mirrors"].kind == "records" and top["mirrors"].label == "Port mirrors"
    fields = {q.key: q for q in top["mirrors"].fields}
    bridge = fields["bridge"]
    assert (bridge.label, bridge.kind, bridge.required, bridge.choices, bridge.refs) == (
        MirrorAnswers.model_fields["bridge"].title, "choice", True, ("br0", "br1"), "bridges")
    assert fields["select_src_port"].kind == "multi"
    assert fields["select_src_port"].choices == ("eth9", "mon0", "vm1", "vm2")
    assert "SENDS" in fields["select_src_port"].help
    assert fields["state"].choices == ("present", "absent")
    assert fields["output_vlan"].kind == "int" and fields["select_all"].kind == "yesno"
    assert "snaplen" not in fields and "filter" in fields  # what this switch's schema has
    ports = {q.key: q for q in top["ports"].fields}
    assert ports["type"].choices == ("system", "internal", "patch", "gre", "erspan", "vxlan")
    assert ports["erspan_ver"].kind == "int"
    bridges = {q.key: q for q in top["bridges"].fields}
    assert bridges["datapath_type"].choices == ("netdev", "system")
    assert bridges["fail_mode"].choices == ("standalone", "secure")


def test_questions_before_the_host_is_read() -> None:
    fields = {q.key: q for q in STEP.questions(OvsMirrorFacts())[0].fields}
    assert fields["bridge"].choices == () and "snaplen" in fields and "filter" not in fields
