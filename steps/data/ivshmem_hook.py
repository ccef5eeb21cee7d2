#!/usr/bin/python3
# hostsetup-ivshmem-hook: installed by hostsetup's ivshmem step; do not edit.
"""libvirt QEMU hook: keep an ivshmem device on the chosen domains.

libvirt calls it as ``qemu <domain> <operation> <sub-operation> <extra>``
with the domain XML on stdin.  Its configuration is the JSON file
``hostsetup-ivshmem.json`` next to this script (written by hostsetup).

- ``migrate`` / ``restore``: the incoming XML of a chosen domain gets the
  devices it lacks (method definition: ``<shmem>``; commandline: our
  ``<qemu:commandline>`` arguments; qemu-wrapper: the wrapper emulator;
  emulator-swap: the swapped emulator) and is printed; libvirt uses the
  printed XML.  These are the only operations whose output libvirt reads.
- The configuration holds one device at the top level, or several in
  ``devices``; a name with ``{domain}``/``{uuid}`` (per_domain) is rendered
  for each guest (its name, the ``<uuid>`` of its XML).
- ``prepare begin``: a chosen domain without the device is logged and,
  with ``enforce: refuse``, refused (non-zero exit stops the start); the
  host side of each shared-memory object (``/dev/shm/<name>``, or on a
  hugetlbfs mount) is made by the hook itself, with its size, owner and mode.
- When ``qemu.hostsetup-chained`` is next to this script (libvirt without
  ``qemu.d/``), the hook installed before this one runs first with the
  same arguments and input, bounded in time and output.

It runs as root in libvirtd's path for every domain, so it fails safe:

- Only ``prepare begin`` of a chosen domain under ``enforce: refuse`` may
  exit non-zero on our account; every other call exits 0 whatever happens
  (an incoming XML we cannot fix is passed on unchanged).  A failing
  ``reconnect`` would make libvirtd stop a running VM.
- A configuration that cannot be read or is invalid counts as "not
  configured" (exit 0 for every call), and the reason is logged.
- It never blocks: its input and the chained hook are bounded in size and
  time; the log is opened without following links and without blocking,
  and only in a directory that root owns and nobody else may write.
- ``/dev/shm`` is writable by everyone: an object there that the hook did
  not make (not a regular file, extra hard links, another owner) is moved
  aside and a fresh one is made, so a squatter never shares a VM's memory.

Python standard library only; it never calls libvirt (that would deadlock).
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import re
import selectors
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import IO, Any

CONFIG_NAME = "hostsetup-ivshmem.json"
CHAINED_NAME = "qemu.hostsetup-chained"
DEFAULT_LOG = "/var/log/libvirt/hostsetup-ivshmem.log"  # until the configuration names one
SHM_DIR = "/dev/shm"
OUTPUT_OPS = ("migrate", "restore")
# Operations libvirt refuses when a hook fails, before the guest runs here:
# a chained hook that hangs vetoes these, and never the others (a failing
# ``reconnect`` or ``started`` would stop a running guest).
VETO_OPS = ("prepare", "start", "migrate", "restore")
NAMESPACES = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}
MAX_INPUT = 16 * 1024 * 1024  # domain XML on stdin, and the chained hook's output
MAX_CONFIG = 1024 * 1024
INPUT_TIMEOUT = 30.0  # seconds to read the domain XML
CHAIN_TIMEOUT = 30.0  # seconds for the chained hook
LOCK_TIMEOUT = 10.0  # seconds to wait for another call preparing the object
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
# QEMU ids of what hostsetup puts on QEMU's command line (libvirt's own look like "shmem0").
QEMU_MEM_ID, QEMU_DEV_ID = "hostsetup-shm", "hostsetup-ivshmem"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # as the step validates it


def qemu_args(dev: dict[str, Any], index: int = 0) -> list[str]:
    """QEMU arguments that add one device (a configuration device, its name rendered);
    ``index`` > 0 numbers the QEMU ids of the second and later devices."""
    mem, ident = (QEMU_MEM_ID, QEMU_DEV_ID) if not index else (f"{QEMU_MEM_ID}{index}",
                                                               f"{QEMU_DEV_ID}{index}")
    props = ""
    if dev["address"]:
        props = ",addr={}.{}".format(*(dev["address"][k].removeprefix("0x")
                                       for k in ("slot", "function")))
    if dev["role"]:
        props += f",master={'on' if dev['role'] == 'master' else 'off'}"
    if dev["model"] == "ivshmem-doorbell":
        return ["-chardev", f"socket,id={mem},path={dev['server']}",
                "-device", f"ivshmem-doorbell,id={ident},chardev={mem},"
                f"vectors={dev['vectors'] or 1}{props}"]
    return ["-object", f"memory-backend-file,id={mem},mem-path={object_path(dev)},"
            f"size={dev['size_mib'] or 4}M,share=on",
            "-device", f"ivshmem-plain,id={ident},memdev={mem}{props}"]


def object_path(dev: dict[str, Any]) -> str:
    """The host file of a device's memory: in /dev/shm, or on a hugetlbfs mount (``dir``)."""
    return os.path.join(dev.get("dir") or SHM_DIR, dev["name"])


def strip_ours(args: list[str]) -> list[str]:
    """QEMU arguments without the (option, value) pairs hostsetup added (by their ids)."""
    out: list[str] = []
    for arg in args:
        if out and out[-1].startswith("-") and (f"id={QEMU_MEM_ID}" in arg
                                                or f"id={QEMU_DEV_ID}" in arg):
            out.pop()
            continue
        out.append(arg)
    return out


class Unsafe(Exception):
    """A path the hook, as root, must not write to; the message says why."""


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _int_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _name(value: Any) -> bool:
    # A fixed name, or a per-guest template ({domain}, {uuid}); rendered names
    # are checked again at each call.
    if not isinstance(value, str):
        return False
    plain = value.replace("{domain}", "x").replace("{uuid}", "x")
    return NAME_PATTERN.fullmatch(plain) is not None


# The keys of one device (at the top level: the first, or only, device).
DEVICE_KEYS: dict[str, Callable[[Any], bool]] = {
    "name": _name,
    "model": lambda v: v in ("ivshmem-plain", "ivshmem-doorbell"),
    "size_mib": _int_or_none,
    "server": _str_or_none,
    "vectors": _int_or_none,
    "address": lambda v: v is None or _str_map(v),
    "role": lambda v: v in (None, "peer", "master"),
}
# In each entry of the optional "devices" list (configurations written before
# it existed hold one device at the top level, and stay valid).
LIST_KEYS: dict[str, Callable[[Any], bool]] = {
    **DEVICE_KEYS,
    "per_domain": lambda v: isinstance(v, bool),
    "keep": lambda v: isinstance(v, bool),
}


def _dir_ok(device: dict[str, Any]) -> bool:
    # Optional (hugepages only): an absolute directory, the hugetlbfs mount.
    value = device.get("dir")
    return value is None or (isinstance(value, str) and os.path.isabs(value))


def _device_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(d, dict) and all(k in d and ok(d[k]) for k, ok in LIST_KEYS.items())
        and _dir_ok(d) for d in value)


# Every key the step writes, with what it must hold.
CONFIG_KEYS: dict[str, Callable[[Any], bool]] = {
    "version": lambda v: v == 1,
    **DEVICE_KEYS,
    "domains": lambda v: v == "all" or (isinstance(v, list)
                                        and all(isinstance(d, str) for d in v)),
    "method": lambda v: v in ("definition", "qemu-wrapper", "commandline", "emulator-swap"),
    "wrappers": _str_map,
    "enforce": lambda v: v in ("warn", "refuse"),
    "owner": _str_or_none,
    "mode": lambda v: isinstance(v, str) and re.fullmatch(r"0?[0-7]{3}", v) is not None,
    "log": lambda v: v is None or (isinstance(v, str) and os.path.isabs(v)),
    "chain": _str_or_none,
}


def _check_dir(fd: int, where: str, last: bool) -> None:
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise Unsafe(f"{where} is owned by uid {st.st_uid}, not root")
    # A sticky ancestor (/tmp) is fine: nobody else can rename what root owns in it.
    if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
        raise Unsafe(f"{where} is writable by group or others")


def open_safe_dir(path: str) -> int:
    """Open directory ``path`` for ``dir_fd`` use; raises :class:`Unsafe`.

    Safe means: the directory and every directory above it are owned by root,
    the directory is not writable by group or others, and its ancestors are
    not either unless sticky.  The walk opens each component without following
    links, so what is checked is what is returned.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open("/", flags)
    where = "/"
    try:
        for part in [p for p in os.path.realpath(path).split("/") if p]:
            _check_dir(fd, where, last=False)
            try:
                child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise Unsafe(f"{os.path.join(where, part)}: {exc.strerror}") from None
            os.close(fd)
            fd, where = child, os.path.join(where, part)
        _check_dir(fd, where, last=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _log_file_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != 0 or st.st_nlink != 1:
        return "is not a file of root's with a single link"
    return None


def log_problem(path: str) -> str | None:
    """Why the hook would not write its log at ``path``, or ``None`` (the step's check).

    Reads only: the file itself is created by the hook at its first call.
    """
    if not os.path.isabs(path):
        return f"{path} is not an absolute path"
    try:
        os.close(open_safe_dir(os.path.dirname(path)))
        st = os.lstat(path)
    except Unsafe as exc:
        return str(exc)
    except FileNotFoundError:
        return None
    problem = _log_file_problem(st)
    return f"{path} {problem}" if problem else None


def open_log(path: str) -> int:
    """Open the log for appending, never blocking and never following a link."""
    if not os.path.isabs(path):
        raise Unsafe(f"{path} is not an absolute path")
    dir_fd = open_safe_dir(os.path.dirname(path))
    try:
        # O_NONBLOCK: a FIFO planted as the log must not hold libvirtd up.
        fd = os.open(os.path.basename(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o640,
                     dir_fd=dir_fd)
    except OSError as exc:
        raise Unsafe(f"{path}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    problem = _log_file_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise Unsafe(f"{path} {problem}")
    return fd


def pump(src: IO[bytes], dst: IO[bytes] | None, data: bytes, limit: int,
         deadline: float) -> bytes:
    """Read ``src`` to its end (at most ``limit`` bytes) while writing ``data`` to ``dst``.

    Raises ``TimeoutError`` at ``deadline`` (``time.monotonic``) and
    ``OverflowError`` past ``limit``; ``dst`` is closed once written.
    """
    out = bytearray()
    pending = memoryview(data)
    # poll, not epoll: stdin may be a regular file when the hook is run by hand.
    with selectors.PollSelector() as sel:
        sel.register(src, selectors.EVENT_READ)
        if dst is not None:
            os.set_blocking(dst.fileno(), False)
            sel.register(dst, selectors.EVENT_WRITE)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            for key, _events in sel.select(left):
                if key.fileobj is src:
                    chunk = os.read(src.fileno(), 65536)
                    if not chunk:
                        sel.unregister(src)
                    elif len(out) + len(chunk) > limit:
                        raise OverflowError(f"more than {limit} bytes")
                    out += chunk
                    continue
                assert dst is not None
                try:
                    pending = pending[os.write(dst.fileno(), pending[:65536]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the reader does not want the rest
                    pending = pending[:0]
                if not pending:
                    sel.unregister(dst)
                    dst.close()
    return bytes(out)


def load_config(path: str) -> dict[str, Any] | None:
    """The configuration, ``None`` when absent; raises ``ValueError`` saying what is wrong."""
    try:
        # O_NONBLOCK: a FIFO in its place must not block the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot open it: {exc.strerror}") from None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        return parse_config(f.read(MAX_CONFIG + 1))


def parse_config(raw: bytes) -> dict[str, Any]:
    """The configuration from its bytes; raises ``ValueError`` unless it is all valid."""
    if len(raw) > MAX_CONFIG:
        raise ValueError(f"larger than {MAX_CONFIG} bytes")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc.__class__.__name__}: {exc})"[:300]) from None
    if not isinstance(config, dict):
        raise ValueError(f"a JSON {type(config).__name__}, not an object")
    bad = [key for key, ok in CONFIG_KEYS.items() if key not in config or not ok(config[key])]
    if "devices" in config and not _device_list(config["devices"]):
        bad.append("devices")
    if not _dir_ok(config):
        bad.append("dir")
    swap = config.get("swap")  # emulator-swap: {"emulator", "real", "admindir"}
    if "swap" in config and not (_str_map(swap) and {"emulator", "real"} <= set(swap or ())):
        bad.append("swap")
    if config.get("method") == "emulator-swap" and "swap" not in config:
        bad.append("swap")
    if bad:
        raise ValueError(f"missing or invalid: {', '.join(bad)}")
    return config


class Hook:
    """One invocation: the arguments, the configuration (once loaded) and a logger."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.domain, self.op, self.subop = (argv + ["-", "-", "-"])[:3]
        self.here = os.path.dirname(os.path.abspath(__file__))
        self.cfg: dict[str, Any] | None = None
        self.log_path = DEFAULT_LOG
        self.log_fd: int | None = None
        self.log_problem: str | None = None

    def log(self, message: str) -> None:
        """Append a line to the hook's log (to stderr, which libvirt keeps, if it is unsafe)."""
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.domain} {self.op} {self.subop}: "
                f"{message}".replace("\n", "\\n") + "\n").encode(errors="replace")
        if self.log_fd is None and self.log_problem is None:
            try:
                self.log_fd = open_log(self.log_path)
            except (Unsafe, OSError) as exc:
                self.log_problem = str(exc)
                line = f"hostsetup ivshmem hook: log not used: {exc}\n".encode() + line
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, line)
                return
            except OSError:
                pass
        try:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # nowhere left to say it; never fail for that

    def enforcing(self) -> bool:
        """True for the one call that may fail: ``prepare begin`` of a chosen domain, refuse."""
        return (self.cfg is not None and self.op == "prepare" and self.subop == "begin"
                and self.cfg["enforce"] == "refuse" and self.chosen())

    def chosen(self) -> bool:
        """True when this domain is one the device is for."""
        assert self.cfg is not None
        domains = self.cfg["domains"]
        return domains == "all" or self.domain in domains

    def devices(self, root: ET.Element) -> list[dict[str, Any]]:
        """The devices of this domain, names rendered ({domain}, {uuid} of the XML).

        A rendered name that is not a valid object name (an odd domain name)
        leaves that device out, logged: never a path outside ``/dev/shm``.
        """
        assert self.cfg is not None
        uuid = root.findtext("uuid", "").strip()
        found = []
        for device in self.cfg.get("devices") or [self.cfg]:
            name = device["name"].replace("{domain}", self.domain).replace("{uuid}", uuid)
            if NAME_PATTERN.fullmatch(name) is None:
                self.log(f"device '{device['name']}' renders to '{name}', not a valid name: "
                         "left out")
                continue
            found.append(dict(device, name=name))
        return found

    def missing(self, root: ET.Element) -> list[dict[str, Any]]:
        """The devices the domain XML lacks (for qemu-wrapper: all, or none)."""
        assert self.cfg is not None
        if self.cfg["method"] == "qemu-wrapper":
            emulator = root.findtext("devices/emulator", "").strip()
            return [] if emulator in self.cfg["wrappers"].values() else self.devices(root)
        if self.cfg["method"] == "emulator-swap":
            # Whatever the XML holds, the swapped emulator adds the devices.
            emulator = root.findtext("devices/emulator", "").strip()
            return [] if emulator == self.cfg["swap"]["emulator"] else self.devices(root)
        if self.cfg["method"] == "commandline":
            args = [a.get("value", "") for a in root.iterfind(f"{QEMU_NS}commandline/"
                                                               f"{QEMU_NS}arg")]
            return [d for i, d in enumerate(self.devices(root))
                    if qemu_args(d, i)[1] not in args]
        have = {s.get("name") for s in root.iterfind("devices/shmem")}
        return [d for d in self.devices(root) if d["name"] not in have]

    def add_device(self, root: ET.Element) -> str:
        """Give the domain XML the devices (or point it at the wrapper emulator); says what."""
        cfg = self.cfg
        assert cfg is not None
        devices = root.find("devices")
        if devices is None:
            devices = ET.SubElement(root, "devices")
        if cfg["method"] == "qemu-wrapper":
            emulator = devices.find("emulator")
            if emulator is None:
                emulator = ET.SubElement(devices, "emulator")
            real = (emulator.text or "").strip()
            wrappers = cfg["wrappers"]
            # One wrapper per real emulator; with a single one, use it for any.
            wrapper = wrappers.get(real) or next(iter(wrappers.values()), None)
            if not wrapper:
                return "no wrapper emulator configured: XML unchanged"
            emulator.text = wrapper
            return f"pointed the incoming XML at the wrapper emulator {wrapper}"
        added = self.missing(root)
        if cfg["method"] == "emulator-swap":
            emulator = devices.find("emulator")
            if emulator is None:
                emulator = ET.SubElement(devices, "emulator")
            emulator.text = cfg["swap"]["emulator"]
            return f"pointed the incoming XML at the swapped emulator {emulator.text}"
        if cfg["method"] == "commandline":
            line = root.find(f"{QEMU_NS}commandline")
            if line is None:
                line = ET.SubElement(root, f"{QEMU_NS}commandline")
            args = [a.get("value", "") for a in line.findall(f"{QEMU_NS}arg")]
            for arg in line.findall(f"{QEMU_NS}arg"):
                line.remove(arg)
            # Ours from another configuration go; everyone else's stay, first.
            for value in strip_ours(args) + [a for i, d in enumerate(self.devices(root))
                                             for a in qemu_args(d, i)]:
                ET.SubElement(line, f"{QEMU_NS}arg", value=value)
        else:
            for dev in added:
                shmem = ET.SubElement(devices, "shmem", name=dev["name"])
                if dev["role"]:
                    shmem.set("role", dev["role"])
                ET.SubElement(shmem, "model", type=dev["model"])
                if dev["size_mib"]:
                    ET.SubElement(shmem, "size", unit="M").text = str(dev["size_mib"])
                if dev["server"]:
                    ET.SubElement(shmem, "server", path=dev["server"])
                if dev["vectors"]:
                    ET.SubElement(shmem, "msi", vectors=str(dev["vectors"]))
                if dev["address"]:
                    ET.SubElement(shmem, "address", dict(dev["address"], type="pci"))
        names = ", ".join(f"'{d['name']}'" for d in added)
        return f"added the device{'s' if len(added) > 1 else ''} {names} to the incoming XML"

    def _owner(self) -> tuple[int, int]:
        """The configured (uid, gid); -1 for what is left unchanged."""
        assert self.cfg is not None
        user, _, group = (self.cfg["owner"] or "").partition(":")
        uid = gid = -1
        if user:
            uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        return uid, gid

    def _open_existing(self, path: str, uid: int) -> int | str:
        """An fd of the object at ``path`` if it is one the hook made, else why not."""
        try:
            # Opening never blocks (a FIFO) nor follows a link; a directory fails.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            return f"cannot be opened as a file ({exc.strerror})"
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_nlink != 1:
            why = f"has {st.st_nlink} links"
        elif st.st_uid not in (0, uid):
            why = f"is owned by uid {st.st_uid}, neither root nor the configured owner"
        if why:
            os.close(fd)
            return why
        return fd

    def _claim_shm(self, path: str, uid: int) -> int:
        """An fd of ``path``, made by the hook (or by an earlier call of it)."""
        for _attempt in range(3):
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_NOCTTY | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass
            try:
                found = self._open_existing(path, uid)
            except FileNotFoundError:
                continue  # gone meanwhile: create it
            if isinstance(found, int):
                return found
            # Someone else made it (/dev/shm is world-writable): whoever holds it
            # open keeps only that old object, never the one the VMs will share.
            aside = f"{path}.hostsetup-refused.{os.urandom(4).hex()}"
            try:
                os.rename(path, aside)  # root may move any entry of the sticky /dev/shm
            except FileNotFoundError:
                continue
            self.log(f"refused {path}: it {found} (not made by hostsetup); moved it to "
                     f"{aside} and made a new one")
        raise OSError(f"{path} keeps being replaced by someone else")

    def _lock(self) -> int | None:
        """Lock out other calls of this hook while it checks and makes the object.

        Two domains starting together must not take each other's fresh object
        for a planted one.  Bounded: after ``LOCK_TIMEOUT`` it goes on unlocked.
        """
        fd = os.open(self.here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    self.log(f"another call held the lock for {LOCK_TIMEOUT:g} s: going on")
                    return None
                time.sleep(0.05)

    def prepare_shm(self, devices: list[dict[str, Any]]) -> None:
        """Make each ``/dev/shm/<name>`` with at least its size, then set owner and mode."""
        cfg = self.cfg
        assert cfg is not None
        # A doorbell's memory belongs to its ivshmem server.
        plain = [d for d in devices if d["model"] == "ivshmem-plain"]
        if not plain:
            return
        uid, gid = self._owner()
        lock = self._lock()
        try:
            for dev in plain:
                path = object_path(dev)
                size = int(dev["size_mib"] or 4) * 1024 * 1024
                fd = self._claim_shm(path, uid)
                try:
                    # Grow only: shrinking memory that guests or the host map would crash them.
                    if os.fstat(fd).st_size < size:
                        os.ftruncate(fd, size)
                    if uid != -1 or gid != -1:
                        os.fchown(fd, uid, gid)
                    os.fchmod(fd, int(cfg["mode"], 8))
                finally:
                    os.close(fd)
                self.log(f"prepared {path}: {size} bytes, owner {cfg['owner'] or 'unchanged'}, "
                         f"mode {cfg['mode']}")
        finally:
            if lock is not None:
                os.close(lock)

    def run_chained(self, xml: bytes) -> tuple[int, bytes]:
        """Run the hook this one replaced (chain layout); returns (exit code, output)."""
        path = os.path.join(self.here, CHAINED_NAME)
        if not os.path.exists(path):
            return 0, b""
        if not os.access(path, os.X_OK):
            self.log(f"chained hook {path} is not executable: skipped")
            return 0, b""
        deadline = time.monotonic() + CHAIN_TIMEOUT
        try:
            proc = subprocess.Popen([path, *self.argv], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return self._no_verdict(f"chained hook {path} cannot run ({exc.strerror})")
        assert proc.stdin is not None and proc.stdout is not None
        try:
            out = pump(proc.stdout, proc.stdin, xml, MAX_INPUT, deadline)
            return proc.wait(max(deadline - time.monotonic(), 0.01)), out
        except (TimeoutError, subprocess.TimeoutExpired, OverflowError) as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: with what it started
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            return self._no_verdict(f"chained hook {path} killed: {exc} (limits "
                                    f"{CHAIN_TIMEOUT:g} s, {MAX_INPUT} bytes of output)")
        finally:
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()

    def _no_verdict(self, why: str) -> tuple[int, bytes]:
        """The chained hook gave no answer: a veto where the guest does not run here yet."""
        code = 1 if self.op in VETO_OPS else 0
        self.log(f"{why}; counted as exit {code}")
        return code, b""

    def run(self) -> int:
        """Handle one call; returns the exit code."""
        config_path = os.path.join(self.here, CONFIG_NAME)
        try:
            self.cfg = load_config(config_path)
        except (ValueError, OSError) as exc:
            self.log(f"configuration {config_path} unusable ({exc}): treated as not "
                     "configured, no domain is checked or refused")
        if self.cfg is not None and self.cfg["log"]:
            self.log_path = self.cfg["log"]
        try:
            xml = pump(sys.stdin.buffer, None, b"", MAX_INPUT,
                       time.monotonic() + INPUT_TIMEOUT)
        except (TimeoutError, OverflowError, OSError) as exc:
            self.log(f"domain XML on stdin not read ({exc}): nothing done")
            return 1 if self.enforcing() else 0
        code, chained_out = self.run_chained(xml)
        if code != 0:
            self.log(f"chained hook exited {code}: its failure is passed on to libvirt")
            return code
        if self.op in OUTPUT_OPS and chained_out.strip():
            xml = chained_out  # the chained hook's XML is the input to ours
        if self.cfg is None or not self.chosen():
            sys.stdout.buffer.write(chained_out if self.op in OUTPUT_OPS else b"")
            return 0
        if self.op in OUTPUT_OPS:
            try:
                return self.fix_incoming(xml)
            except Exception as exc:
                self.log(f"incoming XML passed on unchanged: {exc!r}")
                sys.stdout.buffer.write(chained_out)
                return 0
        if self.op == "prepare" and self.subop == "begin":
            return self.check_start(xml)
        return 0

    def fix_incoming(self, xml: bytes) -> int:
        """migrate/restore: print the XML with the device (libvirt uses it)."""
        root = ET.fromstring(xml)
        if not self.missing(root):
            self.log("incoming XML already has the device")
        else:
            self.log(self.add_device(root))
        sys.stdout.write(ET.tostring(root, encoding="unicode") + "\n")
        return 0

    def check_start(self, xml: bytes) -> int:
        """prepare begin: enforce the device, then prepare the shared-memory object."""
        assert self.cfg is not None
        refuse = self.cfg["enforce"] == "refuse"
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            self.log(f"domain XML on stdin is not valid XML: {exc}")
            return 1 if refuse else 0
        lacking = self.missing(root)
        if lacking:
            names = ", ".join(f"'{d['name']}'" for d in lacking)
            self.log(f"domain lacks the ivshmem device {names}"
                     + (": start refused" if refuse else " (enforce: warn)"))
            if refuse:
                sys.stderr.write(f"hostsetup ivshmem hook: domain '{self.domain}' lacks the "
                                 f"ivshmem device {names}; start refused\n")
                return 1
        try:
            self.prepare_shm(self.devices(root))
        except Exception as exc:
            self.log(f"cannot prepare the shared-memory object: {exc}")
            if refuse:
                sys.stderr.write(f"hostsetup ivshmem hook: {exc}\n")
                return 1
        return 0


def main(argv: list[str]) -> int:
    """Entry point: ``hook <domain> <operation> <sub-operation> <extra>``."""
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    hook = Hook(argv)
    try:
        return hook.run()
    except Exception as exc:
        # Last resort: a bug of ours must not block or stop a VM, nor print a traceback.
        hook.log(f"unexpected error: {exc!r}")
        return 1 if hook.enforcing() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
