"""``hostsetup doctor``: a read-only preflight of this host, one line per check.

Each check is a small function returning a :class:`Result` (ok, fail or skip,
with a detail that names what was tried, e.g. an address).  What is checked
comes from a :class:`Target`: the answers' sections (validated), or each
step's defaults without an answers file.  The backends are reached through
the same bundle and adapters as a run, and only read: nothing is started,
written or changed (a socket-activated daemon may be started by systemd when
it is connected to, as by any client).

The checks that talk to a system run side by side, one group per system,
bounded together by ``timeout``: a system that does not answer makes its
group fail ("ADDRESS: no answer within N s"), never the doctor hang.  As in a run, a
daemon that is down is not a failure when the services step's plan starts it
(the check says so and is skipped).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import os
import posixpath
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel

from backends.interfaces import BackendError, Backends, BackendUnreachable
from steps import REGISTRY
from steps.base import InputRefused, read_regular
from steps.data import ivshmem_hook
from wizard import __version__
from wizard.exits import EXIT_FAILED, EXIT_OK

Status = Literal["ok", "fail", "skip"]
T = TypeVar("T")
CHECK_TIMEOUT = 30.0  # seconds for every check that waits on a system, together
MAX_SKEW = 60.0  # seconds of clock difference with the vCenter before it fails
# Tests only: seconds added to this host's clock by the clock-skew check (the
# vSphere simulator's clock cannot be set).
CLOCK_OFFSET_ENV = "HOSTSETUP_DOCTOR_CLOCK_OFFSET"
AGENT_UNIT = "hostsetup-agent.service"
HOOK_LIMIT = 1024 * 1024  # bytes read of an installed hook file
# The hook must never call back into libvirtd: libvirtd waits for the hook.
LIBVIRT_MODULES = ("libvirt", "libvirt_qemu", "libvirt_lxc")
HOOK_TIMEOUTS = ("INPUT_TIMEOUT", "CHAIN_TIMEOUT", "LOCK_TIMEOUT")
# Step -> the Python bindings its adapter needs (snack is the wizard's).
BINDINGS = {"services": "pydbus", "ovs_mirror": "ovs", "vsphere_network": "pyVmomi",
            "ivshmem": "libvirt"}
PACKAGES = {"snack": "python3-newt", "pydbus": "python3-gi, and pydbus from pyproject.toml",
            "ovs": "python3-openvswitch", "libvirt": "python3-libvirt",
            "pyVmomi": "pyvmomi from pyproject.toml"}
UNIT_PACKAGES = {"ovsdb-server.service": "openvswitch-switch",
                 "ovs-vswitchd.service": "openvswitch-switch",
                 "libvirtd.service": "libvirt-daemon-system",
                 AGENT_UNIT: "deploy/hostsetup-agent.service (README: Fleet mode)"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Result:
    """One check: its name, ok / fail / skip, and what was found or tried.

    ``needs`` is the fact (``Step.requires``) a failing check waits for: when
    the services step's plan provides it (starts the daemon), the failure is
    only a skip.
    """

    check: str
    status: Status
    detail: str
    needs: str | None = None
    now: str = ""  # the detail when skipped for ``needs`` (default: ``detail``)

    def line(self) -> str:
        """``ok    dbus: ...`` / ``FAIL  hooks dir: ...`` / ``skip  vsphere: ...``."""
        word = "FAIL" if self.status == "fail" else self.status
        return f"{word:<4}  {self.check}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        """The ``--json`` form: check, status, detail."""
        return {"check": self.check, "status": self.status, "detail": self.detail}


def ok(check: str, detail: str) -> Result:
    """A check that passed."""
    return Result(check, "ok", detail)


def fail(check: str, detail: str, needs: str | None = None, now: str = "") -> Result:
    """A check that failed (see :class:`Result` for ``needs`` and ``now``)."""
    return Result(check, "fail", detail, needs, now)


def skip(check: str, detail: str) -> Result:
    """A check not made (not answered, or made unnecessary), and why."""
    return Result(check, "skip", detail)


@dataclass
class Target:
    """What to check: validated sections by step name, where they come from, and
    why a step is not checked (``why``; default "not answered")."""

    sections: dict[str, BaseModel]
    source: str
    why: dict[str, str] = field(default_factory=dict)
    fleet: Path | None = None  # agent.conf, in fleet mode
    max_skew: float = MAX_SKEW
    problem: str = ""  # the answers cannot be used for this host (a failing check)

    def section(self, name: str) -> Any:
        """The validated section of step ``name``, ``None`` when it is not checked."""
        return self.sections.get(name)

    def not_checked(self, name: str) -> str:
        """Why step ``name`` is not checked."""
        return self.why.get(name, "not answered")


def defaults() -> Target:
    """Without answers: every step whose defaults are a valid section."""
    return from_values({}, "the steps' defaults (no --answers)")


def from_values(values: dict[str, dict[str, Any]], source: str,
                chosen: list[str] | None = None) -> Target:
    """Sections from plain values (the wizard's, or ``{}`` for the defaults); a step
    whose values do not validate is not checked, and says so."""
    target = Target({}, source)
    for step in REGISTRY:
        if chosen is not None and step.name not in chosen:
            target.why[step.name] = "not chosen"
            continue
        try:
            target.sections[step.name] = step.Answers.model_validate(values.get(step.name, {}))
        except ValueError:  # pydantic's ValidationError
            target.why[step.name] = ("not answered" if step.name not in values else
                                     "its answers are not complete yet")
    return target


def from_answers(answers: Any, config: Path, fleet: bool = False) -> Target:
    """The sections of a validated answers file.  A fleet file (``hosts:``) means
    fleet mode: this host's entry is checked, found by the agent's name in
    ``config`` (agent.conf), else the short host name."""
    if not answers.hosts:
        return Target(dict(answers.sections), str(answers.path),
                      fleet=config if fleet else None)
    name = _agent_name(config) or socket.gethostname().split(".")[0]
    mine = next((h for h in answers.hosts if h.name == name), None)
    if mine is None:
        names = ", ".join(h.name for h in answers.hosts)
        return Target({}, str(answers.path), fleet=config,
                      why={s.name: "this host is not in the answers" for s in REGISTRY},
                      problem=f"{answers.path}: this host ({name}) is not among its hosts "
                      f"({names})")
    return Target(dict(mine.answers.sections), f"{answers.path}, host {name}", fleet=config)


def _agent_name(config: Path) -> str | None:
    from wizard import fleet

    try:
        return fleet.load_config(config).get("name")
    except fleet.FleetError:
        return None


# ---------------------------------------------------------------- running


def guarded(check: str, work: Callable[[], list[Result]]) -> list[Result]:
    """``work()``, with a backend's or the host's error as a failing ``check``."""
    try:
        return work()
    except (BackendError, ValueError, OSError) as exc:
        return [fail(check, str(exc) or type(exc).__name__)]
    except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
        return [fail(check, f"internal error: {type(exc).__name__}: {exc}")]


def side_by_side(works: list[Callable[[], T]], deadline: float) -> list[T | None]:
    """Each of ``works`` (which must not raise) in a thread of its own until
    ``deadline`` (monotonic); the results, ``None`` for one not done by then.
    Daemon threads: one that hangs is abandoned, and does not hold the program
    up at its exit."""
    boxes: list[dict[str, T]] = [{} for _ in works]
    threads = [threading.Thread(target=lambda b=box, w=work: b.setdefault("done", w()),
                                daemon=True, name="doctor")
               for box, work in zip(boxes, works, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    return [box.get("done") for box in boxes]


def run(target: Target, backends: Backends, timeout: float = CHECK_TIMEOUT) -> list[Result]:
    """Every check, in a stable order; the groups that wait on a system run side by
    side, all within ``timeout`` seconds.  Only when a check fails for want of a
    daemon is the services step planned, to see whether it starts that daemon."""
    deadline = time.monotonic() + timeout
    results = [answers_check(target), root_check(target), *binding_checks(target)]
    groups: list[tuple[str, Callable[[Target, Backends], list[Result]]]] = [
        ("dbus", dbus_checks), ("ovsdb", ovs_checks), ("libvirt", libvirt_checks),
        ("vsphere", vsphere_checks), ("broker", broker_checks)]
    done = side_by_side([partial(guarded, name, partial(fn, target, backends))
                         for name, fn in groups], deadline)
    for (name, _fn), found in zip(groups, done, strict=True):
        results += found if found is not None else [
            fail(name, f"{address(name, target)}: no answer within {timeout:g} s")]
    services = target.section("services")
    if services is not None and any(r.status == "fail" and r.needs for r in results):
        coming = side_by_side([partial(services_provide, services, backends)], deadline)[0]
        results = [deferred(r, coming or set()) for r in results]
    return results


# Group -> the section and key of the address it talks to (for a message).
ADDRESSES = {"dbus": ("services", "bus"), "ovsdb": ("ovs_mirror", "db"),
             "libvirt": ("ivshmem", "uri"), "vsphere": ("vsphere_network", "server")}


def address(group: str, target: Target) -> str:
    """What a group of checks talks to, for a message."""
    if group == "broker":
        return f"the broker of {target.fleet}"
    name, key = ADDRESSES[group]
    section = target.section(name)
    if section is None:
        return "the system bus"  # dbus without services: the only group that goes on
    where = str(getattr(section, key))
    return f"{where}:{section.port}" if group == "vsphere" else where


def deferred(result: Result, coming: set[str]) -> Result:
    """A failure the services step's plan fixes (it starts the daemon) is a skip."""
    if result.status == "fail" and result.needs in coming:
        return skip(result.check, f"{result.now or result.detail}; the services step "
                    "starts it first")
    return result


def exit_code(results: list[Result]) -> int:
    """0 when no check failed, else 1."""
    return EXIT_FAILED if any(r.status == "fail" for r in results) else EXIT_OK


def command(answers: Any, args: argparse.Namespace) -> int:
    """``hostsetup doctor``: print the checks (lines, or ``--json``); exit 0 or 1."""
    from backends.bundle import RealBackends

    if answers is None:
        target = defaults()
        target.fleet = args.config if args.fleet else None
    else:
        target = from_answers(answers, args.config, args.fleet)
    target.max_skew = args.max_skew
    backends = RealBackends()
    try:
        results = run(target, backends, args.timeout)
    finally:
        backends.close()
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print("\n".join(r.line() for r in results))
        failed = [r.check for r in results if r.status == "fail"]
        print(f"doctor: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}"
              if failed else f"doctor: no check failed ({len(results)} checks)")
    return exit_code(results)


# ---------------------------------------------------------------- this host


def answers_check(target: Target) -> Result:
    """What the checks are made for."""
    if target.problem:
        return fail("answers", target.problem)
    names = ", ".join(target.sections) or "no step"
    return ok("answers", f"{target.source}: {names}")


def root_check(target: Target) -> Result:
    """Root, when an answered step changes this host (all but vsphere_network)."""
    need = [n for n in target.sections if n != "vsphere_network"]
    uid = os.geteuid()
    if uid == 0:
        return ok("root", "running as root (uid 0)")
    if not need and target.fleet is None:
        return ok("root", f"uid {uid}: not needed (vsphere_network talks to its server only)")
    return fail("root", f"running as uid {uid}: {', '.join(need) or 'the fleet agent'} "
                "change this host and need root (run as root, or with sudo)")


def binding_checks(target: Target) -> list[Result]:
    """The Python bindings of the wizard and of each answered step's adapter."""
    modules = ["snack", *(BINDINGS[n] for n in BINDINGS if n in target.sections)]
    if target.fleet is not None and "pydbus" not in modules:
        modules.append("pydbus")  # the agent's unit is read over D-Bus
    results = []
    for module in modules:
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            results.append(fail(f"binding {module}", f"cannot import it ({exc}): install "
                                f"{PACKAGES[module]}"))
        else:
            results.append(ok(f"binding {module}", str(getattr(found, "__file__", module))))
    return results


# ---------------------------------------------------------------- D-Bus, units


def needed_units(target: Target) -> list[tuple[str, str]]:
    """(unit, fact) of the local daemons the answered steps talk to."""
    units = []
    ovs = target.section("ovs_mirror")
    if ovs is not None and ovs.db.startswith("unix:"):
        units += [("ovsdb-server.service", "ovs"), ("ovs-vswitchd.service", "ovs")]
    lv = target.section("ivshmem")
    if lv is not None and not urlsplit(lv.uri).hostname:
        units.append(("libvirtd.service", "libvirt"))
    return units


def dbus_checks(target: Target, backends: Backends) -> list[Result]:
    """The services step's bus (the system bus when it is not answered), the units of
    the local daemons, and in fleet mode the agent's unit."""
    from backends.interfaces.dbus import dbus_api

    services = target.section("services")
    units = needed_units(target)
    if services is None and not units and target.fleet is None:
        return [skip("dbus", target.not_checked("services"))]
    try:
        api = dbus_api(backends, services.bus if services else "system")
        count = len(api.list_units())
    except BackendUnreachable as exc:
        if services is None and target.fleet is None:  # nothing asked for this bus
            return [skip("dbus", f"services not answered and {exc}: units not checked")]
        raise
    results = [ok("dbus", f"{api.address}: systemd answers ({count} units loaded)")]
    for unit, fact in units:
        results.append(unit_check(api, unit, fact))
    if target.fleet is not None:
        results.append(unit_check(api, AGENT_UNIT, None, check="agent unit"))
    return results


def services_provide(section: BaseModel, backends: Backends) -> set[str]:
    """The facts the services step's plan makes true, e.g. "ovs" when it starts Open
    vSwitch (the runner's own check phase, which reports its errors, not raises)."""
    from steps.base import Context
    from wizard.runner import Prepared, StepResult, prepare

    step = next(s for s in REGISTRY if s.name == "services")
    item = Prepared(step, section, StepResult(step.name))
    try:
        prepare(item, Context(backends=backends))
    except Exception:  # noqa: BLE001 - then nothing is known to be started
        return set()
    return step.provides(item.result.changes) if item.result.status == "pending" else set()


def unit_check(api: Any, unit: str, fact: str | None, check: str = "") -> Result:
    """A unit is installed and active."""
    check = check or f"unit {unit}"
    status = api.unit_status(unit)
    if status is None:
        return fail(check, f"{unit} is not installed (install {UNIT_PACKAGES[unit]})")
    if status.active == "active":
        return ok(check, f"{unit} active ({status.sub})")
    socket_ = api.unit_status(unit.removesuffix(".service") + ".socket")
    if socket_ is not None and socket_.active == "active":  # e.g. libvirtd: on demand
        return ok(check, f"{unit} {status.active}, started on demand by {socket_.name} "
                  "(active)")
    result = f", result {status.result}" if status.result not in ("", "success") else ""
    state = f"{unit} {status.active} ({status.sub}{result})"
    how = "or list it under services.require" if fact else "and enable it"
    return fail(check, f"{state}: start it (systemctl start {unit}), {how}", fact, state)


# ---------------------------------------------------------------- Open vSwitch


def ovs_checks(target: Target, backends: Backends) -> list[Result]:
    """The OVSDB server, and the datapath and interface types ovs-vswitchd reports
    against what the answers' bridges and ports need."""
    from backends.interfaces.ovsdb import OvsdbTLS, ovsdb_api

    names = ("ovsdb", "ovs datapath types", "ovs interface types")
    section = target.section("ovs_mirror")
    if section is None:
        return [skip(n, target.not_checked("ovs_mirror")) for n in names]
    keys = (section.ssl_key, section.ssl_cert, section.ssl_ca)
    tls = OvsdbTLS(*keys) if all(keys) else None
    try:
        api = ovsdb_api(backends, section.db, tls)
    except BackendUnreachable as exc:
        return [fail("ovsdb", str(exc), "ovs"),
                *(skip(n, "not checked: ovsdb unreachable") for n in names[1:])]
    bridges = api.bridges()
    used = {m.bridge for m in section.mirrors} | {p.bridge for p in section.ports}
    new = [b for b in section.bridges if b.state == "present"
           and (b.name not in bridges or b.datapath_type)]
    need_dp = {bridges[n].datapath_type or "system" for n in used if n in bridges}
    need_dp |= {b.datapath_type or "system" for b in new}
    need_if = {p.type for p in section.ports if p.state == "present" and p.type != "system"}
    need_if |= {"internal"} if new else set()
    return [ok("ovsdb", f"{section.db}: {len(bridges)} bridge(s)"),
            types_check(names[1], api.datapath_types(), need_dp),
            types_check(names[2], api.iface_types(), need_if)]


def types_check(check: str, have: tuple[str, ...], need: set[str]) -> Result:
    """What ovs-vswitchd reports (``Open_vSwitch`` table) covers what is needed."""
    if not have:
        return fail(check, "ovs-vswitchd has reported none (is it running?)", "ovs")
    missing = sorted(need - set(have))
    text = f"{' '.join(sorted(have))}" + (f" (needed: {' '.join(sorted(need))})" if need else "")
    if missing:
        return fail(check, f"{' '.join(missing)} not supported by this Open vSwitch; it has {text}")
    return ok(check, text)


# ---------------------------------------------------------------- libvirt, the hook, memory


def libvirt_checks(target: Target, backends: Backends) -> list[Result]:
    """libvirt's version, the hooks directory and the installed hook, /dev/shm and
    hugetlbfs for the answers' devices."""
    from backends.interfaces.libvirt import libvirt_api

    section = target.section("ivshmem")
    names = ("libvirt", "hooks dir", "hook file", "hook rules", "hook config", "/dev/shm",
             "hugetlbfs")
    if section is None:
        return [skip(n, target.not_checked("ivshmem")) for n in names]
    lv, version, domains = None, None, None
    try:
        lv = libvirt_api(backends, section.uri)
        version = lv.version()
        domains = {d.name: d for d in lv.domains()}
        first = ok("libvirt", f"{section.uri}: libvirt {'.'.join(map(str, version))}")
    except BackendError as exc:
        lv, first = None, fail("libvirt", str(exc),
                               "libvirt" if isinstance(exc, BackendUnreachable) else None)
    return [first, hooks_dir_check(section), *hook_checks(section, version),
            *guarded("/dev/shm", lambda: [shm_check(section, domains)]),
            *guarded("hugetlbfs", lambda: [hugetlbfs_check(section, lv, domains)])]


def hooks_dir_check(section: Any) -> Result:
    """libvirtd runs what is in the hooks directory as root: it and every directory
    above it must be root's and not writable by group or others (sticky ones may)."""
    check, top = "hooks dir", section.hooks_dir
    here = top
    while not os.path.lexists(here) and here != "/":  # not made yet: its parent counts
        here = posixpath.dirname(here)
    qemu_d = posixpath.join(top, "qemu.d")
    for path in (here, qemu_d) if os.path.lexists(qemu_d) else (here,):
        try:
            os.close(ivshmem_hook.open_safe_dir(path))
        except ivshmem_hook.Unsafe as exc:
            return fail(check, f"{exc}: libvirtd runs the hooks there as root "
                        "(chown root and chmod go-w)")
    where = top if here == top else f"{top} (not there yet; {here})"
    return ok(check, f"{where}: root's, not writable by group or others, nor above it")


def hook_layout(section: Any, version: tuple[int, int, int] | None) -> str:
    """qemu.d or chain, as the step chooses it; unknown version: where ours is."""
    from steps.ivshmem import QEMU_D_SINCE, hook_paths

    if section.hook_layout != "auto":
        return str(section.hook_layout)
    if version is not None:
        return "qemu.d" if tuple(version) >= QEMU_D_SINCE else "chain"
    return "chain" if os.path.lexists(hook_paths(section, "chain")[0]) else "qemu.d"


def read_local(path: str) -> bytes | None:
    """A regular file of root's that group and others cannot write, at most
    :data:`HOOK_LIMIT` bytes; ``None`` if absent.  Raises ``ValueError`` saying why not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file (a link or a special file)")
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise ValueError(f"{path} is owned by uid {st.st_uid} with mode "
                         f"{stat.S_IMODE(st.st_mode):04o}: root's and not writable by group "
                         "or others, or libvirtd runs what another user wrote")
    try:
        return read_regular(path, HOOK_LIMIT)
    except InputRefused as exc:
        raise ValueError(f"{path}: {exc}") from None


def hook_checks(section: Any, version: tuple[int, int, int] | None) -> list[Result]:
    """The installed hook: our file of this version, its own rules, its configuration."""
    from steps.ivshmem import HOOK_MARKER, HOOK_SOURCE, hook_paths

    if section.state == "absent":
        return [skip(n, "state: absent") for n in ("hook file", "hook rules", "hook config")]
    hook, config = hook_paths(section, hook_layout(section, version))
    try:
        content = read_local(hook)
    except ValueError as exc:
        return [fail("hook file", str(exc)), skip("hook rules", "not checked"),
                skip("hook config", "not checked")]
    if content is None:
        return [skip("hook file", f"{hook}: not installed (the ivshmem step installs it)"),
                skip("hook rules", "no hook"), skip("hook config", "no hook")]
    if HOOK_MARKER not in content:
        first = fail("hook file", f"{hook} is not hostsetup's hook")
    elif content != HOOK_SOURCE.read_bytes():
        first = fail("hook file", f"{hook} differs from {HOOK_SOURCE.name} of hostsetup "
                     f"{__version__}: {difference(HOOK_SOURCE.read_bytes(), content)}; "
                     "'hostsetup apply' installs it again")
    else:
        first = ok("hook file", f"{hook}: identical to hostsetup {__version__}'s")
    problems = hook_rules(content)
    return [first, fail("hook rules", "; ".join(problems)) if problems else ok(
        "hook rules", "no call into libvirt; timeouts set: " + ", ".join(HOOK_TIMEOUTS)),
        *guarded("hook config", lambda: [config_check(config)])]


def difference(want: bytes, got: bytes) -> str:
    """How an installed file differs from ours: lines changed, the first one."""
    a, b = want.decode(errors="replace").splitlines(), got.decode(errors="replace").splitlines()
    ops = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    if not ops:
        return "line endings or the last newline differ"
    changed = sum(max(i2 - i1, j2 - j1) for _t, i1, i2, j1, j2 in ops)
    _tag, i1, i2, j1, j2 = ops[0]
    ours = repr(a[i1][:50]) if i1 < i2 else "nothing"
    theirs = repr(b[j1][:50]) if j1 < j2 else "nothing"
    return f"{changed} line(s) differ, the first at line {j1 + 1}: {theirs} instead of {ours}"


def hook_rules(content: bytes) -> list[str]:
    """The hook's own rules, read from its source: it imports no libvirt binding and
    runs no virsh (libvirtd waits for its hook: a call back deadlocks), and sets its
    timeouts (libvirt has none for hooks)."""
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError) as exc:
        return [f"not Python this version can read ({type(exc).__name__})"]
    problems = []
    timeouts: dict[str, Any] = {}
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n.split(".")[0] in LIBVIRT_MODULES for n in names):
            problems.append(f"imports {', '.join(names)} (a call back into libvirtd)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value == "virsh" or node.value.endswith("/virsh")):
            problems.append(f"runs virsh (line {node.lineno}: a call back into libvirtd)")
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and node.targets[0].id in HOOK_TIMEOUTS:
            try:
                timeouts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    for name in HOOK_TIMEOUTS:
        value = timeouts.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            problems.append(f"{name} is not set to a number of seconds")
    return problems


def config_check(path: str) -> Result:
    """The hook's configuration parses as the hook reads it."""
    content = read_local(path)
    if content is None:
        return fail("hook config", f"{path} is missing: the hook checks nothing "
                    "('hostsetup apply' writes it)")
    try:
        config = ivshmem_hook.parse_config(content)
    except ValueError as exc:
        return fail("hook config", f"{path}: {exc}; the hook checks nothing "
                    "('hostsetup apply' writes it again)")
    return ok("hook config", f"{path}: method {config['method']}, domains "
              f"{config['domains']}, enforce {config['enforce']}")


def objects(section: Any, backing: str, domains: dict[str, Any] | None) -> list[tuple[str, int]]:
    """(name, size in MiB) of the shared-memory objects the answers' ``backing``
    devices need, one per chosen guest with ``per_domain`` (rendered when the
    domains are known)."""
    if section.state != "present":
        return []
    chosen = [] if domains is None else [
        d for d in domains.values() if d.persistent
        and (section.domains == "all" or d.name in section.domains)]
    out = []
    for device in section.device_list():
        if device.backing != backing or device.model == "doorbell":
            continue
        size = device.size or 4
        if not device.per_domain:
            out.append((device.name, size))
        elif domains is not None:
            out += [(device.shmem(d).name, size) for d in chosen]
        else:  # names unknown: as many as are listed
            count = 1 if section.domains == "all" else len(section.domains)
            out += [(f"{device.name}#{i}", size) for i in range(count)]
    return out


def mounts() -> dict[str, str]:
    """Mount point -> file system type, as this process sees them."""
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        lines = f.read(1 << 20).splitlines()
    return {p[1].replace("\\040", " "): p[2] for p in map(str.split, lines) if len(p) >= 3}


def shm_check(section: Any, domains: dict[str, Any] | None) -> Result:
    """/dev/shm is a tmpfs with room for the objects not made yet."""
    check, path = "/dev/shm", ivshmem_hook.SHM_DIR
    kind = mounts().get(path)
    if kind != "tmpfs":
        return fail(check, f"{path} is {'a ' + kind if kind else 'not a'} mount, not a tmpfs: "
                    "the guests' shared memory would not be RAM")
    vfs = os.statvfs(path)
    free = vfs.f_bavail * vfs.f_frsize // MIB
    need = sum(size for name, size in objects(section, "shm", domains)
               if not os.path.lexists(posixpath.join(path, name)))
    if need > free:
        return fail(check, f"tmpfs with {free} MiB free; the answers' objects need {need} MiB")
    return ok(check, f"tmpfs, {free} MiB free" + (f"; the answers' objects need {need} MiB"
                                                   if need else ""))


def hugetlbfs_check(section: Any, lv: Any, domains: dict[str, Any] | None) -> Result:
    """For hugepage-backed devices: the mount is a hugetlbfs with enough free pages
    (the step's own check)."""
    from steps.ivshmem import IvshmemFacts, IvshmemStep

    check, mount = "hugetlbfs", section.hugetlbfs
    if not any(d.backing == "hugepages" for d in section.device_list()):
        return skip(check, "no device with backing: hugepages")
    if section.state != "present":
        return skip(check, "state: absent")
    if lv is None or domains is None:
        return fail(check, "not checked: libvirt unreachable", "libvirt")
    info = lv.hugetlbfs(mount)
    facts = IvshmemFacts(domains=domains, hugetlbfs_mount=mount, hugetlbfs=info,
                         huge_files=tuple(lv.list_files(mount)) if info else ())
    problems = IvshmemStep().hugepage_problems(section, facts)
    if problems:
        return fail(check, "; ".join(p.message for p in problems))
    assert info is not None  # no problem: it is a hugetlbfs
    return ok(check, f"{mount}: {info[1]} free huge pages of {info[0] // 1024} KiB, enough "
              "for the answers' devices")


# ---------------------------------------------------------------- vSphere, the broker


def vsphere_checks(target: Target, backends: Backends) -> list[Result]:
    """Log in to the answered vCenter / ESXi; its clock against ours."""
    from backends.interfaces.vsphere import vsphere_api
    from steps.base import SecretUnavailable
    from steps.vsphere_network import connection

    section = target.section("vsphere_network")
    if section is None:
        why = target.not_checked("vsphere_network")
        return [skip("vsphere", why), skip("clock skew", why)]
    try:
        conn = connection(section.model_dump())
    except SecretUnavailable as exc:  # names the reference, never a value
        return [fail("vsphere", f"password: {exc}"), skip("clock skew", "not checked")]
    try:
        api = vsphere_api(backends, conn)
    except BackendError as exc:
        return [fail("vsphere", str(exc)), skip("clock skew", "not checked: not logged in")]
    t0 = time.time()
    server = api.current_time().timestamp()
    here = (t0 + time.time()) / 2 + float(os.environ.get(CLOCK_OFFSET_ENV, "0"))
    skew = server - here  # > 0: the server is ahead of this host
    text = f"{skew:+.1f} s against {conn.address}" + (
        f" (it is {'ahead' if skew > 0 else 'behind'})" if abs(skew) >= 0.1 else "")
    return [ok("vsphere", f"{conn.address} as {conn.user}: {api.about()}"),
            fail("clock skew", f"{text}: more than {target.max_skew:g} s; sync both clocks "
                 "(NTP)") if abs(skew) > target.max_skew else
            ok("clock skew", f"{text}, within {target.max_skew:g} s")]


def broker_checks(target: Target, backends: Backends) -> list[Result]:
    """In fleet mode: the agent's broker answers (agent.conf, as the agent reads it)."""
    if target.fleet is None:
        return [skip("broker", "not in fleet mode (--fleet, or answers with hosts:)")]
    from wizard import fleet

    try:
        cfg = fleet.broker_config(None, None, fleet.load_config(target.fleet), dict(os.environ))
        fleet.connect(cfg)
    except fleet.FleetError as exc:
        return [fail("broker", str(exc))]
    return [ok("broker", f"{fleet.safe_url(cfg.url)} answers (from {target.fleet})")]
