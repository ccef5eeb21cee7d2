"""Fan-out of a fleet ``plan`` to 1, 5 and 20 hosts: wall time and per-host overhead.

Starts what it needs and stops it: one redis-server, and sandbox hosts (booted
side by side: real systemd and NetworkManager, ~40 MiB each), the plan being the
``services`` step on every host, over each host's bus socket.  Two agent layouts:

- ``agent per host``: one ``hostsetup agent`` process per host (as deployed);
- ``one worker``: one worker process consuming every host's queue (concurrency 2).

For each size: the wall time of ``FleetRun.run()`` (agent check, dispatch,
wait, roll-up), and
the agent check (a fixed cost per batch: asking which agents listen) and
the overhead per host = (wall - agent check - critical work) / hosts (sending,
polling results, the roll-up), where the critical
work is the step work on the critical path: max(longest host run, sum of
host runs / concurrency).  Each
size is measured ``REPEAT`` times after one warm-up run; the median is printed.

    .venv/bin/python bench/bench_fleet.py [--sizes 1,5,20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import manage, redis  # noqa: E402
from sandbox.core import Sandbox, wait_for  # noqa: E402
from wizard import fleet  # noqa: E402

WORKER = """
import sys
from wizard import fleet
from pathlib import Path
cfg = fleet.broker_config(None, None, fleet.load_config(Path(sys.argv[1])), {})
sys.exit(fleet.run_agent(cfg, sys.argv[2].split(','), 'WARNING', concurrency=2))
"""


def start_hosts(root: Path, count: int) -> list[Sandbox]:
    """``count`` sandbox hosts, booted side by side."""
    def one(i: int) -> Sandbox:
        return manage.up(root / f"b{i}", f"b{i}", f"hb{i}", [manage.HOST])

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, range(1, count + 1)))


def measure(app: Any, hosts: list[Sandbox], repeat: int, concurrency: int,
            agent_wait: float) -> dict[str, float]:
    """Median wall time, step work and overhead of a fleet plan over ``hosts``."""
    payloads = {sb.name: {"version": 1, "services": sb.answers["services"]} for sb in hosts}
    walls, works = [], []
    for i in range(repeat + 1):
        run = fleet.FleetRun(app, "plan", payloads, fleet.Options(agent_wait=agent_wait))
        t0 = time.perf_counter()
        code = run.run()
        wall = time.perf_counter() - t0
        statuses = {o.status for o in run.outcomes.values()}
        if code != fleet.EXIT_PENDING or statuses != {"pending"}:
            raise SystemExit(f"bench run failed: exit {code}, {run.report()['counts']}")
        if i:  # the first run warms up connections and imports
            walls.append(wall)
            durations = [(o.plan or {}).get("duration", 0.0) for o in run.outcomes.values()]
            # The step work on the critical path: hosts run `concurrency` at a time.
            works.append(max(max(durations), sum(durations) / concurrency))
    wall, work = statistics.median(walls), statistics.median(works)
    probe = fleet.FleetRun(app, "plan", payloads, fleet.Options(agent_wait=agent_wait))
    t0 = time.perf_counter()
    probe.listening(list(payloads))
    check = time.perf_counter() - t0
    return {"wall": wall, "work": work, "check": check,
            "overhead": max(wall - check - work, 0.0) / len(hosts)}


def line(layout: str, size: int, row: dict[str, float]) -> str:
    """One table row."""
    return (f"  {layout:16} {size:>5} {row['wall']:>8.3f} {row['check']:>13.3f} "
            f"{row['work']:>15.3f} {row['overhead'] * 1000:>17.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,5,20")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="hostsetup-bench-fleet-"))
    broker = Sandbox(dir=root / "broker", name="fleet", tag="hbr")
    print(f"fleet plan fan-out (services step on sandbox hosts), dir {root}")
    try:
        t0 = time.perf_counter()
        redis.up(broker)
        conf = broker.path("agent.conf")
        conf.write_text(f"[agent]\nbroker = {broker.env['HOSTSETUP_REDIS_URL']}\n"
                        f"password = {broker.env['HOSTSETUP_REDIS_PASSWORD']}\n")
        hosts = start_hosts(root, max(sizes))
        print(f"  set-up: redis + {len(hosts)} hosts in {time.perf_counter() - t0:.1f}s")
        app = fleet.make_app(fleet.broker_config(None, None, fleet.load_config(conf), {}))
        print(f"  {'layout':16} {'hosts':>5} {'wall s':>8} {'agent check s':>13} "
              f"{'critical work s':>15} {'overhead/host ms':>17}")
        per_host_max = 10
        t0 = time.perf_counter()
        manage.start_agents(broker, hosts[:per_host_max], conf)
        print(f"  ({per_host_max} agent processes started in {time.perf_counter() - t0:.1f}s)")
        for size in (s for s in sizes if s <= per_host_max):
            row = measure(app, hosts[:size], args.repeat, size, 2.0)
            print(line("agent per host", size, row))
        broker.stop()  # stops redis too: start it again for the next layout
        redis.start(broker, redis.port_of(broker))
        broker.spawn("worker", [sys.executable, "-c", WORKER, str(conf),
                                ",".join(sb.name for sb in hosts)])
        probe = fleet.FleetRun(app, "plan", {}, fleet.Options(agent_wait=1.0))
        names = [sb.name for sb in hosts]
        wait_for(lambda: set(names) <= probe.listening(names), 60, "the worker")
        for size in sizes:
            row = measure(app, hosts[:size], args.repeat, 2, 0.5)
            print(line("one worker (c=2)", size, row))
        print("  note: the one worker's name is not hostsetup@<host>: the agent check asks by "
              "name, gets no answer, then asks every worker (two bounded broadcasts)")
    finally:
        for state in sorted(root.glob("*/state.json")):
            manage.down(state.parent)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
