"""``interactive:`` entries: '*', a section, section.key (wizard/interactive.py)."""

from __future__ import annotations

from pathlib import Path

from helpers import hostsetup

from wizard import answers
from wizard.interactive import ALL, interactive_keys


def test_wildcard_sections_and_keys_validate(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("version: 1\ninteractive:\n- '*'\n- services\n- ovs_mirror.mirrors\n"
                 "- vsphere_network.password\n")
    assert answers.load(f).interactive == [
        "*", "services", "ovs_mirror.mirrors", "vsphere_network.password"]


def test_unknown_entries_exit_3_with_line(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("version: 1\ninteractive:\n- ovs_mirror.mirrors\n- ovs_mirror.mirors\n"
                 "- vsphere.password\n- '**'\n")
    res = hostsetup("plan", "--answers", str(f))
    assert res.returncode == 3, res.stderr
    assert "3 problem(s)" in res.stderr
    assert "interactive[1] (line 4): 'ovs_mirror.mirors': section ovs_mirror has no key " \
        "'mirors' (its keys: " in res.stderr
    assert "interactive[2] (line 5): 'vsphere.password': expected '*', a section " \
        "(services, ovs_mirror, vsphere_network, ivshmem) or section.key" in res.stderr
    assert "interactive[3] (line 6): '**': expected '*'" in res.stderr


def test_interactive_keys_per_step() -> None:
    assert interactive_keys(["*"]) == {
        "services": ALL, "ovs_mirror": ALL, "vsphere_network": ALL, "ivshmem": ALL}
    assert interactive_keys(["ovs_mirror.mirrors", "vsphere_network.password",
                             "vsphere_network.server", "services"]) == {
        "ovs_mirror": frozenset({"mirrors"}),
        "vsphere_network": frozenset({"password", "server"}),
        "services": ALL}
    # a whole section wins over its keys, whichever comes first
    assert interactive_keys(["ivshmem.size", "ivshmem", "ivshmem.name"]) == {"ivshmem": ALL}
    assert interactive_keys([]) == {}


def test_interactive_keys_of_loaded_answers(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("version: 1\ninteractive: [services.require]\n")
    assert interactive_keys(answers.load(f)) == {"services": frozenset({"require"})}
