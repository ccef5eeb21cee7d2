"""In-memory fakes of every backend interface, and a bundle that hands them out.

Each fake keeps the state of its system in plain Python objects and changes
it the way the real adapter does, so a step can be discovered, planned,
applied and verified against it in milliseconds.  The daemon-backed tests
(marked ``daemons``) keep checking the real adapters against the real services.

:func:`sample_backends` is a host on which every step's ``example()`` fits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.dbus import NetDevice, NetworkState, Unit, UnitStatus
from backends.interfaces.libvirt import Domain, DomainNotFound, HostFile, PciAddress, Shmem
from backends.interfaces.ovsdb import Bridge, BridgePut, Mirror, MirrorEdit, Port
from backends.interfaces.vsphere import (
    VM,
    Adapter,
    DVPortgroup,
    DVSwitch,
    Host,
    Inventory,
    MirrorPort,
    MirrorSession,
    PhysicalNic,
    PortGroup,
    PortGroupSpec,
    Security,
    Shaping,
    Teaming,
    Vmk,
    VmkSpec,
    VSwitch,
    VSwitchSpec,
    overlay,
)

# -- D-Bus -------------------------------------------------------------------


def unit(name: str, active: str = "active") -> Unit:
    """A loaded unit in state ``active`` (``inactive``, ``failed``...)."""
    return Unit(name, "loaded", active, "running" if active == "active" else "dead")


@dataclass
class FakeDBus:
    """systemd and NetworkManager: units, start/restart jobs, bus names."""

    units: dict[str, Unit] = field(default_factory=dict)
    # Installed but not loaded: ListUnits does not show them, LoadUnit does.
    unloaded: dict[str, Unit] = field(default_factory=dict)
    network_state: NetworkState = NetworkState(True, "connected global",
                                               (NetDevice("eth0", "ethernet", "activated"),))
    bus: dict[str, list[str]] = field(default_factory=dict)
    # Units whose start job ends with "failed".
    failing: set[str] = field(default_factory=set)
    restarted: list[str] = field(default_factory=list)
    address: str = "fake:dbus"
    # Unit file states (enabled, disabled, masked...); a unit not listed is "disabled".
    enablement: dict[str, str] = field(default_factory=dict)
    files: dict[str, HostFile] = field(default_factory=dict)
    reloads: int = 0
    # What starting a unit starts too (its Requires=/Wants=), as systemd does.
    pulls: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def list_units(self) -> dict[str, Unit]:
        return dict(self.units)

    def load_unit(self, name: str) -> Unit | None:
        found = self.unloaded.pop(name, None)
        if found is not None:
            self.units[name] = found
        return found

    def network(self) -> NetworkState:
        return self.network_state

    def bus_services(self) -> dict[str, list[str]]:
        return dict(self.bus)

    def start_unit(self, name: str, timeout: float) -> str:
        if name in self.failing:
            self.units[name] = unit(name, "failed")
            return "failed"
        self.units[name] = unit(name)
        for other in self.pulls.get(name, ()):
            self.units[other] = unit(other)
        return "done"

    def restart_unit(self, name: str, timeout: float) -> str:
        self.restarted.append(name)
        return self.start_unit(name, timeout)

    def stop_unit(self, name: str, timeout: float) -> str:
        self.units[name] = unit(name, "inactive")
        return "done"

    def unit_status(self, name: str) -> UnitStatus | None:
        found = self.units.get(name) or self.load_unit(name)
        if found is None:
            return None
        return UnitStatus(name, found.load, found.active, found.sub,
                          self.enablement.get(name, "disabled"), False,
                          "exit-code" if found.active == "failed" else "success",
                          self.pulls.get(name, ()))

    def unit_files(self, action: str, names: list[str]) -> list[tuple[str, str, str]]:
        state = {"enable": "enabled", "disable": "disabled", "mask": "masked",
                 "unmask": "disabled"}[action]
        for name in names:  # a unit file given by its path enables the unit of its name
            self.enablement[name.rsplit("/", 1)[-1]] = state
        return [("symlink", f"/etc/systemd/system/{n}", "") for n in names]

    def reload(self) -> None:
        self.reloads += 1

    def read_file(self, path: str) -> HostFile | None:
        return self.files.get(path)

    def write_file(self, path: str, content: bytes, mode: int = 0o644) -> str | None:
        old = self.files.get(path)
        self.files[path] = HostFile(path, content, mode)
        return f"{path}.bak" if old is not None and old.content != content else None

    def remove_file(self, path: str) -> str | None:
        return f"{path}.bak" if self.files.pop(path, None) is not None else None

    def close(self) -> None:
        pass


# -- OVSDB -------------------------------------------------------------------


@dataclass
class FakeOvsdb:
    """Bridges, their ports and the Mirror table; an edit is all or nothing."""

    bridges_: dict[str, Bridge] = field(default_factory=dict)
    mirrors_: dict[str, Mirror] = field(default_factory=dict)  # by uuid
    snaplen: bool = True
    # revalidate() fails with this text (e.g. "control socket unreachable").
    revalidate_error: str = ""
    revalidated: list[str] = field(default_factory=list)
    remote: str = "unix:fake.sock"
    transactions: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def add_bridge(self, name: str, *ports: str, flood_vlans: tuple[int, ...] = ()) -> None:
        """A bridge with ports (test set-up)."""
        self.bridges_[name] = Bridge(name, tuple(ports), flood_vlans, "netdev", {},
                                     f"bridge-{name}")

    def add_mirror(self, mirror: Mirror) -> Mirror:
        """A mirror row as if made by someone (test set-up)."""
        row = replace(mirror, uuid=mirror.uuid or f"mirror-{next(self._ids)}",
                      statistics={"tx_packets": 0, "tx_bytes": 0})
        self.mirrors_[row.uuid] = row
        return row

    def has_column(self, table: str, column: str) -> bool:
        return (table, column) != ("Mirror", "snaplen") or self.snaplen

    # Ports written by an edit (type, options, VLANs); others are plain system ports.
    ports_: dict[str, Port] = field(default_factory=dict)

    def bridges(self) -> dict[str, Bridge]:
        # Ports by name, as the adapter reads them.
        return {n: replace(b, ports=tuple(sorted(b.ports))) for n, b in self.bridges_.items()}

    def ports(self) -> dict[str, Port]:
        return {p: self.ports_.get(p) or Port(p, b.name, uuid=f"port-{p}")
                for b in self.bridges_.values() for p in b.ports}

    def iface_types(self) -> tuple[str, ...]:
        return ("erspan", "geneve", "gre", "internal", "ip6erspan", "ip6gre", "patch",
                "system", "tap", "vxlan")

    def datapath_types(self) -> tuple[str, ...]:
        return ("netdev", "system")

    def _put_bridge(self, put: BridgePut) -> None:
        old = self.bridges_.get(put.name) or Bridge(put.name, (put.name,), uuid=f"br-{put.name}")
        ids = {k: v for k, v in {**old.external_ids, **put.external_ids}.items() if v is not None}
        other = {k: v for k, v in {**old.other_config, **put.other_config}.items()
                 if v is not None}
        # As the adapter: None leaves a setting as it is; fail_mode "" clears it.
        self.bridges_[put.name] = replace(
            old, datapath_type=old.datapath_type if put.datapath_type is None
            else put.datapath_type,
            fail_mode=old.fail_mode if put.fail_mode is None else put.fail_mode or None,
            external_ids=ids, other_config=other)

    def _edit_ports(self, edit: MirrorEdit) -> None:
        for port in edit.ports_delete:
            self.ports_.pop(port.name, None)
            bridge = self.bridges_[port.bridge]
            self.bridges_[port.bridge] = replace(
                bridge, ports=tuple(p for p in bridge.ports if p != port.name))
        for port in edit.ports_put:
            self.ports_[port.name] = replace(port, uuid=port.uuid or f"port-{port.name}")
            bridge = self.bridges_[port.bridge]
            if port.name not in bridge.ports:
                self.bridges_[port.bridge] = replace(bridge, ports=(*bridge.ports, port.name))

    def mirrors(self) -> list[Mirror]:
        return list(self.mirrors_.values())

    def apply(self, edit: MirrorEdit, timeout: float) -> int:
        self.transactions += 1
        made = {(p.bridge, p.name) for p in edit.ports_put} | {
            (b.name, b.name) for b in edit.bridges_put}
        for m in edit.put:  # checked first: a bad reference changes nothing
            ports = self.bridges_[m.bridge].ports if m.bridge in self.bridges_ else ()
            ports = (*ports, *(p for b, p in made if b == m.bridge))
            for port in (*m.select_src_port, *m.select_dst_port, *filter(None, [m.output_port])):
                if port not in ports:
                    raise BackendError(f"transaction refused: no port '{port}' on "
                                       f"bridge '{m.bridge}'")
        for put in edit.bridges_put:
            self._put_bridge(put)
        self._edit_ports(edit)
        for gone in edit.bridges_delete:  # its ports and mirrors go with it
            for port in self.bridges_.pop(gone.name, gone).ports:
                self.ports_.pop(port, None)
            self.mirrors_ = {k: m for k, m in self.mirrors_.items() if m.bridge != gone.name}
        for m in edit.delete:
            self.mirrors_.pop(m.uuid, None)
        for m in edit.put:
            self.add_mirror(m)
        for name, bridge in list(self.bridges_.items()):
            flood = (set(bridge.flood_vlans) | set(edit.flood_add.get(name, ()))) - set(
                edit.flood_remove.get(name, ()))
            ids = dict(bridge.external_ids)
            for key, value in edit.bridge_ids.get(name, {}).items():
                if value is None:
                    ids.pop(key, None)
                else:
                    ids[key] = value
            self.bridges_[name] = replace(bridge, flood_vlans=tuple(sorted(flood)),
                                          external_ids=ids)
        return self.transactions

    def revalidate(self, target: str) -> None:
        if self.revalidate_error:
            raise BackendError(self.revalidate_error)
        self.revalidated.append(target)

    def close(self) -> None:
        pass


# -- vSphere -----------------------------------------------------------------


@dataclass
class FakeVSphere:
    """Hosts with standard vSwitches and port groups, VMs with adapters, and
    vCenter's distributed switches and port groups."""

    hosts: dict[str, Host] = field(default_factory=dict)
    vms: dict[str, VM] = field(default_factory=dict)
    kind: str = "vcenter"
    dvswitches: dict[str, DVSwitch] = field(default_factory=dict)
    dvportgroups: dict[str, DVPortgroup] = field(default_factory=dict)
    datacenters: tuple[str, ...] = ("DC1",)
    # (method, object name) pairs that fail, as vcsim's fault injection does.
    fail: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    logged_out: bool = False
    ports: itertools.count[int] = field(default_factory=itertools.count)
    clock_offset: float = 0.0  # seconds the server's clock is ahead of ours

    def about(self) -> str:
        return f"fake vSphere ({self.kind})"

    def current_time(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    @property
    def round_trips(self) -> int:
        return len(self.calls)

    def _call(self, method: str, name: str, *args: Any) -> None:
        self.calls.append((method, (name, *args)))
        if (method, name) in self.fail:
            raise BackendError(f"vSphere {method} failed: injected fault on '{name}'")

    def inventory(self, vms: Collection[str] | None = None) -> Inventory:
        self.calls.append(("inventory", (vms,)))
        proxied = {(m.host, n): d.name for d in self.dvswitches.values() for m in d.hosts
                   for n in m.nics}
        hosts = (replace(h, pnics=tuple(replace(n, dvswitch=proxied.get((h.name, n.device)))
                                        for n in h.pnics)) for h in self.hosts.values())
        return Inventory(self.kind, tuple(hosts), tuple(
            v if vms is None or v.name in vms else VM(v.name, None)
            for v in self.vms.values()), tuple(self.dvswitches.values()),
            tuple(self.dvportgroups.values()), self.datacenters)

    def _host(self, name: str) -> Host:
        if name not in self.hosts:
            raise BackendError(f"no host '{name}'")
        return self.hosts[name]

    def _set_switches(self, host: Host, switches: list[VSwitch], pgs: list[PortGroup]) -> None:
        uplink = {n: v.name for v in switches for n in v.nics}
        switches = [replace(v, portgroups=tuple(p.name for p in pgs if p.vswitch == v.name))
                    for v in switches]
        self.hosts[host.name] = replace(
            host, vswitches=tuple(switches), portgroups=tuple(pgs),
            pnics=tuple(PhysicalNic(n.device, uplink.get(n.device)) for n in host.pnics))

    def add_vswitch(self, host: str, spec: VSwitchSpec) -> None:
        self._call("add_vswitch", spec.name, host)
        h = self._host(host)
        if h.vswitch(spec.name):
            raise BackendError(f"vSwitch '{spec.name}' already exists")
        new = VSwitch(spec.name, spec.num_ports, spec.mtu, spec.nics, (),
                      spec.security, spec.teaming, spec.shaping)
        self._set_switches(h, [*h.vswitches, new], list(h.portgroups))

    def update_vswitch(self, host: str, name: str, spec: VSwitchSpec) -> None:
        self._call("update_vswitch", name, host)
        h = self._host(host)
        # As the adapter: policy fields the spec leaves unset keep their value.
        self._set_switches(h, [replace(
            v, num_ports=spec.num_ports, mtu=spec.mtu, nics=spec.nics,
            security=overlay(v.security, spec.security),
            teaming=overlay(v.teaming, spec.teaming),
            shaping=overlay(v.shaping, spec.shaping)) if v.name == name else v
            for v in h.vswitches], list(h.portgroups))

    def remove_vswitch(self, host: str, name: str) -> None:
        self._call("remove_vswitch", name, host)
        h = self._host(host)
        self._set_switches(h, [v for v in h.vswitches if v.name != name],
                           [p for p in h.portgroups if p.vswitch != name])

    def _portgroup(self, h: Host, spec: PortGroupSpec) -> PortGroup:
        # Unset security fields read back as the vSwitch's (here: all off), unset
        # teaming and shaping fields as the vSwitch's.
        sec = Security(*(bool(getattr(spec.security, k)) for k in
                         ("allow_promiscuous", "forged_transmits", "mac_changes")))
        vs = h.vswitch(spec.vswitch) or VSwitch(spec.vswitch, 0, 0)
        return PortGroup(spec.name, spec.vswitch, spec.vlan, sec,
                         overlay(vs.teaming, spec.teaming), overlay(vs.shaping, spec.shaping))

    def add_portgroup(self, host: str, spec: PortGroupSpec) -> None:
        self._call("add_portgroup", spec.name, host)
        h = self._host(host)
        if h.portgroup(spec.name) or not h.vswitch(spec.vswitch):
            raise BackendError(f"cannot add port group '{spec.name}'")
        self._set_switches(h, list(h.vswitches), [*h.portgroups, self._portgroup(h, spec)])

    def update_portgroup(self, host: str, name: str, spec: PortGroupSpec) -> None:
        self._call("update_portgroup", name, host)
        h = self._host(host)
        self._set_switches(h, list(h.vswitches), [replace(
            p, name=spec.name, vswitch=spec.vswitch, vlan=spec.vlan,
            security=overlay(p.security, spec.security),
            teaming=overlay(p.teaming, spec.teaming),
            shaping=overlay(p.shaping, spec.shaping)) if p.name == name else p
            for p in h.portgroups])

    def remove_portgroup(self, host: str, name: str) -> None:
        self._call("remove_portgroup", name, host)
        h = self._host(host)
        self._set_switches(h, list(h.vswitches), [p for p in h.portgroups if p.name != name])

    def _set_vmks(self, h: Host, vmks: list[Vmk]) -> None:
        self.hosts[h.name] = replace(h, vmks=tuple(vmks))

    def _on(self, h: Host, spec: VmkSpec) -> bool:
        """Whether the port group of ``spec`` is there for ``h``."""
        if spec.dvswitch is None:
            return h.portgroup(spec.portgroup) is not None
        pg, dvs = self.dvportgroups.get(spec.portgroup), self.dvswitches.get(spec.dvswitch)
        return pg is not None and dvs is not None and dvs.member(h.name) is not None

    def add_vmk(self, host: str, spec: VmkSpec) -> None:
        self._call("add_vmk", spec.portgroup, host)
        h = self._host(host)
        if h.vmk_on(spec.portgroup, spec.dvswitch) or not self._on(h, spec):
            raise BackendError(f"cannot add a VMkernel adapter on '{spec.portgroup}'")
        device = next(f"vmk{n}" for n in range(len(h.vmks) + 1) if not h.vmk(f"vmk{n}"))
        self._set_vmks(h, [*h.vmks, self._vmk(device, spec)])

    @staticmethod
    def _vmk(device: str, spec: VmkSpec) -> Vmk:
        return Vmk(device, spec.portgroup, spec.address is None, spec.address, spec.netmask,
                   spec.mtu, spec.services, spec.dvswitch)

    def update_vmk(self, host: str, portgroup: str, spec: VmkSpec,
                   dvswitch: str | None = None) -> None:
        self._call("update_vmk", portgroup, host)
        h = self._host(host)
        self._set_vmks(h, [self._vmk(v.device, spec) if (v.portgroup, v.dvswitch) == (
            portgroup, dvswitch) else v for v in h.vmks])

    def remove_vmk(self, host: str, portgroup: str, dvswitch: str | None = None) -> None:
        self._call("remove_vmk", portgroup, host)
        h = self._host(host)
        self._set_vmks(h, [v for v in h.vmks if (v.portgroup, v.dvswitch) != (portgroup,
                                                                              dvswitch)])

    def move_adapter(self, vm: str, adapter: str, portgroup: str, distributed: bool = False,
                     progress: Callable[[float], None] | None = None) -> None:
        self._call("move_adapter", vm, adapter, portgroup)
        found = self.vms[vm]
        dvs = self.dvportgroups[portgroup].dvswitch if distributed else None
        port = str(next(self.ports)) if distributed else None
        self.vms[vm] = replace(found, adapters=tuple(
            replace(a, network=portgroup, dvswitch=dvs, port=port) if a.label == adapter else a
            for a in found.adapters))
        if progress:
            progress(1.0)

    # -- distributed switches: as vCenter keeps them (effective port group policy)

    def add_dvswitch(self, spec: DVSwitch) -> None:
        self._call("add_dvswitch", spec.name)
        if spec.name in self.dvswitches or spec.datacenter not in self.datacenters:
            raise BackendError(f"cannot create distributed switch '{spec.name}'")
        self.dvswitches[spec.name] = replace(spec, version=spec.version or "6.5.0",
                                             uuid=f"uuid-{spec.name}")

    def update_dvswitch(self, name: str, spec: DVSwitch) -> None:
        self._call("update_dvswitch", name)
        have = self.dvswitches[name]
        self.dvswitches[name] = replace(have, uplinks=spec.uplinks, mtu=spec.mtu,
                                        hosts=spec.hosts, pvlans=spec.pvlans)

    def remove_dvswitch(self, name: str) -> None:
        self._call("remove_dvswitch", name)
        del self.dvswitches[name]
        self.dvportgroups = {k: p for k, p in self.dvportgroups.items() if p.dvswitch != name}

    def add_dvportgroup(self, spec: DVPortgroup) -> None:
        self._call("add_dvportgroup", spec.name)
        dvs = self.dvswitches[spec.dvswitch]
        base = DVPortgroup(spec.name, spec.dvswitch, security=Security(False, False, False),
                           teaming=Teaming("loadbalance_srcid", dvs.uplinks, (), True, True,
                                           "link"), shaping=Shaping(False))
        self.dvportgroups[spec.name] = self._overlaid(base, spec)

    @staticmethod
    def _overlaid(have: DVPortgroup, spec: DVPortgroup) -> DVPortgroup:
        return replace(spec, security=overlay(have.security, spec.security),
                       teaming=overlay(have.teaming, spec.teaming),
                       shaping=overlay(have.shaping, spec.shaping))

    def update_dvportgroup(self, name: str, spec: DVPortgroup) -> None:
        self._call("update_dvportgroup", name)
        self.dvportgroups[name] = self._overlaid(self.dvportgroups[name], spec)

    def remove_dvportgroup(self, name: str) -> None:
        self._call("remove_dvportgroup", name)
        del self.dvportgroups[name]

    def _port(self, end: MirrorPort) -> MirrorPort:
        if end.vm is None:
            return end
        adapter = self.vms[end.vm].adapter(end.adapter or "")
        if adapter is None or adapter.port is None:
            raise BackendError(f"'{end.adapter}' of VM '{end.vm}' is not on a distributed port")
        return MirrorPort(port=adapter.port)

    def _set_mirror(self, dvswitch: str, name: str, spec: MirrorSession | None) -> None:
        dvs = self.dvswitches[dvswitch]
        mirrors = [m for m in dvs.mirrors if m.name != name]
        if spec is not None:
            ends = {k: tuple(self._port(e) for e in getattr(spec, k))
                    for k in ("transmitted", "received", "destination")}
            mirrors.append(replace(spec, key=f"key-{spec.name}", **ends))
        self.dvswitches[dvswitch] = replace(dvs, mirrors=tuple(mirrors))

    def add_mirror(self, dvswitch: str, spec: MirrorSession) -> None:
        self._call("add_mirror", spec.name, dvswitch)
        self._set_mirror(dvswitch, spec.name, spec)

    def update_mirror(self, dvswitch: str, name: str, spec: MirrorSession) -> None:
        self._call("update_mirror", name, dvswitch)
        self._set_mirror(dvswitch, name, spec)

    def remove_mirror(self, dvswitch: str, name: str) -> None:
        self._call("remove_mirror", name, dvswitch)
        self._set_mirror(dvswitch, name, None)

    def close(self) -> None:
        self.logged_out = True


# -- libvirt -----------------------------------------------------------------


def domain(name: str, state: str = "shut off", *shmems: Shmem) -> Domain:
    """A persistent domain (test set-up)."""
    return Domain(name, f"uuid-{name}", state, state == "running", True,
                  "/usr/bin/qemu-system-x86_64", tuple(shmems))


@dataclass
class FakeLibvirt:
    """Domains and the libvirt host's files."""

    domains_: dict[str, Domain] = field(default_factory=dict)
    files: dict[str, HostFile] = field(default_factory=dict)
    version_: tuple[int, int, int] = (9, 0, 0)
    uri: str = "qemu:///fake"
    backups: int = 0
    reconnects: int = 0

    def version(self) -> tuple[int, int, int]:
        return self.version_

    def domains(self) -> list[Domain]:
        return [self.domains_[n] for n in sorted(self.domains_)]

    def domain(self, name: str) -> Domain:
        if name not in self.domains_:
            raise DomainNotFound(name, self.uri)
        return self.domains_[name]

    def set_shmem(self, name: str, shmem: Shmem) -> None:
        dom = self.domain(name)
        others = tuple(s for s in dom.shmems if s.name != shmem.name)
        self.domains_[name] = replace(dom, shmems=(*others, shmem))

    def set_shmems(self, name: str, shmems: list[Shmem]) -> None:
        for shmem in shmems:
            self.set_shmem(name, shmem)

    def remove_shmems(self, name: str, names: list[str]) -> None:
        dom = self.domain(name)
        self.domains_[name] = replace(dom, shmems=tuple(s for s in dom.shmems
                                                        if s.name not in names))

    def set_qemu_args(self, name: str, args: list[str]) -> None:
        self.domains_[name] = replace(self.domain(name), qemu_args=tuple(args))

    def set_emulator(self, name: str, emulator: str) -> None:
        self.domains_[name] = replace(self.domain(name), emulator=emulator)

    def list_files(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self.files
                      if p.startswith(prefix) and "/" not in p[len(prefix):])

    def remove_file(self, path: str) -> bool:
        return self.files.pop(path, None) is not None

    # The running guests' devices (the live XML); a domain not listed has what its
    # definition had when it started, i.e. its definition now.
    live: dict[str, Domain] = field(default_factory=dict)

    def live_domain(self, name: str) -> Domain:
        return self.live.get(name) or self.domain(name)

    def attach_shmem(self, name: str, shmem: Shmem, persistent: bool) -> None:
        dom = self.live_domain(name)
        others = tuple(s for s in dom.shmems if s.name != shmem.name)
        self.live[name] = replace(dom, shmems=(*others, shmem))
        if persistent:
            self.set_shmem(name, shmem)

    # Running guests that do not release a hot-unplugged device (no OS to eject it).
    holding: set[str] = field(default_factory=set)

    def detach_shmem(self, name: str, shmem: str, persistent: bool) -> None:
        dom = self.live_domain(name)
        if dom.shmem(shmem) is None:
            raise BackendError(f"running domain '{name}' has no ivshmem device '{shmem}'")
        if persistent:
            self.remove_shmems(name, [shmem])
        if name in self.holding:
            raise BackendError(f"running domain '{name}' did not release '{shmem}'")
        self.live[name] = replace(dom, shmems=tuple(s for s in dom.shmems if s.name != shmem))

    def guest_pci(self, name: str) -> list[tuple[PciAddress, str]]:
        return [(s.address, "1af4:1110") for s in self.live_domain(name).shmems
                if s.address is not None]

    # dpkg diversions: path -> where the original went.
    diversions: dict[str, str] = field(default_factory=dict)

    def diversion(self, path: str, admindir: str) -> str | None:
        return self.diversions.get(path)

    def swap_in(self, path: str, real: str, content: bytes, admindir: str) -> None:
        self.files[real] = self.files.get(path) or HostFile(real, b"", 0o755)
        self.diversions[path] = real
        self.files[path] = HostFile(path, content, 0o755)

    def swap_out(self, path: str, real: str, admindir: str) -> None:
        self.files[path] = self.files.pop(real)
        self.diversions.pop(path, None)

    # hugetlbfs mount point -> (page size in bytes, free pages).
    hugepages: dict[str, tuple[int, int]] = field(default_factory=dict)

    def hugetlbfs(self, path: str) -> tuple[int, int] | None:
        return self.hugepages.get(path)

    def read_file(self, path: str) -> HostFile | None:
        return self.files.get(path)

    def write_file(self, path: str, content: bytes, mode: int = 0o755) -> str | None:
        old = self.files.get(path)
        self.files[path] = HostFile(path, content, mode)
        if old is None or old.content == content:
            return None
        self.backups += 1
        backup = f"{path}.hostsetup-bak.{self.backups}"
        self.files[backup] = old
        return backup

    def reconnect(self) -> None:
        self.reconnects += 1

    def close(self) -> None:
        pass


# -- the bundle --------------------------------------------------------------

# Interface kind -> fake class (the conformance test checks every kind has one).
FAKES: Mapping[str, type] = {
    "dbus": FakeDBus, "ovsdb": FakeOvsdb, "vsphere": FakeVSphere, "libvirt": FakeLibvirt,
}


@dataclass
class FakeBackends:
    """A :class:`backends.interfaces.Backends` bundle of fakes, one per kind.

    Every address of a kind reaches the same fake; ``opened`` records what was
    asked for, and a kind in ``unreachable`` raises ``BackendUnreachable``.
    """

    systems: dict[str, Any] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    opened: list[tuple[Hashable, ...]] = field(default_factory=list)

    def get(self, kind: str, *args: Hashable) -> Any:
        self.opened.append((kind, *args))
        if kind in self.unreachable:
            where = getattr(args[0], "address", args[0]) if args else ""
            raise BackendUnreachable(kind, str(where), "fake: down")
        if kind not in self.systems:
            self.systems[kind] = FAKES[kind]()
        return self.systems[kind]

    @property
    def dbus(self) -> FakeDBus:
        return self.get("dbus", None)  # type: ignore[no-any-return]

    @property
    def ovsdb(self) -> FakeOvsdb:
        return self.get("ovsdb", "")  # type: ignore[no-any-return]

    @property
    def vsphere(self) -> FakeVSphere:
        return self.get("vsphere", None)  # type: ignore[no-any-return]

    @property
    def libvirt(self) -> FakeLibvirt:
        return self.get("libvirt", "")  # type: ignore[no-any-return]


def sample_backends() -> FakeBackends:
    """A virtualization host on which every step's ``example()`` validates.

    Units of a host with Open vSwitch and libvirt installed but stopped;
    bridge br0 with vnet0, vnet1 and mon0; a vCenter cluster Cluster1 of two
    hosts with a free vmnic1, vmk0 (management) and VM sensor01; domains vm1
    (running) and vm2.
    """
    fb = FakeBackends()
    fb.systems["dbus"] = FakeDBus(units={
        n: unit(n, "inactive") for n in ("openvswitch-switch.service", "libvirtd.service",
                                        "ovs-vswitchd.service", "ovsdb-server.service")}
        | {"NetworkManager.service": unit("NetworkManager.service")},
        bus={"org.freedesktop.NetworkManager": ["/org/freedesktop/NetworkManager"]})
    ovs = fb.systems["ovsdb"] = FakeOvsdb()
    ovs.add_bridge("br0", "vnet0", "vnet1", "mon0")
    default = VSwitch("vSwitch0", 128, 1500, ("vmnic0",), ("VM Network", "Management Network"))
    off = Security(False, False, False)
    fb.systems["vsphere"] = FakeVSphere(
        hosts={h: Host(h, "Cluster1", (default,),
                       (PortGroup("VM Network", "vSwitch0", 0, off),
                        PortGroup("Management Network", "vSwitch0", 0, off)),
                       (PhysicalNic("vmnic0", "vSwitch0"), PhysicalNic("vmnic1")),
                       (Vmk("vmk0", "Management Network", False, f"10.0.0.{n}",
                            "255.255.255.0", 1500, ("management",)),), "DC1")
               for n, h in enumerate(("esx01", "esx02"), 1)},
        vms={"sensor01": VM("sensor01", "esx01", (
            Adapter("Network adapter 1", 4000, "VM Network"),
            Adapter("Network adapter 2", 4001, "VM Network")))})
    fb.systems["libvirt"] = FakeLibvirt(domains_={"vm1": domain("vm1", "running"),
                                                  "vm2": domain("vm2")})
    return fb
