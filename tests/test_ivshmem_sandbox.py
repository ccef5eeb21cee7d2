"""The ivshmem step on a sandbox host: Debian's libvirtd (QEMU driver, TCG) and QEMU.

One booted host serves the module, its libvirtd started by its systemd; each
test starts what it needs and leaves the domains shut off.  The CLI runs inside
the host on default answers (``qemu:///system``, ``/etc/libvirt/hooks``, the
system bus), as on a real host; libvirtd reads hooks when it starts, and the
step restarts it through systemd over D-Bus.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers import OUTSIDE_ONLY, shm, systemctl, virsh
from helpers import define_domain as define
from helpers import ivshmem_answers as answers
from helpers import ivshmem_cli as cli
from helpers import start_domain as start

from backends.adapters.libvirt import LibvirtBackend
from backends.bundle import RealBackends
from backends.interfaces import BackendUnreachable
from backends.interfaces.libvirt import DomainNotFound, Shmem, libvirt_api
from sandbox import host
from sandbox.core import Sandbox
from sandbox.image import EMULATOR
from steps.base import Context, StepFailed
from steps.ivshmem import IvshmemAnswers, IvshmemStep

IVSHMEM_PLAIN = "1af4:1110"  # PCI vendor:device of ivshmem


def host_state(sb: Sandbox, domains: list[str]) -> dict[str, Any]:
    """What the step changes, read with virsh and from the host's files (not through our
    backend): each domain's persistent XML and the hooks directory (backups aside)."""
    hooks = Path(sb.env["HOSTSETUP_LIBVIRT_HOOKS_DIR"])
    return {"xml": {d: virsh(sb, "dumpxml", "--inactive", d) for d in domains},
            "hooks": {str(p.relative_to(hooks)): (p.read_bytes(), p.stat().st_mode)
                      for p in hooks.rglob("*") if p.is_file()
                      and ".hostsetup-bak." not in p.name}}


def test_undo_from_the_journal_values_brings_the_host_back(ivs_sb: Sandbox) -> None:
    """Apply the sandbox answers (libvirtd restarted over D-Bus included), then carry
    out the undos in reverse as ``hostsetup undo`` will: a new bundle and context, only
    the operations' JSON; each undo is observed, and the host is as it was."""
    sb = ivs_sb
    for name in ("undo1", "undo2"):
        define(sb, name)
    section = IvshmemAnswers(**answers(sb, name=f"{sb.answers['ivshmem']['name']}-undo",
                                       domains=["undo1", "undo2"]))
    before = host_state(sb, ["undo1", "undo2"])
    step, backends = IvshmemStep(), RealBackends()
    try:
        first = step.plan(section, Context(backends=backends))
        # First in the module: the hook is new, so libvirtd is restarted too.
        assert {"domain undo1", "domain undo2"} <= {o.change.target for o in first}
        journal = json.dumps([o.as_dict() for o in first])
        step.apply(section, first, Context(backends=backends))
        assert step.plan(section, Context(backends=backends)) == []
        assert all(step.observe(section, o.do, Context(backends=backends)) in (True, None)
                   for o in first)
        dumped = ET.fromstring(virsh(sb, "dumpxml", "--inactive", "undo1"))
        assert [e.get("name") for e in dumped.iterfind("devices/shmem")] == [section.name]
    finally:
        backends.close()
    later = RealBackends()  # another process: nothing but the journal's values
    try:
        for record in reversed(json.loads(journal)):
            if record["undo"] is None:
                assert record["do"]["op"] == "restart_libvirtd"  # nothing to revert
                continue
            step.execute(section, record["undo"], Context(backends=later))
            assert step.observe(section, record["undo"], Context(backends=later)) is True
        again = step.plan(section, Context(backends=later))
        after = host_state(sb, ["undo1", "undo2"])
    finally:
        later.close()
        for name in ("undo1", "undo2"):
            virsh(sb, "undefine", name)
    assert [o.change for o in again] == [o.change for o in first]
    assert after == before


def test_definition_method_end_to_end(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    section = answers(sb, enforce="refuse")
    hooks = Path(sb.env["HOSTSETUP_LIBVIRT_HOOKS_DIR"])
    # A third-party hook that was there first: it must still run.
    third = sb.dir / "third-party.log"
    (hooks / "qemu").write_text(f'#!/bin/sh\necho "$1 $2 $3" >> {third}\n')
    (hooks / "qemu").chmod(0o755)

    plan = cli(sb, "plan", section)
    assert plan.returncode == 4, plan.stderr
    assert "update domain vm1" in plan.stdout and "update domain vm2" in plan.stdout
    assert "install hook" in plan.stdout and "restart unit libvirtd.service" in plan.stdout

    report = sb.dir / "report.json"
    applied = cli(sb, "apply", section, "--report", str(report))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    (result,) = json.loads(report.read_text())["steps"]
    assert result["status"] == "applied"
    assert {c["target"] for c in result["changes"]} >= {"domain vm1", "domain vm2"}
    assert (hooks / "qemu").read_text().startswith("#!/bin/sh")  # not replaced

    # The step restarted libvirtd through systemd over D-Bus: it runs our hook now.
    pci, cmdline = start(sb, "vm1")
    assert IVSHMEM_PLAIN in pci
    assert "ivshmem-plain" in cmdline and f"/dev/shm/{section['name']}" in cmdline
    made = shm(sb, section["name"]).stat()
    assert made.st_size == 4 * 1024 * 1024 and made.st_mode & 0o777 == 0o660
    log = Path(sb.env["HOSTSETUP_LIBVIRT_LOG_DIR"], "hostsetup-ivshmem.log").read_text()
    assert f"vm1 prepare begin: prepared /dev/shm/{section['name']}" in log
    assert "vm1 prepare begin" in third.read_text()

    again = cli(sb, "plan", section)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ivshmem: nothing to change" in again.stdout

    # A re-run of the wizard starts from what was applied (Step.current).
    step, backends = IvshmemStep(), RealBackends()
    try:
        # As the wizard reads it: the connection keys only.
        current = step.current(step.discover(step.connection(section),
                                             Context(backends=backends)))
    finally:
        backends.close()
    assert {k: current.get(k) for k in ("name", "size", "model", "enforce", "domains")} == {
        "name": section["name"], "size": 4, "model": "plain", "enforce": "refuse",
        "domains": "all"}
    # Applied inside the host: its paths are the host's defaults, not the outside ones.
    outside = set(OUTSIDE_ONLY)
    assert IvshmemAnswers.model_validate({**section, **current}).model_dump(exclude=outside) \
        == IvshmemAnswers.model_validate(section).model_dump(exclude=outside)


def test_real_libvirtd_refuses_a_domain_without_device(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    section = answers(sb, enforce="refuse")
    assert cli(sb, "apply", section).returncode == 0
    define(sb, "bare")  # defined after apply: 'all' covers it, but it lacks the device
    try:
        res = subprocess.run(["virsh", "-c", sb.env["HOSTSETUP_LIBVIRT_URI"], "start", "bare"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0
        assert "domain 'bare' lacks the ivshmem device" in res.stderr
        assert "bare" not in host.qemu_pids(sb)
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4 and "update domain bare" in plan.stdout
    finally:
        virsh(sb, "undefine", "bare")


def test_a_second_device_is_marked_in_the_plan(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    define(sb, "twin")
    try:
        lv = LibvirtBackend(sb.env["HOSTSETUP_LIBVIRT_URI"])
        try:
            lv.set_shmem("twin", Shmem("theirs", size_mib=2))
        finally:
            lv.close()
        plan = cli(sb, "plan", answers(sb, domains=["twin"]))
        assert plan.returncode == 4, plan.stdout + plan.stderr
        text = " ".join(plan.stdout.split())
        assert ("! update domain twin: shmem device [a second ivshmem device: the domain "
                "already has 'theirs']") in text
        assert "destructive (!)" in text
    finally:
        virsh(sb, "undefine", "twin")


def save(sb: Sandbox, name: str) -> str:
    """Save a running domain to a file (it stops); returns the file."""
    image = str(sb.dir / f"{name}.save")
    virsh(sb, "save", name, image)
    return image


def restore(sb: Sandbox, name: str, image: str, xml: ET.Element) -> str:
    """Restore a saved domain with an alternative XML; returns ``info pci``."""
    alt = sb.dir / f"{name}.alt.xml"
    alt.write_text(ET.tostring(xml, encoding="unicode"))
    virsh(sb, "restore", image, "--xml", str(alt))
    return virsh(sb, "qemu-monitor-command", "--hmp", name, "info pci")


def test_restore_with_regenerated_xml_keeps_the_device(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    define(sb, "saved")
    try:
        # role master: QEMU blocks saving (and migrating) a guest with a peer device.
        section = answers(sb, domains=["saved"], role="master")
        assert cli(sb, "apply", section).returncode == 0
        pci, _cmdline = start(sb, "saved")
        assert IVSHMEM_PLAIN in pci
        image = save(sb, "saved")
        regenerated = ET.fromstring(virsh(sb, "save-image-dumpxml", image))
        devices = regenerated.find("devices")
        assert devices is not None
        for shmem in devices.findall("shmem"):
            devices.remove(shmem)
        assert IVSHMEM_PLAIN in restore(sb, "saved", image, regenerated)
        log = Path(sb.env["HOSTSETUP_LIBVIRT_LOG_DIR"], "hostsetup-ivshmem.log").read_text()
        assert f"saved restore begin: added the device '{section['name']}'" in log
    finally:
        if "saved" in host.qemu_pids(sb):
            virsh(sb, "destroy", "saved")
        virsh(sb, "undefine", "saved")


def test_qemu_wrapper_method(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    define(sb, "wrapped")
    name = f"{sb.answers['ivshmem']['name']}-w"
    try:
        section = answers(sb, method="qemu-wrapper", domains=["wrapped"], name=name, size=2,
                          enforce="refuse", role="master")
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4, plan.stderr
        assert "wrapper emulator for /usr/bin/qemu-system-x86_64" in " ".join(plan.stdout.split())
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        dumped = ET.fromstring(virsh(sb, "dumpxml", "--inactive", "wrapped"))
        wrapper = dumped.findtext("devices/emulator") or ""
        assert wrapper == f"{EMULATOR}-ivshmem-{name}"  # beside the real one, by default
        assert dumped.find("devices/shmem") is None  # the device is on the command line
        pci, cmdline = start(sb, "wrapped")
        assert IVSHMEM_PLAIN in pci
        assert f"mem-path=/dev/shm/{name},size=2M,share=on" in cmdline
        assert shm(sb, name).stat().st_size == 2 * 1024 * 1024
        assert cli(sb, "plan", section).returncode == 0
        # A manager restores the guest with a regenerated XML naming the real
        # emulator: the hook points it back at the wrapper, so the device is there.
        image = save(sb, "wrapped")
        regenerated = ET.fromstring(virsh(sb, "save-image-dumpxml", image))
        regenerated.find("devices/emulator").text = EMULATOR  # type: ignore[union-attr]
        pci = restore(sb, "wrapped", image, regenerated)
        assert IVSHMEM_PLAIN in pci
        live = ET.fromstring(virsh(sb, "dumpxml", "wrapped"))
        assert live.findtext("devices/emulator") == wrapper
        log = Path(sb.env["HOSTSETUP_LIBVIRT_LOG_DIR"], "hostsetup-ivshmem.log").read_text()
        assert f"wrapped restore begin: pointed the incoming XML at the wrapper emulator " \
            f"{wrapper}" in log
    finally:
        if "wrapped" in host.qemu_pids(sb):
            virsh(sb, "destroy", "wrapped")
        virsh(sb, "undefine", "wrapped")
        shm(sb, name).unlink(missing_ok=True)


def test_bad_answers_are_all_reported(ivs_sb: Sandbox) -> None:
    res = cli(ivs_sb, "plan", answers(ivs_sb, size=3, name="bad/name", mode="999"))
    assert res.returncode == 3
    assert "ivshmem.size" in res.stderr and "3 MiB is not a power of two" in res.stderr
    assert "ivshmem.name" in res.stderr and "'bad/name' is not a valid" in res.stderr
    assert "ivshmem.mode" in res.stderr


def test_taken_pci_address_and_unknown_domain(ivs_sb: Sandbox) -> None:
    lv = LibvirtBackend(ivs_sb.env["HOSTSETUP_LIBVIRT_URI"])
    try:
        device, taken = lv.domain("vm1").pci_addresses[0]
    finally:
        lv.close()
    res = cli(ivs_sb, "plan", answers(ivs_sb, address=str(taken), domains=["vm1", "nosuch"]))
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"PCI address {taken} is already used by {device} in domain 'vm1'" in res.stderr
    assert "ivshmem.domains[1]" in res.stderr and "no domain 'nosuch'" in res.stderr


def test_libvirtd_down_is_unreachable(ivs_sb: Sandbox) -> None:
    # With its sockets too: a connection would socket-activate it again.
    units = ["libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket"]
    systemctl(ivs_sb, "stop", *units)
    try:
        res = cli(ivs_sb, "plan", answers(ivs_sb))
        assert res.returncode == 5, res.stdout + res.stderr
        assert "libvirt unreachable at qemu:///system" in res.stderr
        uri = ivs_sb.env["HOSTSETUP_LIBVIRT_URI"]
        res = cli(ivs_sb, "plan", answers(ivs_sb), inside=False)
        assert res.returncode == 5 and f"libvirt unreachable at {uri}" in res.stderr
        with pytest.raises(BackendUnreachable):
            LibvirtBackend(uri)
    finally:
        systemctl(ivs_sb, "start", "libvirtd.service")


def test_domain_vanishing_between_plan_and_apply(ivs_sb: Sandbox) -> None:
    sb = ivs_sb
    for name in ("gone", "stays"):
        define(sb, name)
    section = IvshmemAnswers(**answers(sb, domains=["gone", "stays"], restart_libvirtd=False))
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ops = IvshmemStep().plan(section, ctx)
        assert {"domain gone", "domain stays"} <= {o.change.target for o in ops}
        virsh(sb, "undefine", "gone")
        with pytest.raises(StepFailed) as failed:
            IvshmemStep().apply(section, ops, ctx)
        assert "domain 'gone' not found" in str(failed.value)
        assert failed.value.done == [o.change for o in ops if o.change.target != "domain gone"]
        stays = libvirt_api(backends, section.uri).domain("stays")
        assert stays.shmem(section.name) is not None
        assert IvshmemStep().plan(section, ctx) == []  # 'gone' is gone: nothing left to do
    finally:
        backends.close()
        virsh(sb, "undefine", "stays")


def test_backend_keeps_address_and_defines_doorbell(ivs_sb: Sandbox) -> None:
    define(ivs_sb, "devices")
    lv = LibvirtBackend(ivs_sb.env["HOSTSETUP_LIBVIRT_URI"])
    try:
        lv.set_shmem("devices", Shmem("db0", "ivshmem-doorbell", None, "/tmp/ivs.sock", 4))
        lv.set_shmem("devices", Shmem("pl0", "ivshmem-plain", 2))
        first = lv.domain("devices").shmem("pl0")
        assert first is not None and first.address is not None
        lv.set_shmem("devices", Shmem("pl0", "ivshmem-plain", 8))  # resized, same slot
        dom = lv.domain("devices")
        assert dom.shmem("pl0") == Shmem("pl0", "ivshmem-plain", 8, address=first.address)
        door = dom.shmem("db0")
        assert door is not None and (door.server, door.vectors) == ("/tmp/ivs.sock", 4)
        assert lv.version() >= (6, 5, 0)
        with pytest.raises(DomainNotFound):
            lv.set_shmem("nosuch", Shmem("x", "ivshmem-plain", 1))
    finally:
        lv.close()
        virsh(ivs_sb, "undefine", "devices")


def test_chain_layout_keeps_the_third_party_hook(ivs_sb: Sandbox, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    seen = tmp_path / "third-party.log"
    third_party = f'#!/bin/sh\necho "$1 $2" >> {seen}\n'
    (hooks / "qemu").write_text(third_party)
    (hooks / "qemu").chmod(0o750)
    section = answers(ivs_sb, hooks_dir=str(hooks), hook_layout="chain", restart_libvirtd=False,
                      hook_log=str(tmp_path / "hook.log"))
    assert cli(ivs_sb, "plan", section, inside=False).returncode == 4
    applied = cli(ivs_sb, "apply", section, inside=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "restart libvirtd.service so that it loads the new hook" in " ".join(
        applied.stdout.split())
    chained = hooks / "qemu.hostsetup-chained"
    assert chained.read_text() == third_party and chained.stat().st_mode & 0o777 == 0o750
    assert b"hostsetup-ivshmem-hook" in (hooks / "qemu").read_bytes()
    backups = list(hooks.glob("qemu.hostsetup-bak.*"))
    assert len(backups) == 1 and backups[0].read_text() == third_party
    # libvirt would now run our 'qemu'; the third-party hook still runs, first.
    xml = virsh(ivs_sb, "dumpxml", "--inactive", "vm1")
    res = subprocess.run([str(hooks / "qemu"), "vm1", "restore", "begin", "-"],
                         input=xml.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and seen.read_text() == "vm1 restore\n"
    assert "vm1 restore begin" in (tmp_path / "hook.log").read_text()
    assert cli(ivs_sb, "plan", section, inside=False).returncode == 0
