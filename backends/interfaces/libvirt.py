"""Interface of the libvirt backend: domains, their devices, and the host's hook files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from backends.interfaces import BackendError, Backends

ShmemModel = Literal["ivshmem-plain", "ivshmem-doorbell", "ivshmem"]

PCI_PATTERN = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)


class DomainNotFound(BackendError):
    """The named domain does not exist (any more)."""

    def __init__(self, name: str, uri: str) -> None:
        super().__init__(f"domain '{name}' not found on {uri}")
        self.name = name


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI address (domain:bus:slot.function)."""

    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``0000:00:0a.0`` or ``00:0a.0``; raises ValueError naming the text."""
        m = PCI_PATTERN.match(text.strip())
        if m is None:
            raise ValueError(f"'{text}' is not a PCI address (expected e.g. 0000:00:0a.0)")
        return cls(int(m["domain"] or "0", 16), int(m["bus"], 16), int(m["slot"], 16),
                   int(m["function"], 16))

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass(frozen=True)
class Shmem:
    """A ``<shmem>`` device: a shared-memory object mapped into the guest over PCI."""

    name: str
    model: ShmemModel = "ivshmem-plain"
    size_mib: int | None = None
    server: str | None = None  # doorbell: the ivshmem server's socket path
    vectors: int | None = None  # doorbell: MSI vectors
    address: PciAddress | None = None
    # master: the guest's copy of the memory migrates with it; peer (QEMU's
    # default when unset): QEMU refuses to migrate or save the guest.
    role: Literal["master", "peer"] | None = None

    def describe(self) -> str:
        """A short text such as ``ivshmem-plain 'shm0' 4 MiB at 0000:00:0a.0``."""
        text = f"{self.model} '{self.name}'"
        if self.size_mib is not None:
            text += f" {self.size_mib} MiB"
        if self.server:
            text += f" server {self.server}"
        if self.vectors is not None:
            text += f" vectors {self.vectors}"
        if self.role is not None:
            text += f" role {self.role}"
        if self.address is not None:
            text += f" at {self.address}"
        return text

    def same_as(self, other: Shmem) -> bool:
        """Equal in what was asked: an address left to libvirt matches any address."""
        if self.address is None:
            other = Shmem(other.name, other.model, other.size_mib, other.server, other.vectors,
                          role=other.role)
        return self == other


@dataclass(frozen=True)
class Domain:
    """A domain as its persistent (inactive) definition and its current state say."""

    name: str
    uuid: str
    state: str  # e.g. "running", "shut off", "paused"
    active: bool
    persistent: bool
    emulator: str
    shmems: tuple[Shmem, ...] = ()
    # (device, address) for every device with a PCI address, e.g. ("video 'video0'", ...)
    pci_addresses: tuple[tuple[str, PciAddress], ...] = ()
    # The values of <qemu:commandline>'s <qemu:arg> elements, in order.
    qemu_args: tuple[str, ...] = ()
    machine: str = ""  # <os><type machine=...>, e.g. "pc-i440fx-7.2"
    acpi: bool = True  # <features><acpi/>: an i440fx guest hot-plugs PCI devices only with it

    def hotplug_problem(self) -> str | None:
        """Why QEMU cannot hot-plug a PCI device into this guest, if it is known to."""
        if self.machine.startswith("pc") and "q35" not in self.machine and not self.acpi:
            return f"{self.machine} without <acpi/> has no hot-pluggable PCI bus"
        return None

    def shmem(self, name: str) -> Shmem | None:
        """The ``<shmem>`` device of that name, if any."""
        return next((s for s in self.shmems if s.name == name), None)


@dataclass(frozen=True)
class HostFile:
    """A file on the libvirt host, as read before replacing it."""

    path: str
    content: bytes
    mode: int


class LibvirtAPI(Protocol):
    """What the ivshmem step needs from libvirt and from the host's files.

    The file operations act on the machine hostsetup runs on, which must be
    the libvirt host (hooks and wrapper emulators are local files).
    """

    uri: str

    def reconnect(self) -> None:
        """Open the connection again (libvirtd was restarted: the old one is dead)."""
        ...

    def version(self) -> tuple[int, int, int]:
        """libvirt's (daemon) version as (major, minor, micro)."""
        ...

    def domains(self) -> list[Domain]:
        """Every domain, running or defined, by name order."""
        ...

    def domain(self, name: str) -> Domain:
        """One domain; raises :class:`DomainNotFound`."""
        ...

    def set_shmem(self, name: str, shmem: Shmem) -> None:
        """Add or replace (by name) the ``<shmem>`` device in the persistent definition."""
        ...

    def set_shmems(self, name: str, shmems: list[Shmem]) -> None:
        """Add or replace (by name) several ``<shmem>`` devices in one definition change."""
        ...

    def remove_shmems(self, name: str, names: list[str]) -> None:
        """Remove the ``<shmem>`` devices of those names from the persistent definition."""
        ...

    def set_qemu_args(self, name: str, args: list[str]) -> None:
        """Set the ``<qemu:commandline>`` arguments of the persistent definition (all of
        them; an empty list removes the element)."""
        ...

    def set_emulator(self, name: str, emulator: str) -> None:
        """Set ``<emulator>`` in the persistent definition."""
        ...

    def read_file(self, path: str) -> HostFile | None:
        """A host file's content and mode, ``None`` if it does not exist."""
        ...

    def write_file(self, path: str, content: bytes, mode: int = 0o755) -> str | None:
        """Write atomically with ``mode``; a replaced, different file is kept as a backup.

        Returns the backup's path, or ``None`` when nothing was replaced.
        """
        ...

    def list_files(self, directory: str) -> list[str]:
        """Names of the regular files in a host directory (links are not followed)."""
        ...

    def remove_file(self, path: str) -> bool:
        """Remove a host regular file (never a link's target); ``False`` if it was absent."""
        ...

    def live_domain(self, name: str) -> Domain:
        """One domain as its live XML says (what the running guest has)."""
        ...

    def attach_shmem(self, name: str, shmem: Shmem, persistent: bool) -> None:
        """Hot-plug a ``<shmem>`` device into the running domain (with ``persistent``,
        into its definition too, in the same call: both or neither)."""
        ...

    def detach_shmem(self, name: str, shmem: str, persistent: bool) -> None:
        """Hot-unplug the ``<shmem>`` device named ``shmem`` from the running domain
        (with ``persistent``, from its definition too, in the same call).  The guest's
        OS must release the device; raises :class:`BackendError` when the guest still
        has it after libvirt's wait (the definition change, if any, is made)."""
        ...

    def guest_pci(self, name: str) -> list[tuple[PciAddress, str]]:
        """The running guest's PCI devices as QEMU lists them: (address, vendor:device)."""
        ...

    def diversion(self, path: str, admindir: str) -> str | None:
        """Where dpkg diverts ``path`` to, ``None`` if it is not diverted."""
        ...

    def swap_in(self, path: str, real: str, content: bytes, admindir: str) -> None:
        """Divert ``path`` to ``real`` (dpkg-divert; the original keeps its bytes there)
        and put ``content`` (mode 0755) in its place, never leaving ``path`` missing."""
        ...

    def swap_out(self, path: str, real: str, admindir: str) -> None:
        """Put the diverted original back at ``path`` and remove the diversion."""
        ...

    def hugetlbfs(self, path: str) -> tuple[int, int] | None:
        """(huge page size in bytes, free pages of that size) of the hugetlbfs mounted
        at ``path``; ``None`` when no hugetlbfs is mounted there."""
        ...


# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "libvirt"


def libvirt_api(backends: Backends, uri: str) -> LibvirtAPI:
    """A libvirt connection to ``uri``."""
    return cast(LibvirtAPI, backends.get(KIND, uri))
