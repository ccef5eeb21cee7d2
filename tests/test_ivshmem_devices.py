"""Several ivshmem devices per guest and per-guest objects: the answers, the checks
against given domains, and the hook (run as libvirtd runs it) making per-guest objects."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers import DOMAIN, SHMEM, call, configure
from pydantic import ValidationError

from backends.interfaces.libvirt import Domain, PciAddress, Shmem
from steps.data.ivshmem_hook import parse_config
from steps.ivshmem import IvshmemAnswers, IvshmemFacts, IvshmemStep, hook_config, server_unit

EMULATOR = "/usr/bin/qemu-system-x86_64"
UUID1 = "11111111-2222-3333-4444-555555555555"


def errors(**answers: Any) -> str:
    """The validation error text of these answers."""
    with pytest.raises(ValidationError) as exc:
        IvshmemAnswers(**answers)
    return str(exc.value)


def test_devices_list_and_the_one_device_form() -> None:
    one = IvshmemAnswers(name="shm0", size=8, address="00:0a.0")
    assert one.shmems() == [Shmem("shm0", "ivshmem-plain", 8, address=PciAddress(0, 0, 10, 0))]
    two = IvshmemAnswers(devices=[
        {"name": "ag-{domain}", "per_domain": True, "size": 1, "address": "00:0a.0"},
        {"name": "fg_{uuid}", "per_domain": True, "size": 16, "role": "master"},
        {"name": "bell", "model": "doorbell", "server": "/run/ivs.sock"},
    ])
    vm = Domain("vm1", UUID1, "shut off", False, True, EMULATOR)
    assert two.shmems(vm) == [
        Shmem("ag-vm1", "ivshmem-plain", 1, address=PciAddress(0, 0, 10, 0)),
        Shmem(f"fg_{UUID1}", "ivshmem-plain", 16, role="master"),
        Shmem("bell", "ivshmem-doorbell", None, "/run/ivs.sock", 1)]
    config = parse_config(hook_config(two, {}, False))  # the hook accepts what the step writes
    assert [d["name"] for d in config["devices"]] == ["ag-{domain}", "fg_{uuid}", "bell"]
    assert config["name"] == "ag-{domain}" and config["devices"][0]["per_domain"] is True
    assert "devices" not in json.loads(hook_config(one, {}, False))  # format as before


@pytest.mark.parametrize(("answers", "message"), [
    ({"devices": [{"name": "a", "address": "00:0a.0"}, {"name": "b", "address": "0000:00:0a.0"}]},
     "devices with the same PCI addresses: 0000:00:0a.0"),
    ({"devices": [{"name": "a"}, {"name": "a"}]}, "devices with the same names: a"),
    ({"devices": [{"name": "agent", "per_domain": True}]},
     "name 'agent' needs {domain} or {uuid} with per_domain: true"),
    ({"name": "agent-{domain}"}, "has a placeholder: set per_domain: true"),
    ({"devices": [{"name": "a-{host}", "per_domain": True}]}, "is not a valid shared-memory name"),
    ({"devices": [{"name": "a", "size": 3}]}, "3 MiB is not a power of two"),
    ({"devices": [{"name": "a"}], "size": 8}, "give size in each entry of 'devices'"),
    ({"devices": []}, "'devices' lists no device"),
    ({"devices": [{"size": 2}]}, "devices.0.name"),
    ({"name": "a-{domain}", "per_domain": True, "method": "qemu-wrapper"},
     "per_domain devices need method definition"),
    ({"devices": [{"name": "a", "backing": "hugepages"}]},
     "backing hugepages needs method commandline, qemu-wrapper or emulator-swap"),
    ({"devices": [{"name": "a", "serve": True}]}, "'serve' are only used with model doorbell"),
    ({"devices": [{"name": "b", "model": "doorbell", "server": "/run/a b.sock"}]},
     "server path '/run/a b.sock' must be absolute"),
    ({"devices": [{"name": "b-{domain}", "per_domain": True, "model": "doorbell",
                   "server": "/run/b.sock", "serve": True}]}, "one server per device"),
    ({"live": True, "method": "commandline"}, "live: true needs method definition"),
    ({"emulator": "qemu"}, "emulator 'qemu' is not an absolute path"),
])
def test_bad_devices(answers: dict[str, Any], message: str) -> None:
    assert message in errors(**answers)


def test_a_served_doorbell_has_its_size_and_unit() -> None:
    answers = IvshmemAnswers(owner="libvirt-qemu:kvm", devices=[
        {"name": "bell", "model": "doorbell", "server": "/run/bell.sock", "serve": True}])
    device = answers.device_list()[0]
    assert device.size == 4 and answers.shmem().size_mib is None  # the server's, not QEMU's
    name, unit = server_unit(answers, device)
    assert name == "hostsetup-ivshmem-bell.service"
    assert ("ExecStart=/usr/bin/python3 /usr/local/libexec/hostsetup-ivshmem-server --socket "
            "/run/bell.sock --size 4 --vectors 1 --mode 0660 --owner libvirt-qemu:kvm\n"
            ) in unit.decode()


def test_devices_against_each_domain() -> None:
    slot10 = PciAddress(0, 0, 10, 0)
    vm1 = Domain("vm1", UUID1, "shut off", False, True, EMULATOR,
                 pci_addresses=(("video vga", slot10),))
    odd = Domain("odd name", "u2", "shut off", False, True, EMULATOR)
    facts = IvshmemFacts((9, 0, 0), {"vm1": vm1, "odd name": odd})
    problems = IvshmemStep().validate(IvshmemAnswers(devices=[
        {"name": "ag-{domain}", "per_domain": True},
        {"name": "x", "address": "00:0a.0"},
        {"name": "ag-vm1"},
    ]), facts)
    assert [(p.path, p.message) for p in problems] == [
        (("devices", 1, "address"), "PCI address 0000:00:0a.0 is already used by video vga "
         "in domain 'vm1'"),
        (("devices", 2, "name"), "devices 0 and 2 both name 'ag-vm1' in domain 'vm1'"),
        (("devices", 0, "name"), "'ag-{domain}' gives domain 'odd name' the name 'ag-odd name', "
         "not a valid shared-memory name (letters, digits, '_', '.', '-'; at most 64): use "
         "{uuid}"),
    ]


def test_hook_makes_each_guests_own_objects(ivs_hooks: Path, tmp_path: Path,
                                            shm_prefix: str) -> None:
    prefix = shm_prefix
    log = tmp_path / "hook.log"
    configure(ivs_hooks, log, enforce="refuse", devices=[
        {"name": f"{prefix}-a-{{domain}}", "per_domain": True, "size": 1},
        {"name": f"{prefix}-b-{{uuid}}", "per_domain": True, "size": 2},
        {"name": f"{prefix}-shared", "size": 1}])
    hook = ivs_hooks / "hostsetup-ivshmem"
    xml = DOMAIN.format(name="vm1", extra="".join(
        SHMEM.format(name=n) for n in (f"{prefix}-a-vm1", f"{prefix}-b-{UUID1}",
                                       f"{prefix}-shared"))).replace(
        "<name>vm1</name>", f"<name>vm1</name><uuid>{UUID1}</uuid>")
    res = call(hook, "vm1", "prepare", "begin", xml)
    assert res.returncode == 0, res.stderr
    sizes = {p.name: p.stat().st_size for p in Path("/dev/shm").glob(f"{prefix}*")}
    assert sizes == {f"{prefix}-a-vm1": 1 << 20, f"{prefix}-b-{UUID1}": 2 << 20,
                     f"{prefix}-shared": 1 << 20}
    # vm2 lacks its own per-guest devices (it has vm1's): refused, nothing made.
    res = call(hook, "vm2", "prepare", "begin", xml.replace("<name>vm1</name>",
                                                             "<name>vm2</name>"))
    assert res.returncode == 1
    assert f"lacks the ivshmem device '{prefix}-a-vm2'" in res.stderr.decode()
    assert not Path(f"/dev/shm/{prefix}-a-vm2").exists()
    # A restore of vm2 with no device gets all three, named for vm2.
    bare = DOMAIN.format(name="vm2", extra="").replace(
        "<name>vm2</name>", f"<name>vm2</name><uuid>{UUID1}</uuid>")
    res = call(hook, "vm2", "restore", "begin", bare)
    assert res.returncode == 0
    assert (f"vm2 restore begin: added the devices '{prefix}-a-vm2', '{prefix}-b-{UUID1}', "
            f"'{prefix}-shared' to the incoming XML") in log.read_text()
    assert f"name=\"{prefix}-a-vm2\"" in res.stdout.decode()


def test_hook_puts_the_devices_back_on_an_incoming_command_line(ivs_hooks: Path,
                                                                 tmp_path: Path) -> None:
    configure(ivs_hooks, tmp_path / "hook.log", method="commandline", devices=[
        {"name": "ag-{domain}", "per_domain": True, "size": 1, "address": "00:0a.0"},
        {"name": "bell", "model": "doorbell", "server": "/run/ivs.sock", "vectors": 2}])
    ns = "http://libvirt.org/schemas/domain/qemu/1.0"
    xml = DOMAIN.format(name="vm1", extra="").replace(
        "<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{ns}'>").replace(
        "</domain>", "<qemu:commandline><qemu:arg value='-no-user-config'/>"
        "<qemu:arg value='-object'/><qemu:arg value='memory-backend-file,id=hostsetup-shm,"
        "mem-path=/dev/shm/stale,size=4M,share=on'/></qemu:commandline></domain>")
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin", xml)
    assert res.returncode == 0, res.stderr
    args = [a.get("value") for a in ET.fromstring(res.stdout).iterfind(
        f"{{{ns}}}commandline/{{{ns}}}arg")]
    assert args == [
        "-no-user-config",  # someone else's: kept; our stale pair: replaced
        "-object", "memory-backend-file,id=hostsetup-shm,mem-path=/dev/shm/ag-vm1,size=1M,"
        "share=on", "-device", "ivshmem-plain,id=hostsetup-ivshmem,memdev=hostsetup-shm,addr=0a.0",
        "-chardev", "socket,id=hostsetup-shm1,path=/run/ivs.sock",
        "-device", "ivshmem-doorbell,id=hostsetup-ivshmem1,chardev=hostsetup-shm1,vectors=2"]
    # The same XML again: nothing missing, left as it is.
    again = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin",
                 res.stdout.decode())
    assert [a.get("value") for a in ET.fromstring(again.stdout).iterfind(
        f"{{{ns}}}commandline/{{{ns}}}arg")] == args
