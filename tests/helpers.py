"""Helpers shared by the tests (no test module imports another test module)."""

from __future__ import annotations

import itertools
import json
import os
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tmux import Terminal

from backends.bundle import RealBackends
from backends.interfaces import Backends
from backends.interfaces.vsphere import Inventory, vsphere_api
from sandbox import host, manage, vcsim
from sandbox.core import Sandbox
from sandbox.image import domain_xml
from steps.base import Change, Context
from wizard import answers as answers_mod
from wizard.runner import Run, execute

ROOT = Path(__file__).resolve().parent.parent


def hostsetup(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m wizard``) with no terminal and no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "wizard", *args],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def systemd_call(sb: Sandbox, method: str, signature: str = "", *args: str) -> str:
    """Call a method of a host's systemd Manager with busctl (independently of our backend)."""
    return subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "call",
         "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", method,
         *([signature, *args] if signature else [])],
        capture_output=True, text=True, check=True, timeout=60).stdout


def add_unit(sb: Sandbox, name: str, text: str, reload: bool = True) -> Path:
    """Write a unit file (or drop-in, ``NAME.d/x.conf``) into a sandbox host's
    /etc/systemd/system (its overlay), as an operator would; with ``reload``, then
    ask its systemd to ``Reload``."""
    path = Path(sb.env["HOSTSETUP_HOST_ROOT"], "etc/systemd/system", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if reload:
        systemd_call(sb, "Reload")
    return path


def unit_prop(sb: Sandbox, unit: str, prop: str) -> str:
    """A unit's property read with busctl, independently of our backend.

    ``LoadUnit`` first: real systemd has no object for a unit nothing references.
    """
    path = systemd_call(sb, "LoadUnit", "s", unit).split()[1].strip('"')
    out = subprocess.run(
        ["busctl", "--address", sb.env["HOSTSETUP_DBUS_ADDRESS"], "get-property",
         "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Unit", prop],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return out.split()[1].strip('"')


def unit_state(sb: Sandbox, unit: str) -> str:
    """ActiveState, read with busctl."""
    return unit_prop(sb, unit, "ActiveState")


def run(mode: Literal["plan", "apply"], sections: dict[str, Any], backends: Backends) -> Run:
    """The runner on an answers document (``version: 1`` added), in process."""
    return execute(answers_mod.validate({"version": 1, **sections}), mode, backends)


def statuses(run_: Run) -> dict[str, str]:
    """Step name -> status of a run."""
    return {s.name: s.status for s in run_.steps}


def systemctl(sb: Sandbox, *args: str) -> str:
    """systemctl inside a sandbox host."""
    return host.run_inside(sb, "systemctl", "systemctl", *args)


# -- Open vSwitch on a sandbox host -------------------------------------------

_TAGS = itertools.count()


@contextmanager
def running_host(directory: Path, tag: str = "") -> Iterator[Sandbox]:
    """A booted sandbox host, under a tag of its own, whose systemd has started Open
    vSwitch; ``DIR/answers.yaml`` holds only its ovs_mirror section.  Taken down
    afterwards (container, cgroups, namespaces and their devices)."""
    tag = tag or f"om{os.getpid() % 1000}{next(_TAGS)}"
    try:
        sb = manage.up(directory, tag=tag, components=[manage.HOST])
        systemctl(sb, "start", "openvswitch-switch.service")
        sb.answers = {"ovs_mirror": sb.answers["ovs_mirror"]}
        manage.write_outputs(sb)
        yield sb
    finally:
        manage.down(directory)


def vsctl(sb: Sandbox, *args: str) -> str:
    """Run ovs-vsctl against the sandbox's database (independent of our backend)."""
    res = subprocess.run(["ovs-vsctl", f"--db={sb.env['HOSTSETUP_OVSDB']}", "--timeout=20",
                          *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def answers_file(sb: Sandbox, path: Path, mirrors: list[dict[str, Any]], **extra: Any) -> str:
    """An answers file aimed at the sandbox with these mirrors."""
    section = {"db": sb.env["HOSTSETUP_OVSDB"], "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"]}
    answers_mod.write(path, {"version": 1, "ovs_mirror": {**section, **extra, "mirrors": mirrors}})
    return str(path)


# -- the ivshmem hook, run as libvirtd runs it --------------------------------

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {extra}
  </devices>
</domain>
"""
SHMEM = "<shmem name='{name}'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"


def configure(hook_dir: Path, log: Path, wrappers: dict[str, str] | None = None,
              chain: bool = False, **answers: Any) -> None:
    """Write the hook's configuration as the step writes it, logging to ``log``."""
    from steps.ivshmem import CONFIG_NAME, IvshmemAnswers, hook_config

    config = hook_config(IvshmemAnswers(hook_log=str(log), **answers), wrappers or {}, chain)
    (hook_dir / CONFIG_NAME).write_bytes(config)


def call(hook: Path, domain: str, op: str, subop: str, xml: str,
         timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run the hook as libvirtd does; a hang fails the test after ``timeout`` seconds."""
    return subprocess.run([str(hook), domain, op, subop, "-"], input=xml.encode(),
                          capture_output=True, timeout=timeout)


def shmems(xml: bytes) -> list[ET.Element]:
    """The <shmem> elements of a domain XML."""
    return ET.fromstring(xml).findall("devices/shmem")


# -- ivshmem on a sandbox host's libvirtd -------------------------------------

# What only makes sense from outside the host: inside, these answers are the defaults.
OUTSIDE_ONLY = ("uri", "hooks_dir", "hook_log", "wrapper_dir", "bus")


def virsh(sb: Sandbox, *args: str) -> str:
    """``virsh`` from outside, through the host's libvirt socket."""
    return sb.run("virsh", ["virsh", "-c", sb.env["HOSTSETUP_LIBVIRT_URI"], *args])


def shm(sb: Sandbox, name: str) -> Path:
    """The host's /dev/shm/<name>, from outside."""
    return Path(sb.env["HOSTSETUP_HOST_ROOT"], "dev/shm", name)


def ivshmem_answers(sb: Sandbox, **overrides: Any) -> dict[str, Any]:
    """The sandbox's ivshmem answers (for use from outside) with ``overrides``."""
    return {**sb.answers["ivshmem"], **overrides}


def ivshmem_cli(sb: Sandbox, command: str, section: dict[str, Any], *extra: str,
                inside: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m wizard <command> --answers F`` with only the ivshmem section: inside
    the host on default addresses, or (``inside=False``) from outside."""
    path = sb.dir / f"answers-{command}.yaml"
    if inside:
        section = {k: v for k, v in section.items()
                   if k not in OUTSIDE_ONLY or v != sb.answers["ivshmem"].get(k)}
    manage.write_yaml(path, {"version": 1, "ivshmem": section})
    argv = [sys.executable, "-m", "wizard", command, "--answers", str(path), *extra]
    return subprocess.run(host.exec_argv(sb, *argv) if inside else argv, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def start_domain(sb: Sandbox, name: str) -> tuple[str, str]:
    """Start a domain; returns (``info pci`` from the monitor, QEMU's command line)."""
    virsh(sb, "start", name)
    pci = virsh(sb, "qemu-monitor-command", "--hmp", name, "info pci")
    pid = host.qemu_pids(sb)[name]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return pci, cmdline


def define_domain(sb: Sandbox, name: str) -> None:
    """Define one more small domain."""
    xml = sb.path("domains", f"{name}.xml")
    xml.write_text(domain_xml(name))
    virsh(sb, "define", str(xml))


# -- the wizard in tmux on a sandbox host -------------------------------------


def wizard_on(sb: Sandbox, tmp: Path, step: str) -> Terminal:
    """The wizard asking only ``step``, prefilled with the sandbox's answers."""
    answers = tmp / f"{step}.yaml"
    manage.write_yaml(answers, {"version": 1, "interactive": [step], step: sb.answers[step]})
    return Terminal(f"{ROOT}/.venv/bin/python -m wizard --answers {answers} "
                    f"--log {tmp}/{step}.log", cwd=tmp)


def pending(sb: Sandbox) -> str:
    """What ``hostsetup plan`` would change on the sandbox (stdout)."""
    res = hostsetup("plan", "--answers", str(sb.dir / "answers.yaml"))
    assert res.returncode == 4, res.stdout + res.stderr
    return res.stdout


# -- vSphere: the simulator, read back independently ---------------------------

Start = Callable[..., vcsim.Vcsim]  # the vs_start fixture: start(model=, hosts=, vms=)


def read_back(section: dict[str, Any]) -> Inventory:
    """The inventory through a fresh session (logged out afterwards)."""
    from steps.vsphere_network import connection

    backends = RealBackends()
    try:
        return vsphere_api(backends, connection(section)).inventory()
    finally:
        backends.close()


def vsphere_run(section: dict[str, Any], apply: bool = True) -> list[Change]:
    """discover + validate + plan (+ apply) like the runner; returns the plan."""
    from steps.vsphere_network import VSphereNetworkAnswers, VSphereNetworkStep

    step = VSphereNetworkStep()
    answers = VSphereNetworkAnswers.model_validate(section)
    backends = RealBackends()
    ctx = Context(backends=backends)
    try:
        ctx.facts[step.name] = step.facts_for(answers, ctx)
        assert step.validate(answers, ctx.facts[step.name]) == []
        ops = step.plan(answers, ctx)
        if apply and ops:
            step.apply(answers, ops, ctx)
            ctx.facts[step.name] = step.facts_for(answers, ctx)  # the runner refreshes it
            assert step.verify(answers, ctx) == []
        return [op.change for op in ops]
    finally:
        backends.close()


def vsphere_problems(section: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """validate() problems keyed by path."""
    from steps.vsphere_network import VSphereNetworkAnswers, VSphereNetworkStep

    step = VSphereNetworkStep()
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        facts = step.discover(step.connection(section), ctx)
        found = step.validate(VSphereNetworkAnswers.model_validate(section), facts)
        return {p.path: p.message for p in found}
    finally:
        backends.close()


def vsphere_cli(tmp: Path, section: dict[str, Any], command: str = "apply",
                env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    """Run ``python -m wizard <command>`` on an answers file; returns rc, output, report."""
    answers, report, log = tmp / "answers.yaml", tmp / "report.json", tmp / "run.log"
    manage.write_yaml(answers, {"version": 1, "vsphere_network": section})
    res = hostsetup(command, "--answers", str(answers), "--report", str(report),
                    "--log", str(log), env=env)
    output = res.stdout + res.stderr + (log.read_text() if log.exists() else "")
    return res.returncode, output, json.loads(report.read_text())


@contextmanager
def vcenter(sim: vcsim.Vcsim) -> Iterator[Any]:
    """The content of a plain pyVmomi session of its own (read back independently)."""
    from pyVim.connect import Disconnect, SmartConnect

    ctx = ssl.create_default_context(cafile=str(sim.cert))
    si = SmartConnect(host=sim.host, port=sim.port, user=vcsim.USER,
                      pwd=sim.password_file.read_text().strip(), sslContext=ctx)
    try:
        yield si.RetrieveContent()
    finally:
        Disconnect(si)


def objects(content: Any, kind: Any) -> dict[str, Any]:
    """The inventory's objects of a kind, by name."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return {o.name: o for o in view.view}
    finally:
        view.Destroy()


@contextmanager
def networks(sim: vcsim.Vcsim, config: bool = False) -> Iterator[dict[str, Any]]:
    """Each host's ``config.network`` (``config`` with ``config=True``) read with
    plain pyVmomi (a session of its own)."""
    from pyVmomi import vim

    with vcenter(sim) as content:
        yield {name: h.config if config else h.config.network
               for name, h in objects(content, vim.HostSystem).items()}


def selected(config: Any, nic_type: str) -> list[str]:
    """The devices a host's virtual NIC manager selects for ``nic_type``."""
    from pyVmomi import vim

    [nc] = [nc for nc in config.virtualNicManagerInfo.netConfig if nc.nicType == nic_type]
    assert isinstance(nc, vim.host.VirtualNicManager.NetConfig)
    return sorted(key.rsplit("-", 1)[1] for key in nc.selectedVnic or ())


DC = "DC0"  # the simulator's datacenter
PVLANS = [{"primary": 100, "secondary": 100, "type": "promiscuous"},
          {"primary": 100, "secondary": 101, "type": "isolated"},
          {"primary": 100, "secondary": 102, "type": "community"}]


def distributed(sim: vcsim.Vcsim) -> dict[str, Any]:
    """A switch on every host (vmnic2, vmnic3 as uplinks) with a PVLAN map, a
    trunk port group with its own failover order, an ephemeral VLAN port group
    with shaping, and an isolated PVLAN port group."""
    return {**vcsim.answers(sim), "vswitches": [], "portgroups": [], "vm_adapters": [],
            "dvswitches": [{"name": "dvSwitch1", "datacenter": DC, "mtu": 9000,
                            "uplinks": ["Uplink 1", "Uplink 2"], "pvlans": PVLANS,
                            "hosts": [{"name": h, "nics": ["vmnic2", "vmnic3"]}
                                      for h in sim.hosts]}],
            "dvportgroups": [
                {"name": "Trunk", "dvswitch": "dvSwitch1", "vlan_trunk": ["100-200", "300"],
                 "allow_promiscuous": True,
                 "teaming": {"active_nics": ["Uplink 2"], "standby_nics": ["Uplink 1"]}},
                {"name": "VLAN-30", "dvswitch": "dvSwitch1", "vlan": 30, "binding": "ephemeral",
                 "shaping": {"enabled": True, "average_kbps": 10000, "peak_kbps": 20000}},
                {"name": "Isolated", "dvswitch": "dvSwitch1", "pvlan": 101, "ports": 16}]}
