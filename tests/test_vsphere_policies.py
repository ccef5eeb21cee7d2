"""vSwitch and port-group policies (security, teaming, shaping) against the simulator.

The result is read back independently with plain pyVmomi (what a real vCenter
returns: pyVmomi's own policy types), not through the step's backend.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from helpers import Start, networks, read_back
from helpers import vsphere_cli as cli
from helpers import vsphere_problems as problems
from helpers import vsphere_run as run
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from sandbox import vcsim
from steps.base import StepFailed

NP = vim.host.NetworkPolicy
TEAMING = {"load_balancing": "failover_explicit", "active_nics": ["vmnic1"],
           "standby_nics": ["vmnic2"], "notify_switches": False, "failback": False,
           "failure_detection": "beacon"}
SHAPING = {"enabled": True, "average_kbps": 100000, "peak_kbps": 200000, "burst_kb": 102400}


def teamed(sim: vcsim.Vcsim) -> dict[str, Any]:
    """A teamed vSwitch (explicit failover, vmnic3 unused), a vMotion port group
    overriding the order, and one inheriting everything."""
    return {**vcsim.answers(sim), "vm_adapters": [],
            "vswitches": [{"name": "vSwitch1", "mtu": 9000, "nics": ["vmnic1", "vmnic2", "vmnic3"],
                           "allow_promiscuous": False, "forged_transmits": False,
                           "mac_changes": False, "teaming": TEAMING, "shaping": SHAPING}],
            "portgroups": [
                {"name": "vMotion-30", "vswitch": "vSwitch1", "vlan": 30,
                 "teaming": {"active_nics": ["vmnic2"], "standby_nics": ["vmnic1"]},
                 "shaping": {"enabled": False}},
                {"name": "Inherit-40", "vswitch": "vSwitch1", "vlan": 40}]}


def vswitch(net: Any, name: str) -> Any:
    return next(v for v in net.vswitch if v.name == name)


def portgroup(net: Any, name: str) -> Any:
    return next(p for p in net.portgroup if p.spec.name == name)


def test_policies_apply_replan_and_read_back(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = teamed(sim)
    plan = run(section)
    create = next(c for c in plan if c.target == f"{sim.hosts[0]}: vSwitch vSwitch1")
    assert create.after == {
        "ports": 128, "mtu": 9000, "uplinks": ["vmnic1", "vmnic2", "vmnic3"],
        "promiscuous": False, "forged_transmits": False, "mac_changes": False, **TEAMING,
        "shaping": True, "average_kbps": 100000, "peak_kbps": 200000, "burst_kb": 102400}
    assert run(section, apply=False) == []  # idempotent

    with networks(sim) as nets:
        assert sorted(nets) == sorted(sim.hosts)
        for net in nets.values():
            policy = vswitch(net, "vSwitch1").spec.policy
            assert isinstance(policy, NP) and isinstance(policy.nicTeaming, NP.NicTeamingPolicy)
            team = policy.nicTeaming
            assert (team.policy, team.notifySwitches, team.rollingOrder) == (
                "failover_explicit", False, True)
            assert team.failureCriteria.checkBeacon is True
            assert (list(team.nicOrder.activeNic), list(team.nicOrder.standbyNic)) == (
                ["vmnic1"], ["vmnic2"])  # vmnic3 unused
            shaping = policy.shapingPolicy
            assert isinstance(shaping, NP.TrafficShapingPolicy)
            assert (shaping.enabled, shaping.averageBandwidth, shaping.peakBandwidth,
                    shaping.burstSize) == (True, 100_000_000, 200_000_000, 102400 * 1024)
            assert policy.security.forgedTransmits is False
            vmotion = portgroup(net, "vMotion-30")
            order = vmotion.computedPolicy.nicTeaming.nicOrder
            assert (list(order.activeNic), list(order.standbyNic)) == (["vmnic2"], ["vmnic1"])
            # what the port group does not override is its vSwitch's
            assert vmotion.computedPolicy.nicTeaming.policy == "failover_explicit"
            assert vmotion.computedPolicy.shapingPolicy.enabled is False
            assert vmotion.spec.policy.security is None  # not overridden
            inherit = portgroup(net, "Inherit-40").computedPolicy
            assert (list(inherit.nicTeaming.nicOrder.activeNic),
                    inherit.shapingPolicy.averageBandwidth) == (["vmnic1"], 100_000_000)

    # An update names only what changes; the rest of the policy is left as it is.
    section["vswitches"][0]["teaming"] = {"load_balancing": "loadbalance_srcid"}
    section["portgroups"][1]["shaping"] = {"enabled": False}
    plan = run(section)
    assert sorted((c.target.split(": ")[1], c.before, c.after) for c in plan
                  if c.target.startswith(sim.hosts[1])) == [
        ("port group Inherit-40", {"shaping": True}, {"shaping": False}),
        ("vSwitch vSwitch1", {"load_balancing": "failover_explicit"},
         {"load_balancing": "loadbalance_srcid"})]
    assert run(section, apply=False) == []
    with networks(sim) as nets:
        for net in nets.values():
            team = vswitch(net, "vSwitch1").spec.policy.nicTeaming
            assert (team.policy, list(team.nicOrder.standbyNic)) == ("loadbalance_srcid",
                                                                       ["vmnic2"])
            assert portgroup(net, "vMotion-30").computedPolicy.nicTeaming.nicOrder.activeNic == [
                "vmnic2"]
            assert portgroup(net, "Inherit-40").computedPolicy.shapingPolicy.enabled is False


def test_a_new_uplink_becomes_active_a_removed_one_leaves_the_order(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=1)
    section = {**vcsim.answers(sim), "portgroups": [], "vm_adapters": []}
    section["vswitches"][0]["nics"] = ["vmnic1", "vmnic2"]
    section["vswitches"][0]["teaming"] = {"standby_nics": ["vmnic2"], "active_nics": ["vmnic1"]}
    run(section)
    section["vswitches"][0] = {**section["vswitches"][0], "nics": ["vmnic1", "vmnic3"]}
    del section["vswitches"][0]["teaming"]
    run(section)
    host = read_back(section).hosts[0]
    vs = host.vswitch("vSwitch1")
    assert vs is not None
    assert (vs.teaming.active_nics, vs.teaming.standby_nics) == (("vmnic1", "vmnic3"), ())
    assert run(section, apply=False) == []


def test_a_failed_policy_change_is_undone(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=1)
    section = teamed(sim)
    run(section)
    before = read_back(section)
    section["vswitches"][0]["teaming"] = {"load_balancing": "loadbalance_ip",
                                          "failure_detection": "link"}
    section["vswitches"][0]["shaping"] = {"average_kbps": 50000, "peak_kbps": 50000}
    section["portgroups"][0]["teaming"] = {"active_nics": ["vmnic3"], "standby_nics": []}
    section["portgroups"][1]["allow_promiscuous"] = True
    # the vSwitch and vMotion-30 are updated on the first host, then Inherit-40 fails
    sim.faults.write_text("UpdatePortGroup:Inherit-40\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "update " + sim.hosts[0] + ": port group Inherit-40 failed" in str(err.value)
    assert "undid 2 change(s)" in str(err.value) and err.value.done == []
    assert read_back(section) == before


@pytest.mark.parametrize("bad, path, words", [
    ({"teaming": {"load_balancing": "roundrobin"}}, "vswitches[0].teaming.load_balancing",
     "failover_explicit"),
    ({"teaming": {"failure_detection": "ping"}}, "vswitches[0].teaming.failure_detection",
     "'link' or 'beacon'"),
    ({"teaming": {"active_nics": []}}, "vswitches[0].teaming.active_nics", "at least 1"),
    ({"teaming": {"active_nics": ["vmnic1"], "standby_nics": ["vmnic1"]}},
     "vswitches[0].teaming", "vmnic1 listed more than once"),
    ({"teaming": {"failback": "sometimes"}}, "vswitches[0].teaming.failback", "boolean"),
    ({"shaping": {"average_kbps": 0}}, "vswitches[0].shaping.average_kbps", "greater than"),
    ({"shaping": {"average_kbps": 2000, "peak_kbps": 1000}}, "vswitches[0].shaping",
     "peak_kbps 1000 is below average_kbps 2000"),
    ({"shaping": {"burst": 10}}, "vswitches[0].shaping.burst", "unknown key"),
])
def test_bad_policy_values_exit_3_with_key_and_line(
        vs_start: Start, tmp_path: Path, bad: dict[str, Any], path: str, words: str) -> None:
    sim = vs_start(model="esx", vms=1)
    section = {**vcsim.answers(sim), "portgroups": [], "vm_adapters": []}
    section["vswitches"][0].update(bad)
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    assert f"vsphere_network.{path}" in out and words in out, out
    assert "(line " in out, out
    assert report["steps"] == [] and report["exit_code"] == 3
    assert read_back(section).hosts[0].vswitch("vSwitch1") is None  # nothing changed


def test_teaming_nics_must_be_uplinks_of_the_vswitch(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=1)
    section = {**vcsim.answers(sim), "vm_adapters": []}
    section["vswitches"][0]["teaming"] = {"active_nics": ["vmnic1"], "standby_nics": ["vmnic2"]}
    section["portgroups"][0]["teaming"] = {"active_nics": ["vmnic3"]}
    section["portgroups"].append({"name": "Mgmt2", "vswitch": "vSwitch0",
                                  "teaming": {"standby_nics": ["vmnic1"]}})
    found = problems(section)
    assert found == {
        ("vswitches", 0, "teaming", "standby_nics", 0):
            "'vmnic2' is not an uplink of vSwitch 'vSwitch1' in the answers (uplinks: vmnic1)",
        ("portgroups", 0, "teaming", "active_nics", 0):
            "'vmnic3' is not an uplink of vSwitch 'vSwitch1' in the answers (uplinks: vmnic1)",
        # (one per host; the last host's is kept by path here)
        ("portgroups", 2, "teaming", "standby_nics", 0):
            f"'vmnic1' is not an uplink of vSwitch 'vSwitch0' on host '{sim.hosts[-1]}' "
            "(uplinks: vmnic0)",
    }
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 3, out
    errors = report["steps"][0]["errors"]
    # one problem per rule on answered values; one per host for a host's vSwitch
    assert len(errors) == 2 + len(sim.hosts), json.dumps(errors)
    assert all(h.vswitch("vSwitch1") is None for h in read_back(section).hosts)


def test_the_simulator_refuses_what_esxi_refuses(vs_start: Start) -> None:
    """Our simulator's policy checks, called with plain pyVmomi as a real client would."""
    sim = vs_start(model="esx", vms=1)
    run({**vcsim.answers(sim), "portgroups": [], "vm_adapters": []})
    ctx = ssl.create_default_context(cafile=str(sim.cert))
    si = SmartConnect(host=sim.host, port=sim.port, user=vcsim.USER,
                      pwd=sim.password_file.read_text().strip(), sslContext=ctx)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        ns = view.view[0].configManager.networkSystem
        spec = vswitch(ns.networkInfo, "vSwitch1").spec
        spec.policy.nicTeaming.nicOrder = NP.NicOrderPolicy(activeNic=["vmnic3"])
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            ns.UpdateVirtualSwitch(vswitchName="vSwitch1", spec=spec)
        assert err.value.invalidProperty == "policy.nicTeaming.nicOrder"
        spec.policy.nicTeaming = NP.NicTeamingPolicy(policy="roundrobin")
        with pytest.raises(vmodl.fault.InvalidArgument):
            ns.UpdateVirtualSwitch(vswitchName="vSwitch1", spec=spec)
        pg = vim.host.PortGroup.Specification(
            name="Shaped", vswitchName="vSwitch1", vlanId=0, policy=NP(
                shapingPolicy=NP.TrafficShapingPolicy(enabled=True, averageBandwidth=2000,
                                                      peakBandwidth=1000)))
        with pytest.raises(vmodl.fault.InvalidArgument):
            ns.AddPortGroup(portgrp=pg)
        assert [p.spec.name for p in ns.networkInfo.portgroup] == ["VM Network",
                                                                   "Management Network"]
    finally:
        Disconnect(si)
