"""vsphere_network against the govmomi simulator (ESXi and vCenter models), over TLS.

Every test starts its own simulator (our Go main, a fraction of a second) so
tests do not see each other's changes; the state is always read back through
a fresh, separately logged-in session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import hostsetup
from pydantic import ValidationError

from backends.bundle import RealBackends
from backends.interfaces import BackendUnreachable
from backends.interfaces.vsphere import Inventory, VSphereConn, vsphere_api
from sandbox import vcsim
from sandbox.core import Sandbox
from sandbox.manage import write_yaml
from steps.base import Change, Context, StepFailed
from steps.vsphere_network import VSphereNetworkAnswers, VSphereNetworkStep, connection
from wizard.plantext import run_lines
from wizard.reportshow import run_from_dict
from wizard.runner import Run

STEP = VSphereNetworkStep()
Start = Callable[..., vcsim.Vcsim]


@pytest.fixture
def vs_start(tmp_path: Path) -> Iterator[Start]:
    """Start simulators for one test (``vs_start(model=..., hosts=..., vms=...)``)."""
    sb = Sandbox(dir=tmp_path / "vs")
    count = 0

    def start(**kwargs: Any) -> vcsim.Vcsim:
        nonlocal count
        count += 1
        return vcsim.start(sb, name=f"vcsim{count}", **kwargs)

    try:
        yield start
    finally:
        sb.stop()


def read_back(section: dict[str, Any]) -> Inventory:
    """The inventory through a fresh session (logged out afterwards)."""
    backends = RealBackends()
    try:
        return vsphere_api(backends, connection(section)).inventory()
    finally:
        backends.close()


def run(section: dict[str, Any], apply: bool = True) -> list[Change]:
    """discover + validate + plan (+ apply) like the runner; returns the plan."""
    answers = VSphereNetworkAnswers.model_validate(section)
    backends = RealBackends()
    ctx = Context(backends=backends)
    try:
        ctx.facts[STEP.name] = STEP.facts_for(answers, ctx)
        assert STEP.validate(answers, ctx.facts[STEP.name]) == []
        ops = STEP.plan(answers, ctx)
        if apply and ops:
            STEP.apply(answers, ops, ctx)
            ctx.facts[STEP.name] = STEP.facts_for(answers, ctx)  # the runner refreshes it
            assert STEP.verify(answers, ctx) == []
        return [op.change for op in ops]
    finally:
        backends.close()


def adapter_network(inv: Inventory, vm_name: str) -> str | None:
    """The network of the VM's first adapter."""
    vm = inv.vm(vm_name)
    adapter = vm.adapter("Network adapter 1") if vm else None
    assert adapter is not None
    return adapter.network


def problems(section: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """validate() problems keyed by path."""
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        facts = STEP.discover(STEP.connection(section), ctx)
        found = STEP.validate(VSphereNetworkAnswers.model_validate(section), facts)
        return {p.path: p.message for p in found}
    finally:
        backends.close()


def test_esx_plan_apply_replan(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=3)
    section = vcsim.answers(sim)
    host = sim.hosts[0]
    plan = {(c.action, c.target): c for c in run(section, apply=False)}
    assert plan[("create", f"{host}: vSwitch vSwitch1")].after == {
        "ports": 128, "mtu": 9000, "uplinks": ["vmnic1"]}
    assert plan[("create", f"{host}: port group Monitoring")].after["vlan"] == 4095
    assert ("create", f"{host}: port group EastWest-20") in plan
    move = plan[("update", f"VM {sim.vms[0]}: Network adapter 1")]
    assert (move.before, move.after) == ({"port_group": "VM Network"},
                                         {"port_group": "Monitoring"})
    assert len(plan) == 4
    # plan changed nothing
    assert read_back(section).host(host).vswitch("vSwitch1") is None  # type: ignore[union-attr]

    assert {(c.action, c.target) for c in run(section)} == set(plan)
    inv = read_back(section)
    h = inv.host(host)
    assert h is not None and inv.kind == "esx"
    vs = h.vswitch("vSwitch1")
    assert vs is not None and (vs.mtu, vs.num_ports, vs.nics) == (9000, 128, ("vmnic1",))
    mon = h.portgroup("Monitoring")
    assert mon is not None and (mon.vswitch, mon.vlan) == ("vSwitch1", 4095)
    assert (mon.security.allow_promiscuous, mon.security.forged_transmits,
            mon.security.mac_changes) == (True, True, False)
    assert adapter_network(inv, sim.vms[0]) == "Monitoring"
    assert adapter_network(inv, sim.vms[1]) == "VM Network"
    assert run(section, apply=False) == []


def test_vcenter_cluster_and_named_hosts(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=3, vms=4)
    section = {**vcsim.answers(sim), "vm_adapters": []}
    first = sim.hosts[0]
    plan = run({**section, "hosts": [first]})
    assert plan and all(c.target.startswith(f"{first}: ") for c in plan)
    inv = read_back(section)
    assert inv.kind == "vcenter"
    assert [h.name for h in inv.hosts if h.vswitch("vSwitch1")] == [first]

    cluster = inv.hosts[0].cluster
    assert cluster
    plan = run({**section, "hosts": {"cluster": cluster}})
    assert {c.target.split(":")[0] for c in plan} == set(sim.hosts[1:])
    inv = read_back(section)
    assert all(h.portgroup("Monitoring") and h.vswitch("vSwitch1") for h in inv.hosts)
    assert run({**section, "hosts": {"cluster": cluster}}, apply=False) == []


def test_updates_apply_in_place(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=2)
    section = vcsim.answers(sim)
    run(section)
    vm = read_back(section).vm(sim.vms[0])
    assert vm is not None
    section["vswitches"][0].update(mtu=1500, num_ports=256)
    section["portgroups"][1].update(vlan=30, allow_promiscuous=True)
    section["portgroups"][0].update(vlan=0)
    plan = run(section)
    assert {c.action for c in plan} == {"update"}, plan
    assert len(plan) == 6  # vSwitch1, EastWest-20 and Monitoring on two hosts
    ew = next(c for c in plan if c.target.endswith("port group EastWest-20"))
    assert (ew.before, ew.after) == ({"vlan": 20, "promiscuous": False},
                                     {"vlan": 30, "promiscuous": True})
    inv = read_back(section)
    for h in inv.hosts:
        vs = h.vswitch("vSwitch1")
        assert vs is not None and (vs.mtu, vs.num_ports) == (1500, 256)
        ew, mon = h.portgroup("EastWest-20"), h.portgroup("Monitoring")
        assert ew is not None and mon is not None
        assert (ew.vlan, ew.security.allow_promiscuous, mon.vlan) == (30, True, 0)
    # the VM moved by the first run stayed on its (updated, not re-created) port group
    assert adapter_network(inv, sim.vms[0]) == "Monitoring"
    assert run(section, apply=False) == []


def test_absent_removes_only_what_is_named(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=2)
    section = {**vcsim.answers(sim), "vm_adapters": []}
    run(section)
    section["portgroups"][1]["state"] = "absent"
    plan = run(section)
    assert [c.describe() for c in plan] == [f"delete {sim.hosts[0]}: port group EastWest-20"]
    h = read_back(section).hosts[0]
    assert h.portgroup("EastWest-20") is None
    assert h.portgroup("Monitoring") and h.portgroup("VM Network") and h.vswitch("vSwitch1")

    # a vSwitch marked absent that still carries an unnamed port group is refused
    section["vswitches"][0]["state"] = "absent"
    section["portgroups"] = [section["portgroups"][1]]
    found = problems(section)
    assert "Monitoring" in found[("vswitches", 0, "state")]
    section["portgroups"].append({"name": "Monitoring", "state": "absent"})
    plan = run(section)
    assert [c.describe() for c in plan] == [f"delete {sim.hosts[0]}: port group Monitoring",
                                            f"delete {sim.hosts[0]}: vSwitch vSwitch1"]
    h = read_back(section).hosts[0]
    assert h.vswitch("vSwitch1") is None and h.vswitch("vSwitch0") and h.portgroup("VM Network")


def test_validation_against_the_host(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    section["vswitches"] = [{"name": "vSwitch1", "nics": ["vmnic0", "vmnic7"]}]
    section["portgroups"].append({"name": "Lost", "vswitch": "vSwitch9"})
    section["vm_adapters"] = [
        {"vm": "nope", "adapter": "Network adapter 1", "portgroup": "Monitoring"},
        {"vm": sim.vms[0], "adapter": "Network adapter 4", "portgroup": "Elsewhere"},
    ]
    section["hosts"] = ["ghost"]
    found = problems(section)
    assert "no host 'ghost'" in found[("hosts", 0)]
    section["hosts"] = "all"
    found = problems(section)
    assert "already an uplink of vSwitch 'vSwitch0'" in found[("vswitches", 0, "nics", 0)]
    assert "'vmnic7' is not a physical NIC" in found[("vswitches", 0, "nics", 1)]
    assert "vSwitch 'vSwitch9' is neither" in found[("portgroups", 2, "vswitch")]
    assert found[("vm_adapters", 0, "vm")] == "no VM 'nope'"
    assert "has no 'Network adapter 4' (has: Network adapter 1)" in found[
        ("vm_adapters", 1, "adapter")]
    assert "port group 'Elsewhere' is not on host" in found[("vm_adapters", 1, "portgroup")]


@pytest.mark.parametrize("bad, where", [
    ({"portgroups": [{"name": "p", "vswitch": "v", "vlan": 4096}]}, "vlan"),
    ({"vswitches": [{"name": "v", "mtu": 9001}]}, "mtu"),
    ({"vswitches": [{"name": "v" * 33}]}, "name"),
    ({"portgroups": [{"name": "p"}]}, "'vswitch' is required"),
    ({"thumbprint": "12:34"}, "thumbprint"),
    ({"password": "hunter2"}, "password"),
    ({"insecure": True, "thumbprint": "ab" * 32}, "contradicts"),
    ({"hosts": []}, "at least one host"),
    ({"vm_adapters": [{"vm": "v", "adapter": "eth0", "portgroup": "p"}]}, "adapter"),
    ({"portgroups": [{"name": "p", "state": "absent"}],
      "vm_adapters": [{"vm": "v", "adapter": "Network adapter 1", "portgroup": "p"}]},
     "which the answers remove"),
])
def test_model_rejects_bad_values(bad: dict[str, Any], where: str) -> None:
    section = {"server": "vc", "password": "env:X", **bad}
    with pytest.raises(ValidationError) as err:
        VSphereNetworkAnswers.model_validate(section)
    assert where in str(err.value)


def test_tls_is_verified(vs_start: Start, caplog: pytest.LogCaptureFixture) -> None:
    sim = vs_start(model="esx", vms=1)
    base = vcsim.answers(sim)
    wrong = "AA:" * 31 + "AA"
    with pytest.raises(BackendUnreachable, match="thumbprint mismatch"):
        read_back({**base, "thumbprint": wrong})
    with pytest.raises(BackendUnreachable, match="TLS certificate not trusted"):
        read_back({**base, "thumbprint": None})
    assert read_back({**base, "thumbprint": None, "ca_file": str(sim.cert)}).hosts
    assert read_back({**base, "thumbprint": sim.thumbprint.replace(":", "").lower()}).hosts
    with caplog.at_level(logging.WARNING, logger="hostsetup.vsphere"):
        assert read_back({**base, "thumbprint": None, "insecure": True}).hosts
    assert "NOT verified (insecure: true)" in caplog.text


def test_injected_failure_is_compensated(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=2)
    section = vcsim.answers(sim)
    # vSwitch1 and Monitoring get created on the first host, then EastWest-20 fails
    sim.faults.write_text("AddPortGroup:EastWest-20\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert "port group EastWest-20 failed" in str(err.value)
    assert "fault injected" in str(err.value)
    assert "undid 2 change(s)" in str(err.value)
    assert err.value.done == []
    inv = read_back(section)
    assert all(h.vswitch("vSwitch1") is None and h.portgroup("Monitoring") is None
               for h in inv.hosts)

    # when the undo fails too, the failure says exactly what remains
    sim.faults.write_text("AddPortGroup:EastWest-20\nRemoveVirtualSwitch:vSwitch1\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    assert [(c.action, c.target) for c in err.value.done] == [
        ("create", f"{sim.hosts[0]}: vSwitch vSwitch1")]
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith(
        f"undo of create {sim.hosts[0]}: vSwitch vSwitch1 failed: ")
    assert "fault injected" in err.value.errors[0]
    h = read_back(section).host(sim.hosts[0])
    assert h is not None and h.vswitch("vSwitch1") and h.portgroup("Monitoring") is None


def in_effect(inv: Inventory, changes: list[Change]) -> list[tuple[str, str]]:
    """Which of the run's creations exist in ``inv`` (by action and target)."""
    found = []
    for change in changes:
        host, _, what = change.target.partition(": ")
        kind, _, name = what.rpartition(" ")
        h = inv.host(host)
        obj = None if h is None else h.vswitch(name) if kind == "vSwitch" else h.portgroup(name)
        if (obj is not None) == (change.action == "create"):
            found.append((change.action, change.target))
    return found


def test_two_faults_remains_come_from_a_re_read(vs_start: Start, tmp_path: Path) -> None:
    """An add fails, then the undo (a remove) of an earlier add fails: removing the
    vSwitch takes that port group with it, so nothing remains, and the report says so."""
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    host = sim.hosts[0]
    sim.faults.write_text("AddPortGroup:EastWest-20\nRemovePortGroup:Monitoring\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    inv = read_back(section)
    created = [Change(f"{host}: vSwitch vSwitch1", "create"),
               Change(f"{host}: port group Monitoring", "create")]
    assert in_effect(inv, created) == [] and err.value.done == []
    assert "undid 2 change(s)" in str(err.value)
    [undo] = err.value.errors
    assert f"undo of create {host}: port group Monitoring failed" in undo
    assert "fault injected" in undo

    # The same through the CLI: the report's errors and notes.
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 1, out
    [step] = report["steps"]
    assert step["status"] == "failed"
    assert "remains changed: nothing" in step["notes"]
    assert any("add EastWest-20" in e or "port group EastWest-20 failed" in e
               for e in step["errors"]), step["errors"]
    assert any(e.startswith(f"undo of create {host}: port group Monitoring failed")
               for e in step["errors"]), step["errors"]
    assert in_effect(read_back(section), created) == []

    # Only the removal of the port group fails, and the vSwitch's too: both remain,
    # as the re-read shows, and both failed undo calls are errors.
    sim.faults.write_text("AddPortGroup:EastWest-20\nRemovePortGroup:Monitoring\n"
                          "RemoveVirtualSwitch:vSwitch1\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    remains = [(c.action, c.target) for c in err.value.done]
    assert remains == in_effect(read_back(section), created) == [
        (c.action, c.target) for c in created]
    assert len(err.value.errors) == 2


def test_failure_after_adapter_move_moves_it_back(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=2)
    section = {**vcsim.answers(sim), "vm_adapters": []}
    section["portgroups"] = [section["portgroups"][1]]  # vSwitch1 + EastWest-20 exist
    run(section)
    section = vcsim.answers(sim)
    section["portgroups"][1]["state"] = "absent"
    sim.faults.write_text("RemovePortGroup:EastWest-20\n")
    with pytest.raises(StepFailed) as err:
        run(section)
    # Monitoring was created and the adapter moved, then the removal failed:
    # the adapter is moved back before Monitoring is removed again
    assert "undid 2 change(s)" in str(err.value) and err.value.done == []
    inv = read_back(section)
    assert adapter_network(inv, sim.vms[0]) == "VM Network"
    h = inv.hosts[0]
    assert h.portgroup("Monitoring") is None and h.portgroup("EastWest-20") is not None


def test_questions_offer_what_the_host_has(vs_start: Start) -> None:
    sim = vs_start(model="vcenter", hosts=2, vms=2)
    backends = RealBackends()
    try:
        facts = STEP.discover(STEP.connection(vcsim.answers(sim)), Context(backends=backends))
    finally:
        backends.close()
    qs = {q.key: q for q in STEP.questions(facts)}
    assert qs["hosts"].choices == ("all", *sim.hosts)
    fields = {k: {f.key: f for f in qs[k].fields} for k in ("vswitches", "portgroups",
                                                             "vm_adapters")}
    # vmnic0 is vSwitch0's uplink
    assert fields["vswitches"]["nics"].choices == ("vmnic1", "vmnic2", "vmnic3")
    assert fields["portgroups"]["vswitch"].choices == ("vSwitch0",)
    assert fields["vm_adapters"]["vm"].choices == tuple(sim.vms)
    assert fields["vm_adapters"]["adapter"].choices == ("Network adapter 1",)
    assert "VM Network" in fields["vm_adapters"]["portgroup"].choices


def test_round_trips_do_not_grow_with_inventory(vs_start: Start) -> None:
    counts = []
    for vms in (2, 300):
        sim = vs_start(model="vcenter", hosts=3, vms=vms)
        backends = RealBackends()
        try:
            api = vsphere_api(backends, connection(vcsim.answers(sim)))
            before = api.round_trips
            assert len(api.inventory().vms) == vms
            counts.append(api.round_trips - before)
        finally:
            backends.close()
    assert counts[0] == counts[1] > 0


def test_all_among_named_hosts_means_all() -> None:
    section = {"server": "vc", "password": "env:X", "hosts": ["all", "h1"]}
    assert VSphereNetworkAnswers.model_validate(section).hosts == "all"


def test_sessions_are_logged_out(vs_start: Start) -> None:
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    run(section, apply=False)
    sim.faults.write_text("AddPortGroup:Monitoring\n")
    with pytest.raises(StepFailed):
        run(section)
    with pytest.raises(BackendUnreachable):
        read_back({**section, "thumbprint": "00" * 32})
    # a fresh session sees only itself: every earlier one logged out
    backends = RealBackends()
    try:
        api = vsphere_api(backends, connection(section))
        sessions = api._content.sessionManager.sessionList  # type: ignore[attr-defined]
        assert len(sessions) == 1
    finally:
        backends.close()


def test_password_is_not_in_repr() -> None:
    conn = VSphereConn("vc", password="s3cret-value")
    assert "s3cret-value" not in repr(conn)


# -- through the CLI -------------------------------------------------------------


def cli(tmp: Path, section: dict[str, Any], command: str = "apply",
        env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    """Run ``python -m wizard <command>`` on an answers file; returns rc, output, report."""
    answers, report, log = tmp / "answers.yaml", tmp / "report.json", tmp / "run.log"
    write_yaml(answers, {"version": 1, "vsphere_network": section})
    res = hostsetup(command, "--answers", str(answers), "--report", str(report),
                    "--log", str(log), env=env)
    output = res.stdout + res.stderr + (log.read_text() if log.exists() else "")
    return res.returncode, output, json.loads(report.read_text())


def test_cli_plan_apply_and_stopped_simulator(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    rc, out, report = cli(tmp_path, section, "plan")
    assert rc == 4, out
    assert "port group Monitoring" in out
    rc, out, _ = cli(tmp_path, section, "apply")
    assert rc == 0, out
    rc, out, _ = cli(tmp_path, section, "plan")
    assert rc == 0, out

    sim.faults.write_text("AddPortGroup:Other\n")
    section["portgroups"].append({"name": "Other", "vswitch": "vSwitch1"})
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 1, out
    text = json.dumps(report)
    assert "fault injected" in text and "remains changed: nothing" in text


def test_cli_simulator_stopped_is_exit_5(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="esx", vms=1)
    section = vcsim.answers(sim)
    Sandbox.load(tmp_path / "vs").stop()  # the simulator goes away
    rc, out, report = cli(tmp_path, section, "apply")
    assert rc == 5, out
    assert "vSphere unreachable at 127.0.0.1" in out
    steps = report["steps"]
    assert steps[0]["status"] == "unreachable" and steps[0]["changes"] == []


def test_cli_wrong_password_never_shown(vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="esx", vms=1)
    wrong = "Wr0ng-Pa55-" + sim.password_file.read_text().strip()[:6]
    section = {**vcsim.answers(sim), "password": "env:HS_TEST_VSPHERE_PW"}
    rc, out, _ = cli(tmp_path, section, "plan", env={"HS_TEST_VSPHERE_PW": wrong})
    assert rc == 5, out
    assert "login refused for user 'root'" in out
    assert wrong not in out
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != sim.password_file:
            assert wrong.encode() not in path.read_bytes(), path


def test_plan_prints_the_review_text(vs_start: Start, tmp_path: Path) -> None:
    """`hostsetup plan` prints exactly plantext.run_lines of its run (the Review's text)."""
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    run({**section, "vm_adapters": []})
    section["portgroups"][1]["allow_promiscuous"] = True
    answers, report = tmp_path / "answers.yaml", tmp_path / "report.json"
    write_yaml(answers, {"version": 1, "vsphere_network": section})
    res = hostsetup("plan", "--answers", str(answers), "--report", str(report))
    assert res.returncode == 4, res.stdout + res.stderr
    # The report's changes with their "risky" reason (run_from_dict, as 'report show').
    steps = run_from_dict(json.loads(report.read_text())).steps
    assert res.stdout.splitlines() == run_lines(Run("plan", steps=steps), width=1 << 20)
    host = sim.hosts[0]
    assert res.stdout.splitlines() == [
        "vsphere_network: 2 changes",
        f"  + update {host}: port group EastWest-20",
        "      promiscuous: no -> yes",
        f"  + update VM {sim.vms[0]}: Network adapter 1",
        "      port group: VM Network -> Monitoring",
    ]


def test_simulator_lost_mid_apply_is_unreachable_with_what_was_applied(
        vs_start: Start, tmp_path: Path) -> None:
    sim = vs_start(model="esx", vms=2)
    section = vcsim.answers(sim)
    answers = VSphereNetworkAnswers.model_validate(section)
    backends = RealBackends()

    def progress(_frac: float, text: str) -> None:
        if text.startswith("create") and "EastWest-20" in text:
            Sandbox.load(tmp_path / "vs").stop()  # the server goes away mid-apply

    ctx = Context(backends=backends, progress=progress)
    try:
        changes = STEP.plan(answers, ctx)
        with pytest.raises(BackendUnreachable, match="vSphere unreachable at 127.0.0.1"):
            STEP.apply(answers, changes, ctx)
    finally:
        backends.close()
    host = sim.hosts[0]
    assert ctx.notes == [f"applied before vSphere was lost, not undone: create {host}: "
                         f"vSwitch vSwitch1, create {host}: port group Monitoring"]
