"""Benchmark: vsphere_network plan against 10, 1,000 and 10,000 VMs on a 4-host vCenter simulator.

Starts the simulator itself (sandbox.vcsim), runs discover + validate +
plan as the runner does, and prints SOAP round trips and wall time.  The round
trips must be the same for every inventory (bulk PropertyCollector retrieval);
the script exits 1 if they are not.  Target: the plan at 10,000 VMs takes at
most 3x the plan at 10 VMs (the VMs the answers name are found by name; their
devices only are read).  The answers include a teamed vSwitch and VMkernel
adapters (read in the same bulk retrieval as the rest of the hosts' networking),
and vCenter already has a distributed switch on every host with
DV_PORTGROUPS port groups and two VMs on one of them: the plan adds VMkernel
adapters on a distributed port group and a mirror session between the two VMs
(the switches and port groups are read in that same retrieval too).

    .venv/bin/python bench/bench_vsphere_plan.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.bundle import RealBackends  # noqa: E402
from backends.interfaces.vsphere import vsphere_api  # noqa: E402
from sandbox import vcsim  # noqa: E402
from sandbox.core import Sandbox  # noqa: E402
from steps.base import Context  # noqa: E402
from steps.vsphere_network import (  # noqa: E402
    VSphereNetworkAnswers,
    VSphereNetworkStep,
    connection,
)

HOSTS = 4
SIZES = (10, 1000, 10000)
DV_PORTGROUPS = 20
TARGET = 3.0  # the largest inventory's plan within this factor of the smallest's
REPEAT = 3


def distributed(sim: vcsim.Vcsim) -> dict[str, Any]:
    """A distributed switch on every host, its port groups, two VMs on the first."""
    return {**vcsim.answers(sim), "vswitches": [], "portgroups": [],
            "dvswitches": [{"name": "dvSwitch1", "datacenter": "DC0", "mtu": 9000,
                            "hosts": [{"name": h, "nics": ["vmnic3"]}
                                      for h in sim.hosts]}],
            "dvportgroups": [{"name": f"dv-{n}", "dvswitch": "dvSwitch1", "vlan": 100 + n}
                             for n in range(DV_PORTGROUPS)],
            "vm_adapters": [{"vm": vm, "adapter": "Network adapter 1", "dvportgroup": "dv-0"}
                            for vm in sim.vms[:2]]}


def prepare(sim: vcsim.Vcsim) -> dict[str, Any]:
    """Apply the distributed switch; the answers of the measured plan (it plus
    standard networking, VMkernel adapters on a distributed port group, a mirror)."""
    base = distributed(sim)
    answers = VSphereNetworkAnswers.model_validate(base)
    step, backends = VSphereNetworkStep(), RealBackends()
    try:
        ctx = Context(backends=backends)
        step.apply(answers, step.plan(answers, ctx), ctx)
    finally:
        backends.close()
    section = {**vcsim.answers(sim), **{k: base[k] for k in ("dvswitches", "dvportgroups")}}
    section["vm_adapters"] = base["vm_adapters"]
    section["mirror_sessions"] = [{
        "name": "span", "dvswitch": "dvSwitch1",
        "sources": [{"vm": sim.vms[0], "adapter": "Network adapter 1"}],
        "destination": [{"vm": sim.vms[1], "adapter": "Network adapter 1"}]}]
    return section


def measure(sb: Sandbox, vms: int) -> tuple[int, float, int]:
    """Round trips of one plan, best wall time of REPEAT plans, number of changes."""
    sim = vcsim.start(sb, model="vcenter", hosts=HOSTS, vms=vms, name=f"vcsim{vms}")
    section = prepare(sim)
    section["vswitches"][0].update(nics=["vmnic1", "vmnic2"], teaming={
        "load_balancing": "failover_explicit", "active_nics": ["vmnic1"],
        "standby_nics": ["vmnic2"]})
    section["portgroups"].append({"name": "vMotion", "vswitch": "vSwitch1", "vlan": 30})
    section["vmkernel"] = [
        {"portgroup": "vMotion", "mtu": 9000, "services": ["vmotion"]},
        {"dvportgroup": "dv-1", "mtu": 9000, "services": ["vsan"]},
        *({"host": h, "portgroup": "Management Network", "services": ["management"]}
          for h in sim.hosts)]
    answers = VSphereNetworkAnswers.model_validate(section)
    step = VSphereNetworkStep()
    backends = RealBackends()
    try:
        api = vsphere_api(backends, connection(section))  # login is not part of a plan
        best, trips, changes = float("inf"), 0, 0
        for _ in range(REPEAT):
            ctx = Context(backends=backends)
            start_trips, start = api.round_trips, time.perf_counter()
            facts = ctx.facts[step.name] = step.facts_for(answers, ctx)
            assert not step.validate(answers, facts)
            changes = len(step.plan(answers, ctx))
            best = min(best, time.perf_counter() - start)
            trips = api.round_trips - start_trips
        return trips, best, changes
    finally:
        backends.close()


def main() -> int:
    """Print one line per inventory size; fail if round trips differ."""
    with tempfile.TemporaryDirectory(prefix="bench-vsphere-") as tmp:
        sb = Sandbox(dir=Path(tmp))
        try:
            print(f"vsphere_network plan, vCenter simulator with {HOSTS} hosts, a distributed "
                  f"switch with {DV_PORTGROUPS} port groups (best of {REPEAT})")
            print(f"{'VMs':>6} {'round trips':>12} {'wall s':>8} {'changes':>8}")
            results, walls = {}, {}
            for vms in SIZES:
                trips, wall, changes = measure(sb, vms)
                results[vms], walls[vms] = trips, wall
                print(f"{vms:>6} {trips:>12} {wall:>8.3f} {changes:>8}")
        finally:
            sb.stop()
    same = len(set(results.values())) == 1
    ratio = walls[SIZES[-1]] / walls[SIZES[0]]
    print("round trips equal:", "yes" if same else "NO")
    print(f"plan at {SIZES[-1]} VMs / at {SIZES[0]} VMs: {ratio:.1f}x "
          f"(target <= {TARGET:.0f}x: {'yes' if ratio <= TARGET else 'NO'})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
