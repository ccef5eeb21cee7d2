"""vsphere_network's operations as a journal keeps them, against the simulator
(vCenter mode): applied, then undone from their JSON only in a fresh session, as
``hostsetup undo`` does in a later process.  What the hosts and vCenter have is read
back with plain pyVmomi (the effective policies, what a real vCenter returns).
"""

from __future__ import annotations

import json
from typing import Any

from pyVmomi import vim
from test_vsphere_dvs import objects, vcenter
from test_vsphere_network import Start, run, vs_start

from backends.bundle import RealBackends
from sandbox import vcsim
from steps.base import Context
from steps.vsphere_network import VSphereNetworkAnswers, VSphereNetworkStep

__all__ = ["vs_start"]  # the fixture, used by name

STEP = VSphereNetworkStep()


def build(sim: vcsim.Vcsim) -> dict[str, Any]:
    """A vSwitch with two port groups and a VM adapter moved (the sandbox's answers),
    a static VMkernel adapter, vSwitch0's MTU (it carries the management adapter),
    an existing port group updated, a distributed switch and port group."""
    section = vcsim.answers(sim)
    section["vswitches"].append({"name": "vSwitch0", "mtu": 9000, "nics": ["vmnic0"]})
    section["portgroups"].append({"name": "Lab", "vswitch": "vSwitch0", "vlan": 7,
                                  "allow_promiscuous": True})
    return {**section,
            "vmkernel": [{"host": sim.hosts[0], "portgroup": "EastWest-20", "mtu": 9000,
                          "services": ["vmotion"],
                          "ip": {"address": "10.0.20.11", "netmask": "255.255.255.0"}}],
            "dvswitches": [{"name": "dvSwitch1", "datacenter": "DC0", "mtu": 9000,
                            "hosts": [{"name": h, "nics": ["vmnic2"]} for h in sim.hosts]}],
            "dvportgroups": [{"name": "dv-30", "dvswitch": "dvSwitch1", "vlan": 30}]}


def snapshot(sim: vcsim.Vcsim) -> dict[str, Any]:
    """The hosts' networking, distributed switches and VM adapters, by plain pyVmomi."""
    with vcenter(sim) as content:
        hosts = {}
        for name, host in objects(content, vim.HostSystem).items():
            net = host.config.network
            # a vSwitch's configured ports (its spec): the simulator's runtime count
            # follows any update
            hosts[name] = {
                "vswitches": sorted((v.name, v.mtu, v.spec.numPorts, sorted(v.pnic or []))
                                    for v in net.vswitch),
                "portgroups": sorted((p.spec.name, p.spec.vswitchName, p.spec.vlanId,
                                      p.computedPolicy.security.allowPromiscuous)
                                     for p in net.portgroup),
                "vnics": sorted((v.device, v.portgroup, v.spec.ip.ipAddress, v.spec.mtu)
                                for v in net.vnic)}
        switches = {name: (d.config.maxMtu, sorted(m.config.host.name for m in d.config.host))
                    for name, d in objects(content, vim.DistributedVirtualSwitch).items()}
        dvpgs = sorted(objects(content, vim.dvs.DistributedVirtualPortgroup))
        vms = {name: sorted((d.deviceInfo.label, getattr(d.backing, "deviceName", None))
                            for d in vm.config.hardware.device
                            if isinstance(d, vim.vm.device.VirtualEthernetCard))
               for name, vm in objects(content, vim.VirtualMachine).items()}
    return {"hosts": hosts, "dvswitches": switches, "dvportgroups": dvpgs, "vms": vms}


def test_apply_then_undo_from_the_journal_brings_back_the_first_state(
        vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=2)
    section = build(sim)
    run({**vcsim.answers(sim), "vswitches": [], "vm_adapters": [],
         "portgroups": [{"name": "Lab", "vswitch": "vSwitch0", "vlan": 5}]})
    before = snapshot(sim)
    answers = VSphereNetworkAnswers.model_validate(section)

    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ctx.facts[STEP.name] = STEP.facts_for(answers, ctx)
        assert STEP.validate(answers, ctx.facts[STEP.name]) == []
        ops = STEP.plan(answers, ctx)
        STEP.apply(answers, ops, ctx)
    finally:
        backends.close()
    journal = json.loads(json.dumps([op.as_dict() for op in ops]))
    kinds = {(c["change"]["action"], c["change"]["target"].split(": ")[-1].rsplit(" ", 1)[0])
             for c in journal}
    assert {("create", "distributed switch"), ("create", "distributed port group"),
            ("create", "vSwitch"), ("create", "port group"), ("update", "port group"),
            ("update", "vSwitch"), ("create", "VMkernel adapter on"),
            ("update", "Network adapter")} <= kinds, kinds
    # vSwitch0 carries the management adapter: its update is risky, the rest not
    risky = {c["change"]["target"]: c["risky"] for c in journal if c["risky"]}
    assert sorted(risky) == [f"{h}: vSwitch vSwitch0" for h in sorted(sim.hosts)]
    assert all("vmk0" in why for why in risky.values())
    after = snapshot(sim)
    assert after != before and len(after["dvswitches"]) == len(before["dvswitches"]) + 1

    backends = RealBackends()  # a later process: the JSON commands only
    try:
        ctx = Context(backends=backends)
        assert all(STEP.observe(answers, c["do"], ctx) for c in journal)
        for c in reversed(journal):
            if c["undo"] is not None:
                STEP.execute(answers, c["undo"], ctx)
                assert STEP.observe(answers, c["undo"], ctx), c["change"]
        assert not any(STEP.observe(answers, c["do"], ctx) for c in journal)
    finally:
        backends.close()
    assert snapshot(sim) == before
    assert run(section, apply=False) == [op.change for op in ops]

