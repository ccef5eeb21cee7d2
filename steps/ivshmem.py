"""Step ``ivshmem``: give VMs an ivshmem shared-memory device, through libvirt.

Two methods put the device on the chosen domains:

- ``definition``: a ``<shmem>`` device in each domain's persistent
  definition (running domains get it at their next start);
- ``qemu-wrapper``: a wrapper emulator next to the real one appends the
  memory backend and the device to QEMU's command line, and the domains'
  ``<emulator>`` points at it (for managers that regenerate definitions).

Both install a libvirt QEMU hook (``steps/data/ivshmem_hook.py``, a
standalone script) configured by a JSON file next to it: it adds the device
to incoming migrations and restores, checks it at ``prepare begin`` (warn or
refuse), and prepares ``/dev/shm/<name>`` (size, owner, mode).  The hook goes
into ``qemu.d/`` (libvirt >= 6.5), or else becomes ``qemu`` and runs the
script it replaces first (chained).  libvirtd reads new hooks when it starts:
the step restarts it over D-Bus when answered so, or says it must be done.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.dbus import dbus_api
from backends.interfaces.libvirt import (
    Domain,
    DomainNotFound,
    LibvirtAPI,
    PciAddress,
    Shmem,
    libvirt_api,
)
from steps.base import Change, Context, Problem, Question, Step, StepFailed, StepModel
from steps.data import ivshmem_hook
from steps.validators import DbusAddress, LibvirtUri, repeated

DEFAULT_URI = "qemu:///system"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_SOURCE = Path(__file__).parent / "data" / "ivshmem_hook.py"
HOOK_MARKER = b"hostsetup-ivshmem-hook"
HOOK_NAME = "hostsetup-ivshmem"
CONFIG_NAME = ivshmem_hook.CONFIG_NAME
CHAINED_NAME = ivshmem_hook.CHAINED_NAME
HOOK_LOG = ivshmem_hook.DEFAULT_LOG
QEMU_D_SINCE = (6, 5, 0)
LIBVIRTD = "libvirtd.service"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
# QEMU ids of what the wrapper adds (libvirt's own ids look like "shmem0").
QEMU_MEM_ID, QEMU_DEV_ID = "hostsetup-shm", "hostsetup-ivshmem"


class IvshmemAnswers(StepModel):
    """Answers of the ``ivshmem`` step."""

    uri: LibvirtUri = Field(DEFAULT_URI, description="libvirt connection URI")
    hooks_dir: str = Field(DEFAULT_HOOKS_DIR, description="libvirt's hooks directory")
    name: str = Field(
        "hostsetup", description="shared-memory object name (/dev/shm/<name>): letters, "
        "digits, '_', '.', '-'; at most 64 characters")
    size: int | None = Field(
        4, description="size in MiB, a power of two (model plain). "
        "Not used with doorbell: the ivshmem server sets the size")
    model: Literal["plain", "doorbell"] = Field(
        "plain", description="plain: memory only (ivshmem-plain); doorbell: with interrupts "
        "through an ivshmem server (ivshmem-doorbell)")
    server: str | None = Field(None, description="doorbell: the ivshmem server's socket path")
    vectors: int | None = Field(None, ge=1, le=1024, description="doorbell: MSI vectors")
    role: Literal["peer", "master"] | None = Field(
        None, description="peer (QEMU's default): QEMU refuses to migrate or save the guest; "
        "master: the guest's copy of the memory migrates with it (one master per object)")
    address: str | None = Field(
        None, description="guest PCI address, e.g. 0000:00:0a.0 (default: chosen by libvirt)")
    domains: Literal["all"] | list[str] = Field(
        "all", description="'all' (every persistent domain) or a list of domain names")
    method: Literal["definition", "qemu-wrapper"] = Field(
        "definition", description="definition: <shmem> in the domain definitions; "
        "qemu-wrapper: a wrapper emulator adds the device on QEMU's command line")
    wrapper_dir: str | None = Field(
        None, description="qemu-wrapper: directory of the wrapper (default: the real emulator's)")
    enforce: Literal["warn", "refuse"] = Field(
        "warn", description="the hook, when a chosen domain starts without the device: "
        "log a warning, or refuse the start")
    owner: str | None = Field(
        None, description="user[:group] of /dev/shm/<name> (default: unchanged)")
    mode: str = Field("0660", description="permissions of /dev/shm/<name>, octal")
    hook_layout: Literal["auto", "qemu.d", "chain"] = Field(
        "auto", description="auto: qemu.d/ when libvirt >= 6.5, else chain; chain: our hook "
        "becomes 'qemu' and runs the script it replaces first")
    hook_log: str = Field(
        HOOK_LOG, description="the hook's log file (as libvirtd sees it), in a directory that "
        "root owns and group and others cannot write (the hook runs as root)")
    restart_libvirtd: bool = Field(
        False, description="restart libvirtd (over D-Bus, systemd) when a new hook is installed")
    bus: DbusAddress = Field("system", description="D-Bus for the restart: 'system' or an address")
    timeout: float = Field(60.0, gt=0, le=600, description="seconds to wait for the restart")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"'{name}' is not a valid shared-memory name (letters, digits, "
                             "'_', '.', '-'; starting with a letter or digit; at most 64)")
        return name

    @field_validator("hook_log")
    @classmethod
    def _hook_log(cls, path: str) -> str:
        if not posixpath.isabs(path):
            raise ValueError(f"'{path}' is not an absolute path")
        return path

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
    def _model_keys(self) -> IvshmemAnswers:
        if self.model == "doorbell":
            if "size" not in self.model_fields_set:
                self.size = None  # the default is plain's; the server sets it
            if not self.server:
                raise ValueError("model doorbell needs 'server' (the ivshmem server's socket)")
            if "," in self.server:
                raise ValueError(f"server path '{self.server}' must not contain ','")
            if self.size is not None:
                raise ValueError("'size' is set by the ivshmem server with model doorbell; "
                                 "leave it out")
        elif self.server is not None or self.vectors is not None:
            raise ValueError("'server' and 'vectors' are only used with model doorbell")
        return self

    def shmem(self) -> Shmem:
        """The device these answers ask for."""
        address = PciAddress.parse(self.address) if self.address else None
        if self.model == "doorbell":
            return Shmem(self.name, "ivshmem-doorbell", None, self.server, self.vectors or 1,
                         address, self.role)
        return Shmem(self.name, "ivshmem-plain", self.size or 4, address=address,
                     role=self.role)


File = tuple[bytes, int, str]  # content, mode, what it is
# Answers key -> key in the hook configuration (hook_config), for current().
CONFIG_KEYS = {"name": "name", "model": "model", "size": "size_mib", "server": "server",
               "vectors": "vectors", "role": "role", "domains": "domains",
               "method": "method", "enforce": "enforce", "owner": "owner", "mode": "mode",
               "hook_log": "log"}


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

    def file(self, path: str) -> File | None:
        """The content, mode and description of one file to write."""
        return self.wrappers.get(path) or self.hook_files.get(path)


def hook_paths(answers: IvshmemAnswers, layout: str) -> tuple[str, str]:
    """(hook script, its JSON config) for a layout ('qemu.d' or 'chain')."""
    base = answers.hooks_dir
    if layout == "qemu.d":
        return posixpath.join(base, "qemu.d", HOOK_NAME), posixpath.join(base, "qemu.d",
                                                                         CONFIG_NAME)
    return posixpath.join(base, "qemu"), posixpath.join(base, CONFIG_NAME)


def wrapper_path(answers: IvshmemAnswers, real: str) -> str:
    """Where the wrapper of emulator ``real`` goes."""
    directory = answers.wrapper_dir or posixpath.dirname(real)
    return posixpath.join(directory, f"{posixpath.basename(real)}-ivshmem-{answers.name}")


def qemu_args(shmem: Shmem) -> list[str]:
    """QEMU arguments that add the device (what the wrapper appends)."""
    props = ""
    if shmem.address is not None:
        props = f",addr={shmem.address.slot:02x}.{shmem.address.function:x}"
    if shmem.role is not None:
        props += f",master={'on' if shmem.role == 'master' else 'off'}"
    if shmem.model == "ivshmem-doorbell":
        return ["-chardev", f"socket,id={QEMU_MEM_ID},path={shmem.server}",
                "-device", f"ivshmem-doorbell,id={QEMU_DEV_ID},chardev={QEMU_MEM_ID},"
                f"vectors={shmem.vectors}{props}"]
    return ["-object", f"memory-backend-file,id={QEMU_MEM_ID},mem-path=/dev/shm/{shmem.name},"
            f"size={shmem.size_mib}M,share=on",
            "-device", f"ivshmem-plain,id={QEMU_DEV_ID},memdev={QEMU_MEM_ID}{props}"]


def wrapper_script(shmem: Shmem, real: str) -> bytes:
    """The wrapper emulator: adds the device when QEMU runs a guest (``-name``).

    libvirt also runs the emulator to probe its capabilities (``-machine
    none``, no ``-name``); those runs pass through unchanged.
    """
    args = " ".join(shlex.quote(a) for a in qemu_args(shmem))
    exe = shlex.quote(real)
    return (
        "#!/bin/sh\n"
        "# hostsetup-ivshmem-wrapper: installed by hostsetup's ivshmem step; do not edit.\n"
        f"# Runs {real} with an ivshmem device added to every guest it starts.\n"
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


def hook_config(answers: IvshmemAnswers, wrappers: dict[str, str], chain: bool) -> bytes:
    """The hook's JSON configuration."""
    shmem = answers.shmem()
    config = {
        "version": 1, "name": shmem.name, "model": shmem.model, "size_mib": shmem.size_mib,
        "server": shmem.server, "vectors": shmem.vectors, "address": _pci_attrs(shmem.address),
        "role": shmem.role,
        "domains": answers.domains, "method": answers.method, "wrappers": wrappers,
        "enforce": answers.enforce, "owner": answers.owner, "mode": answers.mode,
        "log": answers.hook_log, "chain": CHAINED_NAME if chain else None,
    }
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _second_device(dom: Domain, name: str) -> str:
    """Why adding our device to ``dom`` is marked in the review: it has another one."""
    others = [s.name for s in dom.shmems if s.name != name]
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
    requires = "libvirt"

    def connect_questions(self) -> list[Question]:
        return [
            Question("uri", "libvirt URI", help="e.g. qemu:///system"),
            Question("hooks_dir", "Hooks directory", help="libvirt's hooks directory"),
        ]

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """libvirt's version, the domains, and the hook configuration installed, if any."""
        lv = libvirt_api(ctx.backends, answers.get("uri") or DEFAULT_URI)
        section = IvshmemAnswers.model_construct(hooks_dir=answers.get("hooks_dir")
                                                 or DEFAULT_HOOKS_DIR)
        installed = None
        for layout in ("qemu.d", "chain"):
            found = lv.read_file(hook_paths(section, layout)[1])
            if found is not None and installed is None:
                installed = _parse_config(found.content)
        return {"version": lv.version(), "domains": {d.name: d for d in lv.domains()},
                "installed": installed}

    def current(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The settings of the installed hook configuration (what the last run applied);
        without one, the first ivshmem device found on the domains and who has it."""
        config = facts.get("installed")
        if config:
            out = {key: config.get(name) for key, name in CONFIG_KEYS.items()}
            out["model"] = str(out.get("model") or "").removeprefix("ivshmem-") or None
            address = config.get("address")
            if isinstance(address, dict):
                out["address"] = "{}:{}:{}.{}".format(*(
                    address[k].removeprefix("0x") for k in ("domain", "bus", "slot", "function")))
            return {k: v for k, v in out.items() if v is not None}
        domains: dict[str, Domain] = facts.get("domains", {})
        having = [d for d in domains.values() if d.shmems]
        if not having:
            return {}
        first = having[0].shmems[0]
        return {"name": first.name, "model": first.model.removeprefix("ivshmem-"),
                "size": first.size_mib,
                "domains": [d.name for d in having if d.shmem(first.name)]}

    def questions(self, facts: dict[str, Any]) -> list[Question]:
        domains: dict[str, Domain] = facts.get("domains", {})
        names = tuple(domains)
        states = tuple((d.name, d.state + "".join(f", has '{s.name}'" for s in d.shmems))
                       for d in domains.values())
        return [
            Question("name", "Shared-memory name", required=True,
                     help="The object /dev/shm/<name> the guests share with the host."),
            Question("size", "Size (MiB)", kind="int", help="A power of two (plain model)."),
            Question("model", "Model", kind="choice", choices=("plain", "doorbell"),
                     help="doorbell needs an ivshmem server socket."),
            Question("server", "Doorbell server socket", help="Only for model doorbell."),
            Question("vectors", "Doorbell MSI vectors", kind="int"),
            Question("role", "Migration role", kind="choice", choices=("peer", "master"),
                     help="master: the memory migrates with the guest; peer (QEMU's "
                     "default): QEMU refuses to migrate or save the guest."),
            Question("address", "Guest PCI address", help="e.g. 0000:00:0a.0; empty: any."),
            Question("domains", "Domains", kind="multi", choices=("all", *names),
                     choice_notes=states, help="The VMs that get the device; 'all' is "
                     "every persistent domain."),
            Question("method", "Method", kind="choice", choices=("definition", "qemu-wrapper"),
                     help="definition: a <shmem> device in each domain's definition; "
                     "qemu-wrapper: a wrapper emulator adds it on QEMU's command line (for "
                     "managers that regenerate definitions)."),
            Question("wrapper_dir", "Wrapper directory", help="qemu-wrapper only."),
            Question("enforce", "Start without the device", kind="choice",
                     choices=("warn", "refuse"),
                     help="What the hook does when a chosen domain starts without the "
                     "device: log a warning, or refuse the start."),
            Question("owner", "Owner of /dev/shm/<name>", help="user[:group]; empty: unchanged"),
            Question("mode", "Mode of /dev/shm/<name>", help="octal, e.g. 0660"),
            Question("restart_libvirtd", "Restart libvirtd", kind="yesno",
                     help="Restart libvirtd (over D-Bus) when a new hook is installed: "
                     "libvirtd reads hooks only when it starts."),
        ]

    def _layout(self, answers: IvshmemAnswers, version: tuple[int, int, int]) -> str:
        if answers.hook_layout != "auto":
            return answers.hook_layout
        return "qemu.d" if tuple(version) >= QEMU_D_SINCE else "chain"

    def _chosen(self, answers: IvshmemAnswers, domains: dict[str, Domain]) -> list[Domain]:
        if answers.domains == "all":
            return [d for d in domains.values() if d.persistent]
        return [domains[n] for n in answers.domains if n in domains]

    def validate(self, answers: IvshmemAnswers, facts: dict[str, Any]) -> list[Problem]:
        domains: dict[str, Domain] = facts["domains"]
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
        version = tuple(facts["version"])
        if answers.hook_layout == "qemu.d" and version < QEMU_D_SINCE:
            problems.append(Problem(("hook_layout",), "libvirt {}.{}.{} does not run hooks from "
                                    "qemu.d/ (needs 6.5.0): use chain".format(*version)))
        if answers.address:
            wanted = PciAddress.parse(answers.address)
            for dom in self._chosen(answers, domains):
                own = dom.shmem(answers.name)
                for device, addr in dom.pci_addresses:
                    if addr == wanted and (own is None or own.address != addr):
                        problems.append(Problem(("address",), f"PCI address {addr} is already "
                                                f"used by {device} in domain '{dom.name}'"))
        return problems

    def _desired(self, answers: IvshmemAnswers, lv: LibvirtAPI) -> Desired:
        """Read the host and work out every file and domain the answers call for."""
        domains = {d.name: d for d in lv.domains()}
        want = Desired(self._chosen(answers, domains))
        layout = self._layout(answers, lv.version())
        hook, config = hook_paths(answers, layout)
        wrappers: dict[str, str] = {}  # real emulator -> wrapper, for the hook
        if answers.method == "qemu-wrapper":
            old = lv.read_file(config)
            # A domain already on our wrapper: its real emulator is in the last config.
            try:
                known = ivshmem_hook.parse_config(old.content)["wrappers"] if old else {}
            except ValueError:
                known = {}  # unusable (the hook ignores it too): this run rewrites it
            back = {w: real for real, w in known.items()}
            for dom in want.domains:
                real = back.get(dom.emulator, dom.emulator)
                wrappers[real] = want.emulators[dom.name] = wrapper_path(answers, real)
                want.wrappers[wrappers[real]] = (wrapper_script(answers.shmem(), real), 0o755,
                                                 f"wrapper emulator for {real}")
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

    def _file_changes(self, lv: LibvirtAPI, files: dict[str, File]) -> list[Change]:
        changes = []
        for path, (content, mode, what) in files.items():
            old = lv.read_file(path)
            if old is not None and old.content == content and old.mode == mode:
                continue
            before = "absent" if old is None else f"{len(old.content)} bytes, mode {old.mode:04o}"
            after = f"{len(content)} bytes, mode {mode:04o}"
            if what == "ivshmem hook":
                changes.append(Change(f"hook {path}", "install", before, after, what))
            else:
                changes.append(Change(f"file {path}", "create" if old is None else "update",
                                      before, after, what))
        return changes

    def plan(self, answers: IvshmemAnswers, ctx: Context) -> list[Change]:
        lv = libvirt_api(ctx.backends, answers.uri)
        want = self._desired(answers, lv)
        shmem = answers.shmem()
        changes = self._file_changes(lv, want.wrappers)
        for dom in want.domains:
            running = " (running: takes effect at its next start)" if dom.active else ""
            second = _second_device(dom, shmem.name)
            if answers.method == "qemu-wrapper":
                wrapper = want.emulators[dom.name]
                if dom.emulator != wrapper:
                    changes.append(Change(f"domain {dom.name}", "update", dom.emulator,
                                          wrapper, "emulator" + running, second))
                continue
            own = dom.shmem(shmem.name)
            if own is None or not shmem.same_as(own):
                changes.append(Change(f"domain {dom.name}", "update",
                                      own.describe() if own else "no ivshmem device",
                                      shmem.describe(), "shmem device" + running,
                                      "" if own else second))
        changes += self._file_changes(lv, want.hook_files)
        if want.new_hook and answers.restart_libvirtd:
            changes.append(Change(f"unit {LIBVIRTD}", "restart", detail="libvirtd reads "
                                  "new hooks when it starts"))
        return changes

    def apply(self, answers: IvshmemAnswers, changes: list[Change], ctx: Context) -> None:
        lv = libvirt_api(ctx.backends, answers.uri)
        done: list[Change] = []
        failed: list[str] = []
        try:
            want = self._desired(answers, lv)
            for i, change in enumerate(changes):
                ctx.progress(i / max(len(changes), 1), change.describe())
                kind, _, target = change.target.partition(" ")
                if kind == "domain":
                    error = self._apply_domain(answers, lv, target, change)
                    if error:
                        failed.append(error)
                        continue
                elif kind == "unit":
                    self._restart(answers, ctx)
                else:
                    file = want.file(target)
                    if file is None:  # e.g. the wrapper of a domain that vanished since
                        failed.append(f"{target}: no longer called for, not written")
                        continue
                    backup = lv.write_file(target, file[0], file[1])
                    if backup:
                        ctx.notes.append(f"kept the replaced {target} as {backup}")
                done.append(change)
                ctx.log(f"ivshmem: {change.describe()}")
        except BackendError as exc:
            raise StepFailed(str(exc), done) from None
        self._notes(want.new_hook, done, ctx)
        if failed:
            raise StepFailed("; ".join(failed) + " (the other changes were applied)", done)

    def _apply_domain(self, answers: IvshmemAnswers, lv: LibvirtAPI, name: str,
                      change: Change) -> str | None:
        """Change one domain; returns an error text instead of raising (others go on)."""
        try:
            if answers.method == "qemu-wrapper":
                lv.set_emulator(name, str(change.after))
            else:
                lv.set_shmem(name, answers.shmem())
        except DomainNotFound as exc:
            return f"{exc}: it vanished after the plan, not changed"
        except BackendUnreachable:
            raise
        except BackendError as exc:
            return f"domain '{name}' not changed: {exc}"
        return None

    def _restart(self, answers: IvshmemAnswers, ctx: Context) -> None:
        dbus = dbus_api(ctx.backends, answers.bus)
        result = dbus.restart_unit(LIBVIRTD, answers.timeout)
        if result != "done":
            raise BackendError(f"restart of {LIBVIRTD} ended with job result '{result}' "
                               f"({dbus.unit_result(LIBVIRTD)})")
        # The restart closed our connection: verify and later steps need a live one.
        libvirt_api(ctx.backends, answers.uri).reconnect()

    def _notes(self, new_hook: bool, done: list[Change], ctx: Context) -> None:
        restarted = any(c.action == "restart" for c in done)
        if new_hook and any(c.action == "install" for c in done) and not restarted:
            ctx.notes.append(f"restart {LIBVIRTD} so that it loads the new hook "
                             "(systemctl restart libvirtd)")
        for change in done:
            if change.target.startswith("domain ") and "running" in change.detail:
                ctx.notes.append(f"{change.target} is running: shut it down and start it "
                                 "again for the device to appear")
