"""Port mirroring sessions (SPAN, RSPAN source/destination, ERSPAN) on a distributed
switch, against the simulator in vCenter mode (a datacenter, a cluster, 3 hosts).

Sessions are read back with plain pyVmomi (VMwareVspanSession and its ports),
and the simulator's session checks are called as a real client would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Start, distributed, objects, read_back, vcenter
from helpers import vsphere_cli as cli
from helpers import vsphere_problems as problems
from helpers import vsphere_run as run
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from sandbox import vcsim
from steps.base import StepFailed

VDS = vim.dvs.VmwareDistributedVirtualSwitch
NIC = "Network adapter 1"
ANALYSER = "192.0.2.10"


def mirrored(sim: vcsim.Vcsim) -> dict[str, Any]:
    """The switch of test_vsphere_dvs, two VMs' adapters on its trunk, and a session
    of each type: the first VM mirrored to the second (SPAN), out of Uplink 2 in
    VLAN 999 (RSPAN), VLAN 999 to the second VM (RSPAN destination), to an
    analyser (ERSPAN)."""
    section = distributed(sim)
    section["vm_adapters"] = [{"vm": vm, "adapter": NIC, "dvportgroup": "Trunk"}
                              for vm in sim.vms[:2]]
    source = [{"vm": sim.vms[0], "adapter": NIC}]
    sensor = [{"vm": sim.vms[1], "adapter": NIC}]
    section["mirror_sessions"] = [
        {"name": "sensor-span", "dvswitch": "dvSwitch1", "sources": source,
         "destination": sensor},
        {"name": "to-rspan", "dvswitch": "dvSwitch1", "type": "rspan_source",
         "sources": source, "direction": "transmitted", "destination": [{"uplink": "Uplink 2"}],
         "encapsulation_vlan": 999, "strip_vlan": True},
        {"name": "from-rspan", "dvswitch": "dvSwitch1", "type": "rspan_destination",
         "source_vlans": [999], "destination": sensor},
        {"name": "to-analyser", "dvswitch": "dvSwitch1", "type": "erspan", "sources": source,
         "destination": [{"ip": ANALYSER}]}]
    return section


def sessions(sim: vcsim.Vcsim) -> tuple[dict[str, Any], dict[str, str]]:
    """The switch's VSPAN sessions by name and the VMs' port keys, read with plain pyVmomi."""
    with vcenter(sim) as content:
        dvs = objects(content, vim.DistributedVirtualSwitch)["dvSwitch1"]
        ports = {}
        for name, vm in objects(content, vim.VirtualMachine).items():
            nic = next(d for d in vm.config.hardware.device
                       if isinstance(d, vim.vm.device.VirtualEthernetCard))
            ports[name] = getattr(nic.backing, "port", None) and nic.backing.port.portKey
        return {s.name: s for s in dvs.config.vspanSession or ()}, ports


def test_mirror_sessions_apply_replan_read_back_update_remove(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=3)
    section = mirrored(sim)
    web, sensor = (f"{vm}/{NIC}" for vm in sim.vms[:2])
    plan = run(section)
    made = [(c.target, c.after) for c in plan if "mirror session" in c.target]
    assert made[0] == ("dvSwitch1: mirror session sensor-span", {
        "type": "span", "enabled": True, "sources": [web], "direction": "both",
        "source_vlans": [], "destination": [sensor], "encapsulation_vlan": None,
        "strip_vlan": False})
    assert [t for t, _ in made] == [f"dvSwitch1: mirror session {m['name']}"
                                    for m in section["mirror_sessions"]]
    # the sessions come after the adapters' moves they mirror
    assert [c.target for c in plan].index(f"VM {sim.vms[0]}: {NIC}") < plan.index(
        next(c for c in plan if "mirror" in c.target))
    assert run(section, apply=False) == []

    found, ports = sessions(sim)
    span, rspan, back, erspan = (found[m["name"]] for m in section["mirror_sessions"])
    assert all(isinstance(s, VDS.VspanSession) for s in found.values())
    assert isinstance(span.sourcePortTransmitted, VDS.VspanPorts)
    assert (span.sessionType, list(span.sourcePortTransmitted.portKey),
            list(span.sourcePortReceived.portKey), list(span.destinationPort.portKey)) == (
        "dvPortMirror", [ports[sim.vms[0]]], [ports[sim.vms[0]]], [ports[sim.vms[1]]])
    assert (rspan.sessionType, list(rspan.destinationPort.uplinkPortName),
            rspan.encapsulationVlanId, rspan.stripOriginalVlan, rspan.sourcePortReceived) == (
        "remoteMirrorSource", ["Uplink 2"], 999, True, None)
    assert (back.sessionType, list(back.sourcePortReceived.vlans),
            list(back.destinationPort.portKey)) == ("remoteMirrorDest", [999],
                                                     [ports[sim.vms[1]]])
    assert (erspan.sessionType, list(erspan.destinationPort.ipAddress), erspan.enabled) == (
        "encapsulatedRemoteMirrorSource", [ANALYSER], True)

    # update: only the received traffic; the ERSPAN session stopped
    section["mirror_sessions"][0]["direction"] = "received"
    section["mirror_sessions"][3]["enabled"] = False
    plan = run(section)
    assert [(c.target, c.before, c.after) for c in plan] == [
        ("dvSwitch1: mirror session sensor-span", {"direction": "both"},
         {"direction": "received"}),
        ("dvSwitch1: mirror session to-analyser", {"enabled": True}, {"enabled": False})]
    assert run(section, apply=False) == []
    found, _ports = sessions(sim)
    assert found["sensor-span"].sourcePortTransmitted is None or not list(
        found["sensor-span"].sourcePortTransmitted.portKey)
    assert found["to-analyser"].enabled is False
    assert found["sensor-span"].key == span.key  # edited in place

    # removal
    section["mirror_sessions"][1] = {"name": "to-rspan", "dvswitch": "dvSwitch1",
                                     "state": "absent"}
    plan = run(section)
    assert [c.describe() for c in plan] == ["delete dvSwitch1: mirror session to-rspan"]
    assert sorted(sessions(sim)[0]) == ["from-rspan", "sensor-span", "to-analyser"]


def test_a_failed_session_leaves_everything_as_before(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=3)
    section = mirrored(sim)
    before = read_back(section)
    sim.faults.write_text("ReconfigureDvs_Task:dvSwitch1/to-analyser\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "create dvSwitch1: mirror session to-analyser failed" in str(err.value)
    # switch, 3 port groups, 2 moves, 3 sessions
    assert "undid 9 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before

    sim.faults.write_text("")
    run(section)
    before = read_back(section)
    section["mirror_sessions"][0]["destination"] = [{"port": before.dvportgroup(
        "Isolated").port_keys[0]}]  # type: ignore[union-attr]
    section["mirror_sessions"][3]["destination"] = [{"ip": "192.0.2.99"}]
    sim.faults.write_text("ReconfigureDvs_Task:dvSwitch1/to-analyser\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "undid 1 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before


def test_mirror_validation_against_the_switch(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=3)
    base = mirrored(sim)
    run(base)
    section = {**base, "vm_adapters": [], "mirror_sessions": [
        {"name": "a", "dvswitch": "dvSwitch1", "sources": [{"vm": sim.vms[2], "adapter": NIC},
                                                           {"port": "99999"}],
         "destination": [{"vm": sim.vms[1], "adapter": "Network adapter 7"}]},
        {"name": "b", "dvswitch": "dvSwitch1", "type": "rspan_source",
         "sources": [{"port": "7"}], "destination": [{"uplink": "Uplink 9"}],
         "encapsulation_vlan": 5},
        {"name": "c", "dvswitch": "dvSwitch9", "type": "erspan",
         "sources": [{"port": "7"}], "destination": [{"ip": ANALYSER}]}]}
    assert problems(section) == {
        ("mirror_sessions", 0, "sources", 0): f"'{NIC}' of VM '{sim.vms[2]}' is on port group "
        "'VM Network', not on distributed switch 'dvSwitch1' (nor moved there by the answers)",
        ("mirror_sessions", 0, "sources", 1): "no port 99999 on distributed switch 'dvSwitch1'",
        ("mirror_sessions", 0, "destination", 0): f"no 'Network adapter 7' of VM "
        f"'{sim.vms[1]}'",
        ("mirror_sessions", 1, "destination", 0): "'Uplink 9' is not an uplink of distributed "
        "switch 'dvSwitch1' (uplinks: Uplink 1, Uplink 2)",
        ("mirror_sessions", 2, "dvswitch"): "distributed switch 'dvSwitch9' is neither in "
        "vCenter nor in the answers' dvswitches",
    }
    # the third VM's adapter moved there by the same answers is fine
    section["vm_adapters"] = [{"vm": sim.vms[2], "adapter": NIC, "dvportgroup": "VLAN-30"}]
    section["mirror_sessions"] = section["mirror_sessions"][:1]
    section["mirror_sessions"][0].update(sources=section["mirror_sessions"][0]["sources"][:1],
                                         destination=[{"vm": sim.vms[1], "adapter": NIC}])
    assert problems(section) == {}


S = "mirror_sessions[0]"


@pytest.mark.parametrize("bad, path, words", [
    ({"source_vlans": [10]}, S, "a span session mirrors VM adapters or ports: give sources, "
                                "not source_vlans"),
    ({"type": "rspan_destination"}, S, "a rspan_destination session mirrors VLANs: give "
                                       "source_vlans, not sources"),
    ({"type": "rspan_source", "destination": [{"uplink": "Uplink 1"}]}, S,
     "encapsulation_vlan is for an rspan_source session: a rspan_source session needs one"),
    ({"encapsulation_vlan": 10}, S, "a span session takes no one"),
    ({"type": "erspan"}, S, "destination[0]: a erspan session takes ip there, not port"),
    ({"destination": [{"ip": "192.0.2.1"}]}, S, "destination[0]: a span session takes port "
                                               "or vm there, not ip"),
    ({"destination": []}, S, "a span session needs a destination"),
    ({"sources": [{"vm": "x"}]}, f"{S}.sources[0]", "a VM adapter needs both vm and adapter"),
    ({"sources": [{"port": "1", "uplink": "u"}]}, f"{S}.sources[0]",
     "give one of: vm and adapter, port, uplink, ip"),
    ({"sources": [{"port": "one"}]}, f"{S}.sources[0].port", "pattern"),
    ({"destination": [{"ip": "192.0.2.300"}]}, f"{S}.destination[0].ip", "IPv4"),
    ({"direction": "in"}, f"{S}.direction", "'both', 'transmitted' or 'received'"),
    ({"source_vlans": [4095], "type": "rspan_destination", "sources": []},
     f"{S}.source_vlans[0]", "4094"),
    ({"dvswitch": "gone"}, "", "mirror session 'm' is on distributed switch 'gone', which the "
                               "answers remove"),
])
def test_bad_mirror_values_exit_3_with_key_and_line(
        vs_start: Start, tmp_path: Path, bad: dict[str, Any], path: str, words: str) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=1)
    session = {"name": "m", "dvswitch": "dvSwitch1", "sources": [{"port": "1"}],
               "destination": [{"port": "2"}], **bad}
    section = {**vcsim.answers(sim), "vm_adapters": [], "mirror_sessions": [session],
               "dvswitches": [{"name": "gone", "state": "absent"}]}
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert f"vsphere_network{'.' if path else ''}{path} (line " in out and words in out, out
    assert report["steps"] == []
    assert read_back(section).hosts[0].vswitch("vSwitch1") is None  # nothing changed


def test_the_simulator_checks_sessions_as_vcenter(vs_start: Start) -> None:
    """VSPAN sessions with plain pyVmomi: what vCenter refuses is refused."""
    sim = vs_start(model="vcenter", hosts=2, vms=1)
    run({**distributed(sim), "dvportgroups": distributed(sim)["dvportgroups"][:1]})
    with vcenter(sim) as content:
        dvs = objects(content, vim.DistributedVirtualSwitch)["dvSwitch1"]
        [trunk] = [pg for pg in dvs.portgroup if pg.name == "Trunk"]
        a, b = trunk.portKeys[:2]

        def add(**session: Any) -> None:
            WaitForTask(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(
                configVersion=dvs.config.configVersion,
                vspanConfigSpec=[VDS.VspanConfigSpec(operation="add", vspanSession=VDS.VspanSession(
                    enabled=True, stripOriginalVlan=False, normalTrafficAllowed=False,
                    **session))])))

        ports = VDS.VspanPorts
        for session, prop in (
                ({"sessionType": "dvPortMirror", "sourcePortTransmitted": ports(portKey=["999"]),
                  "destinationPort": ports(portKey=[b])}, "vspanSession.portKey"),
                ({"sessionType": "remoteMirrorSource", "sourcePortTransmitted": ports(
                    portKey=[a]), "destinationPort": ports(uplinkPortName=["Uplink 1"])},
                 "vspanSession.encapsulationVlanId"),
                ({"sessionType": "encapsulatedRemoteMirrorSource", "sourcePortTransmitted":
                  ports(portKey=[a]), "destinationPort": ports(ipAddress=["300.1.1.1"])},
                 "vspanSession.destinationPort.ipAddress"),
                ({"sessionType": "dvPortMirror", "sourcePortTransmitted": ports(portKey=[a]),
                  "destinationPort": ports(portKey=[a])},
                 "vspanSession.destinationPort.portKey")):
            with pytest.raises(vmodl.fault.InvalidArgument) as err:
                add(name="bad", **session)
            assert err.value.invalidProperty == prop
        add(name="ok", sessionType="dvPortMirror", sourcePortReceived=ports(portKey=[a]),
            destinationPort=ports(portKey=[b]))
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            add(name="ok", sessionType="dvPortMirror", sourcePortReceived=ports(portKey=[a]),
                destinationPort=ports(portKey=[b]))
        assert err.value.invalidProperty == "vspanConfigSpec.vspanSession.name"
        with pytest.raises(vim.fault.NotFound):
            WaitForTask(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(
                configVersion=dvs.config.configVersion,
                vspanConfigSpec=[VDS.VspanConfigSpec(
                    operation="edit", vspanSession=VDS.VspanSession(
                        key="no-such-key", name="ok", enabled=False, stripOriginalVlan=False,
                        normalTrafficAllowed=False))])))
        [ok] = dvs.config.vspanSession
        assert isinstance(ok, VDS.VspanSession) and ok.key
        assert list(ok.sourcePortReceived.portKey) == [a]
