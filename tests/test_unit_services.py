"""The services step on the D-Bus fake: plan, apply, verify, failure, validation."""

from __future__ import annotations

from fakes import FakeBackends, FakeDBus, unit
from helpers import run, statuses

from steps.base import Change, Context
from steps.services import ServicesAnswers, ServicesStep
from wizard.exits import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_PENDING

REQUIRE = ["ovs-vswitchd.service", "libvirtd.service", "redis-server.service"]


def host(**kw: object) -> FakeBackends:
    dbus = FakeDBus(units={"ovs-vswitchd.service": unit("ovs-vswitchd.service", "inactive"),
                           "redis-server.service": unit("redis-server.service")},
                    unloaded={"libvirtd.service": unit("libvirtd.service", "inactive")}, **kw)
    return FakeBackends({"dbus": dbus})


def test_plan_apply_plan() -> None:
    fb = host()
    section = {"services": {"bus": "unix:path=/fake", "require": REQUIRE}}
    planned = run("plan", section, fb)
    assert planned.exit_code == EXIT_PENDING
    # libvirtd was not loaded: LoadUnit found it; redis is active already.
    assert [c.target for c in planned.steps[0].changes] == [
        "unit ovs-vswitchd.service", "unit libvirtd.service"]
    assert fb.dbus.units["libvirtd.service"].active == "inactive"  # plan changed nothing
    applied = run("apply", section, fb)
    assert (applied.exit_code, statuses(applied)) == (EXIT_OK, {"services": "applied"})
    assert {n: u.active for n, u in fb.dbus.units.items()} == dict.fromkeys(REQUIRE, "active")
    assert ("dbus", "unix:path=/fake") in fb.opened
    assert run("plan", section, fb).exit_code == EXIT_OK


def test_start_false_plans_nothing() -> None:
    section = {"services": {"require": REQUIRE, "start": False}}
    assert run("plan", section, host()).exit_code == EXIT_OK


def test_failed_start_job_fails_the_step_and_says_what_started() -> None:
    fb = host(failing={"libvirtd.service"})
    result = run("apply", {"services": {"require": REQUIRE}}, fb)
    assert result.exit_code == EXIT_FAILED
    step = result.steps[0]
    assert step.errors == ["start of libvirtd.service ended with job result 'failed' "
                           "(unit Result: exit-code)"]
    assert step.notes == ["remains changed: start unit ovs-vswitchd.service"]


def test_unit_not_installed_is_invalid_with_its_key() -> None:
    result = run("plan", {"services": {"require": ["ovs-vswitchd.service", "nope.service"]}},
                 host())
    assert result.exit_code == EXIT_INVALID
    assert result.steps[0].errors == [
        "services.require[1]: unit 'nope.service' is not installed on this host"]


def test_facts_and_provides() -> None:
    step, fb = ServicesStep(), host()
    facts = step.discover(ServicesAnswers(require=REQUIRE), Context(backends=fb))
    assert facts.present == {"redis"}
    ops = step.plan(ServicesAnswers(require=REQUIRE), Context(backends=fb))
    assert step.provides([op.change for op in ops]) == {"ovs", "libvirt"}
    assert step.provides([Change("unit x.service", "start")]) == set()

