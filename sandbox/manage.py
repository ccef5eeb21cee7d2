"""``sandbox up|down|status``: start the components, write ``answers.yaml`` and ``env``.

``up_fleet`` starts N independent hosts under ``DIR/<name>`` (each with every
component but Redis, and its own tag), one Redis for the fleet and one agent
per host, and writes ``DIR/fleet-answers.yaml``.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sandbox.core import Sandbox, SandboxError, alive, tail, wait_for

# Components in start order; each module has ``up(sb: Sandbox) -> None``.  The host
# (real systemd with Open vSwitch, libvirtd, NetworkManager) and what is remote by
# nature: the vSphere simulator and Redis.
HOST = "sandbox.host"
COMPONENTS = [HOST, "sandbox.vcsim", "sandbox.redis"]
# Every module with a ``down(sb)`` (after its processes are stopped) or a
# ``before_stop(sb)``.
CLEANUPS = [HOST]
FLEET_ONLY = "sandbox.redis"  # one for the whole fleet, not one per host
FLEET = "fleet"  # the name of the fleet-level sandbox (Redis and the agents)


def _check_free(directory: Path) -> None:
    if (directory / "state.json").exists() and any(
        alive(p.pid) for p in Sandbox.load(directory).procs
    ):
        raise SandboxError(f"a sandbox is already running in {directory}; run 'sandbox down' first")


def up(directory: Path, name: str = "sandbox", tag: str = "hs0",
       components: list[str] | None = None) -> Sandbox:
    """Start every component (or ``components``) under ``directory``; on failure stop them."""
    directory = directory.resolve()
    _check_free(directory)
    sb = Sandbox(dir=directory, name=name, tag=tag)
    sb.save()
    try:
        for module in COMPONENTS if components is None else components:
            importlib.import_module(module).up(sb)
        if "HOSTSETUP_HOST_PID" in sb.env:
            from sandbox import host

            for key in ("HOSTSETUP_VSPHERE_URL", "HOSTSETUP_REDIS_URL"):
                if key in sb.env:
                    host.expose(sb, sb.env[key])
            if "HOSTSETUP_VSPHERE_PASSWORD_FILE" in sb.env:
                host.put_file(sb, host.VSPHERE_PASSWORD,
                              Path(sb.env["HOSTSETUP_VSPHERE_PASSWORD_FILE"]))
    except BaseException:
        down(directory)
        raise
    write_outputs(sb)
    return sb


def up_fleet(directory: Path, hosts: int, components: list[str] | None = None) -> Sandbox:
    """N sandbox hosts ``hv1..hvN`` with an agent each, and one Redis; returns the fleet's.

    ``components`` (default: every one but Redis) lets tests start lighter hosts.
    """
    from sandbox import redis

    if hosts < 1:
        raise SandboxError(f"--hosts {hosts}: expected at least 1")
    directory = directory.resolve()
    _check_free(directory)
    fleet = Sandbox(dir=directory, name=FLEET, tag="hsf")
    fleet.save()
    names = [f"hv{i}" for i in range(1, hosts + 1)]
    mods = [m for m in COMPONENTS if m != FLEET_ONLY] if components is None else components
    try:
        redis.up(fleet)
        conf = fleet.path("agent.conf")
        conf.write_text(f"[agent]\nbroker = {fleet.env['HOSTSETUP_REDIS_URL']}\n"
                        f"password = {fleet.env['HOSTSETUP_REDIS_PASSWORD']}\n")
        # Hosts start side by side: each is independent (own dir, tag, sockets).
        with ThreadPoolExecutor(max_workers=min(hosts, 8)) as pool:
            members = list(pool.map(
                lambda i: up(directory / names[i], names[i], f"hs{i + 1}", mods), range(hosts)))
        if HOST in mods:
            install_agents(fleet, members)
        else:  # hosts without a system of their own: agents on this machine
            start_agents(fleet, members, conf)
    except BaseException:
        down(directory)
        raise
    write_outputs(fleet)
    write_yaml(directory / "fleet-answers.yaml", fleet_answers(members), header=FLEET_HEADER)
    return fleet


def install_agents(fleet: Sandbox, members: list[Sandbox]) -> None:
    """Redis relayed into each host, the agent installed there as a systemd unit; wait
    until every agent listens."""
    from sandbox import host, redis

    url = fleet.env["HOSTSETUP_REDIS_URL"]

    def install(sb: Sandbox) -> None:
        host.expose(sb, url)
        host.install_agent(sb, url, redis.password_file(fleet))

    with ThreadPoolExecutor(max_workers=min(len(members), 8)) as pool:
        list(pool.map(install, members))

    def running_or_raise() -> None:
        for sb in members:
            res = subprocess.run(host.exec_argv(sb, "systemctl", "is-active", "hostsetup-agent"),
                                 capture_output=True, text=True, timeout=10)
            if res.stdout.strip() not in ("active", "activating"):
                journal = subprocess.run(
                    host.exec_argv(sb, "journalctl", "-u", "hostsetup-agent", "-n", "20",
                                   "--no-pager"), capture_output=True, text=True, timeout=10)
                raise SandboxError(f"the agent unit of {sb.name} is {res.stdout.strip()}:\n"
                                   + journal.stdout)

    wait_listening(fleet, {sb.name for sb in members}, running_or_raise)


def wait_listening(fleet: Sandbox, want: set[str], check: Callable[[], None]) -> None:
    """Wait (bounded) until agents serve the queues of ``want``; ``check`` raises on a
    dead agent."""
    from wizard import fleet as fleet_mod

    cfg = fleet_mod.broker_config(None, None, fleet_mod.load_config(fleet.dir / "agent.conf"),
                                  {})
    run = fleet_mod.FleetRun(fleet_mod.make_app(cfg), "plan", {}, fleet_mod.Options(agent_wait=1))

    def all_listening() -> bool:
        check()
        return want <= run.listening(sorted(want))

    wait_for(all_listening, 90, f"agents of {', '.join(sorted(want))}")


def start_agents(fleet: Sandbox, members: list[Sandbox], conf: Path) -> None:
    """One ``hostsetup agent`` per host, with that host's env; wait until all listen."""
    pids = {sb.name: fleet.spawn(f"agent-{sb.name}",
                                 [sys.executable, "-m", "wizard", "agent", "--config", str(conf),
                                  "--name", sb.name],
                                 env={**sb.env, **fleet.env})
            for sb in members}

    def alive_or_raise() -> None:
        for name, pid in pids.items():
            if not alive(pid):
                log = tail(fleet.logs / f"agent-{name}.log")
                raise SandboxError(f"agent-{name} exited\n{log}")

    wait_listening(fleet, {sb.name for sb in members}, alive_or_raise)


FLEET_HEADER = (
    "# Fleet answers for the hostsetup sandbox; written by 'hostsetup sandbox up --hosts N'.\n"
    "# The base is hv1's answers; each host overrides its own service addresses and a few\n"
    "# values, so that every host ends with a configuration of its own.\n"
)

# Per-host differences of the demo fleet (host number -> section overrides).
VARIANTS: dict[str, Any] = {
    "services": lambda n, sec: {"require": [u for u in sec["require"]
                                            if n % 2 or u != "NetworkManager.service"]},
    "ovs_mirror": lambda n, sec: {"mirrors": [
        {**m, "name": f"span-hv{n}",
         "select_src_port": ["vm1" if n % 2 else "vm2"],
         "select_dst_port": ["vm1" if n % 2 else "vm2"]} for m in sec["mirrors"]]},
}


def overlay(base: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """What ``host`` overrides of ``base`` (the inverse of answers.deep_merge)."""
    out: dict[str, Any] = {k: None for k in base if k not in host}
    for key, value in host.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if sub := overlay(base[key], value):
                out[key] = sub
        elif key not in base or value != base[key]:
            out[key] = value
    return out


def fleet_answers(members: list[Sandbox]) -> dict[str, Any]:
    """The fleet answers file: hv1's answers as the base, one override set per host."""
    from sandbox import host

    per_host = []
    for n, sb in enumerate(members, start=1):
        # Agents inside real hosts use the host's defaults; others the addresses.
        own = host.inside_answers(sb.answers) if "HOSTSETUP_HOST_PID" in sb.env else sb.answers
        answers = {k: dict(v) for k, v in own.items()}
        for section, variant in VARIANTS.items():
            if section in answers:
                answers[section].update(variant(n, answers[section]))
        per_host.append(answers)
    base = per_host[0]
    hosts = [{"name": sb.name, **overlay(base, a)} for sb, a in zip(members, per_host, strict=True)]
    return {"version": 1, **base, "hosts": hosts}


def write_outputs(sb: Sandbox) -> None:
    """Write ``DIR/env`` (shell exports), ``DIR/answers.yaml`` (for use from outside) and,
    for a host, ``DIR/inside-answers.yaml`` and ``DIR/demo-answers.yaml`` (inside it)."""
    env_lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(sb.env.items())]
    (sb.dir / "env").write_text("\n".join(env_lines) + "\n")
    write_yaml(sb.dir / "answers.yaml", {"version": 1, **sb.answers}, header=ANSWERS_HEADER)
    if "HOSTSETUP_HOST_PID" not in sb.env:
        return
    from sandbox import host

    inside = host.inside_answers(sb.answers)
    write_yaml(sb.dir / "inside-answers.yaml", {"version": 1, **inside}, header=INSIDE_HEADER)
    # For `make demo`: the same answers, every section shown in the wizard.
    write_yaml(sb.dir / "demo-answers.yaml",
               {"version": 1, "interactive": list(inside), **inside}, header=INSIDE_HEADER)


ANSWERS_HEADER = "# Answers aimed at the hostsetup sandbox; written by 'hostsetup sandbox up'.\n"
INSIDE_HEADER = ("# Answers for use inside the sandbox host ('hostsetup sandbox shell'): no\n"
                 "# addresses, the defaults of a real host; written by 'hostsetup sandbox up'.\n")


def shell(directory: Path, name: str | None, argv: list[str]) -> int:
    """Run ``argv`` (default: a login shell) inside a host of the sandbox in ``directory``
    (``name``: a fleet's host, default its first); returns its exit code."""
    from sandbox import host

    directory = directory.resolve()
    if not (directory / "state.json").exists():
        raise SandboxError(f"no sandbox in {directory}: run 'hostsetup sandbox up' first")
    sb = Sandbox.load(directory)
    if sb.name == FLEET or name:
        hosts = sorted(p.parent.name for p in directory.glob("*/state.json"))
        pick = name or (hosts[0] if hosts else "")
        if pick not in hosts:
            raise SandboxError(f"--host {pick}: expected one of {', '.join(hosts) or 'none'}")
        sb = Sandbox.load(directory / pick)
    if "HOSTSETUP_HOST_PID" not in sb.env or not alive(host.leader(sb)):
        raise SandboxError(f"host {sb.name} in {sb.dir} is not running")
    return host.shell(sb, argv)


def write_yaml(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write ``data`` as block-style YAML (the sandbox's files hold no secrets)."""
    from wizard.answers import dump_yaml

    path.write_text(header + dump_yaml(data))


def down(directory: Path) -> list[str]:
    """Stop everything ``up`` (or ``up_fleet``) started in ``directory``, by pid."""
    directory = directory.resolve()
    if not (directory / "state.json").exists():
        return []
    sb = Sandbox.load(directory)
    cleanups = [importlib.import_module(m) for m in CLEANUPS] if sb.name != FLEET else []
    for module in cleanups:
        getattr(module, "before_stop", lambda sb: None)(sb)
    stopped = sb.stop()
    for module in cleanups:
        getattr(module, "down", lambda sb: None)(sb)
    for host in sorted(directory.glob("*/state.json")):
        stopped += [f"{host.parent.name}: {p}" for p in down(host.parent)]
    return stopped


def status(directory: Path) -> list[tuple[str, int, bool]]:
    """Each recorded process (a fleet's hosts' too): name, pid, running."""
    directory = directory.resolve()
    if not (directory / "state.json").exists():
        return []
    procs = [(p.name, p.pid, alive(p.pid)) for p in Sandbox.load(directory).procs]
    for host in sorted(directory.glob("*/state.json")):
        procs += [(f"{host.parent.name}/{n}", pid, r) for n, pid, r in status(host.parent)]
    return procs
