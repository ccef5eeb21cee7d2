"""Sandbox hosts: boot time, hosts booted side by side, memory per host.

Boots hosts from the image (``make setup`` builds it) with real systemd:
the time until systemd runs, until the host is ready (network), the time for
its systemd to start Open vSwitch and libvirtd and for libvirtd to answer a
first client, and the memory (PSS) of everything in the host's cgroup, idle and
with those daemons running.
Run: .venv/bin/python bench/bench_sandbox.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import host, manage  # noqa: E402
from sandbox.core import Sandbox  # noqa: E402

PARALLEL = 3


def pss_mib(sb: Sandbox) -> float:
    """PSS of every process in the host's cgroup, in MiB."""
    total = 0
    for pid in host._cgroup_pids(Path(host.CGROUP_TREES[0], sb.env["HOSTSETUP_HOST_CGROUP"])):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    return total / 1024


def main() -> None:
    """Print the numbers (one host, then several at once)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "one"
        sb = Sandbox(dir=d, name="hv1", tag="bsb")
        sb.save()
        try:
            t0 = time.monotonic()
            host.boot(sb)
            booted = time.monotonic() - t0
            host.make_network(sb)
            ready = time.monotonic() - t0
            time.sleep(3)
            idle = pss_mib(sb)
            t1 = time.monotonic()
            host.run_inside(sb, "start", "systemctl", "start", "openvswitch-switch.service",
                            "libvirtd.service")
            started = time.monotonic() - t1
            # libvirtd answers once its QEMU driver is up: with the image's cached
            # capabilities, without probing QEMU again.
            host.run_inside(sb, "virsh", "virsh", "-c", "qemu:///system", "list")
            answered = time.monotonic() - t1
            time.sleep(3)
            busy = pss_mib(sb)
        finally:
            manage.down(d)
        print(f"host: systemd running {booted:.2f}s, ready (network) {ready:.2f}s")
        print(f"host: systemd starts Open vSwitch and libvirtd in {started:.2f}s, "
              f"libvirtd answers after {answered:.2f}s")
        print(f"host: memory (PSS) idle {idle:.0f} MiB, with OVS and libvirtd {busy:.0f} MiB")

        dirs = [Path(tmp) / f"hv{i}" for i in range(1, PARALLEL + 1)]
        t0 = time.monotonic()
        try:
            with ThreadPoolExecutor(PARALLEL) as pool:
                list(pool.map(lambda i: manage.up(dirs[i], f"hv{i + 1}", f"bp{i}",
                                                  [manage.HOST]), range(PARALLEL)))
            print(f"{PARALLEL} hosts side by side: ready in {time.monotonic() - t0:.2f}s")
        finally:
            for directory in dirs:
                manage.down(directory)


if __name__ == "__main__":
    main()
