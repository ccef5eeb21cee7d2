"""VM adapters and VMkernel adapters on distributed port groups, against the
simulator in vCenter mode (a datacenter, a cluster, 3 hosts).

Placement is read back with plain pyVmomi: a DistributedVirtualPortBackingInfo
(switch UUID, port group key, a port) for a VM adapter, the HostVirtualNic's
distributedVirtualPort for a VMkernel adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Start, distributed, objects, read_back, selected, vcenter
from helpers import vsphere_cli as cli
from helpers import vsphere_problems as problems
from helpers import vsphere_run as run
from pyVmomi import vim

from steps.base import StepFailed

DV_BACKING = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo


def placed(sim: Any) -> dict[str, Any]:
    """The switch of test_vsphere_dvs plus a vMotion port group on it; a standard
    vMotion port group with a static adapter per host; the first VM's adapter
    onto the trunk."""
    section = distributed(sim)
    section["dvportgroups"].append({"name": "dv-vMotion", "dvswitch": "dvSwitch1", "vlan": 31})
    section["vswitches"] = [{"name": "vSwitch1", "nics": ["vmnic1"]}]
    section["portgroups"] = [{"name": "vMotion", "vswitch": "vSwitch1", "vlan": 30}]
    section["vmkernel"] = [{"host": h, "portgroup": "vMotion", "services": ["vmotion"],
                            "ip": {"address": f"10.0.30.{n}", "netmask": "255.255.255.0"}}
                           for n, h in enumerate(sim.hosts, 11)]
    section["vm_adapters"] = [{"vm": sim.vms[0], "adapter": "Network adapter 1",
                               "dvportgroup": "Trunk"}]
    return section


def nic_of(vm: Any) -> Any:
    return next(d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard))


def test_adapters_onto_distributed_port_groups_and_back(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=2)
    section = placed(sim)
    plan = run(section)
    move = next(c for c in plan if c.target == f"VM {sim.vms[0]}: Network adapter 1")
    assert (move.before, move.after) == ({"port_group": "VM Network"},
                                         {"port_group": "Trunk", "dvswitch": "dvSwitch1"})
    assert run(section, apply=False) == []

    with vcenter(sim) as content:
        dvs = objects(content, vim.DistributedVirtualSwitch)["dvSwitch1"]
        trunk = next(pg for pg in dvs.portgroup if pg.name == "Trunk")
        nic = nic_of(objects(content, vim.VirtualMachine)[sim.vms[0]])
        assert isinstance(nic.backing, DV_BACKING)
        port = nic.backing.port
        assert isinstance(port, vim.dvs.PortConnection)
        assert (port.switchUuid, port.portgroupKey) == (dvs.uuid, trunk.key)
        assert port.portKey in trunk.portKeys
        assert [vm.name for vm in trunk.vm] == [sim.vms[0]]  # vCenter lists it there
        assert not isinstance(nic_of(objects(content, vim.VirtualMachine)[sim.vms[1]]).backing,
                              DV_BACKING)

    # the vMotion adapters migrate onto the distributed port group (same device)
    for v in section["vmkernel"]:
        del v["portgroup"]
        v.update(device="vmk1", dvportgroup="dv-vMotion")
    plan = run(section)
    assert sorted((c.target, c.before, c.after) for c in plan) == [
        (f"{h}: VMkernel vmk1", {"portgroup": "vMotion", "dvswitch": None},
         {"portgroup": "dv-vMotion", "dvswitch": "dvSwitch1"}) for h in sim.hosts]
    assert run(section, apply=False) == []
    with vcenter(sim) as content:
        dvs = objects(content, vim.DistributedVirtualSwitch)["dvSwitch1"]
        key = next(pg.key for pg in dvs.portgroup if pg.name == "dv-vMotion")
        for n, host in enumerate(sorted(objects(content, vim.HostSystem).values(),
                                        key=lambda h: h.name), 11):
            vmk = next(v for v in host.config.network.vnic if v.device == "vmk1")
            dv = vmk.spec.distributedVirtualPort
            assert isinstance(dv, vim.dvs.PortConnection)
            assert (dv.switchUuid, dv.portgroupKey, bool(dv.portKey)) == (dvs.uuid, key, True)
            assert not vmk.portgroup and vmk.spec.ip.ipAddress == f"10.0.30.{n}"
            assert selected(host.config, "vmotion") == ["vmk1"]
    assert {read_back(section).host(h).vmk("vmk1").dvswitch  # type: ignore[union-attr]
            for h in sim.hosts} == {"dvSwitch1"}

    # and back: the VM adapter to a standard port group, the adapters removed
    section["vm_adapters"][0] = {"vm": sim.vms[0], "adapter": "Network adapter 1",
                                 "portgroup": "VM Network"}
    for v in section["vmkernel"]:
        v["state"] = "absent"
    plan = run(section)
    assert (f"VM {sim.vms[0]}: Network adapter 1", {"port_group": "Trunk",
                                                   "dvswitch": "dvSwitch1"},
            {"port_group": "VM Network"}) in [(c.target, c.before, c.after) for c in plan]
    inv = read_back(section)
    vm = inv.vm(sim.vms[0])
    assert vm is not None and vm.adapters[0].network == "VM Network"
    assert vm.adapters[0].dvswitch is None
    assert all(h.vmk("vmk1") is None for h in inv.hosts)


def test_a_failure_after_the_placements_undoes_them(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=2)
    section = placed(sim)
    for v in section["vmkernel"]:
        del v["portgroup"]
        v["dvportgroup"] = "dv-vMotion"
    before = read_back(section)
    # everything is made, the VMkernel adapters on the distributed port group too,
    # then the VM's move fails
    sim.faults.write_text(f"ReconfigVM_Task:{sim.vms[0]}\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert f"update VM {sim.vms[0]}: Network adapter 1 failed" in str(err.value)
    assert err.value.done == [] and "fault injected" in str(err.value)
    assert read_back(section) == before

    # the first adapter on the distributed port group fails: the switch, its port
    # groups and the first host's vSwitch go again
    sim.faults.write_text("AddVirtualNic:dv-vMotion\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert f"create {sim.hosts[0]}: VMkernel adapter on dv-vMotion failed" in str(err.value)
    assert "undid 7 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before


def test_placement_validation(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=2)
    base = placed(sim)
    run(base)
    first, last = sim.hosts[0], sim.hosts[-1]
    section = {**base, "dvswitches": [{**base["dvswitches"][0], "hosts": [
        {"name": last, "state": "absent"}]}],
        "vmkernel": [{"host": last, "dvportgroup": "dv-vMotion"},
                     {"host": first, "dvportgroup": "Nowhere"},
                     {"host": first, "device": "vmk0", "dvportgroup": "dv-vMotion",
                      "services": ["management"]}],
        "vm_adapters": [{"vm": sim.vms[1], "adapter": "Network adapter 1",
                         "dvportgroup": "Ghost"}]}
    found = problems(section)
    guard = ("vmk0 carries the management network this session uses (it is tagged for the "
             "management service); it is never removed, moved, re-addressed or untagged")
    assert found == {
        ("vmkernel", 0, "dvportgroup"): f"host '{last}' is not a member of distributed switch "
        "'dvSwitch1' (join it under dvswitches[].hosts)",
        ("vmkernel", 1, "dvportgroup"): "distributed port group 'Nowhere' is neither in vCenter "
        "nor in the answers' dvportgroups",
        ("vmkernel", 2, "dvportgroup"): guard,
        ("vm_adapters", 0, "dvportgroup"): "distributed port group 'Ghost' is neither in "
        "vCenter nor in the answers' dvportgroups",
    }
    # a distributed port group that still carries adapters is not removed
    section = {**base, "dvportgroups": [{"name": "Trunk", "state": "absent"}],
               "vm_adapters": [], "vmkernel": []}
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert "vsphere_network.dvportgroups[0].state (line " in out, out
    assert (f"distributed port group 'Trunk' carries VM '{sim.vms[0]}'; remove or move them "
            "in the answers too") in out, out
    assert read_back(base).dvportgroup("Trunk") is not None
    # one of portgroup and dvportgroup
    section = {**base, "vm_adapters": [{"vm": sim.vms[0], "adapter": "Network adapter 1",
                                        "portgroup": "VM Network", "dvportgroup": "Trunk"}]}
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert "vsphere_network.vm_adapters[0] (line " in out, out
    assert "give portgroup (standard) or dvportgroup (distributed): one of them" in out, out
    assert report["steps"] == []
