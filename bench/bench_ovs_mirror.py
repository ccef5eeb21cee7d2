"""Benchmark: applying 1, 10 and 100 mirrors over 500 ports, one transaction vs ovs-vsctl.

Boots its own sandbox host (its systemd starts Debian's Open vSwitch, userspace
datapath) with 500 internal ports on br0, then for each size N:
  - the ovs_mirror step's apply (plan + ONE OVSDB transaction + wait for
    ovs-vswitchd), counting the transactions the backend sent;
  - the undo of that apply, as ``hostsetup undo`` carries it out: each
    operation's undo command in reverse order, one transaction each;
  - the same N mirrors made with one ``ovs-vsctl`` call per mirror (each
    waits for ovs-vswitchd, as ovs-vsctl does by default);
and prints wall times and the ratio of ovs-vsctl to the step's apply.  Then it
builds a whole network from nothing: 50 bridges, 500 ports (450 internal, 50 GRE
tunnels to the sandbox's analyser) and 100 mirrors (half of them into a tunnel),
once through the step (ONE transaction) and once with one ``ovs-vsctl`` per
object (650 calls).
Run: .venv/bin/python bench/bench_ovs_mirror.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.bundle import RealBackends  # noqa: E402
from backends.interfaces.ovsdb import ovsdb_api  # noqa: E402
from sandbox import host, manage  # noqa: E402
from sandbox.core import Sandbox  # noqa: E402
from steps.base import Context, Operation, inverse  # noqa: E402
from steps.ovs_mirror import MANAGED, OvsMirrorAnswers, OvsMirrorStep  # noqa: E402

PORTS = 500
SIZES = (1, 10, 100)
# The network built from nothing: per bridge, 9 internal ports and 1 tunnel,
# and 2 mirrors (one to the tunnel, one to an internal port).
BRIDGES, PER_BRIDGE = 50, 10


def vsctl(sb: Sandbox, *args: str) -> None:
    subprocess.run(["ovs-vsctl", f"--db={sb.env['HOSTSETUP_OVSDB']}", "--timeout=120", *args],
                   check=True, capture_output=True, timeout=130)


def mirrors(n: int) -> list[dict[str, object]]:
    """N mirrors: mirror i copies port p<2i> (both directions) to port p<2i+1>."""
    return [{"name": f"bm{i}", "bridge": "br0", "select_src_port": [f"p{2 * i}"],
             "select_dst_port": [f"p{2 * i}"], "output_port": f"p{2 * i + 1}"}
            for i in range(n)]


def with_step(sb: Sandbox, n: int) -> tuple[float, int, list[Operation]]:
    """Seconds for plan+apply through the step, transactions used, the operations."""
    step = OvsMirrorStep()
    answers = answers_for(sb, n)
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ovsdb = ovsdb_api(backends, answers.db)
        before = ovsdb.transactions
        t0 = time.perf_counter()
        ops = step.plan(answers, ctx)
        step.apply(answers, ops, ctx)
        elapsed = time.perf_counter() - t0
        return elapsed, ovsdb.transactions - before, ops
    finally:
        backends.close()


def answers_for(sb: Sandbox, n: int) -> OvsMirrorAnswers:
    return OvsMirrorAnswers.model_validate({
        "db": sb.env["HOSTSETUP_OVSDB"], "timeout": 120,
        "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"], "mirrors": mirrors(n)})


def undo(sb: Sandbox, n: int, ops: list[Operation]) -> tuple[float, int]:
    """Seconds for the undo of ``ops`` (reverse order, a transaction each), and how
    many transactions it sent; the switch is checked back without the mirrors."""
    step, answers = OvsMirrorStep(), answers_for(sb, n)
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ovsdb = ovsdb_api(backends, answers.db)
        t0 = time.perf_counter()
        for op in reversed(ops):
            back = inverse(op)
            assert back is not None
            step.execute(answers, back.do, ctx)
        elapsed = time.perf_counter() - t0
        assert [o.change for o in step.plan(answers, Context(backends=backends))] == \
            [o.change for o in ops]
        return elapsed, ovsdb.transactions
    finally:
        backends.close()


def with_vsctl(sb: Sandbox, n: int) -> float:
    """Seconds for the same mirrors made with one ovs-vsctl call each."""
    t0 = time.perf_counter()
    for m in mirrors(n):
        src, out = m["select_src_port"][0], m["output_port"]  # type: ignore[index]
        vsctl(sb, "--", "--id=@s", "get", "Port", str(src), "--", "--id=@o", "get", "Port",
              str(out), "--", "--id=@m", "create", "Mirror", f"name={m['name']}",
              "select_src_port=@s", "select_dst_port=@s", "output_port=@o",
              f"external_ids:{MANAGED}=true", "--", "add", "Bridge", "br0", "mirrors", "@m")
    return time.perf_counter() - t0


def network(remote: str) -> dict[str, list[dict[str, object]]]:
    """The answers of the network built from nothing."""
    bridges, ports, mirrors = [], [], []
    for b in range(BRIDGES):
        br = f"nb{b}"
        bridges.append({"name": br, "datapath_type": "netdev"})
        ports += [{"name": f"n{b}p{i}", "bridge": br, "type": "internal", "tag": 10 + i}
                  for i in range(PER_BRIDGE - 1)]
        ports.append({"name": f"n{b}t", "bridge": br, "type": "gre", "remote_ip": remote,
                      "key": b})
        mirrors += [{"name": f"n{b}m0", "bridge": br, "select_src_port": [f"n{b}p0"],
                     "output_port": f"n{b}t"},
                    {"name": f"n{b}m1", "bridge": br, "select_dst_port": [f"n{b}p1"],
                     "output_port": f"n{b}p2"}]
    return {"bridges": bridges, "ports": ports, "mirrors": mirrors}


def build_with_step(sb: Sandbox, net: dict[str, list[dict[str, object]]]) -> tuple[float, int]:
    """Seconds for plan+apply of the whole network through the step, transactions used."""
    step = OvsMirrorStep()
    answers = step.Answers.model_validate({"db": sb.env["HOSTSETUP_OVSDB"], "timeout": 300,
                                           "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"], **net})
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ovsdb = ovsdb_api(backends, answers.db)
        before = ovsdb.transactions
        t0 = time.perf_counter()
        step.apply(answers, step.plan(answers, ctx), ctx)
        return time.perf_counter() - t0, ovsdb.transactions - before
    finally:
        backends.close()


def build_with_vsctl(sb: Sandbox, net: dict[str, list[dict[str, object]]]) -> tuple[float, int]:
    """Seconds for the same network with one ovs-vsctl call per object, and the calls."""
    calls = []
    for b in net["bridges"]:
        calls.append(["add-br", str(b["name"]), "--", "set", "Bridge", str(b["name"]),
                      "datapath_type=netdev"])
    for p in net["ports"]:
        iface = [f"type={p['type']}"] + ([f"options:remote_ip={p['remote_ip']}",
                                          f"options:key={p['key']}"] if "key" in p else [])
        tag = [f"tag={p['tag']}"] if "tag" in p else []
        calls.append(["add-port", str(p["bridge"]), str(p["name"]), *tag, "--", "set",
                      "Interface", str(p["name"]), *iface])
    for m in net["mirrors"]:
        sel = "select_src_port" if "select_src_port" in m else "select_dst_port"
        calls.append(["--", "--id=@s", "get", "Port", str(m[sel][0]),  # type: ignore[index]
                      "--", "--id=@o", "get", "Port", str(m["output_port"]), "--", "--id=@m",
                      "create", "Mirror", f"name={m['name']}", f"{sel}=@s", "output_port=@o",
                      "--", "add", "Bridge", str(m["bridge"]), "mirrors", "@m"])
    t0 = time.perf_counter()
    for call in calls:
        vsctl(sb, *call)
    return time.perf_counter() - t0, len(calls)


def main() -> None:
    """Start the switch, add the ports, measure each size, stop everything."""
    with tempfile.TemporaryDirectory(prefix="bench-ovs-") as tmp:
        d = Path(tmp) / "host"
        try:
            sb = manage.up(d, "hv1", f"ob{os.getpid() % 1000}", [manage.HOST])
            host.run_inside(sb, "systemctl", "systemctl", "start", "openvswitch-switch.service")
            t0 = time.perf_counter()
            adds = [a for i in range(PORTS) for a in
                    ("--", "add-port", "br0", f"p{i}", "--", "set", "Interface", f"p{i}",
                     "type=internal")]
            vsctl(sb, *adds)
            print(f"switch: br0 with {PORTS} internal ports (+3 veths), "
                  f"made in {time.perf_counter() - t0:.1f}s")
            print(f"{'mirrors':>8} {'txns':>5} {'step apply':>11} {'ovs-vsctl xN':>13} "
                  f"{'ratio':>7} {'undo txns':>10} {'undo':>10}")
            for n in SIZES:
                vsctl(sb, "clear", "Bridge", "br0", "mirrors")
                step_s, txns, ops = with_step(sb, n)
                assert len(ops) == n, f"expected {n} creates, planned {len(ops)}"
                undo_s, undo_txns = undo(sb, n, ops)
                vsctl_s = with_vsctl(sb, n)
                print(f"{n:>8} {txns:>5} {step_s * 1000:>9.1f}ms {vsctl_s * 1000:>11.1f}ms "
                      f"{vsctl_s / step_s:>6.1f}x {undo_txns:>10} {undo_s * 1000:>8.1f}ms")
            vsctl(sb, "clear", "Bridge", "br0", "mirrors")
            net = network(sb.env["HOSTSETUP_OVS_ANALYSER_IP"])
            step_s, txns = build_with_step(sb, net)
            vsctl(sb, *[a for b in net["bridges"] for a in ("--", "del-br", str(b["name"]))])
            vsctl_s, calls = build_with_vsctl(sb, net)
            print(f"from nothing: {BRIDGES} bridges, {len(net['ports'])} ports "
                  f"({BRIDGES} GRE tunnels), {len(net['mirrors'])} mirrors")
            print(f"  step: {txns} transaction(s), {step_s:.2f}s; ovs-vsctl: {calls} calls "
                  f"(one per object), {vsctl_s:.2f}s; ratio {vsctl_s / step_s:.1f}x")
        finally:
            manage.down(d)


if __name__ == "__main__":
    main()
