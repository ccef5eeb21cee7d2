"""The ovs_mirror step against a sandbox host's Open vSwitch (Debian's units, netdev datapath).

Everything is checked with the ordinary tools (``ovs-vsctl``, ``ovsdb-tool``)
and, for the packet test, with frames captured on the monitoring port.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import hostsetup

from backends.adapters.ovsdb import OvsdbBackend
from backends.bundle import RealBackends
from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.ovsdb import Mirror, MirrorEdit
from sandbox import host, manage
from sandbox.core import Sandbox, SandboxError, kill_group
from steps.base import Context, Operation, StepFailed, inverse
from steps.ovs_mirror import MANAGED, OvsMirrorAnswers, OvsMirrorStep
from wizard.answers import write

_TAGS = itertools.count()
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def systemctl(sb: Sandbox, *args: str) -> None:
    """systemctl inside the host (its units: ovsdb-server, ovs-vswitchd...)."""
    host.run_inside(sb, "systemctl", "systemctl", *args)


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


@pytest.fixture(scope="module")
def ovs_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox switch shared by the tests that leave it as they found it."""
    with running_host(tmp_path_factory.mktemp("ovs") / "host") as sb:
        yield sb


@pytest.fixture
def ovs_fresh(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox switch of its own, for tests that break it."""
    with running_host(tmp_path / "host") as sb:
        yield sb


@pytest.fixture
def ovs_clean(ovs_host: Sandbox) -> Iterator[Sandbox]:
    """The shared switch with no mirrors and no flood_vlans, before and after a test."""
    reset = ("clear", "bridge", "br0", "mirrors", "flood_vlans", "--", "remove", "bridge",
             "br0", "external_ids", "hostsetup-rspan-vlans")
    vsctl(ovs_host, *reset)
    yield ovs_host
    vsctl(ovs_host, *reset)


def vsctl(sb: Sandbox, *args: str) -> str:
    """Run ovs-vsctl against the sandbox's database (independent of our backend)."""
    res = subprocess.run(["ovs-vsctl", f"--db={sb.env['HOSTSETUP_OVSDB']}", "--timeout=20",
                          *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def mirror_names(sb: Sandbox) -> set[str]:
    out = vsctl(sb, "--bare", "--columns=name", "list", "Mirror")
    return {line for line in out.splitlines() if line}


def answers_file(sb: Sandbox, path: Path, mirrors: list[dict[str, Any]], **extra: Any) -> str:
    """An answers file aimed at the sandbox with these mirrors."""
    section = {"db": sb.env["HOSTSETUP_OVSDB"], "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"]}
    write(path, {"version": 1, "ovs_mirror": {**section, **extra, "mirrors": mirrors}})
    return str(path)


SPAN = {"name": "span-vm1", "bridge": "br0", "select_src_port": ["vm1"],
        "select_dst_port": ["vm1"], "output_port": "mon0"}


# -- plan / apply / plan, update in place, removal ----------------------------


def test_sandbox_answers_plan_apply_plan(ovs_clean: Sandbox, tmp_path: Path) -> None:
    answers = str(ovs_clean.dir / "answers.yaml")
    res = hostsetup("plan", "--answers", answers)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "create mirror br0/span-vm1" in res.stdout
    assert mirror_names(ovs_clean) == set()  # plan changed nothing

    report = tmp_path / "apply.json"
    res = hostsetup("apply", "--answers", answers, "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    assert mirror_names(ovs_clean) == {"span-vm1"}
    assert vsctl(ovs_clean, "get", "Mirror", "span-vm1", f"external_ids:{MANAGED}") == '"true"'
    out_port = vsctl(ovs_clean, "get", "Mirror", "span-vm1", "output_port")
    assert out_port == vsctl(ovs_clean, "get", "Port", "mon0", "_uuid")
    step = json.loads(report.read_text())["steps"][0]
    assert step["status"] == "applied"
    assert any(n.startswith("mirror br0/span-vm1: ") for n in step["notes"])

    res = hostsetup("plan", "--answers", answers)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to change" in res.stdout


def test_flow_revalidation_or_a_note_saying_how(ovs_clean: Sandbox, tmp_path: Path) -> None:
    log = tmp_path / "apply.log"
    res = hostsetup("apply", "--log", str(log), "--answers",
                    answers_file(ovs_clean, tmp_path / "a.yaml", [SPAN]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"revalidated through {ovs_clean.env['HOSTSETUP_OVS_CTL']}" in log.read_text()
    # Without a reachable ovs-vswitchd control socket, the summary says what to run.
    res = hostsetup("apply", "--answers", answers_file(
        ovs_clean, tmp_path / "b.yaml", [{**SPAN, "snaplen": 200}],
        vswitchd_ctl=str(tmp_path / "none.ctl")))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Note: ovs-vswitchd control socket" in " ".join(res.stdout.split())
    assert "ovs-appctl revalidator/purge" in " ".join(res.stdout.split())
    # The default for a unix: db is the local daemon, found by its pidfile as
    # ovs-appctl finds it: in OVS_RUNDIR, here an empty directory.
    res = hostsetup("apply", "--answers", answers_file(
        ovs_clean, tmp_path / "c.yaml", [{**SPAN, "snaplen": 300}], vswitchd_ctl=None),
        env={"OVS_RUNDIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"cannot read pidfile \"{tmp_path}/ovs-vswitchd.pid\"" in " ".join(res.stdout.split())


def test_update_in_place_keeps_the_row(ovs_clean: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    assert hostsetup("apply", "--answers", answers_file(ovs_clean, path, [SPAN])).returncode == 0
    uuid = vsctl(ovs_clean, "get", "Mirror", "span-vm1", "_uuid")

    changed = {**SPAN, "select_dst_port": ["vm2"], "select_vlan": [10, 20], "snaplen": 128}
    res = hostsetup("plan", "--answers", answers_file(ovs_clean, path, [changed]))
    assert res.returncode == 4
    assert "update mirror br0/span-vm1" in res.stdout
    res = hostsetup("apply", "--answers", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert vsctl(ovs_clean, "get", "Mirror", "span-vm1", "_uuid") == uuid
    assert vsctl(ovs_clean, "get", "Mirror", "span-vm1", "select_vlan") == "[10, 20]"
    assert vsctl(ovs_clean, "get", "Mirror", "span-vm1", "snaplen") == "128"
    assert vsctl(ovs_clean, "get", "Mirror", "span-vm1", "select_dst_port") == (
        "[" + vsctl(ovs_clean, "get", "Port", "vm2", "_uuid") + "]")
    assert hostsetup("plan", "--answers", str(path)).returncode == 0


def test_absent_removes_it_and_only_it(ovs_clean: Sandbox, tmp_path: Path) -> None:
    vsctl(ovs_clean, "--", "--id=@p", "get", "Port", "vm2", "--", "--id=@m", "create",
          "Mirror", "name=by-hand", "select_all=true", "output_vlan=77",
          "--", "add", "Bridge", "br0", "mirrors", "@m")
    path = tmp_path / "a.yaml"
    assert hostsetup("apply", "--answers", answers_file(ovs_clean, path, [SPAN])).returncode == 0
    assert mirror_names(ovs_clean) == {"span-vm1", "by-hand"}

    res = hostsetup("apply", "--answers",
                    answers_file(ovs_clean, path, [{**SPAN, "state": "absent"}]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "delete mirror br0/span-vm1" in res.stdout
    assert mirror_names(ovs_clean) == {"by-hand"}
    # Absent again: nothing to do (idempotent).
    assert hostsetup("plan", "--answers", str(path)).returncode == 0


def test_prune_deletes_unlisted_managed_mirrors_only(ovs_clean: Sandbox, tmp_path: Path) -> None:
    vsctl(ovs_clean, "--", "--id=@m", "create", "Mirror", "name=by-hand", "select_all=true",
          "output_vlan=77", "--", "add", "Bridge", "br0", "mirrors", "@m")
    second = {**SPAN, "name": "span-vm2", "select_src_port": ["vm2"], "select_dst_port": []}
    path = tmp_path / "a.yaml"
    assert hostsetup("apply", "--answers",
                     answers_file(ovs_clean, path, [SPAN, second])).returncode == 0
    # Without prune, a mirror left out of the file stays.
    assert hostsetup("plan", "--answers", answers_file(ovs_clean, path, [SPAN])).returncode == 0
    res = hostsetup("apply", "--answers", answers_file(ovs_clean, path, [SPAN], prune=True))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "delete mirror br0/span-vm2" in res.stdout
    assert mirror_names(ovs_clean) == {"span-vm1", "by-hand"}


def test_rspan_floods_the_output_vlan(ovs_clean: Sandbox, tmp_path: Path) -> None:
    vsctl(ovs_clean, "set", "Bridge", "br0", "flood_vlans=50")  # the operator's own
    rspan = [{"name": "rspan-a", "bridge": "br0", "select_src_port": ["vm1"],
              "output_vlan": 999},
             {"name": "rspan-b", "bridge": "br0", "select_dst_port": ["vm2"], "output_vlan": 50}]
    path = tmp_path / "a.yaml"
    res = hostsetup("apply", "--answers", answers_file(ovs_clean, path, rspan))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "update bridge br0 flood_vlans" in res.stdout
    assert vsctl(ovs_clean, "get", "Bridge", "br0", "flood_vlans") == "[50, 999]"
    assert vsctl(ovs_clean, "get", "Mirror", "rspan-a", "output_vlan") == "999"

    gone = [{**m, "state": "absent"} for m in rspan]
    res = hostsetup("apply", "--answers", answers_file(ovs_clean, path, gone))
    assert res.returncode == 0, res.stdout + res.stderr
    # 999 was added for RSPAN and goes; 50 was there before and stays.
    assert vsctl(ovs_clean, "get", "Bridge", "br0", "flood_vlans") == "[50]"
    assert mirror_names(ovs_clean) == set()


# -- undo: the operations' undo commands, carried out later ---------------------


def switch_state(sb: Sandbox) -> dict[str, list[dict[str, Any]]]:
    """What the switch has, read with ovs-vsctl: per table the columns the step
    touches, row references by name (row UUIDs change when a row is made again)."""
    columns = {
        "Bridge": "name,ports,mirrors,datapath_type,fail_mode,other_config,external_ids,"
                  "flood_vlans",
        "Port": "name,interfaces,tag,trunks,vlan_mode,external_ids",
        "Interface": "name,type,options",
        "Mirror": "name,select_all,select_src_port,select_dst_port,select_vlan,output_port,"
                  "output_vlan,snaplen,external_ids",
    }
    tables = {t: json.loads(vsctl(sb, "--format=json", "--data=json", f"--columns=_uuid,{c}",
                                  "list", t)) for t, c in columns.items()}
    names = {row[0][1]: row[1] for t in tables.values() for row in t["data"]}

    def plain(value: Any) -> Any:
        if isinstance(value, list) and value[0] == "uuid":
            return names.get(value[1], value[1])
        if isinstance(value, list) and value[0] == "set":
            return sorted((plain(v) for v in value[1]), key=str)
        if isinstance(value, list) and value[0] == "map":
            return {k: plain(v) for k, v in value[1]}
        return value

    return {t: sorted((dict(zip(data["headings"][1:], map(plain, row[1:]), strict=True))
                       for row in data["data"]), key=lambda r: str(r["name"]))
            for t, data in tables.items()}


def plan_apply(sb: Sandbox, section: dict[str, Any]) -> tuple[OvsMirrorAnswers, list[Operation]]:
    """Plan and apply ``section`` through the step, in this process; the operations."""
    step = OvsMirrorStep()
    answers = OvsMirrorAnswers.model_validate(section)
    backends = RealBackends()
    try:
        ops = step.plan(answers, Context(backends=backends))
        step.apply(answers, ops, Context(backends=backends))
        assert step.plan(answers, Context(backends=backends)) == []
        assert all(step.observe(answers, op.do, Context(backends=backends)) for op in ops)
    finally:
        backends.close()
    return answers, ops


def undo_all(answers: OvsMirrorAnswers, ops: list[Operation]) -> None:
    """As ``hostsetup undo`` will, later and elsewhere: a bundle of its own, only the
    JSON of each undo command, in reverse order, each observed once carried out."""
    step = OvsMirrorStep()
    undos = [json.loads(json.dumps(back.do)) for op in reversed(ops)
             if (back := inverse(op)) is not None]
    assert len(undos) == len(ops)
    backends = RealBackends()
    try:
        for undo in undos:
            step.execute(answers, undo, Context(backends=backends))
            assert step.observe(answers, undo, Context(backends=backends)) is True, undo
        again = step.plan(answers, Context(backends=backends))
    finally:
        backends.close()
    assert [op.change for op in again] == [op.change for op in ops]


def test_undo_of_the_sandbox_answers(ovs_clean: Sandbox) -> None:
    before = switch_state(ovs_clean)
    answers, ops = plan_apply(ovs_clean, ovs_clean.answers["ovs_mirror"])
    assert [(op.change.action, op.change.target) for op in ops] == [
        ("create", "mirror br0/span-vm1")]
    assert mirror_names(ovs_clean) == {"span-vm1"}
    undo_all(answers, ops)
    assert mirror_names(ovs_clean) == set()
    assert switch_state(ovs_clean) == before


def test_undo_restores_deleted_and_changed_bridges_ports_and_mirrors(ovs_fresh: Sandbox) -> None:
    """Every kind of operation (bridges, ports, tunnels, patch links, mirrors, RSPAN
    flood VLANs; created, rewritten, deleted) is undone from its JSON alone."""
    sb, ana = ovs_fresh, ovs_fresh.env["HOSTSETUP_OVS_ANALYSER_IP"]
    conn = {"db": sb.env["HOSTSETUP_OVSDB"], "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"]}
    ids0 = {"name": "ids0", "bridge": "br0", "type": "gre", "remote_ip": ana, "key": 42}
    span = {"name": "span-a", "bridge": "br0", "select_src_port": ["vm1"],
            "output_port": "mon0", "snaplen": 200}
    plan_apply(sb, {**conn, "bridges": [
        {"name": "br-mon", "datapath_type": "netdev", "fail_mode": "secure",
         "other_config": {"mac-aging-time": "30"}},
        {"name": "br-lab", "datapath_type": "netdev"}], "ports": [
        {"name": "mon-in", "bridge": "br-mon", "type": "internal", "tag": 20},
        {"name": "lab-tr", "bridge": "br-lab", "type": "internal", "trunks": [5, 6]},
        ids0,
        {"name": "to-lab", "bridge": "br0", "type": "patch", "peer": "from-br0"},
        {"name": "from-br0", "bridge": "br-lab", "type": "patch", "peer": "to-lab"}], "mirrors": [
        span,
        {"name": "rspan-lab", "bridge": "br-lab", "select_all": True, "output_vlan": 77},
        {"name": "to-ids", "bridge": "br0", "select_dst_port": ["vm2"], "output_port": "ids0"}]})
    before = switch_state(sb)
    assert "77" in str(before["Bridge"])  # br-lab floods its RSPAN VLAN

    answers, ops = plan_apply(sb, {**conn, "bridges": [
        {"name": "br-lab", "state": "absent"},
        {"name": "br-mon", "fail_mode": "standalone",
         "other_config": {"mac-aging-time": "60", "stp-enable": "false"}},
        {"name": "br-far", "datapath_type": "netdev", "flood_vlans": [999]}], "ports": [
        {**ids0, "key": 43},
        {"name": "to-lab", "bridge": "br0", "state": "absent"},
        {"name": "far0", "bridge": "br-far", "type": "internal", "tag": 999}], "mirrors": [
        {**span, "select_dst_port": ["vm1"], "snaplen": None},
        {"name": "to-ids", "bridge": "br0", "state": "absent"},
        {"name": "rspan-out", "bridge": "br0", "select_src_port": ["vm2"],
         "output_vlan": 999}]})
    assert [(op.change.action, op.change.target, bool(op.risky)) for op in ops] == [
        ("update", "bridge br-mon", True), ("create", "bridge br-far", False),
        ("update", "port br0/ids0", True), ("create", "port br-far/far0", False),
        ("update", "mirror br0/span-a", False), ("create", "mirror br0/rspan-out", False),
        ("delete", "mirror br0/to-ids", False), ("delete", "port br0/to-lab", True),
        ("delete", "bridge br-lab", True), ("update", "bridge br-far flood_vlans", False),
        ("update", "bridge br0 flood_vlans", False)]
    assert vsctl(sb, "list-br").split() == ["br-far", "br-mon", "br0", "wan0"]
    undo_all(answers, ops)
    assert switch_state(sb) == before
    assert vsctl(sb, "get", "Interface", "from-br0", "error") == "[]"  # the link is whole


# -- validation --------------------------------------------------------------


def test_invalid_values_all_listed_exit_3(ovs_host: Sandbox, tmp_path: Path) -> None:
    bad = [
        {**SPAN, "output_vlan": 10},  # both outputs
        {"name": "m2", "bridge": "br0", "select_src_port": ["vm1"], "output_vlan": 5000},
        {"name": "m3", "bridge": "br0", "select_vlan": [4096], "select_all": True,
         "output_port": "mon0", "snaplen": 5},
        {"name": "m4", "bridge": "br0", "select_src_port": ["mon0"], "output_port": "mon0"},
        {"name": "m5", "bridge": "br0", "output_port": "mon0"},  # selects nothing
    ]
    res = hostsetup("plan", "--answers", answers_file(ovs_host, tmp_path / "a.yaml", bad))
    assert res.returncode == 3, res.stdout + res.stderr
    err = res.stderr
    assert "ovs_mirror.mirrors[0]" in err and "exactly one of output_port" in err
    assert "ovs_mirror.mirrors[1].output_vlan" in err
    assert "ovs_mirror.mirrors[2].select_vlan[0]" in err
    assert "ovs_mirror.mirrors[2].snaplen" in err
    assert "ovs_mirror.mirrors[3].output_port" in err and "also in select_src_port" in err
    assert "ovs_mirror.mirrors[4]" in err and "selects no traffic" in err

    dup = [SPAN, SPAN]
    res = hostsetup("plan", "--answers", answers_file(ovs_host, tmp_path / "a.yaml", dup))
    assert res.returncode == 3
    assert "repeats the name 'span-vm1'" in res.stderr


def test_host_problems_all_listed_exit_3(ovs_clean: Sandbox, tmp_path: Path) -> None:
    vsctl(ovs_clean, "--", "--id=@m", "create", "Mirror", "name=by-hand", "select_all=true",
          "output_vlan=77", "--", "add", "Bridge", "br0", "mirrors", "@m")
    bad = [
        {**SPAN, "bridge": "br9"},
        {**SPAN, "select_src_port": ["vm1", "tap9"], "output_port": "eth7"},
        {**SPAN, "name": "by-hand"},
    ]
    res = hostsetup("plan", "--answers", answers_file(ovs_clean, tmp_path / "a.yaml", bad))
    assert res.returncode == 3, res.stdout + res.stderr
    err = res.stderr
    assert "ovs_mirror.mirrors[0].bridge" in err and "bridge 'br9' does not exist" in err
    assert ("ovs_mirror.mirrors[1].select_src_port[1]" in err
            and "'tap9' is not a port on bridge 'br0'" in err)
    assert "ovs_mirror.mirrors[1].output_port" in err and "'eth7'" in err
    assert "ovs_mirror.mirrors[2].name" in err and "not made by hostsetup" in err
    assert mirror_names(ovs_clean) == {"by-hand"}


def test_questions_offer_real_bridges_and_ports(ovs_host: Sandbox) -> None:
    step = OvsMirrorStep()
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        facts = step.discover(step.connection({"db": ovs_host.env["HOSTSETUP_OVSDB"]}), ctx)
    finally:
        backends.close()
    assert [q.key for q in step.connect_questions()][0] == "db"
    records = {q.key: q for q in step.questions(facts)}["mirrors"]
    assert records.kind == "records"
    fields = {f.key: f for f in records.fields}
    assert fields["bridge"].choices == ("br0", "wan0")  # wan0: towards the analyser
    assert set(fields["select_src_port"].choices) == {"br0", "mon0", "vm1", "vm2", "wan0",
                                                      "wan-ana"}
    assert "sends" in fields["select_src_port"].help.lower()
    assert "delivered to" in fields["select_dst_port"].help.lower()


# -- packets -----------------------------------------------------------------

CAPTURE = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    for mark in sys.argv[1:]:
        if mark.encode() in data:
            print(addr[0], mark, flush=True)
"""
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(3): s.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))\n"
)


class Capture:
    """Every frame crossing the switch namespace's interfaces, by interface and marker."""

    def __init__(self, sb: Sandbox, marks: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", sb.env["HOSTSETUP_OVS_NETNS"], sys.executable, "-c",
             CAPTURE, *marks], stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        self.out = self.proc.stdout
        self.seen: list[tuple[str, str]] = []
        self.ready = False
        assert self.read(10.0, lambda: self.ready), "capture did not start"

    def read(self, timeout: float, enough: Any) -> bool:
        """Collect lines until ``enough()`` or ``timeout``; returns ``enough()``."""
        deadline = time.monotonic() + timeout
        while not enough() and time.monotonic() < deadline:
            if not select.select([self.out], [], [], 0.1)[0]:
                continue
            line = self.out.readline().split()
            if line == ["ready"]:
                self.ready = True
            elif line:
                self.seen.append((line[0], line[1]))
        return bool(enough())

    def count(self, iface: str, mark: str) -> int:
        return self.seen.count((iface, mark))

    def close(self) -> None:
        kill_group(self.proc.pid, 5)
        self.proc.wait()


def send(sb: Sandbox, vm: str, to: str, mark: str) -> None:
    """Send marked UDP datagrams from ``vm``'s namespace to the address ``to``."""
    ns = host.vm_ns(sb, vm)
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND, to, mark],
                   check=True, timeout=10)


def traffic(sb: Sandbox, cap: Capture, round_: str, until: Any) -> None:
    """Send vm1 -> vm2 and vm2 -> vm1 until ``until()`` holds (bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        send(sb, "vm1", host.VM_ADDRESSES["vm2"], f"FROMVM1{round_}")
        send(sb, "vm2", host.VM_ADDRESSES["vm1"], f"TOVM1{round_}")
        if cap.read(0.3, until):
            return
    raise AssertionError(f"traffic round {round_}: condition not met; seen {cap.seen[-10:]}")


def test_mirrored_packets_reach_the_monitor_port(ovs_fresh: Sandbox, tmp_path: Path) -> None:
    # A switch of its own: on OVS 3.1, flows cached in the datapath before a
    # mirror change are not always revalidated (see the step's help), and the
    # shared switch has seen other mirrors come and go.
    marks = [f"{m}{r}" for m in ("FROMVM1", "TOVM1") for r in ("a", "b")]
    cap = Capture(ovs_fresh, marks)
    try:
        # Before the mirror: the switch forwards the traffic, the monitor port sees none.
        traffic(ovs_fresh, cap, "a", lambda: cap.count("vm2", "FROMVM1a") >= 6
                and cap.count("vm1", "TOVM1a") >= 6)
        assert cap.count("mon0c", "FROMVM1a") == 0
        assert cap.count("mon0c", "TOVM1a") == 0

        # A mirror of what vm1 SENDS (src only).
        src_only = [{**SPAN, "select_dst_port": []}]
        res = hostsetup("apply", "--answers", answers_file(ovs_fresh, tmp_path / "a.yaml",
                                                            src_only))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "cached" not in res.stdout  # the step had ovs-vswitchd revalidate its flows
        traffic(ovs_fresh, cap, "b", lambda: cap.count("mon0c", "FROMVM1b") >= 3
                and cap.count("vm1", "TOVM1b") >= 6)
        # Traffic delivered TO vm1 crossed the switch but is not selected by src.
        assert cap.count("mon0c", "TOVM1b") == 0
    finally:
        cap.close()


# -- faults ------------------------------------------------------------------


def test_ovsdb_stopped_exits_5_and_changes_nothing(ovs_fresh: Sandbox) -> None:
    systemctl(ovs_fresh, "stop", "ovsdb-server.service")
    answers = str(ovs_fresh.dir / "answers.yaml")
    for command in ("plan", "apply"):
        res = hostsetup(command, "--answers", answers)
        assert res.returncode == 5, res.stdout + res.stderr
        assert f"OVSDB unreachable at {ovs_fresh.env['HOSTSETUP_OVSDB']}" in res.stderr
    t0 = time.monotonic()
    with pytest.raises(BackendUnreachable):
        OvsdbBackend(ovs_fresh.env["HOSTSETUP_OVSDB"], timeout=2)
    assert time.monotonic() - t0 < 5
    # The database file itself, read offline: still no mirror.
    query = json.dumps(["Open_vSwitch", {"op": "select", "table": "Mirror", "where": []}])
    out = host.run_inside(ovs_fresh, "ovsdb-tool", "ovsdb-tool", "query",
                          "/etc/openvswitch/conf.db", query)
    assert json.loads(out)[0]["rows"] == []


TWO = [{"name": "m-a", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "mon0"},
       {"name": "m-b", "bridge": "br0", "select_src_port": ["vm2"], "output_port": "mon0"}]


def test_port_deleted_between_plan_and_apply(ovs_fresh: Sandbox) -> None:
    step = OvsMirrorStep()
    answers = step.Answers.model_validate({"db": ovs_fresh.env["HOSTSETUP_OVSDB"],
                                           "mirrors": TWO})
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ops = step.plan(answers, ctx)
        assert [op.change.action for op in ops] == ["create", "create"]
        vsctl(ovs_fresh, "del-port", "br0", "vm2")
        with pytest.raises(StepFailed) as err:
            step.apply(answers, ops, ctx)
    finally:
        backends.close()
    assert "port 'vm2'" in str(err.value) and "nothing was changed" in str(err.value)
    assert err.value.done == []
    assert mirror_names(ovs_fresh) == set()  # m-a was not applied either


def test_stale_replica_is_caught_by_verify(ovs_fresh: Sandbox) -> None:
    """The transaction built before the deletion was seen fails as a whole on the server."""
    backend = OvsdbBackend(ovs_fresh.env["HOSTSETUP_OVSDB"])
    try:
        assert "vm2" in backend.bridges()["br0"].ports
        vsctl(ovs_fresh, "del-port", "br0", "vm2")
        edit = MirrorEdit(put=[Mirror(m["name"], "br0", select_src_port=(m["select_src_port"][0],),
                                      output_port="mon0") for m in TWO])
        with pytest.raises(BackendError, match="port 'vm2' is not on bridge 'br0'"):
            backend.apply(edit, timeout=10)
        # Sent once with the stale replica and rejected by the server (verify), then
        # the refreshed replica shows the port gone: no second transaction.
        assert backend.transactions == 1
    finally:
        backend.close()
    assert mirror_names(ovs_fresh) == set()


def test_vswitchd_down_reports_what_is_committed(ovs_fresh: Sandbox, tmp_path: Path) -> None:
    # Hung, not stopped: stopping the unit would stop ovsdb-server too (PartOf=), and
    # systemd restarts a killed one (Restart=on-failure).
    systemctl(ovs_fresh, "kill", "--signal=SIGSTOP", "ovs-vswitchd.service")
    path = answers_file(ovs_fresh, tmp_path / "a.yaml", [SPAN], timeout=1)
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ovs-vswitchd has not applied it" in res.stderr
    assert "remains changed: create mirror br0/span-vm1" in " ".join(res.stdout.split())
    assert mirror_names(ovs_fresh) == {"span-vm1"}


def test_remote_forms_checked(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    write(path, {"version": 1, "ovs_mirror": {"db": "ssl:127.0.0.1:6640"}})
    res = hostsetup("plan", "--answers", str(path))
    assert res.returncode == 3 and "needs ssl_key, ssl_cert and ssl_ca" in res.stderr
    write(path, {"version": 1, "ovs_mirror": {"db": "/var/run/openvswitch/db.sock"}})
    res = hostsetup("plan", "--answers", str(path))
    assert res.returncode == 3 and "ovs_mirror.db" in res.stderr
    # A tcp: remote nobody listens on: unreachable, quickly, naming the address.
    write(path, {"version": 1, "ovs_mirror": {"db": "tcp:127.0.0.1:1"}})
    res = hostsetup("plan", "--answers", str(path))
    assert res.returncode == 5, res.stdout + res.stderr
    assert "OVSDB unreachable at tcp:127.0.0.1:1" in res.stderr


def test_same_tag_in_two_dirs_coexists(ovs_host: Sandbox, tmp_path: Path) -> None:
    with running_host(tmp_path / "other", tag=ovs_host.tag) as other:
        mine, theirs = host.switch_ns(ovs_host), host.switch_ns(other)
        assert mine != theirs
        vsctl(other, "br-exists", "br0")
        vsctl(ovs_host, "br-exists", "br0")
    # The other one is gone, with its namespaces; this one keeps its own.
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert mine in out and theirs not in out
    # The very same tag and dir again: refused before anything is started.
    again = Sandbox(dir=ovs_host.dir, tag=ovs_host.tag)
    with pytest.raises(SandboxError, match=f"tag '{ovs_host.tag}' is running"):
        host.up(again)
    assert again.procs == []
    vsctl(ovs_host, "br-exists", "br0")


def _pki(d: Path) -> dict[str, Path]:
    """A CA and a server and a client certificate it signed (EC keys: quick)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=hostsetup-test-ca")
    for who in ("server", "client"):
        run("req", *key, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.pem", "-days", "1")
    return {n: d / n for n in ("ca.pem", "server.key", "server.pem", "client.key",
                               "client.pem")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ssl_remote(tmp_path: Path) -> None:
    """An ssl: remote with key, certificate and CA: plan reads the switch over TLS."""
    pki = _pki(tmp_path)
    sb = Sandbox(dir=tmp_path / "ssl", tag="unused")
    db, sock, port = tmp_path / "ssl.db", tmp_path / "ssl.sock", _free_port()
    try:
        sb.run("ovsdb-tool", ["ovsdb-tool", "create", str(db), SCHEMA])
        sb.spawn("ovsdb-server", [
            "ovsdb-server", str(db), f"--remote=punix:{sock}",
            f"--remote=pssl:{port}:127.0.0.1", f"--private-key={pki['server.key']}",
            f"--certificate={pki['server.pem']}", f"--ca-cert={pki['ca.pem']}",
            f"--unixctl={tmp_path / 'ssl.ctl'}", "--no-chdir"],
            ready=lambda: _listening(port))
        sb.run("ovs-vsctl", ["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "--", "init",
                             "--", "add-br", "br0", "--", "add-port", "br0", "vm1",
                             "--", "add-port", "br0", "mon0"])
        tls = {"ssl_key": str(pki["client.key"]), "ssl_cert": str(pki["client.pem"]),
               "ssl_ca": str(pki["ca.pem"])}
        path = tmp_path / "a.yaml"
        write(path, {"version": 1, "ovs_mirror": {"db": f"ssl:127.0.0.1:{port}", **tls,
                                                  "mirrors": [SPAN]}})
        res = hostsetup("plan", "--answers", str(path))
        assert res.returncode == 4, res.stdout + res.stderr
        assert "create mirror br0/span-vm1" in res.stdout
        # A certificate that does not match its key: a clear error, exit 1.
        write(path, {"version": 1, "ovs_mirror": {
            "db": f"ssl:127.0.0.1:{port}", **tls, "ssl_cert": str(pki["server.pem"])}})
        res = hostsetup("plan", "--answers", str(path))
        assert res.returncode == 1, res.stdout + res.stderr
        assert "cannot use the SSL key, certificate or CA" in res.stderr
        # A client certificate the server's CA did not sign is refused: exit 5.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "rogue.key",
                        "-out", "rogue.pem", "-days", "1", "-subj", "/CN=rogue"],
                       check=True, capture_output=True, cwd=tmp_path)
        write(path, {"version": 1, "ovs_mirror": {
            "db": f"ssl:127.0.0.1:{port}", **tls, "ssl_key": str(tmp_path / "rogue.key"),
            "ssl_cert": str(tmp_path / "rogue.pem")}})
        res = hostsetup("plan", "--answers", str(path))
        assert res.returncode == 5, res.stdout + res.stderr
        assert f"OVSDB unreachable at ssl:127.0.0.1:{port}" in res.stderr
    finally:
        sb.stop()


def test_ovsdb_lost_between_check_and_apply_is_exit_5(tmp_path: Path) -> None:
    """ovsdb-server dies after the check: the services step before it is applied and
    reported, ovs_mirror is 'unreachable' naming the address, the run exits 5."""
    from wizard import answers as answers_mod
    from wizard.runner import Run, apply_all, check, phase1_exit

    backends = RealBackends()
    with running_host(tmp_path / "host") as sb:
        try:
            db = sb.env["HOSTSETUP_OVSDB"]
            path = answers_file(sb, tmp_path / "a.yaml", [SPAN])
            data = {**answers_mod.read_yaml(Path(path))}
            data["services"] = {"bus": sb.env["HOSTSETUP_DBUS_ADDRESS"],
                                "require": ["libvirtd.service"], "start": True}
            write(tmp_path / "b.yaml", {"version": 1, "services": data["services"],
                                        "ovs_mirror": dict(data["ovs_mirror"])})
            answers = answers_mod.load(tmp_path / "b.yaml")
            ctx = Context(backends=backends)
            run = Run("apply")
            prepared = check(answers, ctx, run)
            assert phase1_exit(run) is None
            assert [(s.name, s.status) for s in run.steps] == [("services", "pending"),
                                                               ("ovs_mirror", "pending")]
            systemctl(sb, "stop", "ovsdb-server.service")
            code = apply_all(prepared, ctx, lambda _i, _s: None)
        finally:
            backends.close()
    services, mirror = run.as_dict()["steps"]
    assert code == 5
    assert services["status"] == "applied" and services["changes"]
    assert mirror["status"] == "unreachable", mirror
    assert any(f"OVSDB unreachable at {db}" in e for e in mirror["errors"]), mirror
    assert "applied before it: services (1 change(s))" in mirror["notes"]
