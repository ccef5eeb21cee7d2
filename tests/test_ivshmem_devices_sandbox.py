"""Several ivshmem devices per guest, one object per guest, on the sandbox's real libvirtd.

The guests have no OS: SeaBIOS (run by QEMU under TCG) assigns the PCI BARs,
and the test reads guest-physical memory through the monitor (HMP ``info pci``
for the BAR, ``xp`` for the bytes there), so what a guest would see is read
from QEMU itself, not from the host's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import define_domain as define
from helpers import ivshmem_answers as answers
from helpers import ivshmem_cli as cli
from helpers import shm, systemctl, virsh
from helpers import start_domain as start

from backends.bundle import RealBackends
from backends.interfaces import BackendError
from sandbox import host
from sandbox.core import Sandbox
from sandbox.image import EMULATOR, domain_xml
from steps.base import Context, inverse
from steps.data.ivshmem_hook import QEMU_NS as QEMU_NS_BRACED
from steps.ivshmem import IvshmemAnswers, IvshmemStep

BAR_WAIT = 60.0  # seconds for SeaBIOS (TCG) to assign the BARs
QEMU_NS = QEMU_NS_BRACED.strip("{}")


class sandbox_libvirt:  # noqa: N801 - what the tests used of the old libvirt component
    """libvirt on a booted sandbox host: virsh from outside, restarts through its systemd."""

    EMULATOR = EMULATOR
    DOMAIN_XML = domain_xml("{name}").replace(EMULATOR, "{emulator}")
    NR_HUGEPAGES = host.NR_HUGEPAGES
    HUGEPAGES = host.HUGEPAGES
    virsh = staticmethod(virsh)
    qemu_pids = staticmethod(host.qemu_pids)
    hugepages_up = staticmethod(host.hugepages_up)
    hugepages_down = staticmethod(host.hugepages_down)

    @staticmethod
    def restart(sb: Sandbox) -> None:
        systemctl(sb, "restart", "libvirtd.service")


def bar2(sb: Sandbox, domain: str, slot: int) -> int:
    """Guest-physical address of BAR2 (the shared memory) of the device at 00:<slot>.0."""
    deadline = time.monotonic() + BAR_WAIT
    while True:
        pci = sandbox_libvirt.virsh(sb, "qemu-monitor-command", "--hmp", domain, "info pci")
        block = pci.split(f"device {slot:>3}, function 0:")[1].split("Bus ")[0]
        assert "1af4:1110" in block, block
        found = re.search(r"BAR2: 64 bit prefetchable memory at (0x[0-9a-f]+)", block)
        if found and int(found[1], 16) not in (0, 0xFFFFFFFFFFFFFFFF) and \
                "0xffffffff" not in found[1][:10]:
            return int(found[1], 16)
        assert time.monotonic() < deadline, f"BAR2 of 00:{slot:02x}.0 unassigned: {block}"
        time.sleep(0.5)


def guest_byte(sb: Sandbox, domain: str, address: int) -> int:
    """One byte of guest-physical memory, read by QEMU's monitor (``xp``)."""
    out = sandbox_libvirt.virsh(sb, "qemu-monitor-command", "--hmp", domain,
                                f"xp /1xb {address:#x}")
    return int(out.strip().rsplit(" ", 1)[-1], 16)


def test_two_guests_each_get_their_own_objects_at_fixed_slots(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    prefix = sb.answers["ivshmem"]["name"]
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "domains": ["vm1", "vm2"], "enforce": "refuse", "devices": [
        {"name": f"{prefix}-ag-{{domain}}", "per_domain": True, "size": 1,
         "address": "0000:00:0a.0", "role": "master"},
        {"name": f"{prefix}-fg_{{uuid}}", "per_domain": True, "size": 2,
         "address": "0000:00:0b.0"},
    ]}
    uuids = {vm: sandbox_libvirt.virsh(sb, "domuuid", vm).strip() for vm in ("vm1", "vm2")}
    objects = {vm: [shm(sb, f"{prefix}-ag-{vm}"), shm(sb, f"{prefix}-fg_{uuids[vm]}")]
               for vm in ("vm1", "vm2")}
    try:
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4, plan.stdout + plan.stderr
        flat = " ".join(plan.stdout.split())
        assert f"ivshmem-plain '{prefix}-ag-vm1' 1 MiB role master at 0000:00:0a.0" in flat
        assert f"ivshmem-plain '{prefix}-fg_{uuids['vm2']}' 2 MiB at 0000:00:0b.0" in flat
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert cli(sb, "plan", section).returncode == 0
        sandbox_libvirt.restart(sb)
        for vm in ("vm1", "vm2"):
            _pci, cmdline = start(sb, vm)
            for path in objects[vm]:  # QEMU's path is the host's own
                assert f"\"/dev/shm/{path.name}\"" in cmdline
        for ag, fg in objects.values():
            assert ag.stat().st_size == 1024 * 1024 and fg.stat().st_size == 2 * 1024 * 1024
        # The host writes into vm1's objects: vm1 sees it, vm2 (own objects) does not.
        with objects["vm1"][0].open("r+b") as f:
            f.write(b"\x5a")
        with objects["vm1"][1].open("r+b") as f:
            f.write(b"\xa5")
        assert guest_byte(sb, "vm1", bar2(sb, "vm1", 10)) == 0x5A
        assert guest_byte(sb, "vm1", bar2(sb, "vm1", 11)) == 0xA5
        assert guest_byte(sb, "vm2", bar2(sb, "vm2", 10)) == 0
        assert guest_byte(sb, "vm2", bar2(sb, "vm2", 11)) == 0
    finally:
        for vm in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", vm)
        for vm in ("vm1", "vm2"):  # back to the bare definition, for the other tests
            xml = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", vm))
            devices = xml.find("devices")
            assert devices is not None
            for shmem in devices.findall("shmem"):
                devices.remove(shmem)
            redefined = sb.dir / f"{vm}.bare.xml"
            redefined.write_text(ET.tostring(xml, encoding="unicode"))
            sandbox_libvirt.virsh(sb, "define", str(redefined))
        for paths in objects.values():
            for path in paths:
                path.unlink(missing_ok=True)


def test_objects_of_an_undefined_guest_are_removed_unless_kept(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    prefix = sb.answers["ivshmem"]["name"]
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "domains": ["short"], "devices": [
        {"name": f"{prefix}-gone-{{domain}}", "per_domain": True, "size": 1},
        {"name": f"{prefix}-kept-{{domain}}", "per_domain": True, "size": 1, "keep": True},
    ]}
    gone, kept = shm(sb, f"{prefix}-gone-short"), shm(sb, f"{prefix}-kept-short")
    define(sb, "short")
    try:
        assert cli(sb, "apply", section).returncode == 0
        sandbox_libvirt.restart(sb)
        start(sb, "short")
        assert gone.exists() and kept.exists()  # made by the hook at the start
        sandbox_libvirt.virsh(sb, "destroy", "short")
        sandbox_libvirt.virsh(sb, "undefine", "short")
        section["domains"] = "all"
        plan = cli(sb, "plan", section)
        flat = " ".join(plan.stdout.split())
        # Planned inside the host: its /dev/shm.
        assert f"delete object /dev/shm/{gone.name}" in flat and kept.name not in flat
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert not gone.exists() and kept.exists()
    finally:
        if "short" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "short")
        if "short" in sandbox_libvirt.virsh(sb, "list", "--all", "--name").split():
            sandbox_libvirt.virsh(sb, "undefine", "short")
        gone.unlink(missing_ok=True)
        kept.unlink(missing_ok=True)


def test_bad_devices_exit_3_naming_the_keys(ivs_sb: Sandbox) -> None:
    sb = ivs_sb
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    res = cli(sb, "plan", {**base, "devices": [
        {"name": "a", "address": "00:0a.0"}, {"name": "b", "address": "00:0a.0"}]})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "devices with the same PCI addresses: 0000:00:0a.0" in res.stderr
    res = cli(sb, "plan", {**base, "devices": [
        {"name": "agent", "per_domain": True, "size": 3}]})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "ivshmem.devices[0].size" in res.stderr and "3 MiB is not a power of two" in res.stderr
    res = cli(sb, "plan", {**base, "devices": [{"name": "agent", "per_domain": True}]})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "ivshmem.devices[0]" in res.stderr
    assert "name 'agent' needs {domain} or {uuid}" in res.stderr
    assert "Traceback" not in res.stderr


def define_acpi(sb: Sandbox, name: str) -> None:
    """Define a domain with ACPI: QEMU's i440fx bus hot-plugs PCI devices only with it."""
    xml = sb.path("libvirt", "domains", f"{name}.xml")
    xml.write_text(sandbox_libvirt.DOMAIN_XML.format(name=name, emulator=sandbox_libvirt.EMULATOR)
                   .replace("</os>", "</os>\n  <features><acpi/></features>"))
    sandbox_libvirt.virsh(sb, "define", str(xml))


def test_live_hot_plug_into_a_running_guest(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    prefix = sb.answers["ivshmem"]["name"]
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "domains": ["hot"], "live": True, "restart_libvirtd": False,
               "devices": [{"name": f"{prefix}-live-{{domain}}", "per_domain": True, "size": 1,
                            "address": "0000:00:0c.0"}]}
    obj = shm(sb, f"{prefix}-live-hot")
    define_acpi(sb, "hot")
    try:
        pci, _cmdline = start(sb, "hot")
        assert "1af4:1110" not in pci
        pid = sandbox_libvirt.qemu_pids(sb)["hot"]
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4, plan.stdout + plan.stderr
        flat = " ".join(plan.stdout.split())
        assert (f"+ hot-plug into running hot: now, without a restart (and in its definition) "
                f"no ivshmem device -> ivshmem-plain '{prefix}-live-hot' 1 MiB at 0000:00:0c.0"
                ) in flat
        assert "update domain hot" not in flat
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert sandbox_libvirt.qemu_pids(sb)["hot"] == pid  # not restarted
        pci = sandbox_libvirt.virsh(sb, "qemu-monitor-command", "--hmp", "hot", "info pci")
        block = pci.split("device  12, function 0:")[1]
        assert "1af4:1110" in block.split("Bus ")[0]
        # Made before QEMU opened it, as the hook makes objects: size and mode.
        assert obj.stat().st_size == 1 << 20 and obj.stat().st_mode & 0o777 == 0o660
        inactive = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "hot"))
        assert [s.get("name") for s in inactive.iterfind("devices/shmem")] == [obj.name]
        assert cli(sb, "plan", section).returncode == 0  # verify read live XML + query-pci
    finally:
        if "hot" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "hot")
        sandbox_libvirt.virsh(sb, "undefine", "hot")
        for path in shm(sb, "").glob(f"{prefix}-*hot*"):
            path.unlink()


def test_the_undo_of_a_hot_plug_is_a_hot_unplug_the_guest_must_allow(
        ivs_clean: Sandbox) -> None:
    """On the real libvirtd, from the journal's values: the undo detaches the device
    (live and from the definition, one call). A guest without an OS never ejects it,
    so libvirt leaves it plugged after its wait: the undo fails saying so, the
    definition no longer has it, and observe says the undo has not taken effect."""
    sb = ivs_clean
    name = f"{sb.answers['ivshmem']['name']}-unplug"
    section = IvshmemAnswers(**{**answers(sb), "domains": ["unplug"], "live": True,
                                "restart_libvirtd": False, "owner": None, "name": name,
                                "size": 1})
    define_acpi(sb, "unplug")
    backends = RealBackends()
    try:
        start(sb, "unplug")
        step, ctx = IvshmemStep(), Context(backends=backends)
        ops = step.plan(section, ctx)
        (plug,) = [o for o in ops if o.change.action == "hot-plug"]
        step.apply(section, ops, ctx)
        assert step.observe(section, plug.do, ctx) is True
        back = inverse(plug)
        assert back is not None
        with pytest.raises(BackendError, match="did not release ivshmem device"):
            step.execute(section, json.loads(json.dumps(back.do)), Context(backends=backends))
        assert step.observe(section, back.do, ctx) is False
        inactive = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "unplug"))
        live = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "unplug"))
        assert inactive.find("devices/shmem") is None
        assert [e.get("name") for e in live.iterfind("devices/shmem")] == [name]
    finally:
        backends.close()
        if "unplug" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "unplug")
        sandbox_libvirt.virsh(sb, "undefine", "unplug")
        Path("/dev/shm", name).unlink(missing_ok=True)  # made here (in-process, outside)
        shm(sb, name).unlink(missing_ok=True)


def test_a_refused_hot_plug_fails_with_nothing_half_applied(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    # QEMU refuses: the doorbell's server socket does not exist.
    bell = {"name": "bell", "model": "doorbell", "server": str(sb.dir / "no-server.sock")}
    section = {**base, "domains": ["cold"], "live": True, "restart_libvirtd": False,
               "devices": [bell]}
    define_acpi(sb, "cold")
    try:
        start(sb, "cold")
        applied = cli(sb, "apply", section)
        assert applied.returncode == 1, applied.stdout + applied.stderr
        assert "running domain 'cold' refused the hot-plug of 'bell'" in applied.stderr
        assert "Traceback" not in applied.stderr
        inactive = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "cold"))
        assert inactive.find("devices/shmem") is None  # neither live nor in the definition
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4 and "hot-plug into running cold" in plan.stdout
        # Allowed to fall back: the definition gets it, for the next start.
        fallback = cli(sb, "apply", {**section, "live_fallback": True})
        assert fallback.returncode == 0, fallback.stdout + fallback.stderr
        assert "'bell' was not hot-plugged into 'cold'" in " ".join(fallback.stdout.split())
        inactive = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "cold"))
        assert [s.get("name") for s in inactive.iterfind("devices/shmem")] == ["bell"]
    finally:
        if "cold" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "cold")
        sandbox_libvirt.virsh(sb, "undefine", "cold")


def test_commandline_method_and_switching_methods_cleans_up(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    name = f"{sb.answers['ivshmem']['name']}-sw"
    section = answers(sb, domains=["sw"], name=name, size=2, address="0000:00:0d.0",
                      restart_libvirtd=False)
    define(sb, "sw")
    # Applied inside the host: the wrapper goes beside its emulator, by default.
    inside = f"{sandbox_libvirt.EMULATOR}-ivshmem-{name}"
    wrapper = Path(sb.env["HOSTSETUP_HOST_ROOT"], inside.lstrip("/"))
    # Someone else's passthrough argument: it must survive every switch.
    theirs = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "sw"))
    ET.register_namespace("qemu", QEMU_NS)
    line = ET.SubElement(theirs, f"{{{QEMU_NS}}}commandline")
    ET.SubElement(line, f"{{{QEMU_NS}}}arg", value="-no-user-config")
    (sb.dir / "sw.xml").write_text(ET.tostring(theirs, encoding="unicode"))
    sandbox_libvirt.virsh(sb, "define", str(sb.dir / "sw.xml"))

    def state() -> tuple[list[str], list[str], str]:
        xml = ET.fromstring(sandbox_libvirt.virsh(sb, "dumpxml", "--inactive", "sw"))
        args = [a.get("value", "") for a in xml.iterfind(f"{{{QEMU_NS}}}commandline/"
                                                         f"{{{QEMU_NS}}}arg")]
        return ([s.get("name", "") for s in xml.iterfind("devices/shmem")], args,
                xml.findtext("devices/emulator") or "")

    try:
        applied = cli(sb, "apply", {**section, "method": "definition"})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert state()[0] == [name]

        plan = cli(sb, "plan", {**section, "method": "commandline"})
        flat = " ".join(plan.stdout.split())
        assert f"! delete domain sw: what another method installed <shmem> '{name}' " \
               "(method definition) -> none" in flat
        applied = cli(sb, "apply", {**section, "method": "commandline"})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        shmems, args, emulator = state()
        assert shmems == [] and args[0] == "-no-user-config" and len(args) == 5
        assert f"mem-path=/dev/shm/{name},size=2M,share=on" in args[2]
        assert cli(sb, "plan", {**section, "method": "commandline"}).returncode == 0
        sandbox_libvirt.restart(sb)
        pci, _cmdline = start(sb, "sw")
        assert "1af4:1110" in pci.split("device  13, function 0:")[1].split("Bus ")[0]
        assert shm(sb, f"{name}").stat().st_size == 2 << 20  # made by the hook
        sandbox_libvirt.virsh(sb, "destroy", "sw")

        applied = cli(sb, "apply", {**section, "method": "qemu-wrapper"})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert state() == ([], ["-no-user-config"], inside) and wrapper.exists()

        applied = cli(sb, "apply", {**section, "method": "definition"})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert state() == ([name], ["-no-user-config"], sandbox_libvirt.EMULATOR)
        assert not wrapper.exists()
        assert cli(sb, "plan", {**section, "method": "definition"}).returncode == 0
    finally:
        if "sw" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "sw")
        sandbox_libvirt.virsh(sb, "undefine", "sw")
        shm(sb, name).unlink(missing_ok=True)


def test_emulator_swap_survives_a_regenerated_xml_and_is_undone_byte_for_byte(
        ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    prefix = sb.answers["ivshmem"]["name"]
    # Never the machine's own emulator: a copy under the sandbox, a private dpkg database.
    # QEMU finds its modules and firmware relative to its binary: ../lib, ../share.
    emulator = sb.dir / "emu" / "usr" / "bin" / "qemu-system-x86_64"
    emulator.parent.mkdir(parents=True, exist_ok=True)
    for part in ("lib", "share"):
        if not (emulator.parents[1] / part).exists():
            (emulator.parents[1] / part).symlink_to(f"/usr/{part}")
    shutil.copy2(sandbox_libvirt.EMULATOR, emulator)
    original = hashlib.sha256(emulator.read_bytes()).hexdigest()
    admindir = sb.dir / "dpkg"
    admindir.mkdir(exist_ok=True)
    (admindir / "diversions").touch()
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "method": "emulator-swap", "emulator": str(emulator),
               "dpkg_admindir": str(admindir), "domains": ["mgr"], "enforce": "refuse",
               "restart_libvirtd": False,
               "devices": [{"name": f"{prefix}-swap-{{domain}}", "per_domain": True, "size": 1,
                            "address": "0000:00:0e.0"}]}
    template = sb.dir / "mgr-template.xml"
    template.write_text(sandbox_libvirt.DOMAIN_XML.format(name="mgr", emulator=emulator))
    obj = shm(sb, f"{prefix}-swap-mgr")

    def regenerate() -> None:
        """What a manager does at each start: the domain defined afresh from its template."""
        if "mgr" in sandbox_libvirt.virsh(sb, "list", "--all", "--name").split():
            sandbox_libvirt.virsh(sb, "undefine", "mgr")
        sandbox_libvirt.virsh(sb, "define", str(template))

    def diversions() -> str:
        return subprocess.run(["dpkg-divert", "--admindir", str(admindir), "--list"],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    regenerate()
    try:
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4, plan.stdout + plan.stderr
        assert f"install emulator {emulator}" in plan.stdout
        assert "domain mgr" not in plan.stdout  # nothing in the definition
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        real = Path(f"{emulator}.hostsetup-real")
        assert hashlib.sha256(real.read_bytes()).hexdigest() == original
        assert emulator.read_bytes().startswith(b"#!/bin/sh\n# hostsetup-ivshmem-wrapper")
        assert f"diversion of {emulator} to {real}" in diversions()
        assert cli(sb, "plan", section).returncode == 0
        sandbox_libvirt.restart(sb)
        regenerate()
        pci, _cmdline = start(sb, "mgr")
        assert "1af4:1110" in pci.split("device  14, function 0:")[1].split("Bus ")[0]
        assert obj.stat().st_size == 1 << 20  # made by the hook before QEMU started
        sandbox_libvirt.virsh(sb, "destroy", "mgr")

        absent = cli(sb, "apply", {**section, "state": "absent"})
        assert absent.returncode == 0, absent.stdout + absent.stderr
        assert hashlib.sha256(emulator.read_bytes()).hexdigest() == original
        assert not real.exists() and str(emulator) not in diversions()
        assert not Path(section["hooks_dir"], "qemu.d", "hostsetup-ivshmem").exists()
        assert cli(sb, "plan", {**section, "state": "absent"}).returncode == 0
    finally:
        if "mgr" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "mgr")
        sandbox_libvirt.virsh(sb, "undefine", "mgr")
        obj.unlink(missing_ok=True)


def test_emulator_swap_refuses_a_domain_on_another_emulator(ivs_sb: Sandbox) -> None:
    sb = ivs_sb
    admindir = sb.dir / "dpkg-empty"
    admindir.mkdir(exist_ok=True)
    (admindir / "diversions").touch()
    res = cli(sb, "plan", answers(sb, method="emulator-swap", domains=["vm1"],
                                  emulator=str(sb.dir / "no-such-qemu"),
                                  dpkg_admindir=str(admindir)))
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"{sb.dir / 'no-such-qemu'} does not exist" in res.stderr
    assert f"domain 'vm1' runs {sandbox_libvirt.EMULATOR}, not" in res.stderr


def test_hugepage_backed_device(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    mount = Path(sb.env["HOSTSETUP_HUGETLBFS"])
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "method": "commandline", "domains": ["huge"], "restart_libvirtd": False,
               "devices": [{"name": "hp-{domain}", "per_domain": True, "size": 2,
                            "backing": "hugepages", "address": "0000:00:0f.0"}]}
    pool = Path(sandbox_libvirt.NR_HUGEPAGES).parent

    def available() -> int:
        """Free huge pages not reserved by a mapping yet."""
        return int((pool / "free_hugepages").read_text()) - int(
            (pool / "resv_hugepages").read_text())

    define(sb, "huge")
    try:
        assert available() >= 1, "the sandbox reserved no huge page"
        too_big = cli(sb, "plan", {**section, "devices": [
            {**section["devices"][0], "size": 4096}]})
        assert too_big.returncode == 3, too_big.stdout + too_big.stderr
        # The pool is the machine's, shared with other sandboxes: the count moves.
        assert re.search(rf"2048 free huge pages of 2048 KiB needed on {re.escape(str(mount))}, "
                         r"\d+ free: reserve more", " ".join(too_big.stderr.split()))
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        sandbox_libvirt.restart(sb)
        pci, cmdline = start(sb, "huge")
        assert "1af4:1110" in pci.split("device  15, function 0:")[1].split("Bus ")[0]
        assert f"mem-path={mount}/hp-huge,size=2M,share=on" in cmdline
        assert (mount / "hp-huge").stat().st_size == 2 << 20  # made there by the hook
        # QEMU maps the object from the hugetlbfs (read from its maps: the machine's
        # pool counts move with other sandboxes).
        maps = Path(f"/proc/{sandbox_libvirt.qemu_pids(sb)['huge']}/maps").read_text()
        assert f"{mount}/hp-huge" in maps
    finally:
        if "huge" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "huge")
        sandbox_libvirt.virsh(sb, "undefine", "huge")
        (mount / "hp-huge").unlink(missing_ok=True)


def test_the_sandbox_gives_its_huge_pages_back(tmp_path: Path) -> None:
    sb = Sandbox(dir=tmp_path / "sb")
    pool = Path(sandbox_libvirt.NR_HUGEPAGES)
    before = int(pool.read_text())
    sandbox_libvirt.hugepages_up(sb)
    try:
        mount = Path(sb.env["HOSTSETUP_HUGETLBFS"])
        assert int(pool.read_text()) == before + sandbox_libvirt.HUGEPAGES
        assert any(line.split()[1:3] == [str(mount), "hugetlbfs"]
                   for line in Path("/proc/self/mounts").read_text().splitlines())
    finally:
        sandbox_libvirt.hugepages_down(sb)
    assert int(pool.read_text()) == before and not os.path.ismount(mount)


def test_doorbell_server_unit_and_a_real_guest_as_its_peer(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    sock = sb.dir / "bell.sock"
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "domains": ["rung"], "restart_libvirtd": False,
               "server_bin": str(sb.dir / "bin" / "ivshmem-server"),
               "units_dir": str(sb.dir / "units"),
               "devices": [{"name": "bell", "model": "doorbell", "server": str(sock),
                            "vectors": 2, "serve": True, "size": 1,
                            "address": "0000:00:10.0"}]}
    unit = sb.dir / "units" / "hostsetup-ivshmem-bell.service"
    define(sb, "rung")
    try:
        plan = cli(sb, "plan", section)
        assert plan.returncode == 4, plan.stdout + plan.stderr
        assert "start unit hostsetup-ivshmem-bell.service" in plan.stdout
        applied = cli(sb, "apply", section)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        text = unit.read_text()
        assert "Before=libvirtd.service" in text and "WantedBy=multi-user.target" in text
        # The host's systemd enabled and started it.
        busctl = ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"]]
        path = subprocess.run(
            [*busctl, "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
             "org.freedesktop.systemd1.Manager", "LoadUnit", "s", unit.name],
            capture_output=True, text=True, timeout=30, check=True).stdout.split()[1]
        state = subprocess.run(
            [*busctl, "get-property", "org.freedesktop.systemd1", path.strip('"'),
             "org.freedesktop.systemd1.Unit", "UnitFileState", "ActiveState"],
            capture_output=True, text=True, timeout=30)
        assert state.stdout.split() == ['s', '"enabled"', 's', '"active"'], state
        assert cli(sb, "plan", section).returncode == 0
        # The host's systemd runs the server: its journal says where it listens.
        journal = host.run_inside(sb, "journalctl", "journalctl", "-u", unit.name,
                                  "--no-pager")
        assert "ivshmem server on" in journal, journal
        pci, _cmdline = start(sb, "rung")
        assert "1af4:1110" in pci.split("device  16, function 0:")[1].split("Bus ")[0]
        # The guest's QEMU is peer 0: a host client is told of its two doorbells.
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(sock))
        got = []
        while len(got) < 3 + 2:
            data, fds, _flags, _addr = socket.recv_fds(client, 8, 1)
            got.append((struct.unpack("<q", data)[0], bool(fds)))
            for fd in fds:
                os.close(fd)
        assert got[:3] == [(0, False), (1, False), (-1, True)]
        assert got[3:] == [(0, True), (0, True)]  # peer 0's two vectors
        client.close()
    finally:
        if "rung" in sandbox_libvirt.qemu_pids(sb):
            sandbox_libvirt.virsh(sb, "destroy", "rung")
        sandbox_libvirt.virsh(sb, "undefine", "rung")


def test_a_guest_that_cannot_hot_plug_is_refused_at_check_time(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    base = {k: v for k, v in answers(sb).items() if k not in ("name", "size", "model")}
    section = {**base, "domains": ["flat"], "live": True, "restart_libvirtd": False,
               "devices": [{"name": "flat-{domain}", "per_domain": True, "size": 1}]}
    define(sb, "flat")  # i440fx without <acpi/>: QEMU cannot hot-plug into its bus
    try:
        start(sb, "flat")
        res = cli(sb, "plan", section)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "running domain 'flat' cannot get a device hot-plugged: pc-i440fx" in res.stderr
        assert "without <acpi/> has no hot-pluggable PCI bus" in res.stderr
        fallback = cli(sb, "plan", {**section, "live_fallback": True})
        assert fallback.returncode == 4, fallback.stdout + fallback.stderr
        flat = " ".join(fallback.stdout.split())
        assert "update domain flat: shmem device (running: takes effect at its next start)" \
            in flat and "hot-plug" not in flat
    finally:
        sandbox_libvirt.virsh(sb, "destroy", "flat")
        sandbox_libvirt.virsh(sb, "undefine", "flat")
