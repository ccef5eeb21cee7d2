"""Sandbox component: libvirtd with the QEMU driver (TCG) and two small domains.

libvirtd runs in a private mount namespace (``unshare --mount``) where
directories under ``DIR/libvirt`` are bind-mounted over ``/etc/libvirt``,
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt``: the host's own libvirt configuration and any host
libvirtd are untouched, and several sandboxes can run side by side.  The
namespace's ``/run`` is a private tmpfs, so libvirtd sees neither the host's
system bus nor its pid files.  The socket is reachable from outside at
``DIR/libvirt/run/libvirt-sock``; the hooks dir at ``DIR/libvirt/etc/hooks``.

QEMU processes are daemonized by libvirtd (their own session), so ``down``
kills them through the pid files libvirt keeps in ``/run/libvirt/qemu``.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from wizard.sandbox.core import Sandbox, SandboxError, alive, kill_group

DOMAINS = ("vm1", "vm2")
EMULATOR = "/usr/bin/qemu-system-x86_64"
# Host path under DIR/libvirt -> where it is mounted inside the namespace.
MOUNTS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}

LIBVIRTD_CONF = """\
# Sandbox libvirtd: local socket only, no authentication (root inside the sandbox).
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

# QEMU as root without cgroups, per-domain namespaces, virtlogd or a
# security driver: none of them exists (or is needed) inside the sandbox.
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


# Huge pages the sandbox reserves for hugepage-backed ivshmem objects (given back at down).
HUGEPAGES = 4
NR_HUGEPAGES = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def hugepages_up(sb: Sandbox) -> None:
    """Reserve ``HUGEPAGES`` 2 MiB pages and mount hugetlbfs at ``DIR/libvirt/hugepages``.

    Done before libvirtd starts: its private namespace gets the mount too.
    The pool is the machine's: what was added is recorded and taken off at down.
    """
    mount = root(sb) / "hugepages"
    mount.mkdir(parents=True, exist_ok=True)
    with open(NR_HUGEPAGES, "r+", encoding="ascii") as pool:
        fcntl.flock(pool, fcntl.LOCK_EX)  # other sandboxes adjust it too
        before = int(pool.read())
        pool.seek(0)
        pool.write(str(before + HUGEPAGES))
        pool.flush()
        pool.seek(0)
        added = int(pool.read()) - before  # the kernel may find fewer
    (root(sb) / "hugepages.added").write_text(str(added))
    if not os.path.ismount(mount):
        sb.run("mount", ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0755",
                         "hostsetup-hugepages", str(mount)])
    sb.export("HOSTSETUP_HUGETLBFS", str(mount))


def hugepages_down(sb: Sandbox) -> None:
    """Unmount the sandbox's hugetlbfs (its files go) and give the pages it added back."""
    mount = root(sb) / "hugepages"
    if os.path.ismount(mount):
        sb.run("umount", ["umount", str(mount)])
    added = root(sb) / "hugepages.added"
    if added.exists():
        with open(NR_HUGEPAGES, "r+", encoding="ascii") as pool:
            fcntl.flock(pool, fcntl.LOCK_EX)
            now = int(pool.read())
            pool.seek(0)
            pool.write(str(max(now - int(added.read_text()), 0)))
        added.unlink()


def root(sb: Sandbox, part: str = "") -> Path:
    """The host-side path of one of the namespace's libvirt dirs (``MOUNTS`` key)."""
    return sb.dir / "libvirt" / part if part else sb.dir / "libvirt"


def socket_path(sb: Sandbox) -> Path:
    """The libvirtd socket, as seen from outside the namespace."""
    return root(sb, "run") / "libvirt-sock"


def uri(sb: Sandbox) -> str:
    """The connection URI of this sandbox's libvirtd."""
    return f"qemu:///system?socket={socket_path(sb)}"


def shm_name(sb: Sandbox) -> str:
    """The shared-memory object name this sandbox's answers use (unique per host tag)."""
    return f"hostsetup-{sb.tag}"


def _wrapper_script(sb: Sandbox) -> Path:
    lines = ["#!/bin/sh", "set -e", "mount -t tmpfs -o mode=0755 hostsetup-run /run"]
    for part, target in MOUNTS.items():
        source = shlex.quote(str(root(sb, part)))
        lines.append(f"mkdir -p {target} && mount --bind {source} {target}")
    lines.append("exec libvirtd --pid-file /run/libvirt/libvirtd.pid")
    script = root(sb) / "start-libvirtd.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def _connectable(sb: Sandbox) -> bool:
    if not socket_path(sb).exists():
        return False
    res = subprocess.run(["virsh", "-c", uri(sb), "uri"], capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    return res.returncode == 0


def start(sb: Sandbox) -> int:
    """Start libvirtd in its namespace and wait until it answers; returns its pid."""
    script = _wrapper_script(sb)
    return sb.spawn(
        "libvirtd",
        ["unshare", "--mount", "--propagation", "private", "sh", str(script)],
        ready=lambda: _connectable(sb),
        timeout=60,
    )


def stop(sb: Sandbox) -> None:
    """Stop libvirtd (the QEMU processes it started keep running, as on a host)."""
    for proc in sb.procs:
        if proc.name == "libvirtd" and alive(proc.pid):
            kill_group(proc.pid, 10)
    socket_path(sb).unlink(missing_ok=True)


def restart(sb: Sandbox) -> int:
    """Restart libvirtd so that it reads its hooks again; returns the new pid."""
    stop(sb)
    return start(sb)


def virsh(sb: Sandbox, *args: str) -> str:
    """Run ``virsh`` against this sandbox; raises :class:`SandboxError` on failure."""
    return sb.run("virsh", ["virsh", "-c", uri(sb), *args])


def up(sb: Sandbox) -> None:
    """Start libvirtd, define the domains; export the URI and the hooks dir."""
    for part in MOUNTS:
        root(sb, part).mkdir(parents=True, exist_ok=True)
    (root(sb, "etc") / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    (root(sb, "etc") / "qemu.conf").write_text(QEMU_CONF)
    hooks = root(sb, "etc") / "hooks"
    hooks.mkdir(exist_ok=True)
    wrappers = root(sb) / "bin"
    wrappers.mkdir(exist_ok=True)
    hugepages_up(sb)
    start(sb)
    for name in DOMAINS:
        xml = sb.path("libvirt", "domains", f"{name}.xml")
        xml.write_text(DOMAIN_XML.format(name=name, emulator=EMULATOR))
        virsh(sb, "define", str(xml))
    sb.export("HOSTSETUP_LIBVIRT_URI", uri(sb))
    sb.export("HOSTSETUP_LIBVIRT_HOOKS_DIR", str(hooks))
    sb.export("HOSTSETUP_LIBVIRT_LOG_DIR", str(root(sb, "log")))
    sb.set_answers("ivshmem", {
        "uri": uri(sb),
        "hooks_dir": str(hooks),
        "name": shm_name(sb),
        "size": 4,
        "model": "plain",
        "domains": "all",
        "method": "definition",
        "wrapper_dir": str(wrappers),
        "enforce": "warn",
        "mode": "0660",
        # The same path inside the namespace and out: the hook can also be run by hand.
        "hook_log": str(root(sb, "log") / "hostsetup-ivshmem.log"),
        "hugetlbfs": str(root(sb) / "hugepages"),
        "restart_libvirtd": True,
        "bus": sb.env.get("HOSTSETUP_DBUS_ADDRESS", "system"),
    })


def qemu_pids(sb: Sandbox) -> dict[str, int]:
    """Running QEMU processes of this sandbox, by domain (from libvirt's pid files)."""
    found = {}
    for pidfile in (root(sb, "run") / "qemu").glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        # Guard against a recycled pid: it must be QEMU running this domain.
        if b"qemu" in cmdline and f"guest={pidfile.stem}".encode() in cmdline and alive(pid):
            found[pidfile.stem] = pid
    return found


def down(sb: Sandbox) -> None:
    """Kill the QEMU processes left behind and the shared-memory object of the answers."""
    for pid in qemu_pids(sb).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    while qemu_pids(sb) and time.monotonic() < deadline:
        time.sleep(0.05)
    if qemu_pids(sb):
        raise SandboxError(f"QEMU processes still running: {qemu_pids(sb)}")
    name = sb.answers.get("ivshmem", {}).get("name")
    if name:
        Path("/dev/shm", name).unlink(missing_ok=True)
    hugepages_down(sb)


__all__ = ["up", "down", "start", "stop", "restart", "uri", "virsh", "qemu_pids"]
