"""libvirt backend (libvirt-python): domains, their devices, definitions, hook files.

Definitions are edited as XML trees (ElementTree): read with
``VIR_DOMAIN_XML_INACTIVE``, changed, and defined again with ``defineXML``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt

from backends import hostfiles
from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.libvirt import Domain, DomainNotFound, HostFile, PciAddress, Shmem

# virDomainState -> the words virsh uses.
STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
# libvirt's size units (domain XML "unit" attribute) in bytes.
UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2,
         "mib": 1024**2, "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
         "t": 1024**4, "tib": 1024**4, "tb": 1000**4}
NAMESPACES = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}
QEMU = "{" + NAMESPACES["qemu"] + "}"


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are raised instead."""


def _size_mib(el: ET.Element | None) -> int | None:
    if el is None or not (el.text or "").strip():
        return None
    unit = el.get("unit", "KiB").lower()
    return int(el.text or "0") * UNITS.get(unit, 1024) // 1024**2


def _pci(el: ET.Element | None) -> PciAddress | None:
    if el is None or el.get("type") != "pci":
        return None
    return PciAddress(*(int(el.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")))


def shmem_of(el: ET.Element) -> Shmem:
    """A ``<shmem>`` element as a :class:`Shmem`."""
    server = el.find("server")
    msi = el.find("msi")
    model = el.find("model")
    kind = model.get("type") if model is not None else None
    return Shmem(
        name=el.get("name", ""),
        model=kind or ("ivshmem-doorbell" if server is not None else "ivshmem-plain"),  # type: ignore[arg-type]
        size_mib=_size_mib(el.find("size")),
        server=server.get("path") if server is not None else None,
        vectors=(int(msi.get("vectors", "0")) or None) if msi is not None else None,
        address=_pci(el.find("address")),
        role=el.get("role"),  # type: ignore[arg-type]
    )


def shmem_element(shmem: Shmem) -> ET.Element:
    """A :class:`Shmem` as a ``<shmem>`` element."""
    el = ET.Element("shmem", name=shmem.name)
    if shmem.role is not None:
        el.set("role", shmem.role)
    ET.SubElement(el, "model", type=shmem.model)
    if shmem.size_mib is not None:
        ET.SubElement(el, "size", unit="M").text = str(shmem.size_mib)
    if shmem.server:
        ET.SubElement(el, "server", path=shmem.server)
    if shmem.vectors is not None:
        ET.SubElement(el, "msi", vectors=str(shmem.vectors))
    if shmem.address is not None:
        a = shmem.address
        ET.SubElement(el, "address", type="pci", domain=f"0x{a.domain:04x}",
                      bus=f"0x{a.bus:02x}", slot=f"0x{a.slot:02x}", function=f"0x{a.function:x}")
    return el


def _label(dev: ET.Element) -> str:
    # e.g. "controller usb 0", "shmem 'shm0'", "interface network"
    name = dev.get("name")
    parts = [dev.tag, dev.get("type") or dev.get("model") or "", dev.get("index") or ""]
    text = " ".join(p for p in parts if p)
    return f"{text} '{name}'" if name else text


def pci_addresses(devices: ET.Element) -> tuple[tuple[str, PciAddress], ...]:
    """(device label, address) of every device with a PCI address."""
    found = []
    for dev in devices:
        addr = _pci(dev.find("address"))
        if addr is not None:
            found.append((_label(dev), addr))
    return tuple(found)


def _affect(persistent: bool) -> int:
    """The running guest, and with ``persistent`` its definition too (one call)."""
    return libvirt.VIR_DOMAIN_AFFECT_LIVE | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if persistent
                                             else 0)


class LibvirtBackend:
    """A connection to one libvirt URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        libvirt.registerErrorHandler(_quiet, None)
        for prefix, ns in NAMESPACES.items():
            ET.register_namespace(prefix, ns)
        self.reconnect()

    def reconnect(self) -> None:
        """Open the connection (again: after libvirtd was restarted the old one is dead)."""
        try:
            self.conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise BackendUnreachable("libvirt", self.uri, exc.get_error_message()) from None

    def close(self) -> None:
        """Close the connection."""
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def _fail(self, exc: libvirt.libvirtError, what: str, name: str = "") -> BackendError:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and name:
            return DomainNotFound(name, self.uri)
        if not self.conn.isAlive():
            return BackendUnreachable("libvirt", self.uri, exc.get_error_message())
        return BackendError(f"libvirt {what}: {exc.get_error_message()}")

    def _lookup(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise self._fail(exc, "lookup", name) from None

    def version(self) -> tuple[int, int, int]:
        """The daemon's libvirt version as (major, minor, micro)."""
        try:
            v = self.conn.getLibVersion()
        except libvirt.libvirtError as exc:
            raise self._fail(exc, "version") from None
        return v // 1_000_000, v // 1000 % 1000, v % 1000

    def _domain(self, dom: libvirt.virDomain,
                flags: int = libvirt.VIR_DOMAIN_XML_INACTIVE) -> Domain:
        state, _reason = dom.state()
        root = ET.fromstring(dom.XMLDesc(flags))
        devices = root.find("devices")
        if devices is None:
            devices = ET.Element("devices")
        os_type = root.find("os/type")
        return Domain(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=STATES.get(state, str(state)),
            active=bool(dom.isActive()),
            persistent=bool(dom.isPersistent()),
            emulator=devices.findtext("emulator", "").strip(),
            shmems=tuple(shmem_of(el) for el in devices.iterfind("shmem")),
            pci_addresses=pci_addresses(devices),
            qemu_args=tuple(a.get("value", "") for a in root.iterfind(f"{QEMU}commandline/"
                                                                       f"{QEMU}arg")),
            machine=os_type.get("machine", "") if os_type is not None else "",
            acpi=root.find("features/acpi") is not None,
        )

    def domains(self) -> list[Domain]:
        """Every domain, running or defined; one that vanishes while listed is left out."""
        try:
            doms = self.conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise self._fail(exc, "list domains") from None
        found = []
        for dom in doms:
            try:
                found.append(self._domain(dom))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise self._fail(exc, "read domain") from None
        return sorted(found, key=lambda d: d.name)

    def domain(self, name: str) -> Domain:
        """One domain by name; raises :class:`DomainNotFound`."""
        dom = self._lookup(name)
        try:
            return self._domain(dom)
        except libvirt.libvirtError as exc:
            raise self._fail(exc, "read domain", name) from None

    def _edit(self, name: str, change: Callable[[ET.Element], None],
              whole: bool = False) -> None:
        """Read the persistent definition, change its ``<devices>`` (or, ``whole``,
        the root element), define it again."""
        dom = self._lookup(name)
        try:
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            devices = root.find("devices")
            if devices is None:
                devices = ET.SubElement(root, "devices")
            change(root if whole else devices)
            self.conn.defineXML(ET.tostring(root, encoding="unicode"))
        except libvirt.libvirtError as exc:
            raise self._fail(exc, f"define '{name}'", name) from None

    def set_shmem(self, name: str, shmem: Shmem) -> None:
        """Add or replace (same name) the ``<shmem>`` device of domain ``name``."""
        self.set_shmems(name, [shmem])

    def set_shmems(self, name: str, shmems: list[Shmem]) -> None:
        """Add or replace (same names) ``<shmem>`` devices of domain ``name``, in one
        definition change (all or nothing)."""

        def change(devices: ET.Element) -> None:
            for shmem in shmems:
                new = shmem_element(shmem)
                for old in devices.findall("shmem"):
                    if old.get("name") == shmem.name:
                        # Keep the guest's PCI layout: reuse the address libvirt gave it.
                        if shmem.address is None and old.find("address") is not None:
                            new.append(old.find("address"))  # type: ignore[arg-type]
                        devices.remove(old)
                devices.append(new)

        self._edit(name, change)

    def remove_shmems(self, name: str, names: list[str]) -> None:
        """Remove the ``<shmem>`` devices of those names from domain ``name``."""

        def change(devices: ET.Element) -> None:
            for old in devices.findall("shmem"):
                if old.get("name") in names:
                    devices.remove(old)

        self._edit(name, change)

    def set_qemu_args(self, name: str, args: list[str]) -> None:
        """Set every ``<qemu:commandline>`` argument of domain ``name``."""

        def change(root: ET.Element) -> None:
            for line in root.findall(f"{QEMU}commandline"):
                root.remove(line)
            if args:
                line = ET.SubElement(root, f"{QEMU}commandline")
                for value in args:
                    ET.SubElement(line, f"{QEMU}arg", value=value)

        self._edit(name, change, whole=True)

    def set_emulator(self, name: str, emulator: str) -> None:
        """Set the ``<emulator>`` of domain ``name``."""

        def change(devices: ET.Element) -> None:
            el = devices.find("emulator")
            if el is None:
                el = ET.Element("emulator")
                devices.insert(0, el)
            el.text = emulator

        self._edit(name, change)

    def read_file(self, path: str) -> HostFile | None:
        """A host file's content and mode (see :mod:`backends.hostfiles`)."""
        return hostfiles.read_file(path)

    def write_file(self, path: str, content: bytes, mode: int = 0o755) -> str | None:
        """Write a host file atomically, with a backup (see :mod:`backends.hostfiles`)."""
        return hostfiles.write_file(path, content, mode)

    def list_files(self, directory: str) -> list[str]:
        """Names of the regular files in a host directory (links are not followed)."""
        try:
            with os.scandir(directory) as entries:
                return sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {directory}: {exc.strerror}") from None

    def remove_file(self, path: str) -> bool:
        """Remove a host regular file (never a link's target); ``False`` if it was absent."""
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise BackendError(f"{path} is not a regular file: not removed")
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendError(f"cannot remove {path}: {exc.strerror}") from None
        return True

    def live_domain(self, name: str) -> Domain:
        """One domain as its live XML says (what the running guest has)."""
        dom = self._lookup(name)
        try:
            return self._domain(dom, 0)
        except libvirt.libvirtError as exc:
            raise self._fail(exc, "read domain", name) from None

    def attach_shmem(self, name: str, shmem: Shmem, persistent: bool) -> None:
        """Hot-plug a ``<shmem>`` device into the running domain (and, with
        ``persistent``, its definition in the same call: both or neither)."""
        dom = self._lookup(name)
        try:
            dom.attachDeviceFlags(ET.tostring(shmem_element(shmem), encoding="unicode"),
                                  _affect(persistent))
        except libvirt.libvirtError as exc:
            raise self._fail(exc, f"hot-plug into '{name}'", name) from None

    def detach_shmem(self, name: str, shmem: str, persistent: bool) -> None:
        """Hot-unplug the ``<shmem>`` named ``shmem`` (and, with ``persistent``, remove it
        from the definition in the same call).  libvirt waits a few seconds for the
        guest to release it and otherwise returns with the request pending: the live
        XML says which, and a device still there is an error."""
        dom = self._lookup(name)
        live = self.live_domain(name).shmem(shmem)
        if live is None:
            raise BackendError(f"running domain '{name}' has no ivshmem device '{shmem}'")
        try:
            dom.detachDeviceFlags(ET.tostring(shmem_element(live), encoding="unicode"),
                                  _affect(persistent))
        except libvirt.libvirtError as exc:
            raise self._fail(exc, f"hot-unplug from '{name}'", name) from None
        if self.live_domain(name).shmem(shmem) is not None:
            done = " (removed from its definition)" if persistent else ""
            raise BackendError(f"running domain '{name}' did not release ivshmem device "
                               f"'{shmem}'{done}: the guest's OS must eject it; it goes when "
                               "the guest stops")

    def guest_pci(self, name: str) -> list[tuple[PciAddress, str]]:
        """The running guest's PCI devices as QEMU lists them (QMP ``query-pci``):
        (address, ``vendor:device`` in hex)."""
        import libvirt_qemu  # the QEMU-specific part of the binding, only needed here

        dom = self._lookup(name)
        try:
            reply = libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-pci"}', 0)
        except libvirt.libvirtError as exc:
            raise self._fail(exc, f"query-pci of '{name}'", name) from None
        found = []
        for bus in json.loads(reply).get("return", []):
            for dev in bus.get("devices", []):
                ids = dev.get("id", {})
                found.append((PciAddress(0, dev["bus"], dev["slot"], dev["function"]),
                              f"{ids.get('vendor', 0):04x}:{ids.get('device', 0):04x}"))
        return found

    def diversion(self, path: str, admindir: str) -> str | None:
        """Where dpkg diverts ``path`` to (``dpkg-divert --truename``), ``None`` if not."""
        true = _dpkg_divert(admindir, "--truename", path)
        return None if true == path else true

    def swap_in(self, path: str, real: str, content: bytes, admindir: str) -> None:
        """Divert ``path`` to ``real`` (dpkg-divert) and put ``content`` in its place.

        No moment without an executable at ``path``: the new file is written
        aside, the original is hard-linked to ``real`` (the same bytes, the
        same inode), then the new file is renamed over ``path``.  A failure
        undoes what was done.
        """
        if os.path.lexists(real):
            raise BackendError(f"{real} exists already: not overwritten (remove it, or undo "
                               "the diversion it belongs to)")
        new = f"{path}.hostsetup-new"
        hostfiles.atomic_write(new, content, 0o755)
        try:
            _dpkg_divert(admindir, "--no-rename", "--divert", real, "--add", path)
            try:
                os.link(path, real)
                os.rename(new, path)
            except OSError as exc:
                if os.path.lexists(real) and os.path.exists(path):
                    os.unlink(real)
                _dpkg_divert(admindir, "--no-rename", "--remove", path)
                raise BackendError(f"cannot swap {path}: {exc.strerror}") from None
        finally:
            if os.path.lexists(new):
                os.unlink(new)

    def swap_out(self, path: str, real: str, admindir: str) -> None:
        """Put the diverted original back at ``path`` (one rename) and remove the diversion."""
        try:
            os.rename(real, path)
        except FileNotFoundError:
            if _dpkg_divert(admindir, "--truename", path) != real:
                return  # neither moved nor diverted: nothing to undo
            raise BackendError(f"{path} is diverted to {real}, which is missing: restore "
                               "the emulator (reinstall its package) and run again") from None
        except OSError as exc:
            raise BackendError(f"cannot restore {path}: {exc.strerror}") from None
        _dpkg_divert(admindir, "--no-rename", "--remove", path)

    def hugetlbfs(self, path: str) -> tuple[int, int] | None:
        """(huge page size in bytes, free and unreserved pages of that size) of the
        hugetlbfs mounted at ``path``; ``None`` when no hugetlbfs is mounted there."""
        target = os.path.realpath(path)
        try:
            with open("/proc/self/mounts", encoding="utf-8") as f:
                mounts = [line.split() for line in f.read(1 << 20).splitlines()]
            page = _default_hugepage()
            for fields in mounts:
                if len(fields) >= 4 and fields[2] == "hugetlbfs" and \
                        fields[1].replace("\\040", " ") == target:
                    for option in fields[3].split(","):
                        if option.startswith("pagesize="):
                            page = _size_bytes(option.removeprefix("pagesize="))
                    pool = f"/sys/kernel/mm/hugepages/hugepages-{page // 1024}kB/"
                    # Reserved pages (mapped, not touched yet) count as free there.
                    with open(pool + "free_hugepages", encoding="ascii") as f:
                        free = int(f.read(64).strip())
                    with open(pool + "resv_hugepages", encoding="ascii") as f:
                        return page, free - int(f.read(64).strip())
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the huge pages of {path}: {exc}") from None
        return None


def _size_bytes(text: str) -> int:
    """``2M``, ``1G``, ``2048k`` (a mount option) in bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    unit = units.get(text[-1:].lower(), 1)
    return int(text[:-1] if unit != 1 else text) * unit


def _default_hugepage() -> int:
    """The system's default huge page size (``Hugepagesize`` of /proc/meminfo), in bytes."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f.read(1 << 16).splitlines():
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no Hugepagesize in /proc/meminfo")


DPKG_TIMEOUT = 60.0  # seconds for one dpkg-divert call (it takes dpkg's lock)


def _dpkg_divert(admindir: str, *args: str) -> str:
    """Run ``dpkg-divert --admindir ADMINDIR ARGS``; its output, or a BackendError."""
    try:
        done = subprocess.run(["dpkg-divert", "--admindir", admindir, *args],
                              capture_output=True, text=True, timeout=DPKG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"dpkg-divert {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        raise BackendError(f"dpkg-divert {' '.join(args)}: {done.stderr.strip()[:500]}")
    return done.stdout.strip()
