"""The ivshmem step on the libvirt and D-Bus fakes: plan, apply, verify, validation."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fakes import FakeBackends, FakeDBus, FakeLibvirt, domain, unit
from helpers import run, statuses

from backends.interfaces.libvirt import HostFile, PciAddress, Shmem
from steps.ivshmem import HOOK_SOURCE
from wizard.exits import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_PENDING

HOOKS = "/fake/hooks"


def host(version: tuple[int, int, int] = (9, 0, 0)) -> FakeBackends:
    lv = FakeLibvirt(domains_={"vm1": domain("vm1", "running"), "vm2": domain("vm2")},
                     version_=version)
    return FakeBackends({"libvirt": lv, "dbus": FakeDBus(
        units={"libvirtd.service": unit("libvirtd.service")})})


def section(**extra: Any) -> dict[str, Any]:
    return {"ivshmem": {"uri": "qemu:///fake", "hooks_dir": HOOKS, "name": "shm0", "size": 8,
                        **extra}}


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
    assert applied.steps[0].notes == ["domain vm1 is running: shut it down and start it again "
                                      "for the device to appear"]
    assert run("plan", section(domains=["vm1"], restart_libvirtd=True), fb).exit_code == EXIT_OK


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
    assert fb.libvirt.files == {}


def test_domain_gone_after_the_plan_fails_the_step_after_the_others() -> None:
    fb = host()
    lv = fb.libvirt
    real_version = lv.version
    calls = []

    def version_then_vm2_gone() -> tuple[int, int, int]:
        calls.append(1)
        if len(calls) == 3:  # discover, plan, then apply's first read
            del lv.domains_["vm2"]
        return real_version()

    lv.version = version_then_vm2_gone  # type: ignore[method-assign]
    result = run("apply", section(), fb)
    assert result.exit_code == EXIT_FAILED
    assert result.steps[0].errors == ["domain 'vm2' not found on qemu:///fake: it vanished "
                                      "after the plan, not changed (the other changes were "
                                      "applied)"]
    assert fb.libvirt.domain("vm1").shmem("shm0") is not None
