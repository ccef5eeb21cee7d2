"""Step ``ivshmem``: give VMs ivshmem shared-memory devices, through libvirt.

One device (top-level keys) or several (``devices``), each shared by the
chosen guests or one object per guest (``per_domain``: ``{domain}``/``{uuid}``
in the name), in ``/dev/shm`` or on a hugetlbfs mount.  Four methods put them
on the chosen domains:

- ``definition``: ``<shmem>`` devices in each domain's persistent definition
  (running domains get them at their next start, or now with ``live``:
  libvirt's attach with the live and config flags);
- ``qemu-wrapper``: a wrapper emulator next to the real one appends the
  memory backends and devices to QEMU's command line, and the domains'
  ``<emulator>`` points at it (for managers that regenerate definitions);
- ``commandline``: ``<qemu:commandline>`` passthrough arguments in each
  definition (for managers that keep the XML);
- ``emulator-swap``: the emulator binary itself is replaced by a wrapper and
  the real one diverted with ``dpkg-divert`` (for managers that regenerate
  the whole XML, naming the stock emulator).

Switching method, or ``state: absent``, removes what the others installed.
All install a libvirt QEMU hook (``steps/data/ivshmem_hook.py``, a
standalone script) configured by a JSON file next to it: it adds the devices
to incoming migrations and restores, checks them at ``prepare begin`` (warn or
refuse), and makes each object (size, owner, mode).  The hook goes into
``qemu.d/`` (libvirt >= 6.5), or else becomes ``qemu`` and runs the script it
replaces first (chained).  libvirtd reads new hooks when it starts: the step
restarts it over D-Bus when answered so, or says it must be done.  A doorbell
device with ``serve`` gets its ivshmem server (``steps/data/ivshmem_server.py``)
as a systemd unit, enabled and started over D-Bus.

Each planned operation carries its ``do`` and ``undo`` as plain values (the
file contents, the domain's devices, arguments or emulator as they were), so
that the undos, carried out in reverse by another process, put the host back.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.dbus import DBusAPI, dbus_api
from backends.interfaces.libvirt import (
    Domain,
    DomainNotFound,
    HostFile,
    LibvirtAPI,
    PciAddress,
    Shmem,
    libvirt_api,
)
from steps.base import (
    Change,
    Command,
    Context,
    Operation,
    Problem,
    Question,
    Step,
    StepFailed,
    StepModel,
    ask,
)
from steps.data import ivshmem_hook
from steps.validators import DbusAddress, LibvirtUri, repeated

DEFAULT_URI = "qemu:///system"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_SOURCE = Path(__file__).parent / "data" / "ivshmem_hook.py"
SERVER_SOURCE = Path(__file__).parent / "data" / "ivshmem_server.py"
HOOK_MARKER = b"hostsetup-ivshmem-hook"
WRAPPER_MARKER = b"hostsetup-ivshmem-wrapper"
HOOK_NAME = "hostsetup-ivshmem"
CONFIG_NAME = ivshmem_hook.CONFIG_NAME
SHM_DIR = ivshmem_hook.SHM_DIR
CHAINED_NAME = ivshmem_hook.CHAINED_NAME
HOOK_LOG = ivshmem_hook.DEFAULT_LOG
IVSHMEM_PCI_ID = "1af4:1110"  # vendor:device of ivshmem (plain and doorbell)
HOTPLUG_SINCE = (3, 0, 0)  # libvirt hot-plugs <shmem> (ivshmem-plain/-doorbell) since 3.0
LIVE = "into running "  # target prefix of a hot-plug change: "into running vm1"
UNIT_FILE = "ivshmem doorbell server unit"  # what a unit file is, in a change
QEMU_D_SINCE = (6, 5, 0)
LIBVIRTD = "libvirtd.service"
DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"
REAL_SUFFIX = ".hostsetup-real"  # emulator-swap: where dpkg diverts the real emulator
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


PLACEHOLDERS = ("{domain}", "{uuid}")
# The keys of one device: at the top level (one device) or in each entry of 'devices'.
DEVICE_KEYS = ("name", "size", "model", "server", "vectors", "role", "address", "backing",
               "per_domain", "keep", "serve")


def render(template: str, domain: Domain) -> str:
    """A device name for one guest: ``{domain}`` and ``{uuid}`` replaced."""
    return template.replace("{domain}", domain.name).replace("{uuid}", domain.uuid)


class DeviceKeys(StepModel):
    """What makes one ivshmem device (shared by the top level and ``devices`` entries)."""

    name: str = Field(
        "hostsetup", title="Shared-memory name",
        description="shared-memory object name (/dev/shm/<name>): letters, "
        "digits, '_', '.', '-'; at most 64 characters. With per_domain: a template with "
        "{domain} and/or {uuid}, e.g. fg_{uuid}")
    size: int | None = Field(
        4, title="Size (MiB)", description="size in MiB, a power of two (model plain). "
        "Not used with doorbell: the ivshmem server sets the size")
    model: Literal["plain", "doorbell"] = Field(
        "plain", title="Model",
        description="plain: memory only (ivshmem-plain); doorbell: with interrupts "
        "through an ivshmem server (ivshmem-doorbell)")
    server: str | None = Field(None, title="Doorbell server socket",
                               description="doorbell: the ivshmem server's socket path")
    vectors: int | None = Field(None, ge=1, le=1024, title="Doorbell MSI vectors",
                                description="doorbell: MSI vectors")
    role: Literal["peer", "master"] | None = Field(
        None, title="Migration role",
        description="peer (QEMU's default): QEMU refuses to migrate or save the guest; "
        "master: the guest's copy of the memory migrates with it (one master per object)")
    address: str | None = Field(
        None, title="Guest PCI address",
        description="guest PCI address, e.g. 0000:00:0a.0 (default: chosen by libvirt)")
    backing: Literal["shm", "hugepages"] = Field(
        "shm", title="Backing",
        description="shm: a file in /dev/shm; hugepages: a file on the hugetlbfs "
        "mount 'hugetlbfs' (methods commandline, qemu-wrapper, emulator-swap)")
    per_domain: bool = Field(
        False, title="One object per guest",
        description="true: one object per guest, the name templated with {domain} "
        "and/or {uuid}; false: every chosen guest maps the same object")
    keep: bool = Field(
        False, title="Keep orphaned objects",
        description="per_domain: keep a guest's object when the guest is undefined "
        "(default: the next run removes it)")
    serve: bool = Field(
        False, title="Run the doorbell server",
        description="doorbell: run the ivshmem server on 'server' as a systemd unit "
        "(hostsetup-ivshmem-<name>.service, started and enabled); 'size' is its memory")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        # Each placeholder counts as one character here; the rendered names are
        # checked against the real domains (validate).
        plain = name.replace("{domain}", "x").replace("{uuid}", "x")
        if not NAME_PATTERN.match(plain):
            raise ValueError(f"'{name}' is not a valid shared-memory name (letters, digits, "
                             "'_', '.', '-'; starting with a letter or digit; at most 64; "
                             "placeholders {domain} and {uuid} only with per_domain)")
        return name

    @field_validator("size")
    @classmethod
    def _size(cls, size: int | None) -> int | None:
        if size is not None and (size < 1 or size & (size - 1) or size > 65536):
            raise ValueError(f"{size} MiB is not a power of two between 1 and 65536")
        return size

    @field_validator("address")
    @classmethod
    def _address(cls, text: str | None) -> str | None:
        return None if text is None else str(PciAddress.parse(text))

    @model_validator(mode="after")
    def _device_keys(self) -> DeviceKeys:
        templated = any(p in self.name for p in PLACEHOLDERS)
        if self.per_domain and not templated:
            raise ValueError(f"name '{self.name}' needs {{domain}} or {{uuid}} with "
                             "per_domain: true (each guest gets its own object)")
        if templated and not self.per_domain:
            raise ValueError(f"name '{self.name}' has a placeholder: set per_domain: true, "
                             "or use a fixed name")
        if self.model == "doorbell":
            if "size" not in self.model_fields_set:
                self.size = None  # the default is plain's; the server sets it
            if not self.server:
                raise ValueError("model doorbell needs 'server' (the ivshmem server's socket)")
            if not re.fullmatch(r"/[A-Za-z0-9_./-]+", self.server):
                raise ValueError(f"server path '{self.server}' must be absolute, of letters, "
                                 "digits, '_', '.', '-' and '/'")
            if self.serve:
                self.size = self.size or 4  # the memory of the server hostsetup runs
                if self.per_domain:
                    raise ValueError("serve: one server per device; per_domain is not "
                                     "supported with it")
            elif self.size is not None:
                raise ValueError("'size' is set by the ivshmem server with model doorbell; "
                                 "leave it out (or serve: true)")
        elif self.server is not None or self.vectors is not None or self.serve:
            raise ValueError("'server', 'vectors' and 'serve' are only used with model "
                             "doorbell")
        return self

    def shmem(self, domain: Domain | None = None) -> Shmem:
        """The device for one guest (``domain`` renders a per-guest name)."""
        name = render(self.name, domain) if domain is not None else self.name
        address = PciAddress.parse(self.address) if self.address else None
        if self.model == "doorbell":  # the server's size is not the device's
            return Shmem(name, "ivshmem-doorbell", None, self.server, self.vectors or 1,
                         address, self.role)
        return Shmem(name, "ivshmem-plain", self.size or 4, address=address, role=self.role)


class DeviceAnswers(DeviceKeys):
    """One entry of ``ivshmem.devices``."""

    name: str = Field(..., title=DeviceKeys.model_fields["name"].title,
                      description=DeviceKeys.model_fields["name"].description)


class IvshmemConnection(StepModel):
    """Where libvirt and its hooks are (first in the answers section)."""

    uri: LibvirtUri = Field(DEFAULT_URI, title="libvirt URI",
                            description="libvirt connection URI, e.g. qemu:///system")
    hooks_dir: str = Field(DEFAULT_HOOKS_DIR, title="Hooks directory",
                           description="libvirt's hooks directory")


class IvshmemAnswers(DeviceKeys, IvshmemConnection):
    """Answers of the ``ivshmem`` step (one device at the top level, or ``devices``)."""
    devices: list[DeviceAnswers] | None = Field(
        None, description="several devices per guest (instead of the top-level name, size, "
        "model, ...): each with name, size, model, role, address, per_domain, ...")
    domains: Literal["all"] | list[str] = Field(
        "all", title="Domains",
        description="'all' (every persistent domain) or a list of domain names")
    method: Literal["definition", "qemu-wrapper", "commandline", "emulator-swap"] = Field(
        "definition", title="Method", description="definition: <shmem> in the domain definitions; "
        "qemu-wrapper: a wrapper emulator adds the device on QEMU's command line; "
        "commandline: <qemu:commandline> arguments in the definitions; emulator-swap: "
        "the emulator binary itself is replaced by a wrapper (dpkg-divert), for managers "
        "that regenerate the XML at each start. Switching method removes what the "
        "previous one installed")
    state: Literal["present", "absent"] = Field(
        "present", description="absent: remove what this step installed (devices, "
        "command-line arguments, wrappers, the emulator swap, the hook)")
    emulator: str = Field(
        DEFAULT_EMULATOR, description="emulator-swap: the emulator binary to replace (the "
        "chosen domains' <emulator>)")
    dpkg_admindir: str = Field(
        "/var/lib/dpkg", description="emulator-swap: dpkg's database, where the diversion "
        "is recorded (another one only for tests)")
    server_bin: str = Field(
        "/usr/local/libexec/hostsetup-ivshmem-server", description="serve: where the "
        "ivshmem server (Python standard library) is installed")
    units_dir: str = Field(
        "/etc/systemd/system", description="serve: where the server's unit file goes")
    hugetlbfs: str = Field(
        "/dev/hugepages", description="backing hugepages: the hugetlbfs mount the objects "
        "go on (enough free huge pages are checked)")
    live: bool = Field(
        False, description="definition: hot-plug the devices into running guests now "
        "(libvirt attach, live and config) instead of at their next start")
    live_fallback: bool = Field(
        False, description="live: when the hypervisor cannot hot-plug a device, change the "
        "definition only (the device comes at the next start) instead of failing")
    wrapper_dir: str | None = Field(
        None, title="Wrapper directory",
        description="qemu-wrapper: directory of the wrapper (default: the real emulator's)")
    enforce: Literal["warn", "refuse"] = Field(
        "warn", title="Start without the device",
        description="the hook, when a chosen domain starts without the device: "
        "log a warning, or refuse the start")
    owner: str | None = Field(
        None, title="Owner of /dev/shm/<name>",
        description="user[:group] of /dev/shm/<name> (default: unchanged)")
    mode: str = Field("0660", title="Mode of /dev/shm/<name>",
                      description="permissions of /dev/shm/<name>, octal, e.g. 0660")
    hook_layout: Literal["auto", "qemu.d", "chain"] = Field(
        "auto", description="auto: qemu.d/ when libvirt >= 6.5, else chain; chain: our hook "
        "becomes 'qemu' and runs the script it replaces first")
    hook_log: str = Field(
        HOOK_LOG, description="the hook's log file (as libvirtd sees it), in a directory that "
        "root owns and group and others cannot write (the hook runs as root)")
    restart_libvirtd: bool = Field(
        False, title="Restart libvirtd", description="restart libvirtd (over D-Bus, "
        "systemd) when a new hook is installed: libvirtd reads hooks only when it starts")
    bus: DbusAddress = Field("system", description="D-Bus for the restart: 'system' or an address")
    timeout: float = Field(60.0, gt=0, le=600, description="seconds to wait for the restart")

    @field_validator("hook_log")
    @classmethod
    def _hook_log(cls, path: str) -> str:
        if not posixpath.isabs(path):
            raise ValueError(f"'{path}' is not an absolute path")
        return path

    @field_validator("domains", mode="before")
    @classmethod
    def _all(cls, value: Any) -> Any:
        return "all" if value == ["all"] else value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: str | list[str]) -> str | list[str]:
        # After the item types are checked: a list of mixed types is reported per item.
        if isinstance(value, list):
            if not value:
                raise ValueError("list at least one domain, or 'all'")
            dups = repeated(value)
            if dups:
                raise ValueError(f"domains listed twice: {', '.join(dups)}")
        return value

    @field_validator("mode")
    @classmethod
    def _mode(cls, mode: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", mode):
            raise ValueError(f"'{mode}' is not an octal mode such as 0660")
        return mode.zfill(4)

    @field_validator("owner")
    @classmethod
    def _owner(cls, owner: str | None) -> str | None:
        if owner is not None and not OWNER_PATTERN.match(owner):
            raise ValueError(f"'{owner}' is not user or user:group")
        return owner

    @model_validator(mode="after")
    def _devices(self) -> IvshmemAnswers:
        if self.method == "qemu-wrapper" and any(d.per_domain for d in self.device_list()):
            raise ValueError("per_domain devices need method definition (the qemu-wrapper "
                             "method gives every guest of an emulator the same command line)")
        for key in ("emulator", "dpkg_admindir", "hugetlbfs", "server_bin", "units_dir"):
            if not posixpath.isabs(getattr(self, key)):
                raise ValueError(f"{key} '{getattr(self, key)}' is not an absolute path")
        if self.method == "definition" and any(d.backing == "hugepages"
                                               for d in self.device_list()):
            raise ValueError("backing hugepages needs method commandline, qemu-wrapper or "
                             "emulator-swap (libvirt's <shmem> maps /dev/shm only)")
        if self.live and self.method != "definition":
            raise ValueError("live: true needs method definition (a command-line device "
                             "cannot be hot-plugged by libvirt)")
        if self.devices is None:
            return self
        both = [k for k in DEVICE_KEYS if k in self.model_fields_set]
        if both:
            raise ValueError(f"give {', '.join(both)} in each entry of 'devices', not at the "
                             "top level as well")
        if not self.devices:
            raise ValueError("'devices' lists no device (leave it out for one device)")
        for what, values in (("names", [d.name for d in self.devices]),
                             ("PCI addresses", [d.address for d in self.devices if d.address])):
            dups = repeated(values)
            if dups:
                raise ValueError(f"devices with the same {what}: {', '.join(dups)}")
        return self

    def device_list(self) -> list[DeviceKeys]:
        """The devices asked for: ``devices``, or the top-level keys as one device."""
        return list(self.devices) if self.devices is not None else [self]

    def shmem(self, domain: Domain | None = None) -> Shmem:
        """The first device (the only one without ``devices``)."""
        return DeviceKeys.shmem(self.device_list()[0], domain)

    def shmems(self, domain: Domain | None = None) -> list[Shmem]:
        """Every device, for one guest when ``domain`` is given."""
        return [DeviceKeys.shmem(d, domain) for d in self.device_list()]

    def directory(self, device: DeviceKeys) -> str:
        """Where the device's object is: /dev/shm, or the hugetlbfs mount."""
        return self.hugetlbfs if device.backing == "hugepages" else SHM_DIR

    def device_args(self, domain: Domain | None = None) -> list[str]:
        """QEMU arguments that add every device (for one guest: names rendered)."""
        return [a for i, d in enumerate(self.device_list())
                for a in ivshmem_hook.qemu_args(_device_config(self, d, domain), i)]

    def keeps(self, method: str) -> bool:
        """True when what ``method`` installs stays (chosen, and state present)."""
        return self.state == "present" and self.method == method


File = tuple[bytes, int, str]  # content, mode, what it is
# Answers key -> key in the hook configuration (hook_config), for current().
DEVICE_CONFIG_KEYS = {"name": "name", "model": "model", "size": "size_mib",
                      "server": "server", "vectors": "vectors", "role": "role",
                      "per_domain": "per_domain", "keep": "keep"}
CONFIG_KEYS = {"domains": "domains", "method": "method", "enforce": "enforce",
               "owner": "owner", "mode": "mode", "hook_log": "log"}


def _device_answers(config: dict[str, Any]) -> dict[str, Any]:
    """One device of an installed hook configuration as answers keys."""
    out = {key: config.get(name) for key, name in DEVICE_CONFIG_KEYS.items()}
    out["model"] = str(out.get("model") or "").removeprefix("ivshmem-") or None
    if config.get("dir"):
        out["backing"] = "hugepages"
    address = config.get("address")
    if isinstance(address, dict):
        out["address"] = "{}:{}:{}.{}".format(*(
            address[k].removeprefix("0x") for k in ("domain", "bus", "slot", "function")))
    return {k: v for k, v in out.items() if v is not None}


def _parse_config(content: bytes) -> dict[str, Any] | None:
    """An installed hook configuration, or ``None`` if it is not ours / not JSON."""
    try:
        config = json.loads(content)
    except ValueError:
        return None
    return config if isinstance(config, dict) and config.get("version") == 1 else None


@dataclass
class Desired:
    """What the host must have: the chosen domains and the files, in write order.

    ``wrappers`` are written before the domains point at them; ``hook_files``
    (chained third-party hook, configuration, hook) after the domains changed.
    """

    domains: list[Domain]
    emulators: dict[str, str] = field(default_factory=dict)  # domain -> wrapper (qemu-wrapper)
    wrappers: dict[str, File] = field(default_factory=dict)
    hook_files: dict[str, File] = field(default_factory=dict)
    new_hook: bool = False
    all_domains: dict[str, Domain] = field(default_factory=dict)
    installed: dict[str, Any] | None = None  # the hook configuration found (valid), if any
    swap: bytes | None = None  # emulator-swap: the wrapper that replaces the emulator
    units: dict[str, str] = field(default_factory=dict)  # serve: unit name -> unit file


@dataclass
class Leftover:
    """What another method installed on one domain: to remove when switching method."""

    args: list[str] | None = None  # the <qemu:commandline> without ours (None: none there)
    shmems: list[str] = field(default_factory=list)  # <shmem> names (method definition)
    emulator: str | None = None  # the real emulator to point back at (method qemu-wrapper)

    def describe(self) -> list[str]:
        """What goes, in words."""
        out = []
        if self.args is not None:
            out.append("ivshmem devices on its QEMU command line (method commandline)")
        out += [f"<shmem> '{n}' (method definition)" for n in self.shmems]
        if self.emulator:
            out.append(f"wrapper emulator, back to {self.emulator} (method qemu-wrapper)")
        return out


@dataclass(frozen=True)
class IvshmemFacts:
    """What the ivshmem step read of the host.

    ``version`` is ``None`` when nothing was read.  The hugetlbfs mount and the
    emulator's diversion are read only for answers that use them (the runner's
    read); ``hugetlbfs_mount`` and ``emulator`` say which were read, so that a
    form checked before they were skips those checks (the check phase makes them).
    """

    version: tuple[int, int, int] | None = None
    domains: Mapping[str, Domain] = field(default_factory=dict)
    # What running guests have now (live XML): a hot-plug must find its address free.
    live: Mapping[str, Domain] = field(default_factory=dict)
    installed: Mapping[str, Any] | None = None  # the hook configuration found, if ours
    hugetlbfs_mount: str | None = None
    hugetlbfs: tuple[int, int] | None = None  # (page size in bytes, free pages)
    huge_files: tuple[str, ...] = ()
    emulator: str | None = None
    diversion: str | None = None
    diversion_error: str = ""
    emulator_present: bool = False


# -- commands: what an operation does, as plain values (a journal keeps them) --------


def shmem_value(shmem: Shmem) -> dict[str, Any]:
    """A device as a command value (the address as text)."""
    return {"name": shmem.name, "model": shmem.model, "size_mib": shmem.size_mib,
            "server": shmem.server, "vectors": shmem.vectors, "role": shmem.role,
            "address": str(shmem.address) if shmem.address else None}


def shmem_of(value: Mapping[str, Any]) -> Shmem:
    """The device of a command value (:func:`shmem_value`)."""
    address = value.get("address")
    return Shmem(value["name"], value["model"], value.get("size_mib"), value.get("server"),
                 value.get("vectors"), PciAddress.parse(address) if address else None,
                 value.get("role"))


def _content(data: bytes) -> dict[str, str]:
    # Text when it is UTF-8 (readable in a journal), else base64: a replaced
    # third-party hook may be anything.
    try:
        return {"content": data.decode()}
    except UnicodeDecodeError:
        return {"content_b64": base64.b64encode(data).decode()}


def content_of(command: Command) -> bytes:
    """The file content a command carries."""
    if "content_b64" in command:
        return base64.b64decode(command["content_b64"])
    return str(command["content"]).encode()


def write_command(path: str, content: bytes, mode: int, **extra: Any) -> Command:
    """Write ``path`` with ``content`` and ``mode``."""
    return {"op": "write_file", "path": path, "mode": mode, **_content(content), **extra}


def restore_command(path: str, old: HostFile | None, **extra: Any) -> Command:
    """Put back what ``path`` held before (``old``; ``None``: nothing, so remove it)."""
    if old is None:
        return {"op": "remove_file", "path": path, **extra}
    return write_command(path, old.content, old.mode, **extra)


def domain_commands(dom: Domain, *, args: list[str] | None = None, emulator: str | None = None,
                    put: list[Shmem] | tuple[()] = (),
                    drop: list[str] | tuple[()] = ()) -> tuple[Command, Command]:
    """(do, undo) of one change to a domain's definition: its ``<qemu:commandline>``
    arguments, ``<emulator>``, ``<shmem>`` devices set (``put``) or removed
    (``drop``).  The undo puts back what ``dom`` has now: the arguments, the
    emulator, each device as it was (address included), none of the new ones."""
    do: Command = {"op": "domain", "name": dom.name}
    undo: Command = {"op": "domain", "name": dom.name}
    if args is not None:
        do["args"], undo["args"] = list(args), list(dom.qemu_args)
    if emulator is not None:
        do["emulator"], undo["emulator"] = emulator, dom.emulator
    if put:
        do["put"] = [shmem_value(s) for s in put]
    if drop:
        do["drop"] = list(drop)
    new = [s.name for s in put if dom.shmem(s.name) is None]
    had = [shmem_value(own) for n in dict.fromkeys([*(s.name for s in put), *drop])
           if (own := dom.shmem(n))]
    if new:
        undo["drop"] = new
    if had:
        undo["put"] = had
    return do, undo


def edit_domain(lv: LibvirtAPI, command: Command) -> None:
    """Carry out a ``domain`` command (:func:`domain_commands`)."""
    name = command["name"]
    if "args" in command:
        lv.set_qemu_args(name, command["args"])
    if command.get("drop"):
        lv.remove_shmems(name, command["drop"])
    if command.get("put"):
        lv.set_shmems(name, [shmem_of(v) for v in command["put"]])
    if "emulator" in command:
        lv.set_emulator(name, command["emulator"])


def domain_is(dom: Domain, command: Command) -> bool:
    """True when the definition ``dom`` is what a ``domain`` command leads to."""
    return (("args" not in command or list(dom.qemu_args) == command["args"])
            and ("emulator" not in command or dom.emulator == command["emulator"])
            and all(dom.shmem(n) is None for n in command.get("drop", ()))
            and all((own := dom.shmem(s.name)) is not None and s.same_as(own)
                    for s in map(shmem_of, command.get("put", ()))))


def swap_script(answers: IvshmemAnswers, domains: list[Domain]) -> bytes:
    """emulator-swap: the wrapper put in the emulator's place.

    It adds each chosen guest's devices (found by ``-name guest=<name>``, the
    names rendered here per guest) and runs the real, diverted emulator;
    other guests and libvirt's capability probes pass through unchanged.
    """
    real = shlex.quote(answers.emulator + REAL_SUFFIX)
    lines = [
        "#!/bin/sh",
        "# hostsetup-ivshmem-wrapper: installed by hostsetup's ivshmem step (emulator-swap);",
        f"# do not edit. The real emulator is {answers.emulator + REAL_SUFFIX} (dpkg-divert).",
        "guest= prev=",
        "for arg do",
        '    if [ "$prev" = "-name" ]; then guest=${arg#guest=}; guest=${guest%%,*}; fi',
        '    prev=$arg',
        "done",
    ]
    for dom in domains:
        args = " ".join(shlex.quote(a) for a in answers.device_args(dom))
        lines.append(f'if [ "$guest" = {shlex.quote(dom.name)} ]; then exec {real} "$@" {args}; fi')
    lines.append(f'exec {real} "$@"')
    return ("\n".join(lines) + "\n").encode()


def server_unit(answers: IvshmemAnswers, device: DeviceKeys) -> tuple[str, bytes]:
    """serve: the doorbell server's unit: (its name, the unit file)."""
    name = f"hostsetup-ivshmem-{device.name}.service"
    argv = ["/usr/bin/python3", answers.server_bin, "--socket", str(device.server),
            "--size", str(device.size), "--vectors", str(device.vectors or 1),
            "--mode", answers.mode]
    if answers.owner:
        argv += ["--owner", answers.owner]
    return name, (
        "# Installed by hostsetup's ivshmem step; do not edit.\n"
        "[Unit]\n"
        f"Description=ivshmem doorbell server for '{device.name}' (hostsetup)\n"
        "Before=libvirtd.service\n\n"
        "[Service]\n"
        f"ExecStart={' '.join(argv)}\n"
        "Restart=on-failure\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n").encode()


def command_line(dom: Domain, answers: IvshmemAnswers) -> list[str]:
    """The ``<qemu:commandline>`` arguments with our devices: others' first, then ours."""
    return ivshmem_hook.strip_ours(list(dom.qemu_args)) + answers.device_args(dom)


def hook_paths(connection: IvshmemConnection, layout: str) -> tuple[str, str]:
    """(hook script, its JSON config) for a layout ('qemu.d' or 'chain')."""
    base = connection.hooks_dir
    if layout == "qemu.d":
        return posixpath.join(base, "qemu.d", HOOK_NAME), posixpath.join(base, "qemu.d",
                                                                         CONFIG_NAME)
    return posixpath.join(base, "qemu"), posixpath.join(base, CONFIG_NAME)


def wrapper_path(answers: IvshmemAnswers, real: str) -> str:
    """Where the wrapper of emulator ``real`` goes."""
    directory = answers.wrapper_dir or posixpath.dirname(real)
    name = answers.shmem().name
    return posixpath.join(directory, f"{posixpath.basename(real)}-ivshmem-{name}")


def qemu_args(shmem: Shmem, index: int = 0) -> list[str]:
    """QEMU arguments that add one device (the wrapper's, or ``<qemu:commandline>``'s);
    ``index`` > 0 numbers the QEMU ids of the second and later devices."""
    return ivshmem_hook.qemu_args(_shmem_config(shmem), index)


def wrapper_script(answers: IvshmemAnswers, real: str) -> bytes:
    """The wrapper emulator: adds the devices when QEMU runs a guest (``-name``).

    libvirt also runs the emulator to probe its capabilities (``-machine
    none``, no ``-name``); those runs pass through unchanged.
    """
    args = " ".join(shlex.quote(a) for a in answers.device_args())
    exe = shlex.quote(real)
    return (
        "#!/bin/sh\n"
        "# hostsetup-ivshmem-wrapper: installed by hostsetup's ivshmem step; do not edit.\n"
        f"# Runs {real} with ivshmem devices added to every guest it starts.\n"
        "for arg do\n"
        f'    if [ "$arg" = "-name" ]; then exec {exe} "$@" {args}; fi\n'
        "done\n"
        f'exec {exe} "$@"\n'
    ).encode()


def _pci_attrs(address: PciAddress | None) -> dict[str, str] | None:
    if address is None:
        return None
    return {"domain": f"0x{address.domain:04x}", "bus": f"0x{address.bus:02x}",
            "slot": f"0x{address.slot:02x}", "function": f"0x{address.function:x}"}


def _shmem_config(shmem: Shmem) -> dict[str, Any]:
    """One device as the hook configuration holds it."""
    return {"name": shmem.name, "model": shmem.model, "size_mib": shmem.size_mib,
            "server": shmem.server, "vectors": shmem.vectors,
            "address": _pci_attrs(shmem.address), "role": shmem.role}


def _device_config(answers: IvshmemAnswers, device: DeviceKeys,
                   domain: Domain | None = None) -> dict[str, Any]:
    """One device of the answers in the hook configuration (``name`` a template unless
    ``domain`` renders it); ``dir`` only for hugepages (older hooks know no such key)."""
    config = {**_shmem_config(device.shmem(domain)), "per_domain": device.per_domain,
              "keep": device.keep}
    if device.backing == "hugepages":
        config["dir"] = answers.directory(device)
    return config


def hook_config(answers: IvshmemAnswers, wrappers: dict[str, str], chain: bool) -> bytes:
    """The hook's JSON configuration.

    The top-level device keys (format of one device) hold the first device;
    ``devices`` (only written when the answers list devices) holds them all.
    """
    devices = [_device_config(answers, d) for d in answers.device_list()]
    first = {k: v for k, v in devices[0].items() if k not in ("per_domain", "keep")}
    config = {
        "version": 1, **first,
        "domains": answers.domains, "method": answers.method, "wrappers": wrappers,
        "enforce": answers.enforce, "owner": answers.owner, "mode": answers.mode,
        "log": answers.hook_log, "chain": CHAINED_NAME if chain else None,
    }
    if answers.devices is not None:
        config["devices"] = devices
    if answers.keeps("emulator-swap"):
        config["swap"] = {"emulator": answers.emulator, "real": answers.emulator + REAL_SUFFIX,
                          "admindir": answers.dpkg_admindir}
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _second_device(dom: Domain, names: set[str]) -> str:
    """Why adding our devices to ``dom`` is marked in the review: it has another one."""
    others = [s.name for s in dom.shmems if s.name not in names]
    if not others:
        return ""
    return "a second ivshmem device: the domain already has " + ", ".join(
        f"'{n}'" for n in others)


class IvshmemStep(Step[IvshmemAnswers]):
    """Give the chosen VMs an ivshmem device and keep it there with a libvirt hook."""

    name = "ivshmem"
    title = "ivshmem shared memory for VMs"
    help = (
        "Gives VMs an ivshmem PCI device backed by /dev/shm/<name>, a host <-> guest\n"
        "channel without the network. 'definition' edits the domain definitions (running\n"
        "VMs get it at their next start); 'qemu-wrapper' points them at a wrapper emulator\n"
        "(for managers that regenerate definitions). A libvirt hook keeps the device on\n"
        "migrations and restores and checks it at start (enforce: warn|refuse).\n"
        "libvirtd reads new hooks only when it starts."
    )
    Answers = IvshmemAnswers
    Connection = IvshmemConnection
    Facts = IvshmemFacts
    requires = "libvirt"

    def discover(self, connection: IvshmemConnection, ctx: Context) -> IvshmemFacts:
        """libvirt's version, the domains (and the running ones' live XML), and the hook
        configuration installed, if any; for whole answers also the hugetlbfs mount
        (backing hugepages) and the emulator's diversion (emulator-swap)."""
        lv = libvirt_api(ctx.backends, connection.uri)
        installed = None
        for layout in ("qemu.d", "chain"):
            found = lv.read_file(hook_paths(connection, layout)[1])
            if found is not None and installed is None:
                installed = _parse_config(found.content)
        domains = {d.name: d for d in lv.domains()}
        live = {d.name: lv.live_domain(d.name) for d in domains.values() if d.active}
        extra: dict[str, Any] = {}
        if isinstance(connection, IvshmemAnswers):
            extra = self._answered_facts(connection, lv)
        return IvshmemFacts(lv.version(), domains, live, installed, **extra)

    def _answered_facts(self, answers: IvshmemAnswers, lv: LibvirtAPI) -> dict[str, Any]:
        """What only some answers need read: the hugetlbfs mount, the emulator swap."""
        extra: dict[str, Any] = {}
        if any(d.backing == "hugepages" for d in answers.device_list()):
            mount = answers.hugetlbfs
            info = lv.hugetlbfs(mount)
            extra.update(hugetlbfs_mount=mount, hugetlbfs=info,
                         huge_files=tuple(lv.list_files(mount)) if info else ())
        if answers.method == "emulator-swap":
            emulator = answers.emulator
            extra["emulator"] = emulator
            try:
                extra["diversion"] = lv.diversion(emulator, answers.dpkg_admindir)
            except BackendUnreachable:
                raise
            except BackendError as exc:
                extra["diversion_error"] = str(exc)
            extra["emulator_present"] = posixpath.basename(emulator) in lv.list_files(
                posixpath.dirname(emulator))
        return extra

    def current(self, facts: IvshmemFacts) -> dict[str, Any]:
        """The settings of the installed hook configuration (what the last run applied);
        without one, the first ivshmem device found on the domains and who has it."""
        config = facts.installed
        if config:
            out = {key: config.get(name) for key, name in CONFIG_KEYS.items()}
            devices = config.get("devices")
            if isinstance(devices, list):
                out["devices"] = [_device_answers(d) for d in devices if isinstance(d, dict)]
            else:
                out.update(_device_answers(dict(config)))
            return {k: v for k, v in out.items() if v is not None}
        having = [d for d in facts.domains.values() if d.shmems]
        if not having:
            return {}
        first = having[0].shmems[0]
        return {"name": first.name, "model": first.model.removeprefix("ivshmem-"),
                "size": first.size_mib,
                "domains": [d.name for d in having if d.shmem(first.name)]}

    def questions(self, facts: IvshmemFacts) -> list[Question]:
        domains = facts.domains
        states = tuple((d.name, d.state + "".join(f", has '{s.name}'" for s in d.shmems))
                       for d in domains.values())
        a = IvshmemAnswers
        return [
            ask(a, "name"),
            ask(a, "size"),
            ask(a, "model", choices=("plain", "doorbell")),
            ask(a, "server"),
            ask(a, "vectors"),
            ask(a, "role", choices=("peer", "master")),
            ask(a, "address"),
            # Literal "all" or a list: the type alone does not say "multi".
            ask(a, "domains", kind="multi", choices=("all", *domains), choice_notes=states),
            ask(a, "method",
                choices=("definition", "qemu-wrapper", "commandline", "emulator-swap")),
            ask(a, "wrapper_dir"),
            ask(a, "enforce", choices=("warn", "refuse")),
            ask(a, "owner"),
            ask(a, "mode"),
            ask(a, "restart_libvirtd"),
        ]

    def _layout(self, answers: IvshmemAnswers, version: tuple[int, int, int]) -> str:
        if answers.hook_layout != "auto":
            return answers.hook_layout
        return "qemu.d" if tuple(version) >= QEMU_D_SINCE else "chain"

    def _chosen(self, answers: IvshmemAnswers, domains: Mapping[str, Domain]) -> list[Domain]:
        if answers.domains == "all":
            return [d for d in domains.values() if d.persistent]
        return [domains[n] for n in answers.domains if n in domains]

    def validate(self, answers: IvshmemAnswers, facts: IvshmemFacts) -> list[Problem]:
        if facts.version is None:
            return [Problem(("uri",), f"libvirt at {answers.uri} was not read: the answers "
                            "cannot be checked against the host")]
        domains, version = facts.domains, facts.version
        problems = []
        if answers.domains != "all":
            for i, name in enumerate(answers.domains):
                if name not in domains:
                    problems.append(Problem(("domains", i), f"no domain '{name}' on "
                                            f"{answers.uri} (has: {', '.join(domains) or 'none'})"))
                elif not domains[name].persistent:
                    problems.append(Problem(("domains", i), f"domain '{name}' is transient: "
                                            "it has no definition to change"))
        # The hook (root) writes its log only where nobody else can plant a link
        # or a FIFO; the same check it makes at every call, made here first.
        unsafe = ivshmem_hook.log_problem(answers.hook_log)
        if unsafe:
            problems.append(Problem(("hook_log",), f"the hook would not write its log there: "
                                    f"{unsafe} (use a directory that root owns and group and "
                                    "others cannot write, e.g. /var/log/libvirt)"))
        if answers.hook_layout == "qemu.d" and version < QEMU_D_SINCE:
            problems.append(Problem(("hook_layout",), "libvirt {}.{}.{} does not run hooks from "
                                    "qemu.d/ (needs 6.5.0): use chain".format(*version)))
        if answers.state == "absent" and self._layout(answers, version) == "chain":
            problems.append(Problem(("state",), "state absent with the chain hook layout is "
                                    "not supported yet: remove the hook by hand"))
        if answers.keeps("emulator-swap"):
            problems += self._swap_problems(answers, facts)
        if answers.state == "present":
            problems += self.hugepage_problems(answers, facts)
        live = facts.live
        for dom in self._chosen(answers, domains) if answers.state == "present" else []:
            problems += self._domain_problems(answers, dom)
            if answers.live and dom.name in live:
                problems += [p for p in self._domain_problems(answers, live[dom.name])
                             if p.path[-1] == "address" and p not in problems]
                why = live[dom.name].hotplug_problem()
                if why and not answers.live_fallback:
                    problems.append(Problem(("live",), f"running domain '{dom.name}' cannot "
                                            f"get a device hot-plugged: {why} (set "
                                            "live_fallback: true to add it at its next start)"))
        if answers.live and not answers.live_fallback and version < HOTPLUG_SINCE:
            running = [d.name for d in self._chosen(answers, domains) if d.active]
            if running:
                problems.append(Problem(("live",), "libvirt {}.{}.{} cannot hot-plug ivshmem "
                                        "devices (needs 3.0.0) into running {}: set "
                                        "live_fallback: true to add them at the next start"
                                        .format(*version, ", ".join(running))))
        return problems

    def hugepage_problems(self, answers: IvshmemAnswers,
                          facts: IvshmemFacts) -> list[Problem]:
        """backing hugepages: a hugetlbfs mount with enough free pages for the objects
        not made yet (one per chosen guest with per_domain), sizes in whole pages."""
        huge = [(i, d) for i, d in enumerate(answers.device_list()) if d.backing == "hugepages"]
        if not huge or facts.hugetlbfs_mount != answers.hugetlbfs:
            return []  # not read for these answers (a form): the check phase reads it
        info = facts.hugetlbfs
        if info is None:
            return [Problem(("hugetlbfs",), f"{answers.hugetlbfs} is not a hugetlbfs mount "
                            f"(mount -t hugetlbfs none {answers.hugetlbfs})")]
        page, free = info
        problems, made, needed = [], set(facts.huge_files), 0
        chosen = self._chosen(answers, facts.domains)
        for i, device in huge:
            where: tuple[str | int, ...] = ("devices", i) if answers.devices else ()
            size = (device.size or 4) * 1024 * 1024
            if size % page:
                problems.append(Problem((*where, "size"), f"{device.size} MiB is not a whole "
                                        f"number of {page // 1024} KiB huge pages"))
                continue
            names = {device.shmem(d).name for d in chosen} if device.per_domain else {
                device.name}
            needed += len(names - made) * (size // page)
            made |= names
        if needed > free:
            problems.append(Problem(("hugetlbfs",), f"{needed} free huge pages of "
                                    f"{page // 1024} KiB needed on {answers.hugetlbfs}, "
                                    f"{free} free: reserve more (/proc/sys/vm/nr_hugepages)"))
        return problems

    def _swap_problems(self, answers: IvshmemAnswers, facts: IvshmemFacts) -> list[Problem]:
        """emulator-swap: the emulator is there, not diverted by another, and used."""
        emulator, real = answers.emulator, answers.emulator + REAL_SUFFIX
        if facts.emulator != emulator:
            return []  # not read for these answers (a form): the check phase reads it
        if facts.diversion_error:
            return [Problem(("dpkg_admindir",), f"dpkg-divert cannot use "
                            f"'{answers.dpkg_admindir}': {facts.diversion_error}")]
        diverted = facts.diversion
        if diverted not in (None, real):
            return [Problem(("emulator",), f"{emulator} is already diverted to {diverted} "
                            "(not by hostsetup): not swapped")]
        problems = []
        if diverted is None and not facts.emulator_present:
            problems.append(Problem(("emulator",), f"{emulator} does not exist"))
        for dom in self._chosen(answers, facts.domains):
            if dom.emulator != emulator:
                problems.append(Problem(("emulator",), f"domain '{dom.name}' runs "
                                        f"{dom.emulator}, not {emulator}: the swap would "
                                        "not give it the devices"))
        return problems

    def _domain_problems(self, answers: IvshmemAnswers, dom: Domain) -> list[Problem]:
        """The devices' names and addresses against one chosen domain."""
        problems = []
        seen: dict[str, int] = {}
        for i, device in enumerate(answers.device_list()):
            where: tuple[str | int, ...] = ("devices", i) if answers.devices else ()
            shmem = device.shmem(dom)
            if device.per_domain and not NAME_PATTERN.match(shmem.name):
                problems.append(Problem((*where, "name"), f"'{device.name}' gives domain "
                                        f"'{dom.name}' the name '{shmem.name}', not a valid "
                                        "shared-memory name (letters, digits, '_', '.', '-'; "
                                        "at most 64): use {uuid}"))
            if shmem.name in seen:
                problems.append(Problem((*where, "name"), f"devices {seen[shmem.name]} and {i} "
                                        f"both name '{shmem.name}' in domain '{dom.name}'"))
            seen[shmem.name] = i
            if shmem.address is None:
                continue
            own = dom.shmem(shmem.name)
            for label, addr in dom.pci_addresses:
                if addr == shmem.address and (own is None or own.address != addr):
                    problems.append(Problem((*where, "address"), f"PCI address {addr} is "
                                            f"already used by {label} in domain '{dom.name}'"))
        return problems

    def _desired(self, answers: IvshmemAnswers, lv: LibvirtAPI) -> Desired:
        """Read the host and work out every file and domain the answers call for."""
        domains = {d.name: d for d in lv.domains()}
        want = Desired(self._chosen(answers, domains), all_domains=domains)
        layout = self._layout(answers, lv.version())
        hook, config = hook_paths(answers, layout)
        old = lv.read_file(config)
        try:
            want.installed = ivshmem_hook.parse_config(old.content) if old else None
        except ValueError:
            pass  # unusable (the hook ignores it too): this run rewrites it
        wrappers: dict[str, str] = {}  # real emulator -> wrapper, for the hook
        if answers.keeps("qemu-wrapper"):
            # A domain already on our wrapper: its real emulator is in the last config.
            known = want.installed["wrappers"] if want.installed else {}
            back = {w: real for real, w in known.items()}
            for dom in want.domains:
                real = back.get(dom.emulator, dom.emulator)
                wrappers[real] = want.emulators[dom.name] = wrapper_path(answers, real)
                want.wrappers[wrappers[real]] = (wrapper_script(answers, real), 0o755,
                                                 f"wrapper emulator for {real}")
        if answers.keeps("emulator-swap"):
            want.swap = swap_script(answers, want.domains)
        served = [d for d in answers.device_list() if d.serve] if answers.state == "present" else []
        if served:
            want.wrappers[answers.server_bin] = (SERVER_SOURCE.read_bytes(), 0o755,
                                                 "ivshmem doorbell server")
        for device in served:
            unit, text = server_unit(answers, device)
            want.units[unit] = posixpath.join(answers.units_dir, unit)
            want.wrappers[want.units[unit]] = (text, 0o644, UNIT_FILE)
        current = lv.read_file(hook)
        chain = False
        if layout == "chain":
            chained = posixpath.join(answers.hooks_dir, CHAINED_NAME)
            if current is not None and HOOK_MARKER not in current.content:
                # A third-party hook: keep it, and run it from ours.
                want.hook_files[chained] = (current.content, current.mode,
                                            "third-party qemu hook, now run by ours")
            chain = chained in want.hook_files or lv.read_file(chained) is not None
        want.hook_files[config] = (hook_config(answers, wrappers, chain), 0o644,
                                   "hook configuration")
        want.hook_files[hook] = (HOOK_SOURCE.read_bytes(), 0o755, "ivshmem hook")
        want.new_hook = current is None or HOOK_MARKER not in current.content
        return want

    def _leftovers(self, answers: IvshmemAnswers, want: Desired) -> dict[str, Leftover]:
        """What the methods not chosen installed on the domains (switching method)."""
        cfg = want.installed
        found = {}
        for dom in want.all_domains.values():
            left = Leftover()
            if not answers.keeps("commandline"):
                left.args = ivshmem_hook.strip_ours(list(dom.qemu_args))
                if left.args == list(dom.qemu_args):
                    left.args = None
            if not answers.keeps("definition") and cfg and cfg["method"] == "definition":
                old = {render(d["name"], dom) for d in cfg.get("devices") or [cfg]}
                left.shmems = [s.name for s in dom.shmems if s.name in old]
            if not answers.keeps("qemu-wrapper") and cfg:
                back = {w: real for real, w in cfg["wrappers"].items()}
                left.emulator = back.get(dom.emulator)
            if left.args is not None or left.shmems or left.emulator:
                found[dom.name] = left
        return found

    def _swap_ops(self, answers: IvshmemAnswers, want: Desired,
                  lv: LibvirtAPI) -> list[Operation]:
        """emulator-swap: install or update the swap, or undo the one installed."""
        ops = []
        old = want.installed.get("swap") if want.installed else None
        if isinstance(old, dict) and not (answers.keeps("emulator-swap")
                                          and old["emulator"] == answers.emulator):
            if lv.diversion(old["emulator"], old["admindir"]) == old["real"]:
                out = {"op": "swap_out", "emulator": old["emulator"], "real": old["real"],
                       "admindir": old["admindir"]}
                wrapper = lv.read_file(old["emulator"])
                ops.append(Operation(
                    Change(f"emulator {old['emulator']}", "delete",
                           f"wrapper; the real one at {old['real']}",
                           "the real emulator, not diverted",
                           "emulator-swap undone (dpkg-divert --remove)"),
                    out, {**out, "op": "swap_in", **_content(wrapper.content)} if wrapper
                    else None))
        if want.swap is None:
            return ops
        real = answers.emulator + REAL_SUFFIX
        swap = {"op": "swap_in", "emulator": answers.emulator, "real": real,
                "admindir": answers.dpkg_admindir}
        if lv.diversion(answers.emulator, answers.dpkg_admindir) is None:
            ops.append(Operation(
                Change(f"emulator {answers.emulator}", "install", "the real emulator",
                       f"wrapper; the real one diverted to {real}",
                       "emulator-swap (dpkg-divert: a QEMU upgrade installs "
                       "the new emulator under the diverted name)"),
                {**swap, **_content(want.swap)}, {**swap, "op": "swap_out"}))
        elif (now := lv.read_file(answers.emulator)) is None or now.content != want.swap:
            ops.append(Operation(
                Change(f"emulator {answers.emulator}", "update",
                       f"{len(now.content) if now else 0} bytes", f"{len(want.swap)} bytes",
                       "emulator-swap wrapper"),
                write_command(answers.emulator, want.swap, 0o755),
                restore_command(answers.emulator, now)))
        return ops

    def _hook_removal(self, lv: LibvirtAPI, want: Desired) -> list[Operation]:
        """state absent: the hook and its configuration, when they are there and ours."""
        ops = []
        for path, (_content, _mode, what) in want.hook_files.items():
            found = lv.read_file(path)
            if found is None or (what == "ivshmem hook" and HOOK_MARKER not in found.content):
                continue
            if what in ("ivshmem hook", "hook configuration"):
                ops.append(_removal(path, found, what))
        return ops

    def _old_wrappers(self, answers: IvshmemAnswers, want: Desired,
                      lv: LibvirtAPI) -> list[Operation]:
        """Wrapper emulators of method qemu-wrapper, when another method is chosen."""
        if answers.keeps("qemu-wrapper") or not want.installed:
            return []
        return [_removal(path, old, "wrapper emulator of method qemu-wrapper")
                for path in want.installed["wrappers"].values()
                if (old := lv.read_file(path)) and WRAPPER_MARKER in old.content]

    def _domain_work(self, answers: IvshmemAnswers, lv: LibvirtAPI,
                     dom: Domain) -> tuple[list[Shmem], list[Shmem]]:
        """(devices to set in the definition, devices to hot-plug) for one domain.

        With ``live``, a running guest lacking a device gets it hot-plugged; one
        also missing from the definition goes into it through the same call.  With
        ``live_fallback``, a device already in the definition counts as done (a
        refused hot-plug falls back to that: the device comes at the next start).
        """
        shmems = answers.shmems(dom)
        differ = [s for s in shmems if (own := dom.shmem(s.name)) is None or not s.same_as(own)]
        if not (answers.live and dom.active):
            return differ, []
        live = lv.live_domain(dom.name)
        if live.hotplug_problem():  # refused at check time unless live_fallback
            return differ, []
        plug = [s for s in shmems if live.shmem(s.name) is None
                and not (answers.live_fallback and dom.shmem(s.name))]
        return [s for s in differ if s not in plug or dom.shmem(s.name)], plug

    def _orphans(self, answers: IvshmemAnswers, lv: LibvirtAPI) -> list[Operation]:
        """Per-guest objects whose guest is no longer defined (unless ``keep``)."""
        devices = [d for d in answers.device_list() if d.per_domain and not d.keep]
        if not devices:
            return []
        domains = lv.domains()
        ops = []
        for device in devices:
            template, directory = device.name, answers.directory(device)
            pattern = re.compile(re.escape(template)
                                 .replace(re.escape("{domain}"), r"[A-Za-z0-9_.-]+")
                                 .replace(re.escape("{uuid}"), r"[0-9a-f-]{36}"))
            for name in lv.list_files(directory):
                if ".hostsetup-refused." in name:  # moved aside by the hook: not ours
                    continue
                if pattern.fullmatch(name) and all(render(template, d) != name
                                                   for d in domains):
                    path = posixpath.join(directory, name)
                    # No undo: the memory of a guest that is gone cannot be put back.
                    ops.append(Operation(
                        Change(f"object {path}", "delete", "present", "absent",
                               f"per-guest object of '{template}': its domain is no longer "
                               "defined"), {"op": "remove_file", "path": path}))
        return ops

    def _file_ops(self, lv: LibvirtAPI, files: dict[str, File],
                  new_hook: bool = False) -> list[Operation]:
        """Write the files that differ; each undo puts back what was there (or removes
        a new file; a unit file's undo reloads systemd)."""
        ops = []
        for path, (content, mode, what) in files.items():
            old = lv.read_file(path)
            if old is not None and old.content == content and old.mode == mode:
                continue
            before = "absent" if old is None else f"{len(old.content)} bytes, mode {old.mode:04o}"
            after = f"{len(content)} bytes, mode {mode:04o}"
            if what == "ivshmem hook":
                change = Change(f"hook {path}", "install", before, after, what)
            else:
                change = Change(f"file {path}", "create" if old is None else "update",
                                before, after, what)
            # new_hook: libvirtd loads it at its next start (apply's note says so); a
            # unit file put back or removed: systemd reads that at a reload.
            hook = {"new_hook": True} if new_hook and what == "ivshmem hook" else {}
            reload = {"reload": True} if what == UNIT_FILE else {}
            ops.append(Operation(change, write_command(path, content, mode, **hook),
                                 restore_command(path, old, **reload)))
        return ops

    def _unit_ops(self, answers: IvshmemAnswers, want: Desired, written: set[str],
                  ctx: Context) -> list[Operation]:
        """serve: start each server unit not running, restart one whose file changed."""
        dbus = dbus_api(ctx.backends, answers.bus)
        ops = []
        for unit, path in want.units.items():
            st = dbus.unit_status(unit)
            up = st is not None and st.active == "active"
            if path in written or not up:
                # A running server restarted: its clients (guests) lose their doorbell.
                # Not risky: no operator's path goes through it.
                serve = {"op": "serve", "unit": unit, "path": path, "timeout": answers.timeout}
                undo = None if up else {  # a restart leaves nothing to revert
                    "op": "unserve", "unit": unit, "timeout": answers.timeout,
                    "enabled": st is not None and st.enablement == "enabled"}
                ops.append(Operation(Change(f"unit {unit}", "restart" if up else "start",
                                            detail="ivshmem doorbell server (enabled)"),
                                     serve, undo))
        return ops

    def plan(self, answers: IvshmemAnswers, ctx: Context) -> list[Operation]:
        """Files (wrappers, server), server units, what other methods left, the swap,
        the domains, the hook files, hot-plugs, then a libvirtd restart, in that order.

        None is risky (none touches a network path), except restarting libvirtd:
        its clients lose their connection."""
        lv = libvirt_api(ctx.backends, answers.uri)
        want = self._desired(answers, lv)
        ops = self._file_ops(lv, want.wrappers)
        if want.units:
            ops += self._unit_ops(answers, want, {o.do["path"] for o in ops}, ctx)
        for name, left in self._leftovers(answers, want).items():
            do, undo = domain_commands(want.all_domains[name], args=left.args,
                                       emulator=left.emulator, drop=left.shmems)
            ops.append(Operation(Change(f"domain {name}", "delete", "; ".join(left.describe()),
                                        "none", "what another method installed"), do, undo))
        ops += self._old_wrappers(answers, want, lv)
        swaps = self._swap_ops(answers, want, lv)
        if answers.state == "absent":
            return ops + swaps + self._hook_removal(lv, want)
        plugs: list[Operation] = []  # after the hook files: the hook's lock dir must exist
        # emulator-swap: nothing in the definitions (a manager may regenerate them).
        for dom in [] if answers.method == "emulator-swap" else want.domains:
            domain_ops, plug = self._domain_ops(answers, lv, want, dom)
            ops += domain_ops
            plugs += plug
        ops += self._orphans(answers, lv)
        ops += self._file_ops(lv, want.hook_files, want.new_hook) + swaps + plugs
        if want.new_hook and answers.restart_libvirtd:
            ops.append(Operation(
                Change(f"unit {LIBVIRTD}", "restart",
                       detail="libvirtd reads new hooks when it starts"),
                {"op": "restart_libvirtd", "timeout": answers.timeout},
                risky="libvirtd restarts: its clients (a management plane, virsh) lose their "
                "connection; running guests keep running"))
        return ops

    def _domain_ops(self, answers: IvshmemAnswers, lv: LibvirtAPI, want: Desired,
                    dom: Domain) -> tuple[list[Operation], list[Operation]]:
        """(the definition change, the hot-plug) one chosen domain needs, if any."""
        # "running": the summary says the guest gets the change at its next start.
        running = " (running: takes effect at its next start)" if dom.active else ""
        shmems = answers.shmems(dom)
        second = _second_device(dom, {s.name for s in shmems})
        if answers.method == "qemu-wrapper":
            wrapper = want.emulators[dom.name]
            if dom.emulator == wrapper:
                return [], []
            do, undo = domain_commands(dom, emulator=wrapper)
            return [Operation(Change(f"domain {dom.name}", "update", dom.emulator, wrapper,
                                     "emulator" + running, second),
                              {**do, "running": dom.active}, undo)], []
        if answers.method == "commandline":
            args = command_line(dom, answers)
            if args == list(dom.qemu_args):
                return [], []
            ours = [a for a in dom.qemu_args if a not in
                    ivshmem_hook.strip_ours(list(dom.qemu_args))]
            do, undo = domain_commands(dom, args=args)
            return [Operation(Change(f"domain {dom.name}", "update",
                                     "; ".join(ours) or "no ivshmem device",
                                     "; ".join(s.describe() for s in shmems),
                                     "QEMU command line (<qemu:commandline>)" + running,
                                     second), {**do, "running": dom.active}, undo)], []
        owns = {s.name: dom.shmem(s.name) for s in shmems}
        differ, plug = self._domain_work(answers, lv, dom)
        ops, plugs = [], []
        if differ:
            before = [own.describe() for s in differ if (own := owns[s.name])]
            do, undo = domain_commands(dom, put=differ)
            ops.append(Operation(Change(f"domain {dom.name}", "update",
                                        "; ".join(before) or "no ivshmem device",
                                        "; ".join(s.describe() for s in differ),
                                        ("shmem device" if len(shmems) == 1 else "shmem devices")
                                        + running, "" if all(owns.values()) else second),
                                 {**do, "running": dom.active}, undo))
        if plug:
            # Devices not in the definition go there in the same libvirt call.
            persistent = [s.name for s in plug if dom.shmem(s.name) is None]
            plugs.append(Operation(
                Change(f"{LIVE}{dom.name}", "hot-plug", "no ivshmem device",
                       "; ".join(s.describe() for s in plug),
                       "now, without a restart (and in its definition)",
                       "" if differ else second),
                {"op": "hotplug", "name": dom.name, "put": [shmem_value(s) for s in plug],
                 "persistent": persistent},
                {"op": "unplug", "name": dom.name, "drop": [s.name for s in plug],
                 "persistent": persistent}))
        return ops, plugs

    def apply(self, answers: IvshmemAnswers, ops: list[Operation], ctx: Context) -> None:
        """Carry out ``ops`` in order: the contract's apply (journaled), one operation at
        a time, so that a domain that vanished or refused its change does not stop the
        others; the step then fails at the end, naming it."""
        done: list[Operation] = []
        failed: list[str] = []
        for i, op in enumerate(ops):
            try:
                super().apply(answers, [op], replace(ctx, progress=_nth(ctx, i, len(ops))))
            except StepFailed as exc:
                if op.do["op"] not in PER_DOMAIN:
                    raise StepFailed(str(exc), [o.change for o in done], exc.errors) from None
                failed.append(str(exc))
                continue
            done.append(op)
        self._notes(done, ctx)
        if failed:
            raise StepFailed("; ".join(failed) + " (the other changes were applied)",
                             [o.change for o in done])

    def execute(self, answers: IvshmemAnswers, command: Command, ctx: Context) -> None:
        """Carry out one command: a file written or removed, a domain's definition
        changed, a hot-plug or -unplug, the emulator swapped in or out, a server unit
        started or stopped, libvirtd restarted."""
        op = command["op"]
        if op in ("serve", "unserve", "restart_libvirtd"):
            {"serve": self._serve, "unserve": self._unserve,
             "restart_libvirtd": self._restart}[op](answers, command, ctx)
            return
        lv = libvirt_api(ctx.backends, answers.uri)
        if op == "write_file":
            backup = lv.write_file(command["path"], content_of(command), command["mode"])
            if backup:
                ctx.notes.append(f"kept the replaced {command['path']} as {backup}")
        elif op == "remove_file":
            lv.remove_file(command["path"])
        elif op in PER_DOMAIN:
            self._on_domain(answers, lv, command, ctx)
        elif op == "unplug":
            unplug(lv, command)
        elif op == "swap_in":
            lv.swap_in(command["emulator"], command["real"], content_of(command),
                       command["admindir"])
        elif op == "swap_out":
            lv.swap_out(command["emulator"], command["real"], command["admindir"])
        else:
            raise StepFailed(f"ivshmem: unknown command {op!r}")
        if command.get("reload"):
            dbus_api(ctx.backends, answers.bus).reload()  # systemd forgets a removed unit

    def observe(self, answers: IvshmemAnswers, command: Command,
                ctx: Context) -> bool | None:
        """Re-read what ``command`` changes; ``None`` for a restart of libvirtd."""
        op = command["op"]
        if op in ("serve", "unserve"):
            st = dbus_api(ctx.backends, answers.bus).unit_status(command["unit"])
            return (st is not None and st.active == "active") == (op == "serve")
        if op == "restart_libvirtd":
            return None
        lv = libvirt_api(ctx.backends, answers.uri)
        if op in ("write_file", "remove_file"):
            found = lv.read_file(command["path"])
            if op == "remove_file":
                return found is None
            return found is not None and (found.content, found.mode) == (
                content_of(command), command["mode"])
        if op in ("swap_in", "swap_out"):
            diverted = lv.diversion(command["emulator"], command["admindir"])
            if op == "swap_out":
                return diverted is None
            now = lv.read_file(command["emulator"])
            return diverted == command["real"] and now is not None and \
                now.content == content_of(command)
        try:
            dom = lv.domain(command["name"])
            live = lv.live_domain(command["name"]) if op != "domain" else dom
        except DomainNotFound:
            return False
        if op == "domain":
            return domain_is(dom, command)
        if op == "unplug":
            return all(live.shmem(n) is None and (n not in command["persistent"]
                                                  or dom.shmem(n) is None)
                       for n in command["drop"])
        # hotplug: each device live (or, falling back, in the definition) and in it.
        return all((live.shmem(s.name) is not None or answers.live_fallback)
                   and dom.shmem(s.name) is not None for s in map(shmem_of, command["put"]))

    def _on_domain(self, answers: IvshmemAnswers, lv: LibvirtAPI, command: Command,
                   ctx: Context) -> None:
        """A ``domain`` or ``hotplug`` command; a failure names the domain (StepFailed)."""
        name = command["name"]
        try:
            if command["op"] == "domain":
                edit_domain(lv, command)
            else:
                self._hotplug(answers, lv, command, ctx)
        except BackendUnreachable:
            raise
        except DomainNotFound as exc:
            raise StepFailed(f"{exc}: it vanished after the plan, not changed") from None
        except BackendError as exc:
            raise StepFailed(f"domain '{name}' not changed: {exc}") from None

    def _hotplug(self, answers: IvshmemAnswers, lv: LibvirtAPI, command: Command,
                 ctx: Context) -> None:
        """Hot-plug the devices of ``command`` into its running domain.

        Each device goes live and (``persistent``) into the definition in one
        libvirt call, so a refused device leaves the domain as it was (the next
        plan shows it again) unless ``live_fallback`` puts it in the definition
        for the next start.
        """
        name = command["name"]
        plug = [shmem_of(v) for v in command["put"]]
        self._prepare_objects(answers, lv, lv.domain(name), plug)
        for shmem in plug:
            persistent = shmem.name in command["persistent"]
            try:
                lv.attach_shmem(name, shmem, persistent)
            except (DomainNotFound, BackendUnreachable):
                raise
            except BackendError as exc:
                if not answers.live_fallback:
                    raise StepFailed(f"running domain '{name}' refused the hot-plug of "
                                     f"'{shmem.name}': {exc} (not changed; set live_fallback: "
                                     "true to add it at the next start instead)") from None
                if persistent:
                    lv.set_shmems(name, [shmem])
                ctx.notes.append(f"'{shmem.name}' was not hot-plugged into '{name}' "
                                 f"({exc}): it is in the definition, at the next start")

    def _prepare_objects(self, answers: IvshmemAnswers, lv: LibvirtAPI, dom: Domain,
                         shmems: list[Shmem]) -> None:
        """Make the objects of devices about to be hot-plugged, as the hook makes them at
        a start (size, owner, mode; a squatted /dev/shm name replaced): QEMU would
        otherwise open whatever is there.  The hook's own code, under its lock."""
        hook = ivshmem_hook.Hook([dom.name, "hot-plug", "begin"])
        hook.cfg = ivshmem_hook.parse_config(hook_config(answers, {}, False))
        hook.log_path = answers.hook_log
        hook.here = posixpath.dirname(hook_paths(answers, self._layout(answers,
                                                                        lv.version()))[0])
        wanted = {s.name for s in shmems}
        rendered = [dict(d, name=render(d["name"], dom))
                    for d in hook.cfg.get("devices") or [hook.cfg]]
        try:
            hook.prepare_shm([d for d in rendered if d["name"] in wanted])
        except (OSError, KeyError) as exc:
            raise BackendError(f"cannot prepare the shared-memory objects: {exc}") from None

    def verify(self, answers: IvshmemAnswers, ctx: Context) -> list[str]:
        """The plan is empty and, with ``live``, each running guest's QEMU lists each
        device (ivshmem's PCI id) at the address of its live XML."""
        problems = super().verify(answers, ctx)
        if not answers.live:
            return problems
        lv = libvirt_api(ctx.backends, answers.uri)
        for dom in self._chosen(answers, {d.name: d for d in lv.domains()}):
            if not dom.active:
                continue
            live = lv.live_domain(dom.name)
            seen = lv.guest_pci(dom.name)
            _differ, plug = self._domain_work(answers, lv, dom)
            for shmem in answers.shmems(dom):
                if answers.live_fallback and shmem not in plug and not live.shmem(shmem.name):
                    continue  # fell back to the next start (in the definition)
                own = live.shmem(shmem.name)
                if own is None or (own.address, IVSHMEM_PCI_ID) not in seen:
                    at = f" at {own.address}" if own and own.address else ""
                    problems.append(f"running domain '{dom.name}': QEMU does not list "
                                    f"ivshmem '{shmem.name}'{at} ({IVSHMEM_PCI_ID})")
        return problems

    def _serve(self, answers: IvshmemAnswers, command: Command, ctx: Context) -> None:
        """Enable and (re)start a doorbell server's unit (a changed unit file: restarted)."""
        dbus = dbus_api(ctx.backends, answers.bus)
        dbus.reload()  # systemd reads the unit file just written
        dbus.unit_files("enable", [command["path"]])
        _job(dbus, "restart", command["unit"], command["timeout"])

    def _unserve(self, answers: IvshmemAnswers, command: Command, ctx: Context) -> None:
        """Stop a server's unit, and disable it unless it was enabled before."""
        dbus = dbus_api(ctx.backends, answers.bus)
        _job(dbus, "stop", command["unit"], command["timeout"])
        if not command["enabled"]:
            dbus.unit_files("disable", [command["unit"]])

    def _restart(self, answers: IvshmemAnswers, command: Command, ctx: Context) -> None:
        _job(dbus_api(ctx.backends, answers.bus), "restart", LIBVIRTD, command["timeout"])
        # The restart closed our connection: verify and later steps need a live one.
        libvirt_api(ctx.backends, answers.uri).reconnect()

    def _notes(self, done: list[Operation], ctx: Context) -> None:
        restarted = any(o.do["op"] == "restart_libvirtd" for o in done)
        if any(o.do.get("new_hook") for o in done) and not restarted:
            ctx.notes.append(f"restart {LIBVIRTD} so that it loads the new hook "
                             "(systemctl restart libvirtd)")
        for op in done:
            if op.do["op"] == "domain" and op.do.get("running"):
                ctx.notes.append(f"domain {op.do['name']} is running: shut it down and start "
                                 "it again for the device to appear")


# Commands that change one domain: when one fails, apply goes on with the others.
PER_DOMAIN = ("domain", "hotplug")


def _nth(ctx: Context, i: int, n: int) -> Callable[[float, str], None]:
    """Progress of the ``i``-th of ``n`` operations, shown on ``ctx``'s."""

    def progress(_fraction: float, text: str) -> None:
        ctx.progress(i / n, text)

    return progress


def _job(dbus: DBusAPI, action: str, unit: str, timeout: float) -> None:
    """Restart or stop ``unit`` and wait for the job; a result other than done fails."""
    call = dbus.restart_unit if action == "restart" else dbus.stop_unit
    result = call(unit, timeout)
    if result != "done":
        st = dbus.unit_status(unit)
        why = f" (unit Result: {st.result})" if st is not None and st.result else ""
        raise BackendError(f"{action} of {unit} ended with job result '{result}'{why}")


def _removal(path: str, old: HostFile, what: str) -> Operation:
    """Remove one of our files; the undo writes it back as it was."""
    return Operation(Change(f"file {path}", "delete", "present", "absent", what),
                     {"op": "remove_file", "path": path}, write_command(path, old.content,
                                                                         old.mode))


def unplug(lv: LibvirtAPI, command: Command) -> None:
    """Carry out an ``unplug`` (the undo of a hot-plug): each device out of the running
    guest and, if the hot-plug put it there, out of the definition."""
    name = command["name"]
    live = lv.live_domain(name)
    for device in command["drop"]:
        persistent = device in command["persistent"]
        if live.shmem(device) is not None:
            lv.detach_shmem(name, device, persistent)
        elif persistent:
            lv.remove_shmems(name, [device])
