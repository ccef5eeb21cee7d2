"""VMkernel adapters (add/update/remove, services, the management guard) against the
simulator in vCenter mode (a datacenter, a cluster, 3 hosts).

The result is read back independently with plain pyVmomi (pyVmomi's own types).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Start, networks, read_back, selected
from helpers import vsphere_cli as cli
from helpers import vsphere_problems as problems
from helpers import vsphere_run as run
from pyVmomi import vim

from sandbox import vcsim
from steps.base import StepFailed


def esxi_build(sim: vcsim.Vcsim) -> dict[str, Any]:
    """A teamed vSwitch with a vMotion and a storage port group; a static vMotion
    adapter per host (MTU 9000) and a DHCP storage adapter on every host."""
    return {**vcsim.answers(sim), "vm_adapters": [],
            "vswitches": [{"name": "vSwitch1", "mtu": 9000, "nics": ["vmnic1", "vmnic2"],
                           "teaming": {"active_nics": ["vmnic1"], "standby_nics": ["vmnic2"]}}],
            "portgroups": [{"name": "vMotion", "vswitch": "vSwitch1", "vlan": 30},
                           {"name": "Storage", "vswitch": "vSwitch1", "vlan": 40}],
            "vmkernel": [
                *({"host": h, "portgroup": "vMotion", "mtu": 9000, "services": ["vmotion"],
                   "ip": {"address": f"10.0.30.{n}", "netmask": "255.255.255.0"}}
                  for n, h in enumerate(sim.hosts, 11)),
                {"portgroup": "Storage", "ip": "dhcp", "services": ["vsan", "provisioning"]}]}


def test_vmkernel_adapters_apply_replan_update_remove(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = esxi_build(sim)
    plan = run(section)
    first = sim.hosts[0]
    create = next(c for c in plan if c.target == f"{first}: VMkernel adapter on vMotion")
    assert create.after == {"portgroup": "vMotion", "ip": "10.0.30.11/255.255.255.0",
                            "mtu": 9000, "services": ["vmotion"]}
    assert run(section, apply=False) == []

    with networks(sim, config=True) as configs:
        for n, (_name, config) in enumerate(sorted(configs.items()), 11):
            vnics = {v.portgroup: v for v in config.network.vnic}
            assert all(isinstance(v, vim.host.VirtualNic) for v in vnics.values())
            vmotion, storage = vnics["vMotion"], vnics["Storage"]
            assert (vmotion.spec.ip.dhcp, vmotion.spec.ip.ipAddress, vmotion.spec.mtu) == (
                False, f"10.0.30.{n}", 9000)
            assert storage.spec.ip.dhcp is True
            assert selected(config, "vmotion") == [vmotion.device]
            assert selected(config, "vsan") == selected(config, "vSphereProvisioning") == [
                storage.device]
            assert selected(config, "management") == ["vmk0"]  # untouched

    # update: MTU and services; the device stays
    section["vmkernel"][0].update(mtu=1500, services=["vmotion", "provisioning"])
    plan = run(section)
    assert [(c.target, c.before, c.after) for c in plan] == [
        (f"{first}: VMkernel vmk1", {"mtu": 9000, "services": ["vmotion"]},
         {"mtu": 1500, "services": ["provisioning", "vmotion"]})]
    with networks(sim, config=True) as configs:
        assert selected(configs[first], "vSphereProvisioning") == ["vmk1", "vmk2"]
    assert run(section, apply=False) == []

    # removal: the adapter and its service selections go
    section["vmkernel"][-1]["state"] = "absent"
    plan = run(section)
    assert sorted(c.describe() for c in plan) == sorted(
        f"delete {h}: VMkernel vmk2" for h in sim.hosts)
    with networks(sim, config=True) as configs:
        for config in configs.values():
            assert [v.device for v in config.network.vnic] == ["vmk0", "vmk1"]
            assert selected(config, "vsan") == []


def test_a_failure_in_the_middle_leaves_the_inventory_as_before(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = esxi_build(sim)
    before = read_back(section)
    # on the first host: vSwitch1, both port groups and the vMotion adapter are made,
    # then the storage adapter fails
    sim.faults.write_text("AddVirtualNic:Storage\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "undid 4 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before

    # a failed service selection removes the adapter it was for (all or nothing)
    sim.faults.write_text("SelectVnicForNicType:vSphereProvisioning.vmk2\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "SelectVnicForNicType" in str(err.value) and err.value.done == []
    assert read_back(section) == before


def test_the_management_adapter_is_never_removed_moved_or_untagged(
        vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    base = esxi_build(sim)
    run(base)
    before = read_back(base)
    mgmt = "carries the management network this session uses"
    for change, key in (
            ({"portgroup": "Management Network", "state": "absent"}, "state"),
            ({"device": "vmk0", "portgroup": "vMotion"}, "portgroup"),
            ({"portgroup": "Management Network", "services": []}, "services"),
            ({"host": sim.hosts[0], "portgroup": "Management Network",
              "ip": {"address": "10.0.0.5", "netmask": "255.255.255.0"},
              "services": ["management"]}, "ip")):
        section = {**base, "vmkernel": [change]}
        rc, out, report = cli(tmp_path, section, "apply")
        assert rc == 3, out
        assert f"vsphere_network.vmkernel[0].{key} (line " in out and mgmt in out, out
        assert report["steps"][0]["changes"] == []
    assert read_back(base) == before


def test_vmkernel_validation_against_the_hosts(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = esxi_build(sim)
    run(section)
    first, second = sim.hosts[0], sim.hosts[1]
    section["vmkernel"] = [
        {"host": second, "portgroup": "vMotion", "services": ["vmotion"],
         "ip": {"address": "10.0.30.11", "netmask": "255.255.255.0"}},
        {"host": first, "portgroup": "Nowhere"},
        {"host": "esx-ghost", "portgroup": "vMotion"},
        {"host": first, "device": "vmk9", "portgroup": "vMotion"},
        {"host": first, "device": "vmk2", "portgroup": "vMotion"},
    ]
    section["portgroups"].append({"name": "Storage", "state": "absent"})
    section["portgroups"].pop(1)
    found = problems(section)
    assert found == {
        ("vmkernel", 0, "ip", "address"): f"10.0.30.11 is already the address of vmk1 on "
                                          f"host '{first}'",
        ("vmkernel", 1, "portgroup"): f"port group 'Nowhere' is neither on host '{first}' "
                                      "nor in the answers' portgroups",
        ("vmkernel", 2, "host"): "host 'esx-ghost' is not a selected host (selected: "
                                 f"{', '.join(sim.hosts)})",
        ("vmkernel", 3, "device"): f"no VMkernel adapter 'vmk9' on host '{first}' "
                                   "(has: vmk0, vmk1, vmk2)",
        ("vmkernel", 4, "portgroup"): f"port group 'vMotion' on host '{first}' already has "
                                      "VMkernel adapter vmk1 (one per port group)",
        ("portgroups", 1, "state"): f"port group 'Storage' on host '{sim.hosts[-1]}' carries "
                                    "VMkernel adapter vmk2; mark it absent under vmkernel too",
    }


@pytest.mark.parametrize("bad, path, words", [
    ({"ip": {"address": "10.0.0.1", "netmask": "255.0.255.0"}, "host": "h"},
     "vmkernel[0].ip.netmask", "not a netmask"),
    ({"ip": {"address": "10.0.0.1", "netmask": "0.0.0.0"}, "host": "h"},
     "vmkernel[0].ip.netmask", "not a netmask"),
    ({"ip": {"address": "10.0.0.300", "netmask": "255.255.255.0"}, "host": "h"},
     "vmkernel[0].ip.address", "IPv4"),
    ({"ip": {"address": "10.0.0.1", "netmask": "255.255.255.0"}}, "vmkernel[0]",
     "needs a 'host'"),
    ({"services": ["backup"]}, "vmkernel[0].services[0]", "'management'"),
    ({"mtu": 9001}, "vmkernel[0].mtu", "9000"),
    ({"device": "eth0"}, "vmkernel[0].device", "vmk"),
    ({"portgroup": "Gone"}, "", "vmkernel[0] is on port group 'Gone', which the answers remove"),
    ({"host": "h"}, "", "a VMkernel adapter is listed more than once: h/VM Network"),
])
def test_bad_vmkernel_values_exit_3_with_key_and_line(
        vs_start: Start, tmp_path: Path, bad: dict[str, Any], path: str, words: str) -> None:
    sim = vs_start(model="esx", vms=1)
    section = {**vcsim.answers(sim), "vm_adapters": [],
               "portgroups": [{"name": "Gone", "state": "absent"}],
               "vmkernel": [{"portgroup": "VM Network", **bad}]}
    if "host" in bad and "ip" not in bad:  # the same adapter twice
        section["vmkernel"].append({"portgroup": "VM Network", **bad})
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert f"vsphere_network{'.' if path else ''}{path} (line " in out and words in out, out
    assert report["steps"] == []
    assert [v.device for v in read_back(section).hosts[0].vmks] == ["vmk0"]
