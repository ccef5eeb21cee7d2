"""The sandbox's host image: a Debian 12 root with real systemd, OVS and libvirt.

``python -m sandbox.image build`` (run by ``make setup``) debootstraps
Debian 12 minbase from the host's own apt source, installs the packages of a
virtualization host (``--no-install-recommends``, with a ``policy-rc.d`` that
refuses every service start while installing) and applies the settings a
container on this machine kind needs (``/work/shared/HOSTBOX.md``).  The result
is cached at ``~/.cache/hostsetup/image-<recipe hash>/root``: building again is
a no-op, and a changed recipe (anything in :data:`RECIPE`) builds a new image.

The root is never booted as is: hosts boot it with ``--volatile=overlay``
(``sandbox/host.py``), a tmpfs layer per host.  The build ends with a first
boot of the new root, from which it keeps what every host would otherwise make
again at each boot (:data:`FIRST_BOOT`).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sandbox.core import Sandbox, SandboxError
from sandbox.vcsim import cache_dir

SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_DEBS = Path("/var/cache/apt/archives")

PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "iproute2", "procps", "kmod",
    "openvswitch-switch", "libvirt-daemon-system", "qemu-system-x86", "network-manager",
    # Debian's bindings the product uses (the venv is bind-mounted from the host), and
    # six, which the venv took from this machine's Debian instead of installing it.
    "python3", "python3-dbus", "python3-gi", "python3-newt", "python3-libvirt",
    "python3-openvswitch", "python3-six",
]

# Units of the scenario left installed but stopped (the services step starts them),
# and what a container neither needs nor can run.
DISABLE = [
    "openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service",
    "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket",
    "libvirt-guests.service",
]
MASK = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "systemd-pstore.service", "man-db.timer",
    "systemd-tmpfiles-clean.timer", "ovs-record-hostname.service",
]

EMULATOR = "/usr/bin/qemu-system-x86_64"

# The switch in the image's OVS database (``ovs-vsctl --no-wait`` arguments): the
# bridge BRIDGE with the VM ports and the monitoring port, and the underlay bridge
# UNDERLAY towards the analyser of tunnelled mirrors (its port ANALYSER_PORT).  The
# ports are veths that each host makes at boot (sandbox/host.py).  Named so that
# the underlay sorts after br0 and the VM ports, and pickers keep their order.
BRIDGE, VMS, MONITOR = "br0", ("vm1", "vm2"), "mon0"
UNDERLAY, ANALYSER_PORT = "wan0", "wan-ana"
SWITCH = ["add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
          *[a for port in (*VMS, MONITOR) for a in ("--", "add-port", BRIDGE, port)],
          "--", "add-br", UNDERLAY, "--", "set", "bridge", UNDERLAY, "datapath_type=netdev",
          "--", "add-port", UNDERLAY, ANALYSER_PORT]
# What the image's first boot keeps (its OVS database with SWITCH; libvirtd's probe
# of QEMU, which every host's libvirtd would otherwise redo, ~1 s of CPU: libvirtd
# keeps a cache only while QEMU's and its own ctimes are unchanged, as they are
# under each host's overlay).
FIRST_BOOT = ["/var/lib/openvswitch/conf.db", "/var/cache/libvirt/qemu/capabilities"]


def domain_xml(name: str, uuid: str = "") -> str:
    """A small TCG guest without an OS (64 MiB, serial console)."""
    return (f"<domain type='qemu'>\n  <name>{name}</name>\n"
            + (f"  <uuid>{uuid}</uuid>\n" if uuid else "")
            + "  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n"
            "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices>\n"
            f"    <emulator>{EMULATOR}</emulator>\n    <serial type='pty'/>\n"
            "    <console type='pty'/>\n    <memballoon model='none'/>\n  </devices>\n"
            "</domain>\n")


# path in the root -> content.  Why each is needed: HOSTBOX.md.
FILES = {
    # v1 cgroup controllers are read-only in the container.
    "/etc/libvirt/qemu.conf": 'cgroup_controllers = [ ]\n',
    # Debian's "--timeout 120" makes an idle libvirtd exit.
    "/etc/default/libvirtd": 'LIBVIRTD_ARGS=""\n',
    # Guests without an OS would hold a shutdown for 300 s.
    "/etc/default/libvirt-guests": "SHUTDOWN_TIMEOUT=2\n",
    # mlockall needs CAP_IPC_LOCK (and would pin 66 MiB per host).
    "/etc/default/openvswitch-switch": 'OVS_CTL_OPTS="--no-mlockall"\n',
    "/etc/systemd/journald.conf.d/volatile.conf": "[Journal]\nStorage=volatile\n",
    # A stable name for ovs-vswitchd's control socket (its own name carries its pid,
    # which is the container's): what the answers used from outside point at.
    "/etc/systemd/system/ovs-vswitchd.service.d/hostsetup-sandbox.conf": (
        "[Service]\nExecStartPost=/bin/sh -c 'ln -sf ovs-vswitchd.$(cat "
        "/run/openvswitch/ovs-vswitchd.pid).ctl /run/openvswitch/ovs-vswitchd.ctl'\n"
        # The underlay towards the analyser (sandbox/host.py): the userspace datapath
        # routes and resolves tunnel endpoints itself, so the route and the analyser's
        # MAC are given to ovs-vswitchd, as the kernel's tables would be on a real
        # host.  '-': a host without the analyser's bridge still starts Open vSwitch.
        "ExecStartPost=-/bin/sh -c 'for i in $(seq 50); do ip link show wan0 >/dev/null "
        "2>&1 && break; sleep 0.1; done; ip addr replace 10.251.0.1/24 dev wan0 && "
        "ip link set wan0 up && ovs-appctl ovs/route/add 10.251.0.2/32 wan0 && "
        "ovs-appctl tnl/neigh/set wan0 10.251.0.2 02:00:0a:fb:00:02'\n"),
    # NetworkManager runs for real but leaves the sandbox's veths to OVS.
    "/etc/NetworkManager/conf.d/hostsetup-sandbox.conf": (
        "[main]\nno-auto-default=*\n[keyfile]\nunmanaged-devices=interface-name:vm*;"
        "interface-name:mon*;interface-name:br*;interface-name:ovs-*\n"),
    # A unit that fails when started (for the tests of a failing start).
    "/etc/systemd/system/hostsetup-broken.service": (
        "[Unit]\nDescription=hostsetup sandbox: a service that fails to start\n"
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo broken on purpose >&2; exit 3'\n"),
    # The scenario's two small TCG guests (defined, shut off).
    **{f"/etc/libvirt/qemu/{vm}.xml": domain_xml(vm, f"5a1d0c6e-0000-4000-8000-00000000000{n}")
       for n, vm in enumerate(("vm1", "vm2"), start=1)},
    # Empty: systemd makes a transient machine id per boot.
    "/etc/machine-id": "",
    # Empty: the host keeps the name nspawn gives it (-M: hv1, hv2...).
    "/etc/hostname": "",
}

RECIPE = {"suite": SUITE, "packages": PACKAGES, "disable": DISABLE, "mask": MASK,
          "files": FILES, "switch": SWITCH, "first_boot": FIRST_BOOT, "version": 2}


def recipe_hash() -> str:
    """A digest of :data:`RECIPE`: the image's cache key."""
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def image_dir() -> Path:
    """``~/.cache/hostsetup/image-<recipe hash>`` (``root/`` inside once complete)."""
    return cache_dir() / f"image-{recipe_hash()}"


def root() -> Path:
    """The image's root if it is built; otherwise :class:`SandboxError` says how to build it."""
    path = image_dir() / "root"
    if not (image_dir() / "complete").exists():
        raise SandboxError(f"the sandbox host image is not built ({path}): run 'make setup' "
                           "or 'python -m sandbox.image build'")
    return path


def _mirror() -> str:
    for line in SOURCES.read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    raise SandboxError(f"no URIs: line in {SOURCES}")


def _run(argv: list[str], log: Path, timeout: float = 1800) -> None:
    with open(log, "ab") as out:
        out.write(f"+ {' '.join(argv)}\n".encode())
        out.flush()
        res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=timeout)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SandboxError(f"image build step failed ({res.returncode}): {' '.join(argv)}\n"
                           f"{tail}\n(full log: {log})")


def _chroot(new: Path, script: str, log: Path) -> None:
    # A private mount namespace: /proc and /dev are mounted for apt and dpkg only there.
    setup = (f"mount -t proc proc {new}/proc && mount --rbind /dev {new}/dev && "
             f"exec chroot {new} /bin/sh -ec \"$0\"")
    env = "DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup,
          f"export {env}; {script}"], log)


def _build(new: Path, log: Path) -> None:
    _run(["debootstrap", "--variant=minbase", SUITE, str(new), _mirror()], log)
    # The host's own apt configuration; and its already downloaded packages (hard links:
    # nothing is copied, apt only reads them) so that only what is missing is downloaded.
    (new / "etc/apt/sources.list").unlink(missing_ok=True)
    shutil.copy2(SOURCES, new / "etc/apt/sources.list.d" / SOURCES.name)
    archives = new / "var/cache/apt/archives"
    for deb in HOST_DEBS.glob("*.deb"):
        try:
            os.link(deb, archives / deb.name)
        except OSError:
            break  # another filesystem: apt downloads instead
    policy = new / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# image build: never start a service\nexit 101\n")
    policy.chmod(0o755)
    _chroot(new, "apt-get update -qq && apt-get install -y -q --no-install-recommends "
            + " ".join(PACKAGES) + " && apt-get clean && rm -rf /var/lib/apt/lists/*", log)
    policy.unlink()
    for path, content in FILES.items():
        target = new / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _run(["systemctl", f"--root={new}", "disable", *DISABLE], log)
    _run(["systemctl", f"--root={new}", "mask", *MASK], log)
    _first_boot(new, log.parent / "first-boot")


def _first_boot(new: Path, directory: Path) -> None:
    """Boot the new root once, as a host (volatile), and keep :data:`FIRST_BOOT`: OVS's
    database given the switch, libvirtd's QEMU capabilities.  Both daemons are
    stopped again (the image's hosts start with them stopped)."""
    from sandbox import host, manage  # the host boots images: imported when building one

    sb = Sandbox(dir=directory, name="first-boot", tag="img")
    sb.save()
    try:
        host.boot(sb, new)
        host.make_bridge(sb)
        host.run_inside(sb, "start libvirtd", "systemctl", "start", "libvirtd.service")
        # The first connection waits for libvirtd's drivers, hence for the probe.
        host.run_inside(sb, "virsh", "virsh", "-c", "qemu:///system", "list", "--all")
        host.run_inside(sb, "stop libvirtd", "systemctl", "stop", "libvirtd.service")
        inside = Path(sb.env["HOSTSETUP_HOST_ROOT"])
        for path in FIRST_BOOT:
            source, target = inside / path.lstrip("/"), new / path.lstrip("/")
            if not source.exists() or (source.is_dir() and not any(source.iterdir())):
                raise SandboxError(f"image first boot: {path} was not made")
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
    finally:
        manage.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


def build(quiet: bool = False) -> Path:
    """Build the image unless it is cached; returns its root.  Safe to run concurrently."""
    directory = image_dir()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "complete").exists():
            return directory / "root"
        t0 = time.monotonic()
        if not quiet:
            print(f"setup: building the sandbox host image in {directory} (a few minutes)",
                  flush=True)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        log = directory / "build.log"
        new = directory / "root.new"
        _build(new, log)
        new.rename(directory / "root")
        size = subprocess.run(["du", "-sm", str(directory / "root")], capture_output=True,
                              text=True).stdout.split()[0]
        elapsed = time.monotonic() - t0
        (directory / "complete").write_text(json.dumps(
            {"size_mib": int(size), "build_seconds": round(elapsed), "recipe": RECIPE},
            indent=2))
        if not quiet:
            print(f"setup: image built in {elapsed:.0f}s, {size} MiB", flush=True)
    return directory / "root"


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.image build|path``."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.image")
    parser.add_argument("action", choices=["build", "path"])
    args = parser.parse_args(argv)
    try:
        print(build(quiet=False) if args.action == "build" else root())
    except SandboxError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
