"""The ovs_mirror step building the network: bridges, ports, patch links, tunnels.

Against a real ovsdb-server and ovs-vswitchd (userspace datapath); the state is
read back with ``ovs-vsctl``.  Bad answers exit 3 naming each key path and its
line, and change nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import hostsetup
from test_ovs_mirror import running_host, vsctl

from backends.bundle import RealBackends
from backends.interfaces.ovsdb import OvsdbAPI, ovsdb_api
from sandbox.core import Sandbox
from steps.base import Context, StepFailed
from steps.ovs_mirror import MANAGED, OvsMirrorStep


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Sandbox]:
    with running_host(tmp_path / "host") as sb:
        yield sb


def answers_text(sb: Sandbox | None, path: Path, **lists: list[dict[str, Any]]) -> dict[
        tuple[str, int], int]:
    """Write an answers file with one record per line; returns each record's line."""
    db = sb.env["HOSTSETUP_OVSDB"] if sb else "unix:/nonexistent/db.sock"
    lines = ["version: 1", "ovs_mirror:", f"  db: {db}"]
    where = {}
    for key, records in lists.items():
        lines.append(f"  {key}:")
        for i, rec in enumerate(records):
            lines.append("  - " + json.dumps(rec))
            where[(key, i)] = len(lines)
    path.write_text("\n".join(lines) + "\n")
    return where


def expect_problems(res: Any, where: dict[tuple[str, int], int],
                    expected: list[tuple[str, int, str, str]]) -> None:
    """Every (list, index, key, words) is reported with its key path and line; exit 3."""
    assert res.returncode == 3, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    for key, i, field, words in expected:
        path = f"ovs_mirror.{key}[{i}]" + (f".{field}" if field else "")
        line = where[(key, i)]
        found = re.search(re.escape(f"{path} (line {line}): ") + r"([^\n]*?)(?= ovs_mirror\.|$)",
                          err)
        assert found, f"{path} (line {line}) not reported:\n{res.stderr}"
        assert words in found.group(1), f"{path}: {found.group(1)!r} lacks {words!r}"


GRE = {"type": "gre", "remote_ip": "10.0.0.1"}
ERSPAN = {"type": "erspan", "remote_ip": "10.0.0.1"}


def test_bad_fields_exit_3_with_path_and_line(switch: Sandbox, tmp_path: Path) -> None:
    before = vsctl(switch, "show")
    ports = [
        {**GRE, "remote_ip": "10.1.2"},
        {"type": "vxlan", "remote_ip": "10.0.0.1", "key": 16777216},
        {**ERSPAN, "key": 1024},
        {**GRE, "local_ip": "fe80::1"},
        {**ERSPAN, "erspan_ver": 2, "erspan_idx": 5},
        {**ERSPAN, "erspan_dir": 1},
        {**ERSPAN, "erspan_ver": 2, "erspan_hwid": 64},
        {"type": "system", "peer": "x"},
        {"type": "patch"},
        {"type": "gre"},
        {"type": "internal", "tag": 4096},
        {"type": "internal", "vlan_mode": "native-tagged"},
        {"type": "internal", "tag": 10, "trunks": [20]},
        {"type": "internal", "trunks": [4096]},
        {"type": "internal", "remote_ip": "10.0.0.1"},
        {**GRE, "key": 4294967296},
        {**ERSPAN, "erspan_ver": 3},
        {"type": "vxlan", "remote_ip": "10.0.0.1", "erspan_ver": 1},
        {**ERSPAN, "erspan_idx": 1048576},
        {"type": "internal", "tag": 10, "vlan_mode": "trunk"},
        {"type": "patch", "peer": "q20"},
        {"type": "geneve", "remote_ip": "10.0.0.1"},
    ]
    ports = [{"name": f"q{i}", "bridge": "br0", **p} for i, p in enumerate(ports)]
    ports.append({"name": "much-too-long-name", "bridge": "br0", "type": "internal"})
    bridges = [{"name": "x" * 16}, {"name": "brx", "fail_mode": "open"},
               {"name": "bry", "flood_vlans": [5000]}, {"name": "brz", "datapath_type": "Net Dev"}]
    mirrors = [{"name": "m0", "bridge": "br0", "select_all": True, "select_vlan": [999],
                "output_vlan": 999}]
    where = answers_text(switch, tmp_path / "a.yaml", bridges=bridges, ports=ports,
                         mirrors=mirrors)
    res = hostsetup("plan", "--answers", str(tmp_path / "a.yaml"))
    expect_problems(res, where, [
        ("ports", 0, "remote_ip", "'10.1.2' is not an IPv4 or IPv6 address"),
        ("ports", 1, "key", "a vxlan key is 0-16777215"),
        ("ports", 2, "key", "a erspan key is 0-1023"),
        ("ports", 3, "local_ip", "not of the same IP version"),
        ("ports", 4, "erspan_idx", "erspan_idx is for ERSPAN version 1"),
        ("ports", 5, "erspan_dir", "is for ERSPAN version 2"),
        ("ports", 6, "erspan_hwid", "less than or equal to 63"),
        ("ports", 7, "peer", "peer is only for type: patch"),
        ("ports", 8, "", "a patch port needs peer"),
        ("ports", 9, "", "a gre tunnel needs remote_ip"),
        ("ports", 10, "tag", "less than or equal to 4095"),
        ("ports", 11, "vlan_mode", "needs tag (the native VLAN)"),
        ("ports", 12, "trunks", "an access port"),
        ("ports", 13, "trunks[0]", "less than or equal to 4095"),
        ("ports", 14, "remote_ip", "only for tunnels"),
        ("ports", 15, "key", "a gre key is 0-4294967295"),
        ("ports", 16, "erspan_ver", "Input should be 1 or 2"),
        ("ports", 17, "erspan_ver", "only for type: erspan"),
        ("ports", 18, "erspan_idx", "less than or equal to 1048575"),
        ("ports", 19, "vlan_mode", "vlan_mode trunk ignores tag"),
        ("ports", 20, "peer", "cannot be its own peer"),
        ("ports", 21, "type", "Input should be"),
        ("ports", 22, "name", "should match pattern"),
        ("bridges", 0, "name", "should match pattern"),
        ("bridges", 1, "fail_mode", "'standalone' or 'secure'"),
        ("bridges", 2, "flood_vlans[0]", "less than or equal to 4095"),
        ("bridges", 3, "datapath_type", "should match pattern"),
        ("mirrors", 0, "output_vlan", "would copy its own copies (a loop)"),
    ])
    assert vsctl(switch, "show") == before

    where = answers_text(switch, tmp_path / "b.yaml", bridges=[{"name": "brx"}] * 2,
                         ports=[{"name": "p", "bridge": "br0", "type": "internal"}] * 2)
    res = hostsetup("plan", "--answers", str(tmp_path / "b.yaml"))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "bridges[1] repeats the name 'brx' of bridges[0]" in res.stderr
    assert "ports[1] repeats the name 'p' of ports[0]" in res.stderr


def test_host_rules_exit_3_with_path_and_line(switch: Sandbox, tmp_path: Path) -> None:
    before = vsctl(switch, "show")
    # The host's ovs-vswitchd has the netdev and system (kernel) datapaths, not DPDK.
    bridges = [{"name": "br0", "fail_mode": "secure"}, {"name": "br-new", "datapath_type": "dpdk"},
               {"name": "vm1", "datapath_type": "netdev"}]
    ports = [
        {"name": "vm2", "bridge": "br0"},
        {"name": "p1", "bridge": "br9", "type": "internal"},
        {"name": "pa", "bridge": "br0", "type": "patch", "peer": "pb"},
        {"name": "pb", "bridge": "br0", "type": "patch", "peer": "pa"},
        {"name": "pc", "bridge": "br0", "type": "patch", "peer": "nosuch"},
        {"name": "l1a", "bridge": "br0", "type": "patch", "peer": "l1b"},
        {"name": "l1b", "bridge": "wan0", "type": "patch", "peer": "l1a"},
        {"name": "l2a", "bridge": "br0", "type": "patch", "peer": "l2b"},
        {"name": "l2b", "bridge": "wan0", "type": "patch", "peer": "l2a"},
        {"name": "t9", "bridge": "br0", "type": "internal", "state": "absent"},
    ]
    mirrors = [
        {"name": "f", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "mon0",
         "filter": "icmp"},
        {"name": "a", "bridge": "br0", "select_src_port": ["mon0"], "output_port": "vm2"},
        {"name": "b", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "mon0"},
        {"name": "t", "bridge": "br0", "select_src_port": ["vm1"], "output_port": "t9"},
    ]
    where = answers_text(switch, tmp_path / "a.yaml", bridges=bridges, ports=ports,
                         mirrors=mirrors)
    res = hostsetup("plan", "--answers", str(tmp_path / "a.yaml"))
    expect_problems(res, where, [
        ("bridges", 0, "name", "bridge 'br0' was not made by hostsetup"),
        ("bridges", 1, "datapath_type", "no datapath type 'dpdk' (datapath_types: "),
        ("bridges", 2, "name", "'vm1' is already a port on bridge 'br0'"),
        ("ports", 0, "name", "port 'vm2' (on bridge 'br0') was not made by hostsetup"),
        ("ports", 1, "bridge", "bridge 'br9' does not exist"),
        ("ports", 2, "peer", "on the same bridge 'br0': a patch link within one bridge"),
        ("ports", 4, "peer", "'nosuch' must be a patch port whose peer is 'pc'"),
        ("ports", 7, "peer", "closes a loop: bridges 'br0' and 'wan0' are already connected"),
        ("ports", 9, "state", "port 't9' is deleted but mirrors[3] use it"),
        ("mirrors", 0, "filter", "no Mirror.filter (it came with Open vSwitch 3.4)"),
        ("mirrors", 2, "output_port", "'mon0' is a source of mirrors[1]"),
        ("mirrors", 3, "output_port", "'t9' is not a port on bridge 'br0'"),
    ])
    assert "adopt it with 'ovs-vsctl set Port vm2 external_ids:hostsetup-managed=true'" \
        in " ".join(res.stderr.split())
    assert vsctl(switch, "show") == before


NETWORK = {
    "bridges": [{"name": "br-x", "datapath_type": "netdev", "fail_mode": "secure",
                 "other_config": {"mac-aging-time": "30"}}],
    "ports": [
        {"name": "in0", "bridge": "br-x", "type": "internal", "tag": 10},
        {"name": "tr0", "bridge": "br-x", "type": "internal", "trunks": [10, 20]},
        {"name": "vx0", "bridge": "br-x", "type": "vxlan", "remote_ip": "10.251.0.2",
         "local_ip": "10.251.0.1", "key": 5000},
        {"name": "px", "bridge": "br-x", "type": "patch", "peer": "p0"},
        {"name": "p0", "bridge": "br0", "type": "patch", "peer": "px"},
    ],
}


def write_network(sb: Sandbox, path: Path, network: dict[str, Any]) -> str:
    answers_text(sb, path, **network)
    return str(path)


def test_bridges_and_ports_created_updated_deleted(switch: Sandbox, tmp_path: Path) -> None:
    path = write_network(switch, tmp_path / "a.yaml", NETWORK)
    res = hostsetup("plan", "--answers", path)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "create bridge br-x" in res.stdout and "create port br-x/vx0" in res.stdout
    assert vsctl(switch, "list-br").split() == ["br0", "wan0"]  # plan changed nothing
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr

    assert vsctl(switch, "get", "Bridge", "br-x", "datapath_type", "fail_mode",
                 "other_config:mac-aging-time", f"external_ids:{MANAGED}").split() == [
        "netdev", "secure", '"30"', '"true"']
    assert vsctl(switch, "list-ports", "br-x").split() == ["in0", "px", "tr0", "vx0"]
    assert vsctl(switch, "get", "Port", "in0", "tag", f"external_ids:{MANAGED}").split() == [
        "10", '"true"']
    assert vsctl(switch, "get", "Port", "tr0", "trunks") == "[10, 20]"
    assert vsctl(switch, "get", "Interface", "vx0", "type", "options").split("\n") == [
        "vxlan", '{key="5000", local_ip="10.251.0.1", remote_ip="10.251.0.2"}']
    assert vsctl(switch, "get", "Interface", "p0", "type", "options") == "patch\n{peer=px}"
    assert vsctl(switch, "get", "Interface", "px", "error") == "[]"  # vswitchd took the pair
    assert hostsetup("plan", "--answers", path).returncode == 0

    # Updates happen in place; a bridge setting not answered is left alone.
    vsctl(switch, "set", "Bridge", "br-x", "other_config:stp-priority=100")
    uuid = vsctl(switch, "get", "Port", "vx0", "_uuid")
    changed = json.loads(json.dumps(NETWORK))
    changed["bridges"][0]["fail_mode"] = "standalone"
    changed["ports"][1].update(tag=10, vlan_mode="native-untagged")
    changed["ports"][2]["key"] = 6000
    res = hostsetup("apply", "--answers", write_network(switch, tmp_path / "b.yaml", changed))
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "~ update bridge br-x [needs confirmation: changes existing bridge br-x" in out
    assert "fail mode: secure -> standalone" in out
    assert "update port br-x/vx0: in place" in out and "key: 5000 -> 6000" in out
    assert vsctl(switch, "get", "Port", "vx0", "_uuid") == uuid
    assert vsctl(switch, "get", "Port", "tr0", "vlan_mode", "tag").split() == [
        "native-untagged", "10"]
    assert vsctl(switch, "get", "Bridge", "br-x", "other_config:stp-priority") == '"100"'

    # Deleting the bridge takes its ports; the patch end on br0 is deleted by name.
    gone = {"bridges": [{"name": "br-x", "state": "absent"}],
            "ports": [{"name": "p0", "bridge": "br0", "type": "patch", "peer": "px",
                       "state": "absent"}]}
    res = hostsetup("apply", "--answers", write_network(switch, tmp_path / "c.yaml", gone))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "delete bridge br-x" in res.stdout
    assert vsctl(switch, "list-br").split() == ["br0", "wan0"]
    assert vsctl(switch, "list-ports", "br0").split() == ["mon0", "vm1", "vm2"]
    assert hostsetup("plan", "--answers", str(tmp_path / "c.yaml")).returncode == 0


def _step_run(sb: Sandbox, section: dict[str, Any], between: Any = None) -> tuple[int, int]:
    """Plan and apply through the step: (changes planned, transactions sent)."""
    step = OvsMirrorStep()
    answers = step.Answers.model_validate({"db": sb.env["HOSTSETUP_OVSDB"], **section})
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ovsdb: OvsdbAPI = ovsdb_api(backends, sb.env["HOSTSETUP_OVSDB"])
        ops = step.plan(answers, ctx)
        if between:
            between()
        before = ovsdb.transactions
        step.apply(answers, ops, ctx)
        return len(ops), ovsdb.transactions - before
    finally:
        backends.close()


TUNNEL_MIRROR = {
    **NETWORK,
    "ports": [*NETWORK["ports"], {"name": "gre9", "bridge": "br0", "type": "gre",
                                  "remote_ip": "10.251.0.2"}],
    "mirrors": [{"name": "to-gre9", "bridge": "br0", "select_src_port": ["vm2"],
                 "output_port": "gre9"}],
}


def test_all_of_it_is_one_transaction(switch: Sandbox) -> None:
    changes, transactions = _step_run(switch, TUNNEL_MIRROR)
    assert changes == 8 and transactions == 1
    assert vsctl(switch, "get", "Mirror", "to-gre9", "output_port") == \
        vsctl(switch, "get", "Port", "gre9", "_uuid")


def test_failed_transaction_builds_nothing(switch: Sandbox) -> None:
    """vm2 goes between plan and apply: the mirror, and so the bridge and tunnel, are refused."""
    with pytest.raises(StepFailed, match="port 'vm2'") as err:
        _step_run(switch, TUNNEL_MIRROR, lambda: vsctl(switch, "del-port", "br0", "vm2"))
    assert err.value.done == []
    assert vsctl(switch, "list-br").split() == ["br0", "wan0"]
    assert "gre9" not in vsctl(switch, "list-ports", "br0").split()


def test_unsupported_tunnel_type_refused(tmp_path: Path) -> None:
    """The tunnel types come from Open_vSwitch.iface_types (here an OVS that has no vxlan)."""
    from test_ovs_mirror import SCHEMA

    sb = Sandbox(dir=tmp_path / "bare", tag="unused")
    db, sock = tmp_path / "bare.db", tmp_path / "bare.sock"
    try:
        sb.run("ovsdb-tool", ["ovsdb-tool", "create", str(db), SCHEMA])
        sb.spawn("ovsdb-server", ["ovsdb-server", str(db), f"--remote=punix:{sock}",
                                  f"--unixctl={tmp_path / 'bare.ctl'}", "--no-chdir"],
                 ready=sock.exists)
        sb.run("ovs-vsctl", ["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "--", "init",
                             "--", "add-br", "br0", "--", "set", "Open_vSwitch", ".",
                             "iface_types=[gre,internal,patch,system]",
                             "datapath_types=[system]"])
        sb.export("HOSTSETUP_OVSDB", f"unix:{sock}")
        where = answers_text(sb, tmp_path / "a.yaml", ports=[
            {"name": "vx0", "bridge": "br0", "type": "vxlan", "remote_ip": "10.0.0.1"},
            {"name": "g0", "bridge": "br0", "type": "gre", "remote_ip": "10.0.0.1"}])
        res = hostsetup("plan", "--answers", str(tmp_path / "a.yaml"))
        expect_problems(res, where, [
            ("ports", 0, "type", "does not support 'vxlan' interfaces (iface_types: gre, "
             "internal, patch, system)")])
        assert "ports[1]" not in res.stderr
    finally:
        sb.stop()


def test_unmanaged_bridge_gets_only_flood_vlans(switch: Sandbox, tmp_path: Path) -> None:
    """br0 (made by the sandbox, not hostsetup) may be listed to flood an RSPAN VLAN;
    the VLAN goes again when no longer listed, and the bridge is otherwise untouched."""
    vsctl(switch, "set", "Bridge", "br0", "flood_vlans=50")  # the operator's own
    path = write_network(switch, tmp_path / "a.yaml",
                         {"bridges": [{"name": "br0", "flood_vlans": [999]}]})
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert vsctl(switch, "get", "Bridge", "br0", "flood_vlans") == "[50, 999]"
    assert MANAGED not in vsctl(switch, "get", "Bridge", "br0", "external_ids")  # not adopted
    assert hostsetup("plan", "--answers", path).returncode == 0
    path = write_network(switch, tmp_path / "b.yaml", {"bridges": [{"name": "br0"}]})
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert vsctl(switch, "get", "Bridge", "br0", "flood_vlans") == "[50]"


def test_wizard_prefills_managed_ports_as_valid_answers(switch: Sandbox, tmp_path: Path) -> None:
    """A re-run in the wizard starts from hostsetup's ports, which must read back as the
    same answers (hexadecimal ERSPAN fields, numbers, addresses)."""
    erspan = {"name": "ers0", "bridge": "br0", "type": "erspan", "remote_ip": "10.251.0.2",
              "key": 3, "erspan_ver": 2, "erspan_dir": 1, "erspan_hwid": 12}
    network = {**NETWORK, "ports": [*NETWORK["ports"], erspan]}
    assert hostsetup("apply", "--answers", write_network(
        switch, tmp_path / "a.yaml", network)).returncode == 0
    step = OvsMirrorStep()
    backends = RealBackends()
    try:
        facts = step.discover(step.connection({"db": switch.env["HOSTSETUP_OVSDB"]}),
                              Context(backends=backends))
    finally:
        backends.close()
    records = step.current(facts)["ports"]
    answered = {p["name"]: step.Answers.model_validate({"ports": [p]}).ports[0]  # type: ignore[attr-defined]
                for p in network["ports"]}
    assert {r["name"] for r in records} == set(answered)
    for rec in records:
        again = step.Answers.model_validate({"ports": [rec]}).ports[0]  # type: ignore[attr-defined]
        assert again.desired() == answered[rec["name"]].desired(), rec
