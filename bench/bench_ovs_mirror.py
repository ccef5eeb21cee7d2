"""Benchmark: applying 1, 10 and 100 mirrors over 500 ports, one transaction vs ovs-vsctl.

Boots its own sandbox host (its systemd starts Debian's Open vSwitch, userspace
datapath) with 500 internal ports on br0, then for each size N:
  - the ovs_mirror step's apply (plan + ONE OVSDB transaction + wait for
    ovs-vswitchd), counting the transactions the backend sent;
  - the same N mirrors made with one ``ovs-vsctl`` call per mirror (each
    waits for ovs-vswitchd, as ovs-vsctl does by default);
and prints wall times and their ratio.  Run: .venv/bin/python bench/bench_ovs_mirror.py
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
from steps.base import Context  # noqa: E402
from steps.ovs_mirror import MANAGED, OvsMirrorStep  # noqa: E402

PORTS = 500
SIZES = (1, 10, 100)


def vsctl(sb: Sandbox, *args: str) -> None:
    subprocess.run(["ovs-vsctl", f"--db={sb.env['HOSTSETUP_OVSDB']}", "--timeout=120", *args],
                   check=True, capture_output=True, timeout=130)


def mirrors(n: int) -> list[dict[str, object]]:
    """N mirrors: mirror i copies port p<2i> (both directions) to port p<2i+1>."""
    return [{"name": f"bm{i}", "bridge": "br0", "select_src_port": [f"p{2 * i}"],
             "select_dst_port": [f"p{2 * i}"], "output_port": f"p{2 * i + 1}"}
            for i in range(n)]


def with_step(sb: Sandbox, n: int) -> tuple[float, int, int]:
    """Seconds for plan+apply through the step, transactions used, changes."""
    step = OvsMirrorStep()
    answers = step.Answers.model_validate({"db": sb.env["HOSTSETUP_OVSDB"], "timeout": 120,
                                           "vswitchd_ctl": sb.env["HOSTSETUP_OVS_CTL"],
                                           "mirrors": mirrors(n)})
    backends = RealBackends()
    try:
        ctx = Context(backends=backends)
        ovsdb = ovsdb_api(backends, answers.db)
        before = ovsdb.transactions
        t0 = time.perf_counter()
        changes = step.plan(answers, ctx)
        step.apply(answers, changes, ctx)
        elapsed = time.perf_counter() - t0
        return elapsed, ovsdb.transactions - before, len(changes)
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
                  f"{'ratio':>7}")
            for n in SIZES:
                vsctl(sb, "clear", "Bridge", "br0", "mirrors")
                step_s, txns, changes = with_step(sb, n)
                assert changes == n, f"expected {n} creates, planned {changes}"
                vsctl(sb, "clear", "Bridge", "br0", "mirrors")
                vsctl_s = with_vsctl(sb, n)
                print(f"{n:>8} {txns:>5} {step_s * 1000:>9.1f}ms {vsctl_s * 1000:>11.1f}ms "
                      f"{vsctl_s / step_s:>6.1f}x")
        finally:
            manage.down(d)


if __name__ == "__main__":
    main()
