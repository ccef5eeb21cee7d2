"""Distributed switches and port groups (PVLAN map, host members, policies) against
the simulator in vCenter mode (a datacenter, a cluster, 3 hosts).

Results are read back independently with plain pyVmomi (pyVmomi's own types,
what a real vCenter returns), and the simulator's additions are called with
plain pyVmomi as a real client would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import DC, PVLANS, Start, distributed, objects, read_back, vcenter
from helpers import vsphere_cli as cli
from helpers import vsphere_problems as problems
from helpers import vsphere_run as run
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from sandbox import vcsim
from steps.base import StepFailed

VDS = vim.dvs.VmwareDistributedVirtualSwitch


def test_switch_and_port_groups_apply_replan_read_back_update_remove(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = distributed(sim)
    plan = run(section)
    assert [(c.action, c.target) for c in plan] == [
        ("create", "distributed switch dvSwitch1"),
        ("create", "distributed port group Trunk"),
        ("create", "distributed port group VLAN-30"),
        ("create", "distributed port group Isolated")]
    assert plan[0].after == {
        "datacenter": DC, "version": None, "uplinks": ["Uplink 1", "Uplink 2"], "mtu": 9000,
        "hosts": [f"{h} (vmnic2, vmnic3)" for h in sim.hosts],
        "pvlans": ["100 promiscuous", "101 isolated (primary 100)",
                   "102 community (primary 100)"]}
    assert plan[1].after["vlan"] == "trunk 100-200, 300"
    assert run(section, apply=False) == []  # idempotent

    with vcenter(sim) as content:
        dvs = objects(content, vim.DistributedVirtualSwitch)["dvSwitch1"]
        config = dvs.config
        assert isinstance(config, VDS.ConfigInfo)
        assert (config.maxMtu, list(config.uplinkPortPolicy.uplinkPortName)) == (
            9000, ["Uplink 1", "Uplink 2"])
        assert sorted((e.primaryVlanId, e.secondaryVlanId, e.pvlanType)
                      for e in config.pvlanConfig) == [
            (100, 100, "promiscuous"), (100, 101, "isolated"), (100, 102, "community")]
        members = {m.config.host.name: m for m in config.host}
        assert sorted(members) == sorted(sim.hosts)
        for m in members.values():
            assert isinstance(m.config.backing, vim.dvs.HostMember.PnicBacking)
            assert [s.pnicDevice for s in m.config.backing.pnicSpec] == ["vmnic2", "vmnic3"]
        for host in objects(content, vim.HostSystem).values():
            [proxy] = host.config.network.proxySwitch
            assert isinstance(proxy, vim.host.HostProxySwitch)
            assert (proxy.dvsName, proxy.mtu, sorted(proxy.pnic)) == (
                "dvSwitch1", 9000, ["key-vim.host.PhysicalNic-vmnic2",
                                    "key-vim.host.PhysicalNic-vmnic3"])
        pgs = {pg.name: pg.config for pg in dvs.portgroup}
        trunk = pgs["Trunk"].defaultPortConfig
        assert isinstance(trunk, VDS.VmwarePortConfigPolicy)
        assert isinstance(trunk.vlan, VDS.TrunkVlanSpec)
        assert [(r.start, r.end) for r in trunk.vlan.vlanId] == [(100, 200), (300, 300)]
        assert trunk.securityPolicy.allowPromiscuous.value is True
        order = trunk.uplinkTeamingPolicy.uplinkPortOrder
        assert (list(order.activeUplinkPort), list(order.standbyUplinkPort)) == (
            ["Uplink 2"], ["Uplink 1"])
        assert (pgs["Trunk"].type, pgs["VLAN-30"].type) == ("earlyBinding", "ephemeral")
        shaping = pgs["VLAN-30"].defaultPortConfig.inShapingPolicy
        assert (shaping.enabled.value, shaping.averageBandwidth.value) == (True, 10_000_000)
        isolated = pgs["Isolated"].defaultPortConfig
        assert isinstance(isolated.vlan, VDS.PvlanSpec) and isolated.vlan.pvlanId == 101
        assert pgs["Isolated"].numPorts == 16
        # what a port group does not set is the switch's
        assert isolated.securityPolicy.allowPromiscuous.value is False
        assert isolated.securityPolicy.inherited is True

    # update: MTU, a host leaves, a PVLAN goes, a port group's VLAN and policy change
    d = section["dvswitches"][0]
    d["mtu"] = 1500
    d["hosts"][2] = {"name": sim.hosts[2], "state": "absent"}
    d["pvlans"] = PVLANS[:2]
    section["dvportgroups"][1].update(vlan=40, teaming={"load_balancing": "loadbalance_ip"})
    plan = run(section)
    assert [(c.action, c.target, c.before, c.after) for c in plan] == [
        ("update", "distributed switch dvSwitch1",
         {"mtu": 9000, "hosts": [f"{h} (vmnic2, vmnic3)" for h in sim.hosts],
          "pvlans": ["100 promiscuous", "101 isolated (primary 100)",
                     "102 community (primary 100)"]},
         {"mtu": 1500, "hosts": [f"{h} (vmnic2, vmnic3)" for h in sim.hosts[:2]],
          "pvlans": ["100 promiscuous", "101 isolated (primary 100)"]}),
        ("update", "distributed port group VLAN-30",
         {"vlan": 30, "load_balancing": "loadbalance_srcid"},
         {"vlan": 40, "load_balancing": "loadbalance_ip"})]
    assert run(section, apply=False) == []
    inv = read_back(section)
    dvs_value = inv.dvswitch("dvSwitch1")
    assert dvs_value is not None and [m.host for m in dvs_value.hosts] == sim.hosts[:2]
    gone = inv.host(sim.hosts[2])
    assert gone is not None and gone.pnic("vmnic2") is not None
    assert gone.pnic("vmnic2").dvswitch is None  # type: ignore[union-attr]

    # removal: the port groups, then the switch; the hosts' proxy switches go
    section["dvportgroups"] = [{"name": p["name"], "state": "absent"}
                               for p in section["dvportgroups"]]
    section["dvswitches"] = [{"name": "dvSwitch1", "state": "absent"}]
    plan = run(section)
    assert [c.describe() for c in plan] == [
        "delete distributed port group Trunk", "delete distributed port group VLAN-30",
        "delete distributed port group Isolated", "delete distributed switch dvSwitch1"]
    with vcenter(sim) as content:
        assert objects(content, vim.DistributedVirtualSwitch) == {}
        assert all(h.config.network.proxySwitch == []
                   for h in objects(content, vim.HostSystem).values())


def test_a_failure_in_the_middle_leaves_vcenter_as_before(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = distributed(sim)
    before = read_back(section)
    # the switch and Trunk are made, then VLAN-30 fails
    sim.faults.write_text("AddDVPortgroup_Task:VLAN-30\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "create distributed port group VLAN-30 failed" in str(err.value)
    assert "fault injected" in str(err.value)
    assert "undid 2 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before

    # an update: the switch is reconfigured, then a port group's change fails
    sim.faults.write_text("")
    run(section)
    before = read_back(section)
    section["dvswitches"][0].update(mtu=1600, uplinks=["Uplink 1", "Uplink 2", "Uplink 3"])
    section["dvportgroups"][0]["vlan_trunk"] = ["0-4094"]
    section["dvportgroups"][2]["allow_promiscuous"] = True
    sim.faults.write_text("ReconfigureDVPortgroup_Task:Isolated\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "undid 2 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before


def test_distributed_validation_against_vcenter(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    base = distributed(sim)
    run(base)
    with vcenter(sim) as content:
        content.rootFolder.CreateDatacenter(name="DC-Other")
    first = sim.hosts[0]
    section = {**base, "dvswitches": [
        {"name": "dvSwitch1", "datacenter": DC, "version": "5.5.0", "pvlans": PVLANS[:1],
         "hosts": [{"name": first, "nics": ["vmnic0", "vmnic9"]}, {"name": "esx-ghost"}]},
        {"name": "dvSwitch2", "datacenter": "DC-Other", "hosts": [{"name": first}]},
        {"name": "dvSwitch3", "datacenter": "DC9"},
        {"name": "dvSwitch4", "datacenter": DC, "hosts": [{"name": first, "nics": ["vmnic3"]}]}],
        "dvportgroups": [
            {"name": "Trunk", "dvswitch": "dvSwitch4"},
            {"name": "New", "dvswitch": "dvSwitch1", "pvlan": 150,
             "teaming": {"standby_nics": ["Uplink 7"]}},
            {"name": "Lost", "dvswitch": "dvSwitch9"},
            {"name": "VM Network", "dvswitch": "dvSwitch1"}]}
    found = problems(section)
    ghosts = ", ".join(sim.hosts)
    assert found == {
        ("dvswitches", 0, "version"): "distributed switch 'dvSwitch1' is version 6.5.0; "
        "hostsetup does not upgrade a switch (leave version out, or upgrade it in vCenter)",
        ("dvswitches", 0, "hosts", 0, "nics", 0): f"'vmnic0' on host '{first}' is already an "
        "uplink of vSwitch 'vSwitch0'",
        ("dvswitches", 0, "hosts", 0, "nics", 1): f"'vmnic9' is not a physical NIC of host "
        f"'{first}' (has: vmnic0, vmnic1, vmnic2, vmnic3)",
        ("dvswitches", 0, "hosts", 1, "name"): f"no host 'esx-ghost' (hosts: {ghosts})",
        ("dvswitches", 0, "pvlans"): "PVLAN 101 is used by distributed port group 'Isolated'; "
        "keep it in the map",
        ("dvswitches", 1, "hosts", 0, "name"): f"host '{first}' is in datacenter '{DC}', not in "
        "'DC-Other' of distributed switch 'dvSwitch2'",
        ("dvswitches", 2, "datacenter"): f"no datacenter 'DC9' (datacenters: DC-Other, {DC})",
        ("dvswitches", 3, "hosts", 0, "nics", 0): f"'vmnic3' on host '{first}' is already an "
        "uplink of distributed switch 'dvSwitch1'",
        ("dvportgroups", 0, "dvswitch"): "distributed port group 'Trunk' is on distributed "
        "switch 'dvSwitch1'; a port group does not move to another switch",
        ("dvportgroups", 1, "pvlan"): "PVLAN 150 is not in the PVLAN map of distributed switch "
        "'dvSwitch1' (secondary IDs: 100)",
        ("dvportgroups", 1, "teaming", "standby_nics", 0): "'Uplink 7' is not an uplink of "
        "distributed switch 'dvSwitch1' (uplinks: Uplink 1, Uplink 2)",
        ("dvportgroups", 2, "dvswitch"): "distributed switch 'dvSwitch9' is neither in vCenter "
        "nor in the answers' dvswitches",
        ("dvportgroups", 3, "name"): "a standard port group is called 'VM Network'; vCenter "
        "needs a name of its own for a distributed port group",
    }
    # a switch removed while it still carries port groups
    section = {**base, "dvswitches": [{"name": "dvSwitch1", "state": "absent"}],
               "dvportgroups": [{"name": "Trunk", "state": "absent"}]}
    assert problems(section) == {("dvswitches", 0, "state"): (
        "distributed switch 'dvSwitch1' still carries port group(s) Isolated, VLAN-30; mark "
        "them absent too")}


def test_distributed_switches_need_vcenter(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="esx", vms=1)
    section = {**vcsim.answers(sim), "vm_adapters": [],
               "dvswitches": [{"name": "dvSwitch1", "datacenter": "ha-datacenter"}]}
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert "vsphere_network.dvswitches (line " in out, out
    assert "distributed switches need vCenter; 127.0.0.1 is an ESXi host" in out, out
    assert report["steps"][0]["changes"] == []
    assert read_back(section).hosts[0].vswitch("vSwitch1") is None  # nothing changed


@pytest.mark.parametrize("bad, path, words", [
    ({"dvswitches": [{"name": "d"}]}, "dvswitches[0]", "'datacenter' is required"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "mtu": 9001}]}, "dvswitches[0].mtu",
     "9000"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "version": "7"}]},
     "dvswitches[0].version", "pattern"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "uplinks": []}]},
     "dvswitches[0].uplinks", "at least 1"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "uplinks": ["U1"],
                      "hosts": [{"name": "h", "nics": ["vmnic1", "vmnic2"]}]}]},
     "dvswitches[0]", "host 'h' gives 2 NICs to 1 uplink(s)"),
    ({"dvswitches": [{"name": "d", "datacenter": DC,
                      "hosts": [{"name": "h", "nics": ["vmnic1", "vmnic1"]}]}]},
     "dvswitches[0].hosts[0].nics", "vmnic1 listed more than once"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "pvlans": [
        {"primary": 100, "secondary": 101, "type": "promiscuous"}]}]},
     "dvswitches[0].pvlans[0]", "the promiscuous entry, and only it"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "pvlans": [
        {"primary": 100, "secondary": 101, "type": "isolated"}]}]},
     "dvswitches[0]", "needs the promiscuous entry of its primary 100"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "pvlans": [
        *PVLANS[:2], {"primary": 100, "secondary": 103, "type": "isolated"}]}]},
     "dvswitches[0]", "primary PVLAN 100 has more than one isolated secondary"),
    ({"dvswitches": [{"name": "d", "datacenter": DC, "pvlans": [
        {"primary": 4095, "secondary": 4095, "type": "promiscuous"}]}]},
     "dvswitches[0].pvlans[0].primary", "4094"),
    ({"dvportgroups": [{"name": "p"}]}, "dvportgroups[0]", "'dvswitch' is required"),
    ({"dvportgroups": [{"name": "p", "dvswitch": "d", "vlan": 4095}]},
     "dvportgroups[0].vlan", "4094"),
    ({"dvportgroups": [{"name": "p", "dvswitch": "d", "vlan_trunk": ["300-200"]}]},
     "dvportgroups[0].vlan_trunk[0]", "'300-200' is not a VLAN range"),
    ({"dvportgroups": [{"name": "p", "dvswitch": "d", "vlan_trunk": ["10-x"]}]},
     "dvportgroups[0].vlan_trunk[0]", "pattern"),
    ({"dvportgroups": [{"name": "p", "dvswitch": "d", "vlan": 10, "pvlan": 101}]},
     "dvportgroups[0]", "give one of vlan, vlan_trunk or pvlan, not vlan and pvlan"),
    ({"dvportgroups": [{"name": "p", "dvswitch": "d", "binding": "dynamic"}]},
     "dvportgroups[0].binding", "'static' or 'ephemeral'"),
    ({"dvswitches": [{"name": "d", "state": "absent"}],
      "dvportgroups": [{"name": "p", "dvswitch": "d"}]},
     "", "distributed port group 'p' is on distributed switch 'd', which the answers remove"),
    ({"dvswitches": [{"name": "d", "datacenter": DC}, {"name": "d", "datacenter": DC}]},
     "", "distributed switch d listed more than once"),
])
def test_bad_distributed_values_exit_3_with_key_and_line(
        vs_start: Start, tmp_path: Path, bad: dict[str, Any], path: str, words: str) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=1)
    section = {**vcsim.answers(sim), "vm_adapters": [], **bad}
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert f"vsphere_network{'.' if path else ''}{path} (line " in out and words in out, out
    assert report["steps"] == []
    inv = read_back(section)
    assert inv.dvswitches == () and inv.hosts[0].vswitch("vSwitch1") is None


def test_the_simulator_keeps_and_checks_switches_as_vcenter(vs_start: Start) -> None:
    """Our simulator's DVS additions called with plain pyVmomi as a real client would;
    what it returns is pyVmomi's own types."""
    sim = vs_start(model="vcenter", hosts=2, vms=1)
    with vcenter(sim) as content:
        dc = content.rootFolder.childEntity[0]
        hosts = list(objects(content, vim.HostSystem).values())

        def create(name: str, nic: str, *pvlans: tuple[int, int, str]) -> Any:
            spec = vim.DistributedVirtualSwitch.CreateSpec(configSpec=VDS.ConfigSpec(
                name=name, maxMtu=9000,
                uplinkPortPolicy=vim.DistributedVirtualSwitch.NameArrayUplinkPortPolicy(
                    uplinkPortName=["U1", "U2"]),
                host=[vim.dvs.HostMember.ConfigSpec(
                    operation="add", host=h, backing=vim.dvs.HostMember.PnicBacking(
                        pnicSpec=[vim.dvs.HostMember.PnicSpec(pnicDevice=nic)]))
                      for h in hosts],
                pvlanConfigSpec=[VDS.PvlanConfigSpec(operation="add", pvlanEntry=VDS.PvlanMapEntry(
                    primaryVlanId=p, secondaryVlanId=s, pvlanType=t)) for p, s, t in pvlans]))
            task = dc.networkFolder.CreateDVS_Task(spec)
            WaitForTask(task)
            return task.info.result

        dvs = create("dvs1", "vmnic2", (10, 10, "promiscuous"), (10, 11, "isolated"))
        assert isinstance(dvs, vim.DistributedVirtualSwitch)
        assert isinstance(dvs.config.pvlanConfig[0], VDS.PvlanMapEntry)
        assert dvs.config.configVersion == "1"
        # a NIC another switch uses, a secondary PVLAN without its promiscuous primary
        with pytest.raises(vim.fault.ResourceInUse):
            create("dvs2", "vmnic2")
        with pytest.raises(vmodl.fault.InvalidArgument) as bad:
            create("dvs3", "vmnic3", (20, 21, "isolated"))
        assert bad.value.invalidProperty == "pvlanConfigSpec.pvlanEntry.primaryVlanId"
        assert sorted(objects(content, vim.DistributedVirtualSwitch)) == ["dvs1"]
        # a standard vSwitch cannot take the switch's NIC either
        ns = hosts[0].configManager.networkSystem
        with pytest.raises(vim.fault.ResourceInUse):
            ns.AddVirtualSwitch(vswitchName="vSwitch9", spec=vim.host.VirtualSwitch.Specification(
                numPorts=64, bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=["vmnic2"])))

        def add(**spec: Any) -> None:
            WaitForTask(dvs.AddDVPortgroup_Task([vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                numPorts=2, **spec)]))

        add(name="Iso", defaultPortConfig=VDS.VmwarePortConfigPolicy(vlan=VDS.PvlanSpec(
            pvlanId=11)))
        for setting, prop in (
                (VDS.VmwarePortConfigPolicy(vlan=VDS.PvlanSpec(pvlanId=12)), "vlan.pvlanId"),
                (VDS.VmwarePortConfigPolicy(vlan=VDS.TrunkVlanSpec(vlanId=[vim.NumericRange(
                    start=10, end=4095)])), "vlan.vlanId"),
                (VDS.VmwarePortConfigPolicy(uplinkTeamingPolicy=VDS.UplinkPortTeamingPolicy(
                    uplinkPortOrder=VDS.UplinkPortOrderPolicy(activeUplinkPort=["U9"]))),
                 "uplinkTeamingPolicy.uplinkPortOrder")):
            with pytest.raises(vmodl.fault.InvalidArgument) as bad:
                add(name="Bad", defaultPortConfig=setting)
            assert bad.value.invalidProperty == f"defaultPortConfig.{prop}"
        with pytest.raises(vim.fault.DuplicateName):
            add(name="Iso")
        [iso] = [pg for pg in dvs.portgroup if pg.name == "Iso"]
        assert isinstance(iso.config.defaultPortConfig.vlan, VDS.PvlanSpec)
        # port keys are unique on the switch
        keys = [k for pg in dvs.portgroup for k in pg.portKeys or ()]
        assert keys and len(keys) == len(set(keys))
        # a reconfigure must quote the current configVersion
        with pytest.raises(vim.fault.ConcurrentAccess):
            WaitForTask(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(configVersion="0", maxMtu=1500)))
        # a PVLAN a port group uses stays
        with pytest.raises(vim.fault.ResourceInUse):
            WaitForTask(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(
                configVersion=dvs.config.configVersion,
                pvlanConfigSpec=[VDS.PvlanConfigSpec(
                    operation="remove", pvlanEntry=VDS.PvlanMapEntry(
                        primaryVlanId=10, secondaryVlanId=11, pvlanType="isolated"))])))
        assert dvs.config.maxMtu == 9000 and dvs.config.configVersion == "1"
        # a host of another datacenter cannot join
        other = content.rootFolder.CreateDatacenter(name="DC-Other")
        task = other.networkFolder.CreateDVS_Task(vim.DistributedVirtualSwitch.CreateSpec(
            configSpec=VDS.ConfigSpec(name="far", host=[vim.dvs.HostMember.ConfigSpec(
                operation="add", host=hosts[0])])))
        with pytest.raises(vmodl.fault.InvalidArgument):
            WaitForTask(task)
