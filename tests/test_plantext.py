"""The plan as text (wizard.plantext): before -> after in words, marks, counts, wrapping."""

from __future__ import annotations

from steps.base import Change
from wizard.plantext import change_lines, run_lines, words
from wizard.runner import Run, StepResult


def test_values_in_words() -> None:
    assert [words(v) for v in (True, False, None, [], "", 30.0, 2.5, ["vm1", "vm2"], 0)] == [
        "yes", "no", "(none)", "(none)", "(none)", "30", "2.5", "vm1, vm2", "0"]


def test_update_shows_only_changed_keys_before_after() -> None:
    change = Change("esx1: port group Monitoring", "update",
                    {"vlan": 20, "promiscuous": False, "mac_changes": None},
                    {"vlan": 20, "promiscuous": True, "mac_changes": False})
    assert change_lines(change) == [
        "  + update esx1: port group Monitoring",
        "      promiscuous: no -> yes",
        "      mac changes: (none) -> no",
    ]


def test_lists_and_keys_only_on_one_side() -> None:
    change = Change("esx1: vSwitch vSwitch1", "update", {"uplinks": [], "mtu": 1500.0},
                    {"uplinks": ["vmnic1", "vmnic2"]})
    assert change_lines(change)[1:] == ["      uplinks: (none) -> vmnic1, vmnic2",
                                        "      mtu: 1500 -> (none)"]


def test_create_lists_what_is_set_and_scalars_read_as_an_arrow() -> None:
    create = Change("mirror br0/m", "create", None,
                    {"select_src_port": ["vm1"], "output_port": "mon0", "snaplen": None})
    assert change_lines(create)[1:] == ["      select src port: vm1", "      output port: mon0"]
    start = Change("unit libvirtd.service", "start", "inactive (dead)", "active")
    assert change_lines(start) == ["  + start unit libvirtd.service",
                                   "      inactive (dead) -> active"]


def test_destructive_changes_are_marked_and_counted() -> None:
    result = StepResult("ivshmem", "pending", [
        Change("unit libvirtd.service", "restart", detail="reads new hooks"),
        Change("domain vm1", "update", "no ivshmem device", "ivshmem-plain 'a' 4 MiB",
               "shmem device", "a second ivshmem device: the domain already has 'b'"),
        Change("hook /x", "install", None, "10 bytes"),
        Change("mirror br0/old", "delete", {"output_port": "mon0"}),
    ])
    run = Run("plan", steps=[result])
    lines = run_lines(run, width=200)
    assert lines[0] == "ivshmem: 4 changes, 3 destructive (!)"
    assert lines[1] == "  ! restart unit libvirtd.service: reads new hooks"
    assert lines[2] == ("  ! update domain vm1: shmem device [a second ivshmem device: "
                        "the domain already has 'b']")
    assert lines[3] == "      no ivshmem device -> ivshmem-plain 'a' 4 MiB"
    assert lines[4] == "  + install hook /x"
    assert lines[6:] == ["  ! delete mirror br0/old", "      output port: mon0"]


def test_wrapping_keeps_a_hanging_indent() -> None:
    ports = [f"vnet{i}" for i in range(30)]
    change = Change("mirror br0/span-all-the-things", "update", {"select_src_port": []},
                    {"select_src_port": ports}, "in place: traffic sent by " + ", ".join(ports))
    lines = change_lines(change, width=60)
    assert all(len(line) <= 60 for line in lines)
    head = [i for i, line in enumerate(lines) if line.startswith("      select src port:")][0]
    assert head > 1  # the detail took several lines
    assert all(line.startswith("    ") and not line.startswith("     ")
               for line in lines[1:head])  # under the text, after "+ "
    assert all(line.startswith("        ") for line in lines[head + 1:])  # under "select"
    assert " ".join(" ".join(lines).split()).count("vnet29") == 2  # nothing lost


def test_statuses_counts_notes_and_errors() -> None:
    run = Run("apply", steps=[
        StepResult("services", "unchanged"),
        StepResult("ovs_mirror", "applied", [Change("mirror br0/m", "create", None, {"x": 1})],
                   notes=["mirror br0/m: tx_packets=3"]),
        StepResult("ivshmem", "failed", errors=["domain 'vm9' vanished"]),
    ])
    assert run_lines(run) == [
        "services: nothing to change",
        "ovs_mirror: changed (1 change)",
        "  + create mirror br0/m",
        "      x: 1",
        "  . mirror br0/m: tx_packets=3",
        "ivshmem: failed",
        "  ! domain 'vm9' vanished",
    ]
    assert "  ! domain 'vm9' vanished" not in run_lines(run, errors=False)
