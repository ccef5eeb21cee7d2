"""Benchmark of the ivshmem step on a sandbox libvirtd: prints timings, asserts nothing.

Boots its own sandbox host (its systemd starts Debian's libvirtd), defines extra
domains, then times plan / apply / plan-again, one hook call as libvirtd makes
it, and a domain start through the hook.  Everything is stopped at the end.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.bundle import RealBackends  # noqa: E402
from sandbox import host, manage  # noqa: E402
from sandbox.core import Sandbox  # noqa: E402
from sandbox.image import domain_xml  # noqa: E402
from steps.base import Context, inverse  # noqa: E402
from steps.ivshmem import IvshmemAnswers, IvshmemStep  # noqa: E402

T = TypeVar("T")
EXTRA_DOMAINS = 20
HOOK_CALLS = 20


def timed(label: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` once and print its duration."""
    t0 = time.perf_counter()
    result = fn(*args)
    print(f"{label:44} {time.perf_counter() - t0:8.3f} s")
    return result


def virsh(sb: Sandbox, *args: str) -> str:
    """``virsh`` through the host's libvirt socket."""
    return sb.run("virsh", ["virsh", "-c", sb.env["HOSTSETUP_LIBVIRT_URI"], *args])


def systemctl(sb: Sandbox, *args: str) -> str:
    """systemctl inside the host."""
    return host.run_inside(sb, "systemctl", "systemctl", *args)


def main() -> None:
    """Run the benchmark on a temporary sandbox host."""
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        d = Path(tmp) / "sb"
        try:
            sb = timed("sandbox host up (2 domains)", manage.up, d, "hv1", "hsb", [manage.HOST])
            timed("systemd starts libvirtd", systemctl, sb, "start", "libvirtd.service")
            for i in range(EXTRA_DOMAINS):
                xml = sb.path("domains", f"b{i}.xml")
                xml.write_text(domain_xml(f"b{i}"))
                virsh(sb, "define", str(xml))
            answers = IvshmemAnswers(**{**sb.answers["ivshmem"], "restart_libvirtd": False})
            step, backends = IvshmemStep(), RealBackends()
            ctx = Context(backends=backends)
            try:
                n = EXTRA_DOMAINS + len(host.VMS)
                ops = timed(f"discover + plan ({n} domains)", lambda: (
                    step.discover(answers, ctx), step.plan(answers, ctx))[1])
                timed(f"apply ({len(ops)} operations)", step.apply, answers, ops, ctx)
                left = timed("plan again", step.plan, answers, ctx)
                assert not left, left
                backs = [b for op in reversed(ops) if (b := inverse(op)) is not None]
                timed(f"undo ({len(backs)} operations, in reverse)", lambda: [
                    step.execute(answers, b.do, Context(backends=backends)) for b in backs])
                timed("apply again", step.apply, answers, step.plan(answers, ctx), ctx)
                # Two per-guest devices on every domain (names rendered per guest).
                base = {k: v for k, v in answers.model_dump().items()
                        if k not in ("name", "size", "model", "backing", "per_domain", "keep",
                                     "serve", "server", "vectors", "role", "address")}
                two = IvshmemAnswers(**{**base, "devices": [
                    {"name": "hsb-a-{domain}", "per_domain": True, "size": 1},
                    {"name": "hsb-b-{uuid}", "per_domain": True, "size": 2}]})
                ops = timed(f"plan, 2 per-guest devices ({n} domains)", step.plan, two, ctx)
                timed(f"apply ({len(ops)} operations)", step.apply, two, ops, ctx)
                left = timed("plan again", step.plan, two, ctx)
                assert not left, left
            finally:
                backends.close()
            hook = Path(sb.env["HOSTSETUP_LIBVIRT_HOOKS_DIR"], "qemu.d", "hostsetup-ivshmem")
            xml = virsh(sb, "dumpxml", "--inactive", "vm1").encode()
            runs = []
            for _ in range(HOOK_CALLS):
                t0 = time.perf_counter()
                subprocess.run([str(hook), "vm1", "restore", "begin", "-"], input=xml,
                               capture_output=True, check=True)
                runs.append(time.perf_counter() - t0)
            label = f"hook call, restore (median of {HOOK_CALLS})"
            print(f"{label:44} {statistics.median(runs):8.3f} s")
            timed("libvirtd restart (reads the hook)", systemctl, sb, "restart",
                  "libvirtd.service")
            timed("virsh start vm1 (prepare hook + QEMU)", virsh, sb, "start", "vm1")
        finally:
            manage.down(d)


if __name__ == "__main__":
    main()
