"""The ivshmem step on the libvirt and D-Bus fakes: plan, apply, verify, undo, validation.

The undo tests carry out each operation's ``undo`` in reverse, in a fresh
context and from the JSON of the command only (as ``hostsetup undo`` does from
a journal), and check the fake host is back where it was, file for file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackends, FakeDBus, FakeLibvirt, domain, unit
from helpers import run, statuses

from backends.interfaces.libvirt import HostFile, PciAddress, Shmem
from steps.base import Context, Operation, StepFailed, inverse
from steps.ivshmem import (
    HOOK_SOURCE,
    IvshmemAnswers,
    IvshmemConnection,
    IvshmemFacts,
    IvshmemStep,
    domain_commands,
)
from wizard.exits import EXIT_INVALID, EXIT_OK, EXIT_PENDING

HOOKS = "/fake/hooks"
EMULATOR = "/usr/bin/qemu-system-x86_64"
STEP = IvshmemStep()


def host(version: tuple[int, int, int] = (9, 0, 0)) -> FakeBackends:
    lv = FakeLibvirt(domains_={"vm1": domain("vm1", "running"), "vm2": domain("vm2")},
                     version_=version)
    lv.files[EMULATOR] = HostFile(EMULATOR, b"\x7fELF the real emulator", 0o755)
    return FakeBackends({"libvirt": lv, "dbus": FakeDBus(
        units={"libvirtd.service": unit("libvirtd.service")})})


def section(**extra: Any) -> dict[str, Any]:
    return {"ivshmem": {"uri": "qemu:///fake", "hooks_dir": HOOKS, "name": "shm0", "size": 8,
                        **extra}}


def answers(**extra: Any) -> IvshmemAnswers:
    return IvshmemAnswers.model_validate(section(**extra)["ivshmem"])


def snapshot(fb: FakeBackends) -> dict[str, Any]:
    """What the fake host has: definitions, live devices, files (not the backups the
    writes keep beside them), diversions, which units run."""
    lv = fb.libvirt
    return {"domains": dict(lv.domains_), "live": {n: lv.live_domain(n).shmems
                                                  for n in lv.domains_},
            "files": {p: (f.content, f.mode) for p, f in lv.files.items()
                      if ".hostsetup-bak." not in p},
            "diversions": dict(lv.diversions),
            "running": sorted(n for n, u in fb.dbus.units.items() if u.active == "active")}


def apply_then_undo(fb: FakeBackends, a: IvshmemAnswers) -> list[Operation]:
    """Plan, apply (each ``do`` then observed), then each undo in reverse in a fresh
    context from its JSON alone (each observed); the host must be as before."""
    before = snapshot(fb)
    first = STEP.plan(a, Context(backends=fb))
    assert first
    for op in first:
        assert json.loads(json.dumps(op.as_dict())) == op.as_dict()
    STEP.apply(a, first, Context(backends=fb))
    assert STEP.plan(a, Context(backends=fb)) == []
    assert [STEP.observe(a, op.do, Context(backends=fb)) for op in first] == [
        None if op.do["op"] == "restart_libvirtd" else True for op in first]
    for op in reversed(first):
        back = inverse(op)
        if back is not None:
            STEP.execute(a, json.loads(json.dumps(back.do)), Context(backends=fb))
            assert STEP.observe(a, back.do, Context(backends=fb)) is True, back.change
    assert [o.change for o in STEP.plan(a, Context(backends=fb))] == [o.change for o in first]
    assert snapshot(fb) == before
    return first


def test_definition_method_plan_apply_plan() -> None:
    fb = host()
    planned = run("plan", section(domains=["vm1"], restart_libvirtd=True), fb)
    assert planned.exit_code == EXIT_PENDING
    assert [(c.action, c.target) for c in planned.steps[0].changes] == [
        ("update", "domain vm1"),
        ("create", f"file {HOOKS}/qemu.d/hostsetup-ivshmem.json"),
        ("install", f"hook {HOOKS}/qemu.d/hostsetup-ivshmem"),
        ("restart", "unit libvirtd.service")]
    applied = run("apply", section(domains=["vm1"], restart_libvirtd=True), fb)
    assert statuses(applied) == {"ivshmem": "applied"}
    assert fb.libvirt.domain("vm1").shmems == (Shmem("shm0", "ivshmem-plain", 8),)
    assert fb.libvirt.domain("vm2").shmems == ()
    hook = fb.libvirt.files[f"{HOOKS}/qemu.d/hostsetup-ivshmem"]
    assert (hook.content, hook.mode) == (HOOK_SOURCE.read_bytes(), 0o755)
    config = json.loads(fb.libvirt.files[f"{HOOKS}/qemu.d/hostsetup-ivshmem.json"].content)
    assert (config["name"], config["size_mib"], config["domains"]) == ("shm0", 8, ["vm1"])
    assert fb.dbus.restarted == ["libvirtd.service"]
    assert fb.libvirt.reconnects == 1  # the restart closed the connection
    assert applied.steps[0].notes == ["domain vm1 is running: shut it down and start it again "
                                      "for the device to appear"]
    assert run("plan", section(domains=["vm1"], restart_libvirtd=True), fb).exit_code == EXIT_OK


def test_only_the_libvirtd_restart_is_risky() -> None:
    ops = STEP.plan(answers(restart_libvirtd=True), Context(backends=host()))
    assert [(o.change.target, bool(o.risky)) for o in ops][-1] == (
        "unit libvirtd.service", True)
    assert "lose their connection" in ops[-1].risky and ops[-1].undo is None
    assert not any(o.risky for o in ops[:-1])


def test_definition_update_is_undone_to_the_device_that_was_there() -> None:
    fb = host()
    theirs = Shmem("shm0", "ivshmem-plain", 2, address=PciAddress(0, 0, 9, 0), role="peer")
    fb.libvirt.domains_["vm2"] = replace(domain("vm2"), shmems=(theirs,))
    ops = apply_then_undo(fb, answers())
    update = next(o for o in ops if o.change.target == "domain vm2")
    assert update.undo == {"op": "domain", "name": "vm2", "put": [
        {"name": "shm0", "model": "ivshmem-plain", "size_mib": 2, "server": None,
         "vectors": None, "role": "peer", "address": "0000:00:09.0"}]}
    created = next(o for o in ops if o.change.target == "domain vm1")
    assert created.undo == {"op": "domain", "name": "vm1", "drop": ["shm0"]}


def test_commandline_method_undo_keeps_the_others_arguments() -> None:
    fb = host()
    fb.libvirt.set_qemu_args("vm2", ["-no-user-config"])
    ops = apply_then_undo(fb, answers(method="commandline"))
    (vm2,) = [o for o in ops if o.change.target == "domain vm2"]
    assert vm2.do["args"][0] == "-no-user-config" and len(vm2.do["args"]) == 5
    assert vm2.undo == {"op": "domain", "name": "vm2", "args": ["-no-user-config"]}


def test_qemu_wrapper_and_chained_hook_are_undone_byte_for_byte() -> None:
    fb = host(version=(6, 0, 0))
    # A third-party hook that is not text: its bytes survive the journal (base64).
    third_party = HostFile(f"{HOOKS}/qemu", b"#!/bin/sh\n# \xff\xfe\nexit 0\n", 0o750)
    fb.libvirt.files[third_party.path] = third_party
    ops = apply_then_undo(fb, answers(method="qemu-wrapper"))
    hook = next(o for o in ops if o.change.target == f"hook {HOOKS}/qemu")
    assert hook.undo is not None and "content_b64" in hook.undo
    assert fb.libvirt.files[third_party.path] == third_party


def test_qemu_wrapper_method_and_chained_layout_on_old_libvirt() -> None:
    fb = host(version=(6, 0, 0))
    third_party = HostFile(f"{HOOKS}/qemu", b"#!/bin/sh\nexit 0\n", 0o755)
    fb.libvirt.files[third_party.path] = third_party
    applied = run("apply", section(method="qemu-wrapper"), fb)
    assert applied.exit_code == EXIT_OK, applied.as_dict()
    wrapper = "/usr/bin/qemu-system-x86_64-ivshmem-shm0"
    assert {d.emulator for d in fb.libvirt.domains()} == {wrapper}
    assert b"memory-backend-file" in fb.libvirt.files[wrapper].content
    # The third-party hook is kept and run by ours, which now is 'qemu'.
    chained = fb.libvirt.files[f"{HOOKS}/qemu.hostsetup-chained"]
    assert (chained.content, chained.mode) == (third_party.content, 0o755)
    assert fb.libvirt.files[f"{HOOKS}/qemu"].content == HOOK_SOURCE.read_bytes()
    assert "restart libvirtd.service so that it loads the new hook" in " ".join(
        applied.steps[0].notes)
    assert run("plan", section(method="qemu-wrapper"), fb).exit_code == EXIT_OK


def test_switching_method_is_undone_to_the_previous_method() -> None:
    fb = host()
    assert run("apply", section(method="qemu-wrapper"), fb).exit_code == EXIT_OK
    ops = apply_then_undo(fb, answers(method="definition"))
    assert [(o.change.action, o.change.target) for o in ops][:3] == [
        ("delete", "domain vm1"), ("delete", "domain vm2"),
        ("delete", "file /usr/bin/qemu-system-x86_64-ivshmem-shm0")]
    assert ops[0].undo == {"op": "domain", "name": "vm1",
                           "emulator": "/usr/bin/qemu-system-x86_64-ivshmem-shm0"}


def test_state_absent_is_undone_by_putting_the_hook_back() -> None:
    fb = host()
    assert run("apply", section(), fb).exit_code == EXIT_OK
    ops = apply_then_undo(fb, answers(state="absent"))
    assert {o.change.action for o in ops} == {"delete"}
    assert any(o.change.target.endswith("qemu.d/hostsetup-ivshmem") for o in ops)


def test_emulator_swap_in_and_out_are_each_others_undo() -> None:
    fb = host()
    swap = answers(method="emulator-swap", dpkg_admindir="/fake/dpkg")
    ops = apply_then_undo(fb, swap)
    (install,) = [o for o in ops if o.do["op"] == "swap_in"]
    assert install.undo == {"op": "swap_out", "emulator": EMULATOR,
                            "real": EMULATOR + ".hostsetup-real", "admindir": "/fake/dpkg"}
    # Swapped in, then undone by another method: the undo swaps the wrapper back in.
    STEP.apply(swap, STEP.plan(swap, Context(backends=fb)), Context(backends=fb))
    ops = apply_then_undo(fb, answers())
    (out,) = [o for o in ops if o.do["op"] == "swap_out"]
    assert out.undo is not None and out.undo["op"] == "swap_in"


def test_served_doorbell_is_stopped_disabled_and_removed_by_its_undo() -> None:
    fb = host()
    served = IvshmemAnswers(uri="qemu:///fake", hooks_dir=HOOKS, domains=["vm2"],
                            units_dir="/fake/units", server_bin="/fake/bin/srv",
                            devices=[{"name": "bell", "model": "doorbell", "serve": True,
                                      "server": "/run/bell.sock"}])
    reloads = fb.dbus.reloads
    ops = apply_then_undo(fb, served)
    unit_name = "hostsetup-ivshmem-bell.service"
    (start,) = [o for o in ops if o.change.target == f"unit {unit_name}"]
    assert start.undo == {"op": "unserve", "unit": unit_name, "timeout": 60.0,
                          "enabled": False}
    assert fb.dbus.enablement[unit_name] == "disabled"
    unit_file = next(o for o in ops if o.do.get("path") == f"/fake/units/{unit_name}")
    assert unit_file.undo == {"op": "remove_file", "path": f"/fake/units/{unit_name}",
                              "reload": True}
    assert fb.dbus.reloads >= reloads + 2  # before the start, after the file went


def live_answers(tmp_path: Path, prefix: str, **extra: Any) -> IvshmemAnswers:
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True, exist_ok=True)  # the hot-plug's lock
    return IvshmemAnswers.model_validate({
        "uri": "qemu:///fake", "hooks_dir": str(hooks), "name": prefix, "size": 1,
        "domains": ["vm1"], "live": True, "hook_log": str(tmp_path / "hook.log"), **extra})


def test_hot_plug_is_undone_by_a_hot_unplug(tmp_path: Path, shm_prefix: str) -> None:
    fb = host()
    a = live_answers(tmp_path, shm_prefix)
    ops = apply_then_undo(fb, a)
    (plug,) = [o for o in ops if o.change.action == "hot-plug"]
    assert plug.undo == {"op": "unplug", "name": "vm1", "drop": [shm_prefix],
                         "persistent": [shm_prefix]}
    assert Path("/dev/shm", shm_prefix).stat().st_size == 1 << 20  # made before the plug


def test_a_guest_that_keeps_the_device_fails_the_unplug(tmp_path: Path,
                                                        shm_prefix: str) -> None:
    fb = host()
    fb.libvirt.holding.add("vm1")
    a = live_answers(tmp_path, shm_prefix)
    ops = STEP.plan(a, Context(backends=fb))
    STEP.apply(a, ops, Context(backends=fb))
    back = inverse(next(o for o in ops if o.change.action == "hot-plug"))
    assert back is not None
    with pytest.raises(Exception, match="did not release"):
        STEP.execute(a, back.do, Context(backends=fb))
    assert STEP.observe(a, back.do, Context(backends=fb)) is False  # the guest still has it
    assert fb.libvirt.domain("vm1").shmems == ()  # out of the definition


def test_refused_hot_plug_fails_after_the_others_and_journals_the_error(
        tmp_path: Path, shm_prefix: str) -> None:
    fb = host()
    a = live_answers(tmp_path, shm_prefix, domains="all")
    ops = STEP.plan(a, Context(backends=fb))

    def refuse(name: str, shmem: Shmem, persistent: bool) -> None:
        from backends.interfaces import BackendError

        raise BackendError("no free hot-pluggable slot")

    fb.libvirt.attach_shmem = refuse  # type: ignore[method-assign]
    lines: list[tuple[str, str, str]] = []

    class Journal:
        def begin(self, step: str, op: Operation) -> None:
            lines.append(("begin", op.change.target, ""))

        def end(self, step: str, op: Operation, error: str = "") -> None:
            lines.append(("end", op.change.target, error))

    with pytest.raises(StepFailed) as failed:
        STEP.apply(a, ops, Context(backends=fb, journal=Journal()))
    assert str(failed.value).startswith("running domain 'vm1' refused the hot-plug of "
                                        f"'{shm_prefix}': no free hot-pluggable slot")
    assert failed.value.done == [o.change for o in ops if o.change.action != "hot-plug"]
    assert [k for k, *_ in lines] == ["begin", "end"] * len(ops)
    assert lines[-1][2].startswith("running domain 'vm1' refused")
    assert fb.libvirt.domain("vm1").shmems == ()  # neither live nor in the definition


def test_host_problems_are_all_listed() -> None:
    fb = host(version=(6, 0, 0))
    fb.libvirt.domains_["vm1"] = replace(fb.libvirt.domains_["vm1"], pci_addresses=(
        ("video 'video0'", PciAddress(0, 0, 10, 0)),))
    result = run("plan", section(domains=["vm1", "vm9"], address="00:0a.0",
                                 hook_layout="qemu.d"), fb)
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "ivshmem.domains[1]: no domain 'vm9' on qemu:///fake (has: vm1, vm2)",
        "ivshmem.hook_layout: libvirt 6.0.0 does not run hooks from qemu.d/ (needs 6.5.0): "
        "use chain",
        "ivshmem.address: PCI address 0000:00:0a.0 is already used by video 'video0' in "
        "domain 'vm1'",
    ]
    assert set(fb.libvirt.files) == {EMULATOR}


def test_domain_gone_after_the_plan_fails_the_step_after_the_others() -> None:
    fb = host()
    a = answers()
    ops = STEP.plan(a, Context(backends=fb))
    del fb.libvirt.domains_["vm2"]
    with pytest.raises(StepFailed) as failed:
        STEP.apply(a, ops, Context(backends=fb))
    assert str(failed.value) == ("domain 'vm2' not found on qemu:///fake: it vanished after "
                                 "the plan, not changed (the other changes were applied)")
    assert failed.value.done == [o.change for o in ops if o.change.target != "domain vm2"]
    assert fb.libvirt.domain("vm1").shmem("shm0") is not None
    assert STEP.plan(a, Context(backends=fb)) == []


def test_an_unknown_command_fails_clearly() -> None:
    with pytest.raises(StepFailed, match="ivshmem: unknown command 'format_disk'"):
        STEP.execute(answers(), {"op": "format_disk"}, Context(backends=host()))


def test_domain_commands_undo_what_the_definition_had() -> None:
    had = Shmem("a", "ivshmem-plain", 2, address=PciAddress(0, 0, 9, 0))
    dom = replace(domain("vm"), shmems=(had,), qemu_args=("-x",))
    do, undo = domain_commands(dom, args=["-y"], put=[Shmem("a", "ivshmem-plain", 4),
                                                      Shmem("b", "ivshmem-plain", 1)])
    assert do["args"] == ["-y"] and [s["name"] for s in do["put"]] == ["a", "b"]
    assert undo == {"op": "domain", "name": "vm", "args": ["-x"], "drop": ["b"],
                    "put": [{"name": "a", "model": "ivshmem-plain", "size_mib": 2,
                             "server": None, "vectors": None, "role": None,
                             "address": "0000:00:09.0"}]}


def test_facts_are_typed_and_a_form_skips_what_was_not_read() -> None:
    fb = host()
    fb.libvirt.hugepages["/fake/huge"] = (2 << 20, 1)
    huge = {"method": "commandline", "hugetlbfs": "/fake/huge", "size": 8,
            "backing": "hugepages"}
    # The wizard reads with the connection only: the mount is not read, not judged.
    facts = STEP.discover(IvshmemConnection(uri="qemu:///fake", hooks_dir=HOOKS),
                          Context(backends=fb))
    assert isinstance(facts, IvshmemFacts) and facts.version == (9, 0, 0)
    assert set(facts.domains) == {"vm1", "vm2"} and set(facts.live) == {"vm1"}
    assert facts.hugetlbfs_mount is None
    assert STEP.validate(answers(**huge), facts) == []
    # The runner reads for the answers: 4 pages needed, 1 free.
    full = STEP.facts_for(answers(**huge), Context(backends=fb))
    assert full.hugetlbfs == (2 << 20, 1)
    assert [p.message for p in STEP.validate(answers(**huge), full)] == [
        "4 free huge pages of 2048 KiB needed on /fake/huge, 1 free: reserve more "
        "(/proc/sys/vm/nr_hugepages)"]
    assert [p.path for p in STEP.validate(answers(), IvshmemFacts())] == [("uri",)]


def test_questions_come_from_the_fields() -> None:
    facts = STEP.facts_for(answers(), Context(backends=host()))
    questions = {q.key: q for q in STEP.questions(facts)}
    assert (questions["name"].label, questions["name"].kind) == ("Shared-memory name", "text")
    assert questions["size"].kind == "int" and questions["restart_libvirtd"].kind == "yesno"
    assert questions["domains"].kind == "multi"
    assert questions["domains"].choices == ("all", "vm1", "vm2")
    assert dict(questions["domains"].choice_notes) == {"vm1": "running", "vm2": "shut off"}
    assert questions["method"].help.startswith("definition: <shmem> in the domain")
    assert [q.key for q in STEP.connect_questions()] == ["uri", "hooks_dir"]
