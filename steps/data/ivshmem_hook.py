#!/usr/bin/python3
# hostsetup-ivshmem-hook: installed by hostsetup's ivshmem step; do not edit.
"""libvirt QEMU hook: keep an ivshmem device on the chosen domains.

libvirt calls it as ``qemu <domain> <operation> <sub-operation> <extra>``
with the domain XML on stdin.  Its configuration is the JSON file
``hostsetup-ivshmem.json`` next to this script (written by hostsetup).

- ``migrate`` / ``restore``: the incoming XML of a chosen domain gets the
  device (or, for the qemu-wrapper method, the wrapper emulator) and is
  printed; libvirt uses the printed XML.  These are the only operations
  whose output libvirt reads.
- ``prepare begin``: a chosen domain without the device is logged and,
  with ``enforce: refuse``, refused (non-zero exit stops the start); the
  host side of the shared-memory object (``/dev/shm/<name>``) is prepared
  with its size, owner and mode.
- With ``chain`` set (libvirt without ``qemu.d/``), the hook that was
  installed before this one runs first with the same arguments and input.

Python standard library only; it never calls libvirt (that would deadlock).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

CONFIG_NAME = "hostsetup-ivshmem.json"
OUTPUT_OPS = ("migrate", "restore")
NAMESPACES = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}


class Hook:
    """One invocation: the configuration, the arguments and a logger."""

    def __init__(self, config: dict, argv: list[str]) -> None:
        self.cfg = config
        self.domain, self.op, self.subop = (argv + ["-", "-", "-"])[:3]

    def log(self, message: str) -> None:
        """Append a line to the hook's log (stderr if the log cannot be written)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.domain} {self.op} {self.subop}: "
        try:
            with open(self.cfg.get("log") or "/dev/stderr", "a") as f:
                f.write(line + message + "\n")
        except OSError:
            sys.stderr.write(line + message + "\n")

    def chosen(self) -> bool:
        """True when this domain is one the device is for."""
        domains = self.cfg.get("domains", "all")
        return domains == "all" or self.domain in domains

    def has_device(self, root: ET.Element) -> bool:
        """True when the domain XML already carries the device (or the wrapper)."""
        if self.cfg.get("method") == "qemu-wrapper":
            emulator = root.findtext("devices/emulator", "").strip()
            return emulator in self.cfg.get("wrappers", {}).values()
        return any(s.get("name") == self.cfg["name"] for s in root.iterfind("devices/shmem"))

    def add_device(self, root: ET.Element) -> str:
        """Give the domain XML the device (or point it at the wrapper emulator); says what."""
        devices = root.find("devices")
        if devices is None:
            devices = ET.SubElement(root, "devices")
        if self.cfg.get("method") == "qemu-wrapper":
            emulator = devices.find("emulator")
            if emulator is None:
                emulator = ET.SubElement(devices, "emulator")
            real = (emulator.text or "").strip()
            wrappers = self.cfg.get("wrappers", {})
            # One wrapper per real emulator; with a single one, use it for any.
            wrapper = wrappers.get(real) or next(iter(wrappers.values()), None)
            if not wrapper:
                return "no wrapper emulator configured: XML unchanged"
            emulator.text = wrapper
            return f"pointed the incoming XML at the wrapper emulator {wrapper}"
        cfg = self.cfg
        shmem = ET.SubElement(devices, "shmem", name=cfg["name"])
        if cfg.get("role"):
            shmem.set("role", cfg["role"])
        ET.SubElement(shmem, "model", type=cfg.get("model", "ivshmem-plain"))
        if cfg.get("size_mib"):
            ET.SubElement(shmem, "size", unit="M").text = str(cfg["size_mib"])
        if cfg.get("server"):
            ET.SubElement(shmem, "server", path=cfg["server"])
        if cfg.get("vectors"):
            ET.SubElement(shmem, "msi", vectors=str(cfg["vectors"]))
        if cfg.get("address"):
            ET.SubElement(shmem, "address", dict(cfg["address"], type="pci"))
        return f"added the device '{cfg['name']}' to the incoming XML"

    def prepare_shm(self) -> None:
        """Create ``/dev/shm/<name>`` with at least its size, then set owner and mode."""
        if self.cfg.get("model", "ivshmem-plain") != "ivshmem-plain":
            return  # a doorbell's memory belongs to its ivshmem server
        path = os.path.join("/dev/shm", self.cfg["name"])
        size = int(self.cfg.get("size_mib") or 4) * 1024 * 1024
        # /dev/shm is world-writable: never follow a planted symlink as root.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{path} is not a regular file")
            # Grow only: shrinking memory that guests or the host map would crash them.
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            owner = self.cfg.get("owner")
            if owner:
                user, _, group = owner.partition(":")
                uid = pwd.getpwnam(user).pw_uid if not user.isdigit() else int(user)
                gid = -1
                if group:
                    gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
                os.fchown(fd, uid, gid)
            os.fchmod(fd, int(self.cfg.get("mode", "0660"), 8))
        finally:
            os.close(fd)
        self.log(f"prepared {path}: {size} bytes, owner {self.cfg.get('owner') or 'unchanged'}, "
                 f"mode {self.cfg.get('mode', '0660')}")

    def run_chained(self, argv: list[str], xml: bytes) -> tuple[int, bytes]:
        """Run the hook this one replaced (chain layout); returns (exit code, output)."""
        chained = self.cfg.get("chain")
        if not chained:
            return 0, b""
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), chained)
        if not os.access(path, os.X_OK):
            self.log(f"chained hook {path} is missing or not executable: skipped")
            return 0, b""
        res = subprocess.run([path, *argv], input=xml, stdout=subprocess.PIPE)
        return res.returncode, res.stdout

    def run(self, argv: list[str], xml: bytes) -> int:
        """Handle one call; returns the exit code."""
        code, chained_out = self.run_chained(argv, xml)
        if code != 0:
            self.log(f"chained hook exited {code}: its failure is passed on to libvirt")
            return code
        if self.op in OUTPUT_OPS and chained_out.strip():
            xml = chained_out  # the chained hook's XML is the input to ours
        if not self.chosen():
            sys.stdout.buffer.write(chained_out if self.op in OUTPUT_OPS else b"")
            return 0
        if self.op in OUTPUT_OPS:
            return self.fix_incoming(xml)
        if self.op == "prepare" and self.subop == "begin":
            return self.check_start(xml)
        return 0

    def fix_incoming(self, xml: bytes) -> int:
        """migrate/restore: print the XML with the device (libvirt uses it)."""
        root = ET.fromstring(xml)
        if self.has_device(root):
            self.log("incoming XML already has the device")
        else:
            self.log(self.add_device(root))
        sys.stdout.write(ET.tostring(root, encoding="unicode") + "\n")
        return 0

    def check_start(self, xml: bytes) -> int:
        """prepare begin: enforce the device, then prepare the shared-memory object."""
        refuse = self.cfg.get("enforce") == "refuse"
        if not self.has_device(ET.fromstring(xml)):
            self.log(f"domain lacks the ivshmem device '{self.cfg['name']}'"
                     + (": start refused" if refuse else " (enforce: warn)"))
            if refuse:
                sys.stderr.write(f"hostsetup ivshmem hook: domain '{self.domain}' lacks the "
                                 f"ivshmem device '{self.cfg['name']}'; start refused\n")
                return 1
        try:
            self.prepare_shm()
        except (OSError, KeyError, ValueError) as exc:
            self.log(f"cannot prepare the shared-memory object: {exc}")
            if refuse:
                sys.stderr.write(f"hostsetup ivshmem hook: {exc}\n")
                return 1
        return 0


def load_config() -> dict | None:
    """The JSON configuration next to this script, ``None`` when absent."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), CONFIG_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def main(argv: list[str]) -> int:
    """Entry point: ``hook <domain> <operation> <sub-operation> <extra>``."""
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    xml = sys.stdin.buffer.read()
    config = load_config()
    if config is None:
        return 0  # not configured: never block a domain for that
    hook = Hook(config, argv)
    try:
        return hook.run(argv, xml)
    except ET.ParseError as exc:
        hook.log(f"domain XML on stdin is not valid XML: {exc}")
        return 1 if hook.op == "prepare" and config.get("enforce") == "refuse" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
