"""The runner on the fakes: concurrent check phase, who waits, deferral."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fakes import FakeBackends, FakeDBus, sample_backends
from helpers import run, statuses

from wizard import answers as answers_mod
from wizard.exits import EXIT_OK
from wizard.runner import execute

SERVICES = {"require": ["ovs-vswitchd.service", "libvirtd.service"]}
OVS = {"mirrors": [{"name": "m", "bridge": "br0", "select_all": True, "output_port": "mon0"}]}
VSPHERE = {"server": "vc", "password": "env:HS_TEST_PW", "insecure": True}
IVSHMEM = {"uri": "qemu:///fake", "domains": ["vm2"]}


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HS_TEST_PW", "pw")


def first_call_meets(barrier: threading.Barrier, fn: Any, events: list[str], name: str) -> Any:
    """``fn`` that records ``name`` and, on its first call, waits for the barrier's
    other parties: only steps checked at the same time all get through."""
    def call(*args: Any, **kwargs: Any) -> Any:
        events.append(name)
        if events.count(name) == 1:
            barrier.wait()
        return fn(*args, **kwargs)
    return call


def test_independent_steps_are_checked_at_the_same_time() -> None:
    fb, events = sample_backends(), []
    meet = threading.Barrier(2, timeout=5)
    fb.dbus.list_units = first_call_meets(  # type: ignore[method-assign]
        meet, fb.dbus.list_units, events, "services")
    fb.vsphere.inventory = first_call_meets(  # type: ignore[method-assign]
        meet, fb.vsphere.inventory, events, "vsphere_network")
    result = run("plan", {"services": SERVICES, "vsphere_network": VSPHERE}, fb)
    assert statuses(result) == {"services": "pending", "vsphere_network": "unchanged"}
    # One after the other, the first step would wait alone at the barrier.
    doc = answers_mod.validate({"version": 1, "services": SERVICES, "vsphere_network": VSPHERE})
    events.clear()
    alone = threading.Barrier(2, timeout=0.2)
    fb.dbus.list_units = first_call_meets(  # type: ignore[method-assign]
        alone, fb.dbus.units.copy, events, "services")
    with pytest.raises(threading.BrokenBarrierError):
        execute(doc, "plan", fb, concurrent=False)


def test_a_step_needing_what_an_earlier_one_may_start_waits_for_its_plan() -> None:
    """ovs_mirror and ivshmem require what services may start: both wait for its
    plan, then are checked at the same time as each other."""
    fb, events = sample_backends(), []
    fb.dbus.list_units = first_call_meets(  # type: ignore[method-assign]
        threading.Barrier(1), fb.dbus.list_units, events, "services")
    meet = threading.Barrier(2, timeout=5)
    fb.ovsdb.bridges = first_call_meets(  # type: ignore[method-assign]
        meet, fb.ovsdb.bridges, events, "ovs_mirror")
    fb.libvirt.version = first_call_meets(  # type: ignore[method-assign]
        meet, fb.libvirt.version, events, "ivshmem")
    result = run("plan", {"services": SERVICES, "ovs_mirror": OVS, "ivshmem": IVSHMEM}, fb)
    assert set(statuses(result).values()) == {"pending"}
    assert events[0] == "services" and set(events[1:]) == {"ovs_mirror", "ivshmem"}


class StartsOvs(FakeDBus):
    """Starting ovs-vswitchd makes the OVSDB fake reachable."""

    backends: FakeBackends | None = None

    def start_unit(self, name: str, timeout: float) -> str:
        if name == "ovs-vswitchd.service" and self.backends is not None:
            self.backends.unreachable.discard("ovsdb")
        return super().start_unit(name, timeout)


def test_unreachable_switch_that_services_starts_is_deferred_then_applied() -> None:
    fb = sample_backends()
    dbus = StartsOvs(units=fb.dbus.units)
    dbus.backends = fb
    fb.systems["dbus"] = dbus
    fb.unreachable.add("ovsdb")
    answers = {"services": SERVICES, "ovs_mirror": OVS}
    planned = run("plan", answers, fb)
    assert statuses(planned) == {"services": "pending", "ovs_mirror": "deferred"}
    applied = run("apply", answers, fb)
    assert applied.exit_code == EXIT_OK
    assert statuses(applied) == {"services": "applied", "ovs_mirror": "applied"}
    assert [m.name for m in fb.ovsdb.mirrors()] == ["m"]
