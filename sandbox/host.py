"""Sandbox component: a virtualization host booted from the image, real systemd as PID 1.

``systemd-nspawn --boot --volatile=overlay`` boots the image
(``sandbox/image.py``) in a private network namespace; everything the
host writes goes to a tmpfs layer, so nothing persists and several hosts run
from one root.  The settings that make this work on a machine without systemd
(cgroup v1 hybrid) are in ``/work/shared/HOSTBOX.md``:

- nspawn runs inside ``unshare --mount`` with a private tmpfs on ``/run/systemd``
  (nothing lands in the machine's own ``/run``), and inside cgroups made for this
  host (``/sys/fs/cgroup/{systemd,unified}/hostsetup-<id>``), removed at ``down``
  after killing whatever is left in them.
- ``/run/dbus``, ``/run/openvswitch`` and ``/run/libvirt`` are bind mounts of
  ``DIR/run/{bus,ovs,libvirt}``: the host's system bus, OVSDB and libvirt sockets
  are reachable from outside, and the answers written for outside use them.
- ``DIR`` itself is bound at the same path (so that paths in the answers, such
  as the hook's log or the wrapper dir, mean the same inside and out), as is the
  checkout with its venv (read-only), so the product runs inside on defaults.
- ``DIR/libvirt/hooks`` is the host's ``/etc/libvirt/hooks``; ``DIR/libvirt/log``
  its ``/var/log/libvirt``.

Open vSwitch and libvirtd are installed but stopped, as on a fresh host: the
services step starts them.  OVS's database comes with the image's switch
(``sandbox/image.py``): the bridge ``br0`` with ports ``vm1``/``vm2``/``mon0`` and
the underlay bridge ``wan0`` with port ``wan-ana``.  At boot the sandbox makes
what those ports are: veths ``vm1``/``vm2`` (peers in "VM" namespaces,
10.250.0.1/.2) and ``mon0`` (capture on ``mon0c``), in the host's network
namespace, which is named ``<tag>-<digest>-sw`` for ``ip netns exec``; and
``wan-ana``, which leads to the "analyser" namespace ``<tag>-<digest>-ana``
(10.251.0.2), the far end of tunnelled mirrors.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.core import Sandbox, SandboxError, alive, tail, wait_for
from sandbox.image import ANALYSER_PORT, BRIDGE, MONITOR, SWITCH, VMS
from sandbox.image import root as image_root

CHECKOUT = Path(__file__).resolve().parents[1]  # the checkout (with .venv) bound inside
RELAY = Path(__file__).resolve().with_name("relay.py")
CGROUP_TREES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
CAPTURE = "mon0c"  # the peer of MONITOR, where its copies are captured
VM_ADDRESSES = {"vm1": "10.250.0.1", "vm2": "10.250.0.2"}
# The remote "analyser" for tunnelled mirrors: a namespace whose eth0 (ANALYSER_IP,
# ANALYSER_MAC) is reached from the host over the underlay bridge UNDERLAY (port
# ANALYSER_PORT; the bridge's local port has UNDERLAY_IP).  The address, route and
# neighbour are given to ovs-vswitchd each time it starts (the image's drop-in).
UNDERLAY_IP, ANALYSER_IP = "10.251.0.1", "10.251.0.2"
ANALYSER_MAC = "02:00:0a:fb:00:02"
# Inside path -> DIR/run/<name>: the sockets reachable from outside.
RUN_BINDS = {"bus": "/run/dbus", "ovs": "/run/openvswitch", "libvirt": "/run/libvirt"}
# The scenario's required units: NetworkManager runs, the rest is started by the step.
REQUIRE = ["NetworkManager.service", "openvswitch-switch.service", "libvirtd.service"]
BROKEN_UNIT = "hostsetup-broken.service"  # in the image: fails when started
BOOT_TIMEOUT = 60.0
# Huge pages reserved for hugepage-backed ivshmem objects (given back at down).
HUGEPAGES = 4
NR_HUGEPAGES = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def prefix(sb: Sandbox) -> str:
    """The tag plus a digest of DIR: names outside DIR (netns, cgroups) never collide."""
    return f"{sb.tag}-{hashlib.sha1(str(sb.dir).encode()).hexdigest()[:6]}"


def cgroup_name(sb: Sandbox) -> str:
    """This host's cgroup, in each of :data:`CGROUP_TREES`."""
    return f"hostsetup-{prefix(sb)}"


def switch_ns(sb: Sandbox) -> str:
    """The name under which the host's network namespace is attached (``ip netns``)."""
    return f"{prefix(sb)}-sw"


def analyser_ns(sb: Sandbox) -> str:
    """The remote analyser's namespace (receives tunnelled mirror copies)."""
    return f"{prefix(sb)}-ana"


def vm_ns(sb: Sandbox, vm: str) -> str:
    """The namespace holding ``vm``'s end of its veth (as ``eth0``)."""
    return f"{prefix(sb)}-{vm}"


def run_dir(sb: Sandbox, name: str) -> Path:
    """``DIR/run/<name>``: bound at :data:`RUN_BINDS` ``[name]`` inside the host."""
    return sb.dir / "run" / name


def bus_address(sb: Sandbox) -> str:
    """The host's system bus, from outside."""
    return f"unix:path={run_dir(sb, 'bus') / 'system_bus_socket'}"


def leader(sb: Sandbox) -> int:
    """The pid (outside) of the host's PID 1, as recorded by ``up``."""
    return int(sb.env["HOSTSETUP_HOST_PID"])


def nspawn_argv(sb: Sandbox, image: Path) -> list[str]:
    """The nspawn command line that boots this host (never without ``--volatile=overlay``)."""
    binds = [f"--bind={run_dir(sb, name)}:{inside}" for name, inside in RUN_BINDS.items()]
    return [
        "systemd-nspawn", "-D", str(image), "-M", sb.name, "--boot", "--volatile=overlay",
        "--register=no", "--keep-unit", "--private-network", "--link-journal=no",
        "--console=pipe", *binds, f"--bind={sb.dir}",
        f"--bind={sb.dir / 'libvirt' / 'hooks'}:/etc/libvirt/hooks",
        f"--bind={sb.dir / 'libvirt' / 'log'}:/var/log/libvirt",
        f"--bind-ro={CHECKOUT}",
    ]


def _start_script(sb: Sandbox, image: Path) -> list[str]:
    # Join this host's cgroups first (nspawn's payload/supervisor go under them), then a
    # private mount namespace whose /run/systemd is a tmpfs (nspawn writes there).
    procs = " && ".join(f"echo $$ > {tree}/{cgroup_name(sb)}/cgroup.procs"
                        for tree in CGROUP_TREES)
    nspawn = shlex.join(nspawn_argv(sb, image))
    inner = f"mount -t tmpfs -o mode=0755 hostsetup /run/systemd && exec {nspawn}"
    return ["sh", "-c", f"{procs} && exec unshare --mount --propagation private "
            f"sh -c {shlex.quote(inner)}"]


def system_state(sb: Sandbox) -> str:
    """systemd's ``SystemState`` over the host's bus ('' while it does not answer)."""
    res = subprocess.run(
        ["busctl", "--address", bus_address(sb), "get-property", "org.freedesktop.systemd1",
         "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "SystemState"],
        capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    return res.stdout.split()[1].strip('"') if res.returncode == 0 else ""


def _container_pid(nspawn: int) -> int | None:
    try:
        children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        return next(int(c) for c in children
                    if Path(f"/proc/{c}/comm").read_text().strip() == "systemd")
    except (OSError, StopIteration, ValueError):
        return None


def exec_argv(sb: Sandbox, *argv: str) -> list[str]:
    """A command line that runs ``argv`` inside the host (all of its namespaces)."""
    return ["nsenter", "-t", str(leader(sb)), "-m", "-u", "-i", "-n", "-p", "-C",
            "--root", "--wd=/", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", "HOME=/root", f"TERM={os.environ.get('TERM', 'linux')}", *argv]


def run_inside(sb: Sandbox, what: str, *argv: str, timeout: float = 60) -> str:
    """Run a set-up command inside the host; raises :class:`SandboxError` on failure."""
    return sb.run(what, exec_argv(sb, *argv), timeout=timeout)


def boot(sb: Sandbox, image: Path | None = None) -> int:
    """Boot the host (from ``image``, default the built one) and wait until its systemd
    is up; returns the container's PID 1."""
    image = image or image_root()
    for name in RUN_BINDS:
        run_dir(sb, name).mkdir(parents=True, exist_ok=True)
    for part in ("hooks", "log", "bin", "domains"):
        (sb.dir / "libvirt" / part).mkdir(parents=True, exist_ok=True)
    for tree in CGROUP_TREES:
        Path(tree, cgroup_name(sb)).mkdir(exist_ok=True)
    sb.export("HOSTSETUP_HOST_CGROUP", cgroup_name(sb))
    pid = sb.spawn("systemd-nspawn", _start_script(sb, image))
    holder: dict[str, int] = {}

    def booted() -> bool:
        if not alive(pid):
            raise SandboxError(f"systemd-nspawn exited ({_how_it_ended(pid)}) while booting "
                               f"{sb.name}\n" + _log_tail(sb))
        inner = holder.get("pid") or _container_pid(pid)
        if inner is None:
            return False
        holder["pid"] = inner
        return system_state(sb) in ("running", "degraded")

    wait_for(booted, BOOT_TIMEOUT, f"host {sb.name} to boot (log: {sb.logs}/systemd-nspawn.log)")
    sb.export("HOSTSETUP_HOST_PID", str(holder["pid"]))
    sb.export("HOSTSETUP_HOST_ROOT", f"/proc/{holder['pid']}/root")
    return holder["pid"]


def _how_it_ended(pid: int) -> str:
    """The exit status of our child ``pid`` (reaped here), or how it is unknown."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exit status unknown"
    if not done:
        return "still a process"
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _log_tail(sb: Sandbox) -> str:
    return tail(sb.logs / "systemd-nspawn.log")


def _made(sb: Sandbox) -> Path:
    return sb.dir / "namespaces"  # what down() may delete, and only that


def check_free(sb: Sandbox) -> None:
    """Refuse (before anything starts) when this host's namespaces exist already."""
    taken = {switch_ns(sb), analyser_ns(sb), *(vm_ns(sb, vm) for vm in VMS)} \
        & existing_namespaces()
    if taken:
        raise SandboxError(
            f"network namespace(s) {', '.join(sorted(taken))} exist: a sandbox with tag "
            f"'{sb.tag}' is running in {sb.dir} (or was not taken down: 'ip netns delete "
            "NAME' removes a leftover)")


def make_network(sb: Sandbox) -> None:
    """Name the host's network namespace, make the VM namespaces and the veths."""
    sw = switch_ns(sb)
    sb.run("ip netns attach", ["ip", "netns", "attach", sw, str(leader(sb))])
    with open(_made(sb), "a") as made:
        made.write(sw + "\n")
    for vm in VMS:
        ns = vm_ns(sb, vm)
        sb.run("ip netns add", ["ip", "netns", "add", ns])
        with open(_made(sb), "a") as made:
            made.write(ns + "\n")
        sb.run("ip link add", ["ip", "link", "add", vm, "netns", sw, "type", "veth",
                               "peer", "name", "eth0", "netns", ns])
        sb.run("ip addr add", ["ip", "-n", ns, "addr", "add", f"{VM_ADDRESSES[vm]}/24",
                               "dev", "eth0"])
        for dev in ("lo", "eth0"):
            sb.run("ip link set up", ["ip", "-n", ns, "link", "set", dev, "up"])
    sb.run("ip link add", ["ip", "link", "add", MONITOR, "netns", sw, "type", "veth",
                           "peer", "name", CAPTURE, "netns", sw])
    ana = analyser_ns(sb)
    sb.run("ip netns add", ["ip", "netns", "add", ana])
    with open(_made(sb), "a") as made:
        made.write(ana + "\n")
    sb.run("ip link add", ["ip", "link", "add", ANALYSER_PORT, "netns", sw, "type", "veth",
                           "peer", "name", "eth0", "address", ANALYSER_MAC, "netns", ana])
    sb.run("ip addr add", ["ip", "-n", ana, "addr", "add", f"{ANALYSER_IP}/24", "dev", "eth0"])
    for dev in ("lo", "eth0"):
        sb.run("ip link set up", ["ip", "-n", ana, "link", "set", dev, "up"])
    for dev in (*VMS, MONITOR, CAPTURE, ANALYSER_PORT):
        sb.run("ip link set up", ["ip", "-n", sw, "link", "set", dev, "up"])


def make_bridge(sb: Sandbox) -> None:
    """Give OVS's database the image's switch (:data:`SWITCH`), leaving Open vSwitch
    stopped.  Done once, when the image is built (its first boot): every host then
    finds the bridges in its copy of the database."""
    run_inside(sb, "start ovsdb-server", "systemctl", "start", "ovsdb-server.service")
    run_inside(sb, "ovs-vsctl add-br", "ovs-vsctl", "--no-wait", *SWITCH)
    run_inside(sb, "stop ovsdb-server", "systemctl", "stop", "ovsdb-server.service")


def hugepages_up(sb: Sandbox) -> None:
    """Reserve ``HUGEPAGES`` 2 MiB pages and mount hugetlbfs at ``DIR/hugepages``.

    Done before the host boots: DIR is bound inside with its mounts, so the host
    sees the same hugetlbfs at the same path.  The pool is the machine's: what was
    added is recorded and taken off at :func:`hugepages_down`.
    """
    mount = sb.dir / "hugepages"
    mount.mkdir(parents=True, exist_ok=True)
    with open(NR_HUGEPAGES, "r+", encoding="ascii") as pool:
        fcntl.flock(pool, fcntl.LOCK_EX)  # other sandboxes adjust it too
        before = int(pool.read())
        pool.seek(0)
        pool.write(str(before + HUGEPAGES))
        pool.flush()
        pool.seek(0)
        added = int(pool.read()) - before  # the kernel may find fewer
    (sb.dir / "hugepages.added").write_text(str(added))
    if not os.path.ismount(mount):
        sb.run("mount", ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0755",
                         "hostsetup-hugepages", str(mount)])
    sb.export("HOSTSETUP_HUGETLBFS", str(mount))


def hugepages_down(sb: Sandbox) -> None:
    """Unmount the sandbox's hugetlbfs (its files go) and give the pages it added back."""
    mount = sb.dir / "hugepages"
    if os.path.ismount(mount):
        sb.run("umount", ["umount", str(mount)])
    added = sb.dir / "hugepages.added"
    if added.exists():
        with open(NR_HUGEPAGES, "r+", encoding="ascii") as pool:
            fcntl.flock(pool, fcntl.LOCK_EX)
            now = int(pool.read())
            pool.seek(0)
            pool.write(str(max(now - int(added.read_text()), 0)))
        added.unlink()


def up(sb: Sandbox) -> None:
    """Boot the host, prepare its network; export how to reach it; add its answers."""
    check_free(sb)
    hugepages_up(sb)
    boot(sb)
    make_network(sb)
    ovs, libvirt = run_dir(sb, "ovs"), run_dir(sb, "libvirt")
    uri = f"qemu:///system?socket={libvirt / 'libvirt-sock'}"
    hooks, log = sb.dir / "libvirt" / "hooks", sb.dir / "libvirt" / "log"
    for key, value in {
        "HOSTSETUP_DBUS_ADDRESS": bus_address(sb),
        "HOSTSETUP_OVSDB": f"unix:{ovs / 'db.sock'}",
        "HOSTSETUP_OVS_CTL": str(ovs / "ovs-vswitchd.ctl"),
        "HOSTSETUP_OVS_NETNS": switch_ns(sb),
        "HOSTSETUP_OVS_ANALYSER_NETNS": analyser_ns(sb),
        "HOSTSETUP_OVS_ANALYSER_IP": ANALYSER_IP,
        "HOSTSETUP_LIBVIRT_URI": uri,
        "HOSTSETUP_LIBVIRT_HOOKS_DIR": str(hooks),
        "HOSTSETUP_LIBVIRT_LOG_DIR": str(log),
    }.items():
        sb.export(key, value)
    sb.set_answers("services", {"bus": bus_address(sb), "require": REQUIRE, "start": True})
    sb.set_answers("ovs_mirror", {
        "db": f"unix:{ovs / 'db.sock'}",
        "vswitchd_ctl": str(ovs / "ovs-vswitchd.ctl"),
        "prune": True,
        "mirrors": [{"name": "span-vm1", "bridge": BRIDGE, "select_src_port": ["vm1"],
                     "select_dst_port": ["vm1"], "output_port": MONITOR}],
    })
    sb.set_answers("ivshmem", {
        "uri": uri,
        "hooks_dir": str(hooks),
        "name": f"hostsetup-{sb.tag}",
        "size": 4,
        "model": "plain",
        "domains": "all",
        "method": "definition",
        "wrapper_dir": str(sb.dir / "libvirt" / "bin"),
        "enforce": "warn",
        "owner": "libvirt-qemu:kvm",  # QEMU runs as libvirt-qemu: it must open the file
        "mode": "0660",
        "hook_log": str(log / "hostsetup-ivshmem.log"),
        "hugetlbfs": str(sb.dir / "hugepages"),
        "restart_libvirtd": True,
        "bus": bus_address(sb),
    })


def _listening_inside(sb: Sandbox, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
    res = subprocess.run(exec_argv(sb, "python3", "-c", probe), capture_output=True,
                         timeout=10, stdin=subprocess.DEVNULL)
    return res.returncode == 0


def expose(sb: Sandbox, url: str) -> None:
    """Make the machine's ``127.0.0.1:PORT`` of ``url`` answer at ``127.0.0.1:PORT`` inside
    the host (two relays through a unix socket under DIR: see ``relay.py``)."""
    port = urlsplit(url).port
    if port is None:
        raise SandboxError(f"{url}: no port to relay into host {sb.name}")
    sock = run_dir(sb, "relay") / f"{port}.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    sb.spawn(f"relay-{port}", [sys.executable, str(RELAY), "unix-to-tcp", str(sock), str(port)],
             ready=sock.exists)
    run_inside(sb, "relay", "systemd-run", "--quiet", f"--unit=hostsetup-relay-{port}",
               "--description=hostsetup sandbox: relay to the machine's port",
               "/usr/bin/python3", str(RELAY), "tcp-to-unix", str(port), str(sock))
    wait_for(lambda: _listening_inside(sb, port), 10, f"relay of port {port} into {sb.name}")


# Answers that hold an address outside the host; inside, the defaults apply.
OUTSIDE_KEYS = {"services": ("bus",), "ovs_mirror": ("db", "vswitchd_ctl"),
                "ivshmem": ("uri", "hooks_dir", "hook_log", "wrapper_dir", "bus")}
# Secrets copied into the host (as an operator would put them there): the agent's
# unit has PrivateTmp=yes, so a file under a DIR in /tmp would not be visible to it.
VSPHERE_PASSWORD = "/etc/hostsetup/vsphere-password"
REDIS_PASSWORD = "/etc/hostsetup/redis-password"


def inside_answers(answers: dict[str, Any]) -> dict[str, Any]:
    """``answers`` for use inside the host: no addresses, the product's defaults."""
    inside = {section: {k: v for k, v in values.items()
                        if k not in OUTSIDE_KEYS.get(section, ())}
              for section, values in answers.items()}
    if "vsphere_network" in inside:
        inside["vsphere_network"]["password"] = f"file:{VSPHERE_PASSWORD}"
    return inside


def put_file(sb: Sandbox, path: str, source: Path, mode: int = 0o600) -> None:
    """Copy ``source`` into the host at ``path`` (its overlay), owned by root with ``mode``."""
    target = Path(sb.env["HOSTSETUP_HOST_ROOT"], path.lstrip("/"))
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())


def install_agent(sb: Sandbox, broker: str, password_file: Path) -> None:
    """Install the fleet agent as README tells an operator: the unit from ``deploy/``, an
    ``agent.conf`` (broker, password reference; the name is the hostname), the password
    file, ``systemctl daemon-reload && systemctl enable --now hostsetup-agent``."""
    put_file(sb, REDIS_PASSWORD, password_file)
    conf = sb.dir / "agent.conf"
    conf.write_text(f"[agent]\nbroker = {broker}\npassword = file:{REDIS_PASSWORD}\n")
    put_file(sb, "/etc/hostsetup/agent.conf", conf, 0o640)
    # The unit runs /opt/hostsetup/.venv/bin/hostsetup: the checkout, bound read-only.
    # A checkout under /tmp (a CI clone) would be hidden by the unit's PrivateTmp=yes
    # (its venv names its own path): only then does the sandbox add a drop-in that
    # turns it off; a real install lives in /opt and keeps the unit as shipped.
    tmp_checkout = any(CHECKOUT.is_relative_to(d) for d in ("/tmp", "/var/tmp"))
    dropin = ("mkdir -p /etc/systemd/system/hostsetup-agent.service.d\n"
              "printf '[Service]\\nPrivateTmp=no\\n' > "
              "/etc/systemd/system/hostsetup-agent.service.d/checkout-in-tmp.conf\n"
              if tmp_checkout else "")
    run_inside(sb, "install the agent", "sh", "-ec",
               f"ln -sfn {shlex.quote(str(CHECKOUT))} /opt/hostsetup\n"
               f"install -m 0644 {shlex.quote(str(CHECKOUT / 'deploy'))}/hostsetup-agent.service"
               " /etc/systemd/system/\n" + dropin +
               "systemctl daemon-reload && systemctl enable --quiet --now hostsetup-agent")


def existing_namespaces() -> set[str]:
    """Names listed by ``ip netns``."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _cgroup_pids(path: Path) -> list[int]:
    pids = []
    for procs in path.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
    return pids


def remove_cgroups(name: str, timeout: float = 10.0) -> None:
    """Kill what is left in the host's cgroups and remove them (deepest first)."""
    for tree in CGROUP_TREES:
        top = Path(tree, name)
        if not top.is_dir():
            continue
        deadline = time.monotonic() + timeout
        while (pids := _cgroup_pids(top)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        top.rmdir()


def qemu_pids(sb: Sandbox) -> dict[str, int]:
    """The host's running QEMU processes by domain (pids as seen outside, from its cgroups)."""
    found = {}
    for pid in _cgroup_pids(Path(CGROUP_TREES[0], sb.env.get("HOSTSETUP_HOST_CGROUP", "-"))):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"qemu-system" in argv[0]:
            for arg in argv:
                if arg.startswith(b"guest="):
                    found[arg[6:].split(b",")[0].decode()] = pid
    return found


def before_stop(sb: Sandbox) -> None:
    """Let every process of the host run (SIGCONT) before it is powered off: one that a
    test stopped (SIGSTOP) could not act on the SIGTERM of the shutdown, which would
    then wait out its timeout."""
    for pid in _cgroup_pids(Path(CGROUP_TREES[0], sb.env.get("HOSTSETUP_HOST_CGROUP", "-"))):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            continue


def down(sb: Sandbox) -> None:
    """After nspawn was stopped (by pid): its cgroups, the namespaces ``up`` made, the
    huge pages."""
    name = sb.env.get("HOSTSETUP_HOST_CGROUP")
    if name:
        remove_cgroups(name)
    hugepages_down(sb)
    try:
        made = _made(sb).read_text().split()
    except FileNotFoundError:
        return
    existing = existing_namespaces()
    for ns in made:
        if ns in existing:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    _made(sb).unlink()


def shell(sb: Sandbox, argv: list[str]) -> int:
    """Run ``argv`` (default: a login shell) inside the host, on this terminal."""
    return subprocess.call(exec_argv(sb, *(argv or ["/bin/bash", "-l"])))


__all__ = ["up", "down", "before_stop", "boot", "shell", "exec_argv", "run_inside", "leader",
           "bus_address", "system_state", "BROKEN_UNIT", "REQUIRE", "VM_ADDRESSES"]
