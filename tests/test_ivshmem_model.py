"""The ivshmem answers model, host-side checks on given facts, and host file writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from backends.hostfiles import read_file, write_file
from backends.interfaces.libvirt import Domain, PciAddress, Shmem
from steps.ivshmem import IvshmemAnswers, IvshmemFacts, IvshmemStep, qemu_args


def errors(**answers: object) -> str:
    """The validation error text of these answers."""
    with pytest.raises(ValidationError) as exc:
        IvshmemAnswers(**answers)  # type: ignore[arg-type]
    return str(exc.value)


@pytest.mark.parametrize("size", [0, 3, 6, 100, 131072])
def test_size_must_be_a_power_of_two(size: int) -> None:
    assert f"{size} MiB is not a power of two" in errors(size=size)


@pytest.mark.parametrize("name", ["bad/name", ".hidden", "a,b", "x" * 65, ""])
def test_bad_names(name: str) -> None:
    assert "is not a valid shared-memory name" in errors(name=name)


def test_size_default_is_shown_and_left_to_the_server_for_doorbell() -> None:
    from wizard.tui.questions import defaults

    assert defaults(IvshmemAnswers)["size"] == 4  # the wizard's field shows it
    door = IvshmemAnswers(model="doorbell", server="/run/ivs.sock")
    assert door.size is None
    assert IvshmemAnswers.model_validate(door.model_dump()).size is None  # replayable


def test_doorbell_keys() -> None:
    assert "model doorbell needs 'server'" in errors(model="doorbell")
    assert "leave it out" in errors(model="doorbell", server="/run/ivs.sock", size=4)
    assert "only used with model doorbell" in errors(server="/run/ivs.sock")
    door = IvshmemAnswers(model="doorbell", server="/run/ivs.sock", vectors=2).shmem()
    assert door == Shmem("hostsetup", "ivshmem-doorbell", None, "/run/ivs.sock", 2)
    assert "ivshmem-doorbell,id=hostsetup-ivshmem,chardev=hostsetup-shm,vectors=2" in \
        qemu_args(door)


def test_normalised_values() -> None:
    a = IvshmemAnswers(address="00:0A.0", domains=["all"], mode="640")
    assert (a.address, a.domains, a.mode) == ("0000:00:0a.0", "all", "0640")
    assert a.shmem() == Shmem("hostsetup", "ivshmem-plain", 4,
                              address=PciAddress(0, 0, 0x0a, 0))
    assert "is not a PCI address" in errors(address="00:0a")
    assert "domains listed twice: vm1" in errors(domains=["vm1", "vm1"])
    assert "list at least one domain" in errors(domains=[])
    assert "not an octal mode" in errors(mode="999")
    assert "is not user or user:group" in errors(owner="root:wheel:x")


def test_validate_against_facts() -> None:
    slot3 = PciAddress(0, 0, 3, 0)
    vm = Domain("vm1", "u1", "shut off", False, True, "/usr/bin/qemu-system-x86_64",
                shmems=(Shmem("mine", address=slot3),), pci_addresses=(("shmem 'mine'", slot3),))
    transient = Domain("tr", "u2", "running", True, False, "/usr/bin/qemu-system-x86_64")
    facts = IvshmemFacts((6, 4, 0), {"vm1": vm, "tr": transient})
    step = IvshmemStep()
    # The domain's own device may keep its address.
    assert step.validate(IvshmemAnswers(name="mine", address="00:03.0"), facts) == []
    problems = step.validate(
        IvshmemAnswers(name="other", address="00:03.0", domains=["vm1", "tr"],
                       hook_layout="qemu.d"), facts)
    assert [p.path for p in problems] == [("domains", 1), ("hook_layout",), ("address",)]
    assert "libvirt 6.4.0 does not run hooks from qemu.d/" in problems[1].message
    assert "already used by shmem 'mine' in domain 'vm1'" in problems[2].message


def test_write_file_is_atomic_with_backup(tmp_path: Path) -> None:
    hook = tmp_path / "qemu.d" / "hook"
    assert write_file(str(hook), b"one", 0o755) is None
    assert read_file(str(hook)) is not None and stat.S_IMODE(hook.stat().st_mode) == 0o755
    assert write_file(str(hook), b"one", 0o755) is None  # unchanged: no backup
    backup = write_file(str(hook), b"two", 0o755)
    assert backup is not None and Path(backup).read_bytes() == b"one"
    # libvirt runs every executable file in qemu.d: a backup must not be one.
    assert not os.access(backup, os.X_OK)
    assert hook.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["qemu.d", "hook",
                                                                  Path(backup).name])
    assert read_file(str(tmp_path / "absent")) is None
