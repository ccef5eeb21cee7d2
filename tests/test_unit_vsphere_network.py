"""The vsphere_network step on the vSphere fake: plan, apply, verify, undo, validation."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeBackends, sample_backends
from helpers import run, statuses

from backends.interfaces.vsphere import VM, Adapter, MirrorPort, Security
from steps.base import Context, StepFailed
from steps.vsphere_network import VSphereNetworkAnswers, VSphereNetworkStep
from wizard.exits import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_PENDING

PG = {"name": "Monitoring", "vswitch": "vSwitch1", "vlan": 4095, "allow_promiscuous": True}


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HS_TEST_VSPHERE_PASSWORD", "secret-value")


def section(**extra: Any) -> dict[str, Any]:
    return {"vsphere_network": {"server": "vc.example", "user": "admin",
                                "password": "env:HS_TEST_VSPHERE_PASSWORD",
                                "insecure": True, **extra}}


FULL = section(hosts={"cluster": "Cluster1"},
               vswitches=[{"name": "vSwitch1", "mtu": 9000, "nics": ["vmnic1"]}],
               portgroups=[PG],
               vm_adapters=[{"vm": "sensor01", "adapter": "Network adapter 2",
                             "portgroup": "Monitoring"}])


def test_plan_apply_plan_in_a_safe_order() -> None:
    fb = sample_backends()
    planned = run("plan", FULL, fb)
    assert planned.exit_code == EXIT_PENDING
    assert [(c.action, c.target) for c in planned.steps[0].changes] == [
        ("create", "esx01: vSwitch vSwitch1"), ("create", "esx01: port group Monitoring"),
        ("create", "esx02: vSwitch vSwitch1"), ("create", "esx02: port group Monitoring"),
        ("update", "VM sensor01: Network adapter 2")]
    assert fb.vsphere.hosts["esx01"].vswitch("vSwitch1") is None
    applied = run("apply", FULL, fb)
    assert statuses(applied) == {"vsphere_network": "applied"}
    esx02 = fb.vsphere.hosts["esx02"]
    assert esx02.vswitch("vSwitch1") is not None and esx02.vswitch("vSwitch1").mtu == 9000
    assert esx02.portgroup("Monitoring").security == Security(True, False, False)
    assert fb.vsphere.vms["sensor01"].adapter("Network adapter 2").network == "Monitoring"
    assert run("plan", FULL, fb).exit_code == EXIT_OK
    # The password was resolved for the connection, and is in no report.
    conn = next(args[1] for args in fb.opened if args[0] == "vsphere")
    assert conn.password == "secret-value"
    assert "secret-value" not in repr(conn) and "secret-value" not in str(applied.as_dict())


def test_update_shows_only_what_changes_and_removal_goes_last() -> None:
    fb = sample_backends()
    run("apply", FULL, fb)
    later = section(hosts=["esx01"], portgroups=[{**PG, "vlan": 20}, {"name": "VM Network",
                                                                       "state": "absent"}])
    changes = run("plan", later, fb).steps[0].changes
    assert [(c.action, c.target, c.before, c.after) for c in changes] == [
        ("update", "esx01: port group Monitoring", {"vlan": 4095}, {"vlan": 20}),
        ("delete", "esx01: port group VM Network",
         {"vswitch": "vSwitch0", "vlan": 0, "promiscuous": False, "forged_transmits": False,
          "mac_changes": False}, None)]


def test_a_failure_undoes_what_the_run_did() -> None:
    fb = sample_backends()
    fb.vsphere.fail.add(("add_portgroup", "Monitoring"))
    result = run("apply", FULL, fb)
    assert result.exit_code == EXIT_FAILED
    step = result.steps[0]
    assert step.errors == ["create esx01: port group Monitoring failed: vSphere add_portgroup "
                           "failed: injected fault on 'Monitoring'; undid 1 change(s) made by "
                           "this run"]
    assert step.notes == ["remains changed: nothing"]
    assert fb.vsphere.hosts["esx01"].vswitch("vSwitch1") is None  # removed again
    writes = [c[0] for c in fb.vsphere.calls if c[0] != "inventory"]
    assert writes == ["add_vswitch", "add_portgroup", "remove_vswitch"]


def test_host_problems_all_listed_nothing_called() -> None:
    fb = sample_backends()
    bad = section(hosts=["esx01", "esx09"],
                  vswitches=[{"name": "vSwitch1", "nics": ["vmnic0", "vmnic7"]}],
                  portgroups=[{"name": "P", "vswitch": "vSwitchX"}],
                  vm_adapters=[{"vm": "sensor01", "adapter": "Network adapter 9",
                                "portgroup": "Nowhere"}, {"vm": "ghost", "adapter":
                                                          "Network adapter 1", "portgroup": "P"}])
    result = run("apply", bad, fb)
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "vsphere_network.hosts[1]: no host 'esx09' (hosts: esx01, esx02)",
        "vsphere_network.vswitches[0].nics[0]: 'vmnic0' on host 'esx01' is already an uplink "
        "of vSwitch 'vSwitch0'",
        "vsphere_network.vswitches[0].nics[1]: 'vmnic7' is not a physical NIC of host 'esx01' "
        "(has: vmnic0, vmnic1)",
        "vsphere_network.portgroups[0].vswitch: vSwitch 'vSwitchX' is neither on host 'esx01' "
        "nor in the answers' vswitches",
        "vsphere_network.vm_adapters[0].adapter: VM 'sensor01' has no 'Network adapter 9' "
        "(has: Network adapter 1, Network adapter 2)",
        "vsphere_network.vm_adapters[0].portgroup: port group 'Nowhere' is not on host "
        "'esx01' of VM 'sensor01' and the answers do not create it there",
        "vsphere_network.vm_adapters[1].vm: no VM 'ghost'",
    ]
    assert [c[0] for c in fb.vsphere.calls] == ["inventory"]


def test_unreachable_server_exits_5() -> None:
    fb = FakeBackends(unreachable={"vsphere"})
    result = run("plan", FULL, fb)
    assert result.exit_code == 5
    assert result.steps[0].errors == ["vsphere unreachable at vc.example:443: fake: down"]


def test_the_runner_reads_adapters_of_the_named_vms_only_the_wizard_all() -> None:
    fb = sample_backends()
    fb.vsphere.vms["other"] = VM("other", "esx02", (Adapter("Network adapter 1", 4000, "x"),))
    run("apply", FULL, fb)
    reads = [args[0] for method, args in fb.vsphere.calls if method == "inventory"]
    assert reads and all(vms == {"sensor01"} for vms in reads)
    step = VSphereNetworkStep()
    facts = step.discover(step.connection(FULL["vsphere_network"]), Context(backends=fb))
    assert facts.inventory.vm("other").adapters  # the wizard's choices need them all


def test_policies_plan_only_what_changes_and_keep_the_rest() -> None:
    fb = sample_backends()
    teaming = {"load_balancing": "failover_explicit", "active_nics": ["vmnic1"]}
    vs = {"name": "vSwitch1", "nics": ["vmnic1"], "teaming": teaming,
          "shaping": {"enabled": True, "average_kbps": 1000}}
    pg = {**PG, "teaming": {"notify_switches": False}}
    answers = section(hosts=["esx01"], vswitches=[vs], portgroups=[pg])
    run("apply", answers, fb)
    host = fb.vsphere.hosts["esx01"]
    assert host.vswitch("vSwitch1").teaming.load_balancing == "failover_explicit"
    # the port group inherits the vSwitch's order, overrides notify_switches
    mon = host.portgroup("Monitoring")
    assert (mon.teaming.active_nics, mon.teaming.notify_switches) == (("vmnic1",), False)
    assert run("plan", answers, fb).exit_code == EXIT_OK
    vs["teaming"] = {"failback": False}
    changes = run("plan", answers, fb).steps[0].changes
    assert [(c.target, c.before, c.after) for c in changes] == [
        ("esx01: vSwitch vSwitch1", {"failback": None}, {"failback": False})]
    run("apply", answers, fb)
    team = fb.vsphere.hosts["esx01"].vswitch("vSwitch1").teaming
    assert (team.load_balancing, team.failback) == ("failover_explicit", False)


def test_teaming_nics_not_uplinks_are_refused() -> None:
    fb = sample_backends()
    vs = {"name": "vSwitch1", "nics": ["vmnic1"], "teaming": {"standby_nics": ["vmnic0"]}}
    result = run("apply", section(vswitches=[vs]), fb)
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "vsphere_network.vswitches[0].teaming.standby_nics[0]: 'vmnic0' is not an uplink of "
        "vSwitch 'vSwitch1' in the answers (uplinks: vmnic1)"]
    assert [c[0] for c in fb.vsphere.calls] == ["inventory"]


VMK = {"portgroup": "vMotion", "services": ["vmotion"], "mtu": 9000}
VMOTION_PG = {"name": "vMotion", "vswitch": "vSwitch0", "vlan": 30}


def test_vmkernel_created_after_its_port_group_removed_before_it() -> None:
    fb = sample_backends()
    answers = section(hosts=["esx01"], portgroups=[VMOTION_PG], vmkernel=[VMK])
    planned = run("plan", answers, fb).steps[0].changes
    assert [c.describe() for c in planned] == ["create esx01: port group vMotion",
                                               "create esx01: VMkernel adapter on vMotion"]
    run("apply", answers, fb)
    vmk = fb.vsphere.hosts["esx01"].vmk_on("vMotion")
    assert vmk is not None and (vmk.dhcp, vmk.mtu, vmk.services) == (True, 9000, ("vmotion",))
    assert run("plan", answers, fb).exit_code == EXIT_OK
    gone = section(hosts=["esx01"], portgroups=[{"name": "vMotion", "state": "absent"}],
                   vmkernel=[{**VMK, "state": "absent"}])
    assert [c.describe() for c in run("plan", gone, fb).steps[0].changes] == [
        "delete esx01: VMkernel vmk1", "delete esx01: port group vMotion"]


def test_vmkernel_failure_undoes_the_port_group_too() -> None:
    fb = sample_backends()
    fb.vsphere.fail.add(("add_vmk", "vMotion"))
    result = run("apply", section(hosts=["esx01"], portgroups=[VMOTION_PG], vmkernel=[VMK]), fb)
    assert result.exit_code == EXIT_FAILED
    assert result.steps[0].notes == ["remains changed: nothing"]
    assert fb.vsphere.hosts["esx01"].portgroup("vMotion") is None


def test_management_vmk_guard_and_address_in_use() -> None:
    fb = sample_backends()
    bad = section(vmkernel=[
        {"portgroup": "Management Network", "state": "absent"},
        {"host": "esx02", "portgroup": "VM Network",
         "ip": {"address": "10.0.0.1", "netmask": "255.255.255.0"}}])
    result = run("apply", bad, fb)
    assert result.exit_code == EXIT_INVALID
    guard = ("vmk0 carries the management network this session uses (it is tagged for the "
             "management service); it is never removed, moved, re-addressed or untagged")
    assert result.steps[0].errors == [
        f"vsphere_network.vmkernel[0].state: {guard}",
        "vsphere_network.vmkernel[1].ip.address: 10.0.0.1 is already the address of vmk0 on "
        "host 'esx01'"]
    assert [c[0] for c in fb.vsphere.calls] == ["inventory"]


def test_a_service_listed_twice_is_one_selection_and_replans_clean() -> None:
    fb = sample_backends()
    answers = section(hosts=["esx01"], portgroups=[VMOTION_PG],
                      vmkernel=[{**VMK, "services": ["vmotion", "vmotion"]}])
    run("apply", answers, fb)
    assert fb.vsphere.hosts["esx01"].vmk_on("vMotion").services == ("vmotion",)
    assert run("plan", answers, fb).exit_code == EXIT_OK


DVS = {"name": "dvSwitch1", "datacenter": "DC1", "uplinks": ["Uplink 1"],
       "pvlans": [{"primary": 10, "secondary": 10, "type": "promiscuous"},
                  {"primary": 10, "secondary": 11, "type": "isolated"}],
       "hosts": [{"name": "esx01", "nics": ["vmnic1"]}]}
DVPG = {"name": "Iso", "dvswitch": "dvSwitch1", "pvlan": 11,
        "teaming": {"active_nics": ["Uplink 1"]}}


def test_distributed_switch_before_its_port_groups_then_clean() -> None:
    fb = sample_backends()
    answers = section(hosts=["esx01"], dvswitches=[DVS], dvportgroups=[DVPG])
    planned = run("plan", answers, fb).steps[0].changes
    assert [c.describe() for c in planned] == ["create distributed switch dvSwitch1",
                                               "create distributed port group Iso"]
    assert statuses(run("apply", answers, fb)) == {"vsphere_network": "applied"}
    pg = fb.vsphere.dvportgroups["Iso"]
    assert (pg.pvlan, pg.teaming.active_nics, pg.security.allow_promiscuous) == (
        11, ("Uplink 1",), False)
    assert run("plan", answers, fb).exit_code == EXIT_OK
    # vmnic1 of esx01 now belongs to the switch: a vSwitch cannot take it
    taken = run("plan", section(hosts=["esx01"], vswitches=[{"name": "v1", "nics": ["vmnic1"]}],
                                dvswitches=[DVS]), fb)
    assert taken.exit_code == EXIT_INVALID


def test_a_failed_port_group_removes_the_new_switch_again() -> None:
    fb = sample_backends()
    fb.vsphere.fail.add(("add_dvportgroup", "Iso"))
    result = run("apply", section(dvswitches=[DVS], dvportgroups=[DVPG]), fb)
    assert result.exit_code == EXIT_FAILED
    assert result.steps[0].notes == ["remains changed: nothing"]
    assert fb.vsphere.dvswitches == {}
    writes = [c[0] for c in fb.vsphere.calls if c[0] != "inventory"]
    assert writes == ["add_dvswitch", "add_dvportgroup", "remove_dvswitch"]


def test_distributed_problems_all_listed_nothing_called() -> None:
    fb = sample_backends()
    bad = section(dvswitches=[{**DVS, "datacenter": "DC2",
                               "hosts": [{"name": "esx01", "nics": ["vmnic0"]}]}],
                  dvportgroups=[{**DVPG, "pvlan": 12}, {"name": "X", "dvswitch": "dvs9"}])
    result = run("apply", bad, fb)
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "vsphere_network.dvswitches[0].datacenter: no datacenter 'DC2' (datacenters: DC1)",
        "vsphere_network.dvswitches[0].hosts[0].name: host 'esx01' is in datacenter 'DC1', not "
        "in 'DC2' of distributed switch 'dvSwitch1'",
        "vsphere_network.dvportgroups[0].pvlan: PVLAN 12 is not in the PVLAN map of distributed "
        "switch 'dvSwitch1' (secondary IDs: 10, 11)",
        "vsphere_network.dvportgroups[1].dvswitch: distributed switch 'dvs9' is neither in "
        "vCenter nor in the answers' dvswitches",
    ]
    assert [c[0] for c in fb.vsphere.calls] == ["inventory"]


def test_adapters_onto_a_distributed_port_group_after_it_is_made() -> None:
    fb = sample_backends()
    dvs = {**DVS, "hosts": [{"name": "esx01", "nics": ["vmnic1"]}]}
    pg = {"name": "dv-VM", "dvswitch": "dvSwitch1", "vlan": 20}
    answers = section(hosts=["esx01"], dvswitches=[dvs], dvportgroups=[pg],
                      vm_adapters=[{"vm": "sensor01", "adapter": "Network adapter 2",
                                    "dvportgroup": "dv-VM"}],
                      vmkernel=[{"dvportgroup": "dv-VM", "mtu": 9000}])
    planned = run("plan", answers, fb).steps[0].changes
    assert [c.describe() for c in planned] == [
        "create distributed switch dvSwitch1", "create distributed port group dv-VM",
        "create esx01: VMkernel adapter on dv-VM", "update VM sensor01: Network adapter 2"]
    assert planned[2].after["dvswitch"] == "dvSwitch1"
    run("apply", answers, fb)
    adapter = fb.vsphere.vms["sensor01"].adapter("Network adapter 2")
    assert (adapter.network, adapter.dvswitch) == ("dv-VM", "dvSwitch1")
    assert fb.vsphere.hosts["esx01"].vmk_on("dv-VM", "dvSwitch1").mtu == 9000
    assert run("plan", answers, fb).exit_code == EXIT_OK
    # esx02 is not a member: neither its adapter nor the VM's can go there
    bad = section(vmkernel=[{"host": "esx02", "dvportgroup": "dv-VM"}])
    assert run("apply", bad, fb).steps[0].errors == [
        "vsphere_network.vmkernel[0].dvportgroup: host 'esx02' is not a member of distributed "
        "switch 'dvSwitch1' (join it under dvswitches[].hosts)"]


def test_a_mirror_session_follows_the_adapter_moves_it_mirrors() -> None:
    fb = sample_backends()
    session = {"name": "span1", "dvswitch": "dvSwitch1", "direction": "received",
               "sources": [{"vm": "sensor01", "adapter": "Network adapter 1"}],
               "destination": [{"vm": "sensor01", "adapter": "Network adapter 2"}]}
    answers = section(
        hosts=["esx01"], dvswitches=[DVS], dvportgroups=[{**DVPG, "pvlan": None, "vlan": 5}],
        vm_adapters=[{"vm": "sensor01", "adapter": f"Network adapter {n}", "dvportgroup": "Iso"}
                     for n in (1, 2)],
        mirror_sessions=[session])
    planned = run("plan", answers, fb).steps[0].changes
    assert [c.describe() for c in planned][-3:] == [
        "update VM sensor01: Network adapter 1", "update VM sensor01: Network adapter 2",
        "create dvSwitch1: mirror session span1"]
    assert planned[-1].after["sources"] == ["sensor01/Network adapter 1"]
    run("apply", answers, fb)
    [made] = fb.vsphere.dvswitches["dvSwitch1"].mirrors
    port = fb.vsphere.vms["sensor01"].adapter("Network adapter 1").port
    assert made.received == (MirrorPort(port=port),) and made.transmitted == ()
    assert run("plan", answers, fb).exit_code == EXIT_OK
    gone = section(hosts=["esx01"], mirror_sessions=[{**session, "state": "absent"}])
    assert [c.describe() for c in run("plan", gone, fb).steps[0].changes] == [
        "delete dvSwitch1: mirror session span1"]


def test_operations_on_the_management_path_are_risky_and_carry_json_commands() -> None:
    fb = sample_backends()
    mgmt = {"host": "esx01", "portgroup": "Management Network", "services": ["management"],
            "mtu": 9000, "ip": {"address": "10.0.0.1", "netmask": "255.255.255.0"}}
    answers = VSphereNetworkAnswers.model_validate(section(
        hosts=["esx01"], vswitches=[{"name": "vSwitch0", "mtu": 9000, "nics": ["vmnic0"]}],
        portgroups=[{"name": "Management Network", "vswitch": "vSwitch0", "vlan": 10},
                    {"name": "VM Network", "vswitch": "vSwitch0", "vlan": 20},
                    {**PG, "vswitch": "vSwitch0"}],
        vmkernel=[mgmt])["vsphere_network"])
    step, ctx = VSphereNetworkStep(), Context(backends=fb)
    assert step.validate(answers, step.facts(answers, ctx)) == []
    ops = step.plan(answers, ctx)
    assert {op.change.target: op.risky for op in ops} == {
        "esx01: vSwitch vSwitch0": "carries vmk0, the management network of host 'esx01'",
        "esx01: port group Management Network":
            "carries vmk0, the management network of host 'esx01'",
        "esx01: port group VM Network": "",
        "esx01: port group Monitoring": "",
        "esx01: VMkernel vmk0": "vmk0 is the management network of host 'esx01'"}
    assert ops[0].do == {"op": "update_vswitch", "args": {
        "host": "esx01", "name": "vSwitch0", "spec": {
            "name": "vSwitch0", "num_ports": 128, "mtu": 9000, "nics": ["vmnic0"],
            "security": dict.fromkeys(SECURITY, None),
            "teaming": dict.fromkeys(TEAMING, None), "shaping": dict.fromkeys(SHAPING, None)}}}
    assert ops[0].undo is not None and ops[0].undo["args"]["spec"]["mtu"] == 1500


SECURITY = ("allow_promiscuous", "forged_transmits", "mac_changes")
TEAMING = ("load_balancing", "active_nics", "standby_nics", "notify_switches", "failback",
           "failure_detection")
SHAPING = ("enabled", "average_kbps", "peak_kbps", "burst_kb")


@pytest.mark.parametrize(("command", "message"), [
    ({"op": "__init__", "args": {}}, "unknown command '__init__'"),
    ({"op": "remove_vswitch"}, "or its 'args' is not a mapping"),
    ({"op": "remove_vswitch", "args": {"host": "esx01", "force": True}},
     "command 'remove_vswitch' takes host, name: missing name; unknown force"),
    ({"op": "add_vswitch", "args": {"host": "esx01", "spec": {
        "name": "v", "num_ports": "many", "mtu": 1500}}},
     "command 'add_vswitch': argument spec.num_ports: Input should be a valid integer"),
    ({"op": "move_adapter", "args": {"vm": "sensor01", "adapter": "Network adapter 1",
                                     "portgroup": ["x"], "distributed": False}},
     "argument portgroup: Input should be a valid string"),
])
def test_a_journal_command_is_checked_before_anything_is_called(
        command: dict[str, Any], message: str) -> None:
    fb = sample_backends()
    step = VSphereNetworkStep()
    answers = VSphereNetworkAnswers.model_validate(FULL["vsphere_network"])
    with pytest.raises(StepFailed) as err:
        step.execute(answers, command, Context(backends=fb))
    assert message in str(err.value)
    assert fb.vsphere.calls == []
