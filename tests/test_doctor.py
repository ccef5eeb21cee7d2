"""``hostsetup doctor``'s checks on the fakes: results, deferral, the hook's rules,
timeouts, the wizard's target.  The real daemons: tests/test_doctor_sandbox.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackends, sample_backends

from steps.ivshmem import HOOK_SOURCE
from wizard import answers as answers_mod
from wizard import doctor

VSPHERE = {"server": "vc.example.net", "password": "env:HS_DOCTOR_PW", "insecure": True}


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HS_DOCTOR_PW", "s3cret-pw")


def target(tmp_path: Path, **sections: Any) -> doctor.Target:
    """The sections, with the ivshmem hooks in ``tmp_path`` (this machine's are not ours)."""
    sections.setdefault("ivshmem", {})
    if sections["ivshmem"] is not None:
        sections["ivshmem"] = {"hooks_dir": str(tmp_path / "hooks"), **sections["ivshmem"]}
    doc = {"version": 1, **{k: v for k, v in sections.items() if v is not None}}
    return doctor.from_answers(answers_mod.validate(doc), tmp_path / "agent.conf")


def by_check(results: list[doctor.Result]) -> dict[str, doctor.Result]:
    return {r.check: r for r in results}


def failed(results: list[doctor.Result]) -> set[str]:
    return {r.check for r in results if r.status == "fail"}


def test_stopped_daemons_the_services_step_starts_are_skipped(tmp_path: Path) -> None:
    fb = sample_backends()  # Open vSwitch and libvirtd installed, inactive
    t = target(tmp_path, services={"require": ["openvswitch-switch.service",
                                               "libvirtd.service"]}, ovs_mirror={})
    found = by_check(doctor.run(t, fb))
    unit = found["unit ovs-vswitchd.service"]
    assert unit.status == "skip" and "inactive" in unit.detail
    assert unit.detail.endswith("the services step starts it first")
    assert found["unit libvirtd.service"].status == "skip"
    assert found["dbus"].status == "ok" and found["ovsdb"].status == "ok"
    # Nothing starts them: the same units fail, naming how to start them.
    t = target(tmp_path, services={"require": [], "start": False}, ovs_mirror={})
    found = by_check(doctor.run(t, fb))
    assert found["unit ovs-vswitchd.service"].status == "fail"
    assert "systemctl start ovs-vswitchd.service" in found["unit ovs-vswitchd.service"].detail
    assert doctor.exit_code(list(found.values())) == 1


def test_unreachable_backends_fail_with_their_address_unless_started_first(
        tmp_path: Path) -> None:
    fb = sample_backends()
    fb.unreachable = {"ovsdb", "libvirt"}
    t = target(tmp_path, services={"require": ["ovs-vswitchd.service"]}, ovs_mirror={})
    found = by_check(doctor.run(t, fb))
    assert found["ovsdb"].status == "skip"  # the services step starts Open vSwitch
    assert "unix:/var/run/openvswitch/db.sock" in found["ovsdb"].detail
    assert found["ovs datapath types"].status == "skip"
    assert found["libvirt"].status == "fail" and "qemu:///system" in found["libvirt"].detail
    assert found["hooks dir"].status == "ok"  # local: checked all the same


def test_every_check_passes_on_a_healthy_host(tmp_path: Path) -> None:
    fb = sample_backends()
    for unit in list(fb.dbus.units):
        fb.dbus.start_unit(unit, 1)
    t = target(tmp_path, services={}, ovs_mirror={}, vsphere_network=VSPHERE)
    results = doctor.run(t, fb)
    assert failed(results) == set(), [r.line() for r in results]
    found = by_check(results)
    assert found["vsphere"].detail.startswith("vc.example.net:443 as root: fake vSphere")
    assert found["clock skew"].status == "ok"
    assert found["broker"].status == "skip" and found["hook file"].status == "skip"
    assert doctor.exit_code(results) == 0
    assert all(line.startswith(("ok    ", "skip  ")) for line in (r.line() for r in results))


def test_types_the_answers_need_and_this_switch_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb = sample_backends()
    monkeypatch.setattr(fb.ovsdb, "iface_types", lambda: ("internal", "patch", "system"))
    ovs = {"bridges": [{"name": "br9"}],  # a new bridge: datapath system, an internal port
           "ports": [{"name": "gre0", "bridge": "br0", "type": "gre", "remote_ip": "192.0.2.1"}]}
    found = by_check(doctor.run(target(tmp_path, ovs_mirror=ovs), fb))
    assert found["ovs datapath types"].status == "ok"  # br0's netdev, br9's system
    assert found["ovs datapath types"].detail == "netdev system (needed: netdev system)"
    assert found["ovs interface types"].status == "fail"
    assert found["ovs interface types"].detail.startswith("gre not supported")
    monkeypatch.setattr(fb.ovsdb, "datapath_types", lambda: ())
    found = by_check(doctor.run(target(tmp_path, ovs_mirror={}), fb))
    assert "reported none (is it running?)" in found["ovs datapath types"].detail


def test_clock_skew_fails_above_the_threshold(tmp_path: Path) -> None:
    fb = sample_backends()
    t = target(tmp_path, vsphere_network=VSPHERE, ivshmem=None)
    fb.vsphere.clock_offset = 90
    found = by_check(doctor.run(t, fb))
    assert found["clock skew"].status == "fail"
    assert found["clock skew"].detail.startswith("+90.")
    assert "(it is ahead): more than 60 s" in found["clock skew"].detail
    t.max_skew = 120
    assert by_check(doctor.run(t, fb))["clock skew"].status == "ok"


def test_a_password_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb = sample_backends()
    fb.unreachable = {"vsphere"}
    results = doctor.run(target(tmp_path, vsphere_network=VSPHERE, ivshmem=None), fb)
    assert by_check(results)["vsphere"].status == "fail"
    monkeypatch.delenv("HS_DOCTOR_PW")
    results += doctor.run(target(tmp_path, vsphere_network=VSPHERE, ivshmem=None), fb)
    assert "environment variable HS_DOCTOR_PW is not set" in by_check(results)["vsphere"].detail
    assert not any("s3cret-pw" in r.line() for r in results)


def test_root_is_needed_by_the_steps_that_change_this_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    result = doctor.root_check(target(tmp_path, services={}))
    assert result.status == "fail" and "services, ivshmem change this host" in result.detail
    result = doctor.root_check(target(tmp_path, vsphere_network=VSPHERE, ivshmem=None))
    assert result.status == "ok" and "not needed" in result.detail


def test_a_missing_binding_names_its_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor.importlib.import_module

    def no_libvirt(name: str) -> Any:
        if name == "libvirt":
            raise ModuleNotFoundError("No module named 'libvirt'")
        return real(name)

    monkeypatch.setattr(doctor.importlib, "import_module", no_libvirt)
    found = by_check(doctor.binding_checks(target(tmp_path)))
    assert found["binding libvirt"].status == "fail"
    assert "install python3-libvirt" in found["binding libvirt"].detail
    assert found["binding snack"].status == "ok"


def test_our_hook_keeps_its_own_rules() -> None:
    assert doctor.hook_rules(HOOK_SOURCE.read_bytes()) == []
    bad = HOOK_SOURCE.read_text().replace("CHAIN_TIMEOUT = 30.0", "CHAIN_TIMEOUT = None")
    bad += "\nimport libvirt\nsubprocess.run(['/usr/bin/virsh', 'list'])\n"
    problems = doctor.hook_rules(bad.encode())
    assert problems == ["imports libvirt (a call back into libvirtd)",
                        f"runs virsh (line {bad.count(chr(10))}: a call back into libvirtd)",
                        "CHAIN_TIMEOUT is not set to a number of seconds"]
    assert doctor.hook_rules(b"def (") == ["not Python this version can read (SyntaxError)"]


def test_an_installed_hook_is_compared_with_ours(tmp_path: Path) -> None:
    fb = sample_backends()
    hooks = tmp_path / "hooks" / "qemu.d"
    hooks.mkdir(parents=True)
    ours = HOOK_SOURCE.read_bytes()
    (hooks / "hostsetup-ivshmem").write_bytes(ours)
    (hooks / "hostsetup-ivshmem.json").write_text("{}")
    found = by_check(doctor.run(target(tmp_path), fb))
    assert found["hook file"].status == "ok" and found["hook rules"].status == "ok"
    assert found["hook config"].status == "fail" and "missing or invalid" in \
        found["hook config"].detail
    lines = ours.decode().splitlines()
    lines[9] = "# changed by hand"
    (hooks / "hostsetup-ivshmem").write_text("\n".join(lines) + "\n")
    found = by_check(doctor.run(target(tmp_path), fb))
    assert found["hook file"].status == "fail"
    assert "1 line(s) differ, the first at line 10: '# changed by hand' instead of" in \
        found["hook file"].detail
    (hooks / "hostsetup-ivshmem").chmod(0o775)
    found = by_check(doctor.run(target(tmp_path), fb))
    assert "mode 0775" in found["hook file"].detail


def test_the_hooks_directory_and_those_above_it_must_be_roots(tmp_path: Path) -> None:
    (tmp_path / "hooks").mkdir()
    t = target(tmp_path)
    assert doctor.hooks_dir_check(t.section("ivshmem")).status == "ok"
    (tmp_path / "hooks").chmod(0o775)
    result = doctor.hooks_dir_check(t.section("ivshmem"))
    assert result.status == "fail" and "hooks is writable by group or others" in result.detail
    (tmp_path / "hooks").chmod(0o755)
    tmp_path.chmod(0o777)  # an ancestor anyone can write (and not sticky)
    try:
        assert doctor.hooks_dir_check(t.section("ivshmem")).status == "fail"
    finally:
        tmp_path.chmod(0o755)


def test_hugepages_for_the_answers_devices(tmp_path: Path) -> None:
    fb = sample_backends()
    mount = str(tmp_path / "huge")
    ivshmem = {"method": "commandline", "backing": "hugepages", "size": 64, "hugetlbfs": mount}
    assert by_check(doctor.run(target(tmp_path, ivshmem=ivshmem), fb))[
        "hugetlbfs"].detail.startswith(f"{mount} is not a hugetlbfs mount")
    fb.libvirt.hugepages[mount] = (2 * 1024 * 1024, 8)
    found = by_check(doctor.run(target(tmp_path, ivshmem=ivshmem), fb))
    assert found["hugetlbfs"].status == "fail"
    assert found["hugetlbfs"].detail.startswith("32 free huge pages of 2048 KiB needed")
    fb.libvirt.hugepages[mount] = (2 * 1024 * 1024, 32)
    found = by_check(doctor.run(target(tmp_path, ivshmem=ivshmem), fb))
    assert found["hugetlbfs"].status == "ok"


def test_a_system_that_does_not_answer_is_bounded(tmp_path: Path) -> None:
    fb = sample_backends()
    hang = threading.Event()
    real_get = fb.get

    def get(kind: str, *args: Any) -> Any:
        if kind == "ovsdb":
            hang.wait(10)
        return real_get(kind, *args)

    fb.get = get  # type: ignore[method-assign]
    try:
        found = by_check(doctor.run(target(tmp_path, ovs_mirror={}), fb, timeout=0.5))
    finally:
        hang.set()
    assert found["ovsdb"].status == "fail"
    assert found["ovsdb"].detail == "unix:/var/run/openvswitch/db.sock: no answer within 0.5 s"
    assert found["libvirt"].status == "ok"  # the other groups answered


def test_the_wizard_checks_the_chosen_steps_as_answered_so_far(tmp_path: Path) -> None:
    values = {"services": {"bus": "unix:path=/run/x"}, "vsphere_network": {"server": "vc"}}
    t = doctor.from_values(values, "the wizard", ["services", "vsphere_network", "ivshmem"])
    assert list(t.sections) == ["services", "ivshmem"]  # ivshmem: its defaults
    assert t.not_checked("vsphere_network") == "its answers are not complete yet"
    assert t.not_checked("ovs_mirror") == "not chosen"
    assert doctor.defaults().not_checked("vsphere_network") == "not answered"


def test_a_fleet_file_is_checked_for_this_host(tmp_path: Path) -> None:
    (tmp_path / "agent.conf").write_text("[agent]\nname = hv2\n")
    doc = {"version": 1, "services": {"require": []},
           "hosts": [{"name": "hv1"}, {"name": "hv2", "ovs_mirror": {}}]}
    t = doctor.from_answers(answers_mod.validate(doc), tmp_path / "agent.conf")
    assert t.fleet == tmp_path / "agent.conf" and list(t.sections) == ["services", "ovs_mirror"]
    assert t.source.endswith("host hv2")
    (tmp_path / "agent.conf").write_text("[agent]\nname = hv7\n")
    t = doctor.from_answers(answers_mod.validate(doc), tmp_path / "agent.conf")
    results = doctor.run(t, FakeBackends())
    # In fleet mode the agent's unit and broker are checked too (neither is set up here).
    assert failed(results) == {"answers", "agent unit", "broker"}
    assert "this host (hv7) is not among its hosts (hv1, hv2)" in results[0].detail
    assert by_check(results)["broker"].detail.startswith("no broker: ")
