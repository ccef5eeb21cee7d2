"""How the vsphere_network step finds the VMs the answers name, on the simulator:
by name in each datacenter's VM folder (without reading every VM), and by every
VM's name when one is elsewhere (a sub-folder)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from backends.bundle import RealBackends
from backends.interfaces.vsphere import vsphere_api
from sandbox import vcsim
from sandbox.core import Sandbox
from steps.vsphere_network import connection


def session(sim: vcsim.Vcsim) -> Any:
    """A plain pyVmomi session, independent of the adapter."""
    context = ssl.create_default_context(cafile=str(sim.cert))
    return SmartConnect(host=sim.host, port=sim.port, user=vcsim.USER,
                        pwd=sim.password_file.read_text().strip(), sslContext=context)


def named_inventory(section: dict[str, Any], vms: list[str]) -> tuple[list[str], int]:
    """The VM names an inventory of ``vms`` holds, and the round trips it took."""
    backends = RealBackends()
    try:
        api = vsphere_api(backends, connection(section))
        before = api.round_trips
        inv = api.inventory(vms=vms)
        return sorted(v.name for v in inv.vms), api.round_trips - before
    finally:
        backends.close()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[vcsim.Vcsim]:
    sb = Sandbox(dir=tmp_path / "vs")
    try:
        yield vcsim.start(sb, model="vcenter", hosts=2, vms=6)
    finally:
        sb.stop()


def test_named_vms_are_found_by_name_and_in_sub_folders(sim: vcsim.Vcsim) -> None:
    section = vcsim.answers(sim)
    first, second = sim.vms[0], sim.vms[1]
    names, trips = named_inventory(section, [first])
    assert names == [first]  # only the named VM: the others were not read
    # The bulk read (a view: create, retrieve, destroy), one FindChild per datacenter
    # and name, one read of its devices.
    assert trips == 5

    si = session(sim)
    try:
        content = si.RetrieveContent()
        dc = next(e for e in content.rootFolder.childEntity if isinstance(e, vim.Datacenter))
        vm = content.searchIndex.FindChild(entity=dc.vmFolder, name=second)
        sub = dc.vmFolder.CreateFolder("lab")
        task = sub.MoveIntoFolder_Task([vm])
        deadline = time.monotonic() + 30
        while task.info.state not in ("success", "error") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert task.info.state == "success"
    finally:
        Disconnect(si)
    names, _ = named_inventory(section, [first, second])
    assert names == sorted(sim.vms)  # a sub-folder: every VM's name was read
