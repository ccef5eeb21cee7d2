"""The vSphere backend: pyVmomi against ESXi or vCenter.

TLS is verified by default (system CAs, or ``ca_file``).  A pinned SHA-256
``thumbprint`` is checked against the certificate the server presents and
then that certificate, and only it, is trusted for the session.  (pyVmomi's
own ``thumbprint=`` is not used: SmartConnect's version probe fails on an
untrusted certificate before pyVmomi looks at the thumbprint, and on a match
pyVmomi turns verification off in the shared SSL context.)  ``insecure`` turns
verification off and is logged as a warning.

The inventory is one PropertyCollector retrieval over a ContainerView (hosts'
networking, every VM's name, the distributed switches and port groups with
their configuration, the datacenters), plus one for the host and devices of
the VMs a step names, so the number of SOAP round trips does not grow with the
number of hosts, VMs, port groups or switches, and the bulk of the data
(device lists) only with the VMs named; :attr:`VSphereBackend.round_trips`
counts them.  A change of a distributed switch or port group re-reads its
configVersion first (vCenter refuses a reconfigure quoting an old one).
Neither SOAP traffic nor the password is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import ssl
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pyVim.connect import SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.vsphere import (
    MIRROR_KINDS,
    VM,
    Adapter,
    DVPortgroup,
    DvsMember,
    DVSwitch,
    Host,
    Inventory,
    MirrorPort,
    MirrorSession,
    PhysicalNic,
    PortGroup,
    PortGroupSpec,
    Pvlan,
    Security,
    Shaping,
    Teaming,
    Vmk,
    VmkSpec,
    VSphereConn,
    VSwitch,
    VSwitchSpec,
    overlay,
)

log = logging.getLogger("hostsetup.vsphere")

WHAT = "vSphere"
PC = vmodl.query.PropertyCollector
HOST_PROPS = [
    "name", "parent", "network", "configManager.networkSystem",
    "configManager.virtualNicManager", "config.network.vswitch", "config.network.portgroup",
    "config.network.pnic", "config.network.vnic", "config.virtualNicManagerInfo.netConfig",
    "config.network.proxySwitch",
]
# VMkernel services: the answers' words -> the virtual NIC manager's nicType.
NIC_TYPES = {"management": "management", "vmotion": "vmotion", "vsan": "vsan",
             "provisioning": "vSphereProvisioning", "ft": "faultToleranceLogging",
             "replication": "vSphereReplication"}
VM_PROPS = ["name", "runtime.host", "config.hardware.device"]
# Read in the bulk retrieval besides hosts and VMs: names, and parents up to the
# datacenters; the distributed switches' and port groups' configuration.
NAMED = [vim.ComputeResource, vim.ClusterComputeResource, vim.Network, vim.Folder]
OTHER_PROPS = [(vim.Datacenter, ["name", "vmFolder", "networkFolder"]),
               (vim.DistributedVirtualSwitch, ["name", "parent", "uuid", "config"]),
               (vim.dvs.DistributedVirtualPortgroup, ["name", "config", "portKeys", "vm"])]
DV_BACKING = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo
TIMEOUT = 30  # seconds for a TCP connect / an HTTP response
NP = vim.host.NetworkPolicy
VDS = vim.dvs.VmwareDistributedVirtualSwitch
DVPG = vim.dvs.DistributedVirtualPortgroup
BINDINGS = {"static": "earlyBinding", "ephemeral": "ephemeral"}
# What VSphereBackend._cached looks up: the attribute caching each kind by name.
CACHES = {"host": "_hosts", "VM": "_vms", "distributed switch": "_dvs",
          "distributed port group": "_dvpgs", "datacenter": "_folders"}


def normalize_thumbprint(value: str) -> str:
    """``AA:BB:..`` or ``aabb..`` -> lowercase hex without colons."""
    return value.replace(":", "").strip().lower()


def peer_certificate(server: str, port: int) -> bytes:
    """The DER certificate the server presents (no verification: it is compared next)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((server, port), timeout=TIMEOUT) as sock:
        with ctx.wrap_socket(sock, server_hostname=server) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server presented no certificate")
    return der


def ssl_context(conn: VSphereConn) -> ssl.SSLContext:
    """The TLS context for ``conn``: verified, pinned, or (explicitly) insecure."""
    if conn.insecure:
        log.warning(
            "TLS certificate of %s is NOT verified (insecure: true); "
            "pin its thumbprint or give a ca_file instead", conn.address,
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if conn.thumbprint:
        expected = normalize_thumbprint(conn.thumbprint)
        der = peer_certificate(conn.server, conn.port)
        actual = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(actual, expected):
            raise BackendUnreachable(
                WHAT, conn.address,
                f"TLS certificate thumbprint mismatch: expected SHA-256 {expected}, "
                f"the server presents {actual}; refusing to connect",
            )
        # Trust exactly the pinned certificate (also when it is not self-signed).
        ctx = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.check_hostname = False  # identity is the pinned certificate, not a name
        return ctx
    return ssl.create_default_context(cafile=conn.ca_file)


def fault_text(exc: BaseException) -> str:
    """A vSphere fault as one line: its message or its type."""
    msg = getattr(exc, "msg", None) or str(exc)
    return f"{type(exc).__name__.rsplit('.', 1)[-1]}: {msg}" if msg else type(exc).__name__


class VSphereBackend:
    """A logged-in session; :meth:`close` logs out."""

    def __init__(self, conn: VSphereConn) -> None:
        self._conn = conn
        self._si: Any = None
        self._calls = 0
        self._hosts: dict[str, Any] = {}  # host name -> HostSystem
        self._netsys: dict[str, Any] = {}  # host name -> HostNetworkSystem
        self._vnicmgr: dict[str, Any] = {}  # host name -> HostVirtualNicManager
        self._vms: dict[str, Any] = {}  # VM name -> VirtualMachine
        self._dvs: dict[str, Any] = {}  # switch name -> DistributedVirtualSwitch
        self._dvpgs: dict[str, Any] = {}  # port group name -> DistributedVirtualPortgroup
        self._folders: dict[str, Any] = {}  # datacenter name -> its network folder
        with self._guard("login"):
            try:
                self._si = SmartConnect(
                    host=conn.server, port=conn.port, user=conn.user, pwd=conn.password,
                    sslContext=ssl_context(conn), httpConnectionTimeout=TIMEOUT,
                )
            except vim.fault.InvalidLogin:
                raise BackendUnreachable(
                    WHAT, conn.address,
                    f"login refused for user '{conn.user}': incorrect user name or password",
                ) from None
            self._count_round_trips()
            self._content = self._si.RetrieveContent()
            log.info("logged in to %s as %s (%s)", conn.address, conn.user,
                     self._content.about.fullName)

    def _count_round_trips(self) -> None:
        """Count every SOAP request of this session (property reads go through it too)."""
        stub = self._si._stub
        invoke = stub.InvokeMethod

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls += 1
            return invoke(*args, **kwargs)

        stub.InvokeMethod = counted

    @property
    def round_trips(self) -> int:
        """SOAP requests sent since login."""
        return self._calls

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn library errors into BackendUnreachable / BackendError for the operator."""
        address = self._conn.address
        try:
            yield
        except BackendError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise BackendUnreachable(
                WHAT, address,
                f"TLS certificate not trusted ({exc.verify_message}); give its ca_file, "
                "pin its SHA-256 thumbprint, or (lab only) set insecure: true",
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnreachable(WHAT, address, str(exc) or type(exc).__name__) from None
        except vmodl.MethodFault as exc:
            raise BackendError(f"vSphere {action} failed: {fault_text(exc)}") from None

    def close(self) -> None:
        """Log out (always; errors while logging out are logged, not raised)."""
        si, self._si = self._si, None
        if si is None:
            return
        try:
            self._content.sessionManager.Logout()
            log.info("logged out of %s", self._conn.address)
        except Exception as exc:  # noqa: BLE001 - the session dies with the server anyway
            log.warning("logout from %s failed: %s", self._conn.address, type(exc).__name__)
        finally:
            si._stub.DropConnections()

    # -- reading ---------------------------------------------------------

    def about(self) -> str:
        """The server's ``about.fullName`` (read at login)."""
        return str(self._content.about.fullName)

    def current_time(self) -> datetime:
        """``ServiceInstance.CurrentTime``: the server's clock (one round trip)."""
        with self._guard("CurrentTime"):
            now: datetime = self._si.CurrentTime()
        return now if now.tzinfo else now.replace(tzinfo=UTC)

    def _retrieve(self, specs: list[Any]) -> list[Any]:
        """RetrievePropertiesEx (+ continuations) for the given filter specs."""
        pc = self._content.propertyCollector
        result = pc.RetrievePropertiesEx(specSet=specs, options=PC.RetrieveOptions())
        objects = list(result.objects) if result else []
        while result is not None and result.token:
            result = pc.ContinueRetrievePropertiesEx(token=result.token)
            objects.extend(result.objects)
        return objects

    def inventory(self, vms: Collection[str] | None = None) -> Inventory:
        """Hosts with their networking and every VM's name in one bulk retrieval;
        the host and adapters only of the VMs in ``vms`` (all when ``None``), in
        one more.  The round trips never grow with the number of VMs or hosts."""
        with self._guard("inventory"):
            # Named VMs are looked up by name (SearchIndex.FindChild in each
            # datacenter's VM folder): parsing every VM's name is what makes a read
            # of 10,000 VMs slow.  Any not found there (a VM in a sub-folder) makes
            # it read every VM's name after all.
            objects = self._bulk(vms is None)
            if vms is not None:
                found = self._find_vms(objects, vms)
                if len(found) < len(set(vms)):
                    objects = self._bulk(True)
                else:
                    objects += found
            return self._build(objects, self._content.about.apiType, vms)

    def _bulk(self, all_vms: bool) -> list[Any]:
        """One retrieval: the hosts' networking, the names (and parents) of clusters,
        networks and folders, the datacenters (with their VM and network folders),
        the distributed switches and port groups, and every VM's name if ``all_vms``."""
        content = self._content
        vms = [vim.VirtualMachine] if all_vms else []
        types = [vim.HostSystem, *NAMED, *(t for t, _ in OTHER_PROPS), *vms]
        view = content.viewManager.CreateContainerView(content.rootFolder, types, True)
        try:
            spec = PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
                    PC.TraversalSpec(name="view", path="view", skip=False,
                                     type=vim.view.ContainerView)])],
                propSet=[
                    PC.PropertySpec(type=vim.HostSystem, pathSet=HOST_PROPS),
                    *(PC.PropertySpec(type=t, pathSet=["name", "parent"]) for t in NAMED),
                    *(PC.PropertySpec(type=t, pathSet=paths) for t, paths in OTHER_PROPS),
                    *(PC.PropertySpec(type=t, pathSet=["name"]) for t in vms),
                ],
            )
            return self._retrieve([spec])
        finally:
            view.Destroy()

    def _find_vms(self, objects: list[Any], names: Collection[str]) -> list[Any]:
        """The VMs called ``names`` directly in a datacenter's VM folder, as the
        bulk retrieval gives objects (an object and its name)."""
        folders = [p.val for o in objects if isinstance(o.obj, vim.Datacenter)
                   for p in o.propSet if p.name == "vmFolder"]
        found = []
        for name in sorted(set(names)):
            for folder in folders:
                vm = self._content.searchIndex.FindChild(entity=folder, name=name)
                if isinstance(vm, vim.VirtualMachine):
                    found.append(PC.ObjectContent(obj=vm, propSet=[
                        vmodl.DynamicProperty(name="name", val=name)]))
                    break
        return found

    def _vm_details(self, names: Collection[str] | None,
                    others: Collection[Any] = ()) -> dict[str, dict[str, Any]]:
        """Host and devices of the VMs called ``names`` (every VM for ``None``), and
        the name of the VM objects ``others``, in one retrieval (none when neither)."""
        objs = [o for n, o in self._vms.items() if names is None or n in names]
        others = [o for o in others if o not in objs]
        specs = [PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=o) for o in group],
                               propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=paths)])
                 for group, paths in ((objs, VM_PROPS), (others, ["name"])) if group]
        found: dict[str, dict[str, Any]] = {}
        for o in self._retrieve(specs) if specs else ():
            found.setdefault(o.obj._moId, {}).update({p.name: p.val for p in o.propSet})
        return found

    def _build(self, objects: list[Any], api_type: str,
               detailed: Collection[str] | None) -> Inventory:
        props = {o.obj._moId: (o.obj, {p.name: p.val for p in o.propSet}) for o in objects}
        hosts = []
        self._hosts, self._netsys = {}, {}
        of = {kind: {p["name"]: obj for obj, p in props.values() if isinstance(obj, kind)}
              for kind in (vim.VirtualMachine, vim.DistributedVirtualSwitch, DVPG)}
        self._vms, self._dvs, self._dvpgs = (of[vim.VirtualMachine],
                                             of[vim.DistributedVirtualSwitch], of[DVPG])
        # The VMs on distributed port groups are listed there; the bulk read has
        # the names of the VMs asked for only: the others' come with the details.
        connected = {vm._moId: vm for obj, p in props.values() if isinstance(obj, DVPG)
                     for vm in p.get("vm") or () if vm._moId not in props}
        details = self._vm_details(detailed, list(connected.values()))
        props |= {moid: (vm, {"name": details[moid]["name"]}) for moid, vm in connected.items()
                  if "name" in details.get(moid, {})}
        names = Names(props)
        self._folders = {p["name"]: p.get("networkFolder") for obj, p in props.values()
                         if isinstance(obj, vim.Datacenter)}
        for obj, p in props.values():
            if isinstance(obj, vim.HostSystem):
                self._hosts[p["name"]] = obj
                self._netsys[p["name"]] = p.get("configManager.networkSystem")
                self._vnicmgr[p["name"]] = p.get("configManager.virtualNicManager")
                parent = p.get("parent")
                cluster = (names.name(parent)
                           if isinstance(parent, vim.ClusterComputeResource) else None)
                hosts.append(host_value(p, cluster, names))
        vms = []
        for name, obj in self._vms.items():
            d = details.get(obj._moId, {})
            host = d.get("runtime.host")
            vms.append(VM(
                name=name, host=names.name(host),
                adapters=adapters(d.get("config.hardware.device") or [], names),
            ))
        switches = [dvswitch_value(p, names) for obj, p in props.values()
                    if isinstance(obj, vim.DistributedVirtualSwitch) and p.get("config")]
        uplink_pgs = {pg._moId for _obj, p in props.values()
                      for pg in getattr(p.get("config"), "uplinkPortgroup", None) or ()}
        dvpgs = [dvportgroup_value(p, names) for obj, p in props.values()
                 if isinstance(obj, DVPG) and obj._moId not in uplink_pgs and p.get("config")]
        kind = "vcenter" if api_type == "VirtualCenter" else "esx"
        return Inventory(kind, tuple(sorted(hosts, key=lambda h: h.name)),
                         tuple(sorted(vms, key=lambda v: v.name)),
                         tuple(sorted(switches, key=lambda d: d.name)),
                         tuple(sorted(dvpgs, key=lambda p: p.name)),
                         tuple(sorted(self._folders)))

    # -- changing --------------------------------------------------------

    def _network_system(self, host: str) -> Any:
        if not self._netsys:
            self.inventory(vms=())
        if host not in self._netsys:
            raise BackendError(f"vSphere host '{host}' not found")
        return self._netsys[host]

    def add_vswitch(self, host: str, spec: VSwitchSpec) -> None:
        """AddVirtualSwitch with ports, MTU and a bond bridge of the uplinks."""
        with self._guard(f"create vSwitch '{spec.name}' on {host}"):
            self._network_system(host).AddVirtualSwitch(
                vswitchName=spec.name, spec=vswitch_spec(spec))

    def update_vswitch(self, host: str, name: str, spec: VSwitchSpec) -> None:
        """UpdateVirtualSwitch with the whole policy: the fields ``spec`` leaves
        unset keep their current value (ESXi replaces the policy as sent)."""
        with self._guard(f"update vSwitch '{name}' on {host}"):
            ns = self._network_system(host)
            current = next((v for v in ns.networkInfo.vswitch if v.name == name), None)
            if current is not None:
                have = current.spec.policy
                team = overlay(new_uplinks_active(teaming_value(have.nicTeaming), current,
                                                  spec.nics), spec.teaming)
                spec = replace(
                    spec, security=overlay(security_value(have.security), spec.security),
                    teaming=team, shaping=overlay(shaping_value(have.shapingPolicy), spec.shaping))
            ns.UpdateVirtualSwitch(vswitchName=name, spec=vswitch_spec(spec))

    def remove_vswitch(self, host: str, name: str) -> None:
        """RemoveVirtualSwitch."""
        with self._guard(f"remove vSwitch '{name}' on {host}"):
            self._network_system(host).RemoveVirtualSwitch(vswitchName=name)

    def add_portgroup(self, host: str, spec: PortGroupSpec) -> None:
        """AddPortGroup with VLAN and security policy."""
        with self._guard(f"create port group '{spec.name}' on {host}"):
            self._network_system(host).AddPortGroup(portgrp=portgroup_spec(spec))

    def update_portgroup(self, host: str, name: str, spec: PortGroupSpec) -> None:
        """UpdatePortGroup in place; the overrides ``spec`` leaves unset keep their
        current value (ESXi replaces the overrides as sent)."""
        with self._guard(f"update port group '{name}' on {host}"):
            ns = self._network_system(host)
            current = next((p for p in ns.networkInfo.portgroup if p.spec.name == name), None)
            if current is not None:
                own = current.spec.policy
                spec = replace(
                    spec, security=overlay(security_value(own.security), spec.security),
                    teaming=overlay(teaming_value(own.nicTeaming), spec.teaming),
                    shaping=overlay(shaping_value(own.shapingPolicy), spec.shaping))
            ns.UpdatePortGroup(pgName=name, portgrp=portgroup_spec(spec))

    def remove_portgroup(self, host: str, name: str) -> None:
        """RemovePortGroup."""
        with self._guard(f"remove port group '{name}' on {host}"):
            self._network_system(host).RemovePortGroup(pgName=name)

    def _read(self, obj: Any, *paths: str) -> dict[str, Any]:
        """Properties of one object, read fresh (one round trip)."""
        found = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=obj)],
            propSet=[PC.PropertySpec(type=type(obj), pathSet=list(paths))])])
        return {p.name: p.val for o in found for p in o.propSet}

    def _wait(self, task: Any, progress: Callable[[float], None] | None = None) -> None:
        """Wait for a task (each wait for an update is bounded by the HTTP timeout)."""
        def update(_task: Any, pct: Any) -> None:
            # pyVim passes the percentage, or a state name ("queued", "done").
            if progress is not None and isinstance(pct, int | float):
                progress(pct / 100)

        WaitForTask(task, si=self._si, onProgressUpdate=update)

    def _cached(self, what: str, name: str) -> Any:
        """An object from the inventory's caches, re-reading the inventory once
        when it is not there (this session may have just created it; a VM is
        looked up by its name)."""
        if name not in getattr(self, CACHES[what]):
            self.inventory(vms=[name] if what == "VM" else ())
        cache: dict[str, Any] = getattr(self, CACHES[what])
        if name not in cache:
            raise BackendError(f"vSphere {what} '{name}' not found")
        return cache[name]

    def _connection(self, portgroup: str) -> Any:
        """A PortConnection to the distributed port group ``portgroup`` (no port yet)."""
        pg = self._cached("distributed port group", portgroup)
        config = self._read(pg, "config")["config"]
        switch = self._read(config.distributedVirtualSwitch, "uuid")["uuid"]
        return vim.dvs.PortConnection(switchUuid=switch, portgroupKey=config.key)

    def _vnic_on(self, host: str, portgroup: str, dvswitch: str | None = None) -> Any:
        """The HostVirtualNic on a port group (distributed when ``dvswitch``), read fresh."""
        key = self._connection(portgroup).portgroupKey if dvswitch else None
        vnic = next((v for v in self._network_system(host).networkInfo.vnic or ()
                     if (v.spec.distributedVirtualPort.portgroupKey == key
                         if v.spec.distributedVirtualPort else v.portgroup == portgroup)), None)
        if vnic is None:
            raise BackendError(f"host '{host}' has no VMkernel adapter on '{portgroup}'")
        return vnic

    def _select(self, host: str, device: str, services: Collection[str], on: bool) -> None:
        """Select (``on``) or deselect ``device`` for each service."""
        mgr = self._vnicmgr[host]
        for word in services:
            if on:
                mgr.SelectVnicForNicType(nicType=NIC_TYPES[word], device=device)
            else:
                mgr.DeselectVnicForNicType(nicType=NIC_TYPES[word], device=device)

    def _vnic_spec(self, spec: VmkSpec) -> Any:
        return vnic_spec(spec, self._connection(spec.portgroup) if spec.dvswitch else None)

    def add_vmk(self, host: str, spec: VmkSpec) -> None:
        """AddVirtualNic, then SelectVnicForNicType per service; a failed selection
        removes the new adapter again (the change is all or nothing)."""
        with self._guard(f"create VMkernel adapter on '{spec.portgroup}' of {host}"):
            ns = self._network_system(host)
            device = ns.AddVirtualNic(portgroup="" if spec.dvswitch else spec.portgroup,
                                      nic=self._vnic_spec(spec))
            try:
                self._select(host, device, spec.services, on=True)
            except vmodl.MethodFault:
                ns.RemoveVirtualNic(device=device)
                raise

    def update_vmk(self, host: str, portgroup: str, spec: VmkSpec,
                   dvswitch: str | None = None) -> None:
        """UpdateVirtualNic (port group, IP, MTU), then the service (de)selections
        that differ from the host's."""
        with self._guard(f"update VMkernel adapter on '{portgroup}' of {host}"):
            vnic = self._vnic_on(host, portgroup, dvswitch)
            had = set(vmk_value(vnic, self._selected(host)).services)
            self._network_system(host).UpdateVirtualNic(device=vnic.device,
                                                        nic=self._vnic_spec(spec))
            self._select(host, vnic.device, sorted(set(spec.services) - had), on=True)
            self._select(host, vnic.device, sorted(had - set(spec.services)), on=False)

    def _selected(self, host: str) -> set[str]:
        """The host's selected ``nicType.vnicKey`` entries, read fresh."""
        found = self._read(self._hosts[host], "config.virtualNicManagerInfo.netConfig")
        return selected_keys(found.get("config.virtualNicManagerInfo.netConfig"))

    def remove_vmk(self, host: str, portgroup: str, dvswitch: str | None = None) -> None:
        """RemoveVirtualNic (ESXi drops its service selections with it)."""
        with self._guard(f"remove VMkernel adapter on '{portgroup}' of {host}"):
            vnic = self._vnic_on(host, portgroup, dvswitch)
            self._network_system(host).RemoveVirtualNic(device=vnic.device)

    def move_adapter(
        self, vm: str, adapter: str, portgroup: str, distributed: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """ReconfigVM_Task editing the adapter's backing; waits for the task."""
        with self._guard(f"move '{adapter}' of VM '{vm}' to '{portgroup}'"):
            obj = self._cached("VM", vm)
            device, host = self._adapter(obj, vm, adapter)
            if distributed:
                device.backing = DV_BACKING(port=self._connection(portgroup))
            else:
                device.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                    deviceName=portgroup, network=self._network(host, vm, portgroup))
            change = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
                operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=device)])
            self._wait(obj.ReconfigVM_Task(spec=change), progress)

    def _adapter(self, vm_obj: Any, vm: str, label: str) -> tuple[Any, Any]:
        """The adapter device labelled ``label`` and the VM's host, read fresh."""
        p = self._read(vm_obj, "config.hardware.device", "runtime.host")
        device = next((d for d in p.get("config.hardware.device") or []
                       if isinstance(d, vim.vm.device.VirtualEthernetCard)
                       and d.deviceInfo is not None and d.deviceInfo.label == label), None)
        if device is None:
            raise BackendError(f"VM '{vm}' has no network adapter '{label}'")
        return device, p["runtime.host"]

    def _network(self, host: Any, vm: str, portgroup: str) -> Any:
        """The standard port group's Network called ``portgroup`` on ``host``."""
        networks = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=host, skip=True, selectSet=[
                PC.TraversalSpec(path="network", skip=False, type=vim.HostSystem)])],
            propSet=[PC.PropertySpec(type=vim.Network, pathSet=["name"])],
        )])
        network = next((o.obj for o in networks if o.propSet[0].val == portgroup
                        and not isinstance(o.obj, DVPG)), None)
        if network is None:
            raise BackendError(f"the host of VM '{vm}' has no port group '{portgroup}'")
        return network

    # -- distributed switches (vCenter) -------------------------------------

    def add_dvswitch(self, spec: DVSwitch) -> None:
        """CreateDVS_Task in the datacenter's network folder; waits for the task."""
        with self._guard(f"create distributed switch '{spec.name}'"):
            folder = self._cached("datacenter", spec.datacenter)
            config = VDS.ConfigSpec(
                name=spec.name, maxMtu=spec.mtu, uplinkPortPolicy=uplink_policy(spec.uplinks),
                host=[self._member("add", m) for m in spec.hosts],
                pvlanConfigSpec=pvlan_ops((), spec.pvlans))
            product = vim.dvs.ProductSpec(version=spec.version) if spec.version else None
            self._wait(folder.CreateDVS_Task(vim.DistributedVirtualSwitch.CreateSpec(
                configSpec=config, productInfo=product)))

    def _member(self, operation: str, member: DvsMember) -> Any:
        """A host member spec backing the switch with ``member.nics`` in uplink order."""
        backing = vim.dvs.HostMember.PnicBacking(
            pnicSpec=[vim.dvs.HostMember.PnicSpec(pnicDevice=n) for n in member.nics])
        return vim.dvs.HostMember.ConfigSpec(
            operation=operation, host=self._cached("host", member.host),
            backing=backing)

    def _switch_config(self, name: str) -> tuple[Any, Any]:
        """A switch and its configuration, read fresh (for its configVersion)."""
        dvs = self._cached("distributed switch", name)
        return dvs, self._read(dvs, "config")["config"]

    def update_dvswitch(self, name: str, spec: DVSwitch) -> None:
        """ReconfigureDvs_Task: MTU, uplink names, the PVLAN map and the members
        made exactly ``spec``'s (added, NICs edited, removed)."""
        with self._guard(f"update distributed switch '{name}'"):
            dvs, config = self._switch_config(name)
            have = {self._host_name(m.config.host): m for m in config.host or ()}
            members = []
            for m in spec.hosts:
                old = have.get(m.host)
                if old is None:
                    members.append(self._member("add", m))
                elif tuple(s.pnicDevice for s in old.config.backing.pnicSpec or ()) != m.nics:
                    members.append(self._member("edit", m))
            members += [vim.dvs.HostMember.ConfigSpec(operation="remove", host=m.config.host)
                        for host, m in have.items() if spec.member(host) is None]
            pvlans = tuple(Pvlan(e.primaryVlanId, e.secondaryVlanId, e.pvlanType)
                           for e in config.pvlanConfig or ())
            self._wait(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(
                configVersion=config.configVersion, maxMtu=spec.mtu,
                uplinkPortPolicy=uplink_policy(spec.uplinks), host=members,
                pvlanConfigSpec=pvlan_ops(pvlans, spec.pvlans))))

    def _host_name(self, ref: Any) -> str:
        return next((n for n, h in self._hosts.items() if h._moId == ref._moId), ref._moId)

    def remove_dvswitch(self, name: str) -> None:
        """Destroy_Task of the switch (vCenter refuses while anything is connected)."""
        with self._guard(f"remove distributed switch '{name}'"):
            self._wait(self._cached("distributed switch", name).Destroy_Task())

    def add_dvportgroup(self, spec: DVPortgroup) -> None:
        """AddDVPortgroup_Task; waits for the task."""
        with self._guard(f"create distributed port group '{spec.name}'"):
            dvs = self._cached("distributed switch", spec.dvswitch)
            self._wait(dvs.AddDVPortgroup_Task(spec=[dvportgroup_spec(spec)]))

    def update_dvportgroup(self, name: str, spec: DVPortgroup) -> None:
        """ReconfigureDVPortgroup_Task quoting the port group's configVersion."""
        with self._guard(f"update distributed port group '{name}'"):
            pg = self._cached("distributed port group", name)
            version = self._read(pg, "config")["config"].configVersion
            self._wait(pg.ReconfigureDVPortgroup_Task(spec=dvportgroup_spec(spec, version)))

    def remove_dvportgroup(self, name: str) -> None:
        """Destroy_Task of the port group."""
        with self._guard(f"remove distributed port group '{name}'"):
            pg = self._cached("distributed port group", name)
            self._wait(pg.Destroy_Task())

    def _ports(self, ends: tuple[MirrorPort, ...]) -> Any:
        """VspanPorts for mirror endpoints; a VM adapter's port is read now."""
        keys = []
        for end in ends:
            if end.vm and end.adapter:
                device, _host = self._adapter(self._cached("VM", end.vm),
                                              end.vm, end.adapter)
                port = getattr(device.backing, "port", None)
                if port is None or not port.portKey:
                    raise BackendError(f"'{end.adapter}' of VM '{end.vm}' is not on a "
                                       "distributed port")
                keys.append(port.portKey)
            elif end.port:
                keys.append(end.port)
        return VDS.VspanPorts(portKey=keys, uplinkPortName=[e.uplink for e in ends if e.uplink],
                              ipAddress=[e.ip for e in ends if e.ip])

    def _vspan(self, dvswitch: str, operation: str, name: str,
               spec: MirrorSession | None = None) -> None:
        """ReconfigureDvs_Task with one VSPAN session operation."""
        dvs, config = self._switch_config(dvswitch)
        key = next((m.key for m in config.vspanSession or () if m.name == name), None)
        if key is None and operation != "add":
            raise BackendError(f"distributed switch '{dvswitch}' has no mirror session "
                               f"'{name}'")
        session = VDS.VspanSession(key=key, name=name, enabled=False, stripOriginalVlan=False,
                                   normalTrafficAllowed=False)
        if spec is not None:
            received = None
            if spec.received or spec.source_vlans:  # an RSPAN destination's source is VLANs
                received = self._ports(spec.received)
                received.vlans = list(spec.source_vlans)
            session = VDS.VspanSession(
                key=key, name=spec.name, enabled=spec.enabled,
                sessionType=MIRROR_KINDS[spec.kind], destinationPort=self._ports(spec.destination),
                sourcePortTransmitted=self._ports(spec.transmitted) if spec.transmitted else None,
                sourcePortReceived=received, encapsulationVlanId=spec.encapsulation_vlan,
                stripOriginalVlan=spec.strip_vlan, normalTrafficAllowed=False)
        self._wait(dvs.ReconfigureDvs_Task(VDS.ConfigSpec(
            configVersion=config.configVersion,
            vspanConfigSpec=[VDS.VspanConfigSpec(operation=operation, vspanSession=session)])))

    def add_mirror(self, dvswitch: str, spec: MirrorSession) -> None:
        """Add a VSPAN session (ReconfigureDvs_Task)."""
        with self._guard(f"create mirror session '{spec.name}' on '{dvswitch}'"):
            self._vspan(dvswitch, "add", spec.name, spec)

    def update_mirror(self, dvswitch: str, name: str, spec: MirrorSession) -> None:
        """Replace a VSPAN session (edit, by its key)."""
        with self._guard(f"update mirror session '{name}' on '{dvswitch}'"):
            self._vspan(dvswitch, "edit", name, spec)

    def remove_mirror(self, dvswitch: str, name: str) -> None:
        """Remove a VSPAN session."""
        with self._guard(f"remove mirror session '{name}' on '{dvswitch}'"):
            self._vspan(dvswitch, "remove", name)


class Names:
    """What the bulk retrieval tells about references: names, datacenters, and
    distributed switches by UUID."""

    def __init__(self, props: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        self._props = props
        self.switches = {p.get("uuid"): p["name"] for obj, p in props.values()
                         if isinstance(obj, vim.DistributedVirtualSwitch)}

    def name(self, ref: Any) -> str | None:
        """The name of a referenced object (``None`` for no reference or an unknown one)."""
        found = self._props.get(ref._moId) if ref is not None else None
        return found[1].get("name") if found else None

    def portgroup(self, key: str) -> str:
        """A distributed port group's name from its key (vCenter's key is its moid)."""
        found = self._props.get(key)
        return str(found[1].get("name")) if found else key

    def datacenter(self, ref: Any) -> str | None:
        """The datacenter above a referenced object, walking up its parents."""
        while ref is not None and ref._moId in self._props:
            obj, p = self._props[ref._moId]
            if isinstance(obj, vim.Datacenter):
                return str(p["name"])
            ref = p.get("parent")
        return None


def host_value(p: dict[str, Any], cluster: str | None, names: Names) -> Host:
    """A :class:`Host` from its retrieved properties."""
    vswitches = [
        VSwitch(
            name=v.name, num_ports=v.spec.numPorts, mtu=v.mtu or 1500,
            nics=tuple(getattr(v.spec.bridge, "nicDevice", None) or ()),
            portgroups=tuple(k.removeprefix("key-vim.host.PortGroup-") for k in v.portgroup or ()),
            **policy_values(v.spec.policy),
        )
        for v in p.get("config.network.vswitch") or []
    ]
    used = {nic: v.name for v in vswitches for nic in v.nics}
    portgroups = [
        PortGroup(
            name=pg.spec.name, vswitch=pg.spec.vswitchName, vlan=pg.spec.vlanId,
            **policy_values(pg.computedPolicy),
        )
        for pg in p.get("config.network.portgroup") or []
    ]
    proxied = {key.rsplit("-", 1)[-1]: proxy.dvsName
               for proxy in p.get("config.network.proxySwitch") or () for key in proxy.pnic or ()}
    pnics = [PhysicalNic(n.device, used.get(n.device), proxied.get(n.device))
             for n in p.get("config.network.pnic") or []]
    selected = selected_keys(p.get("config.virtualNicManagerInfo.netConfig"))
    vmks = [vmk_value(v, selected, names) for v in p.get("config.network.vnic") or []]
    return Host(p["name"], cluster, tuple(vswitches), tuple(portgroups), tuple(pnics),
                tuple(vmks), names.datacenter(p.get("parent")))


def selected_keys(net_config: Any) -> set[str]:
    """The ``nicType.vnicKey`` entries selected in a VirtualNicManager netConfig list."""
    return {key for nc in net_config or () for key in nc.selectedVnic or ()}


def vmk_value(vnic: Any, selected: set[str], names: Names | None = None) -> Vmk:
    """A HostVirtualNic as :class:`Vmk`, its services from the selected keys."""
    ip = vnic.spec.ip
    port = vnic.spec.distributedVirtualPort
    portgroup = vnic.portgroup or vnic.spec.portgroup or ""
    dvswitch = None
    if port is not None and names is not None:
        portgroup = names.portgroup(port.portgroupKey)
        dvswitch = names.switches.get(port.switchUuid, port.switchUuid)
    return Vmk(
        device=vnic.device, portgroup=portgroup,
        dhcp=bool(ip.dhcp) if ip else True,
        address=(ip.ipAddress or None) if ip else None,
        netmask=(ip.subnetMask or None) if ip else None,
        mtu=vnic.spec.mtu or 1500,
        services=tuple(word for word, t in NIC_TYPES.items() if f"{t}.{vnic.key}" in selected),
        dvswitch=dvswitch)


def vnic_spec(spec: VmkSpec, port: Any = None) -> Any:
    """A HostVirtualNicSpec: a standard port group or the distributed ``port``
    (a PortConnection), IPv4 (DHCP or static), MTU."""
    ip = (vim.host.IpConfig(dhcp=True) if spec.address is None else
          vim.host.IpConfig(dhcp=False, ipAddress=spec.address, subnetMask=spec.netmask))
    if port is not None:
        return vim.host.VirtualNic.Specification(ip=ip, mtu=spec.mtu,
                                                 distributedVirtualPort=port)
    return vim.host.VirtualNic.Specification(portgroup=spec.portgroup, ip=ip, mtu=spec.mtu)


def security_value(sec: Any) -> Security:
    """A pyVmomi security policy as :class:`Security`."""
    if sec is None:
        return Security()
    return Security(sec.allowPromiscuous, sec.forgedTransmits, sec.macChanges)


def new_uplinks_active(team: Teaming, vswitch: Any, nics: tuple[str, ...]) -> Teaming:
    """The current NIC order with the uplinks a vSwitch gains appended as active
    (as ESXi does when no order is given); uplinks the order leaves unused stay so."""
    before = set(getattr(vswitch.spec.bridge, "nicDevice", None) or ())
    placed = {*before, *(team.active_nics or ()), *(team.standby_nics or ())}
    return replace(team, active_nics=(*(team.active_nics or ()),
                                      *(n for n in nics if n not in placed)))


def policy_values(policy: Any) -> dict[str, Any]:
    """A HostNetworkPolicy as the ``security``, ``teaming`` and ``shaping`` values."""
    if policy is None:
        return {}
    return {"security": security_value(policy.security),
            "teaming": teaming_value(policy.nicTeaming),
            "shaping": shaping_value(policy.shapingPolicy)}


def teaming_value(team: Any) -> Teaming:
    """A pyVmomi NIC teaming policy as :class:`Teaming` (unset parts stay ``None``)."""
    if team is None:
        return Teaming()
    order, criteria = team.nicOrder, team.failureCriteria
    return teaming_of(team.policy or None, order and order.activeNic, order and order.standbyNic,
                      order is not None, team.notifySwitches, team.rollingOrder,
                      criteria.checkBeacon if criteria is not None else None)


def teaming_of(balancing: str | None, active: Any, standby: Any, ordered: bool,
               notify: bool | None, rolling: bool | None, beacon: bool | None) -> Teaming:
    """A :class:`Teaming` from vSphere's values (``ordered``: an order is set;
    ``rolling`` is failback negated)."""
    return Teaming(
        load_balancing=balancing,
        active_nics=tuple(active or ()) if ordered else None,
        standby_nics=tuple(standby or ()) if ordered else None,
        notify_switches=notify,
        failback=None if rolling is None else not rolling,
        failure_detection=None if beacon is None else "beacon" if beacon else "link",
    )


def shaping_value(shaping: Any) -> Shaping:
    """A pyVmomi traffic shaping policy (bit/s, bytes) as :class:`Shaping` (kbit/s, KB)."""
    if shaping is None:
        return Shaping()
    return shaping_of(shaping.enabled, shaping.averageBandwidth, shaping.peakBandwidth,
                      shaping.burstSize)


def shaping_of(enabled: bool | None, average: int | None, peak: int | None,
               burst: int | None) -> Shaping:
    """A :class:`Shaping` (kbit/s, KB) from vSphere's bit/s and bytes; an unset
    bandwidth is 0 on the wire for a port group that inherits it."""
    return Shaping(enabled, average // 1000 if average else None,
                   peak // 1000 if peak else None, burst // 1024 if burst else None)


def adapters(devices: list[Any], names: Names) -> tuple[Adapter, ...]:
    """A VM's network adapters with the name of the network each is on (and the
    switch and port of a distributed one)."""
    found = []
    for d in devices:
        if not isinstance(d, vim.vm.device.VirtualEthernetCard):
            continue
        backing, network, switch, port = d.backing, None, None, None
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            network = backing.deviceName
        elif isinstance(backing, DV_BACKING):
            network = names.portgroup(str(backing.port.portgroupKey))
            switch = names.switches.get(backing.port.switchUuid, backing.port.switchUuid)
            port = backing.port.portKey or None
        label = d.deviceInfo.label if d.deviceInfo else f"device {d.key}"
        found.append(Adapter(label, d.key, network, d.macAddress or "", switch, port))
    return tuple(found)


def dvswitch_value(p: dict[str, Any], names: Names) -> DVSwitch:
    """A :class:`DVSwitch` from its retrieved properties."""
    config = p["config"]
    return DVSwitch(
        name=p["name"], datacenter=names.datacenter(p.get("parent")) or "",
        version=config.productInfo.version if config.productInfo else None,
        uplinks=tuple(getattr(config.uplinkPortPolicy, "uplinkPortName", None) or ()),
        mtu=getattr(config, "maxMtu", None) or 1500,
        hosts=tuple(DvsMember(names.name(m.config.host) or m.config.host._moId,
                              tuple(s.pnicDevice for s in
                                    getattr(m.config.backing, "pnicSpec", None) or ()))
                    for m in config.host or ()),
        pvlans=tuple(Pvlan(e.primaryVlanId, e.secondaryVlanId, e.pvlanType)
                     for e in getattr(config, "pvlanConfig", None) or ()),
        mirrors=tuple(mirror_value(v) for v in getattr(config, "vspanSession", None) or ()),
        uuid=p.get("uuid") or config.uuid)


def mirror_value(session: Any) -> MirrorSession:
    """A VSPAN session as :class:`MirrorSession` (ports by key)."""
    def ends(ports: Any) -> tuple[MirrorPort, ...]:
        if ports is None:
            return ()
        return (*(MirrorPort(port=k) for k in ports.portKey or ()),
                *(MirrorPort(uplink=u) for u in ports.uplinkPortName or ()),
                *(MirrorPort(ip=a) for a in ports.ipAddress or ()))

    kind = next((k for k, t in MIRROR_KINDS.items() if t == session.sessionType),
                session.sessionType)
    received = session.sourcePortReceived
    return MirrorSession(session.name, kind, bool(session.enabled),
                  ends(session.sourcePortTransmitted), ends(received),
                  tuple(received.vlans or ()) if received is not None else (),
                  ends(session.destinationPort), session.encapsulationVlanId or None,
                  bool(session.stripOriginalVlan), session.key)


def dvportgroup_value(p: dict[str, Any], names: Names) -> DVPortgroup:
    """A :class:`DVPortgroup` from its retrieved properties (effective policies)."""
    config = p["config"]
    setting = config.defaultPortConfig
    vlan, trunk, pvlan = vlan_value(setting.vlan)
    binding = next((k for k, t in BINDINGS.items() if t == config.type), config.type)
    return DVPortgroup(
        name=p["name"], dvswitch=names.name(config.distributedVirtualSwitch) or "",
        vlan=vlan, trunk=trunk, pvlan=pvlan, ports=config.numPorts or 0, binding=binding,
        security=dv_security_value(setting.securityPolicy),
        teaming=dv_teaming_value(setting.uplinkTeamingPolicy),
        shaping=dv_shaping_value(setting.inShapingPolicy),
        port_keys=tuple(p.get("portKeys") or ()),
        vms=tuple(sorted(str(names.name(vm) or vm._moId) for vm in p.get("vm") or ())))


def vlan_value(spec: Any) -> tuple[int | None, tuple[tuple[int, int], ...] | None, int | None]:
    """A port group's VLAN spec as (vlan, trunk ranges, pvlan): one of them set."""
    if isinstance(spec, VDS.TrunkVlanSpec):
        return None, tuple((r.start, r.end) for r in spec.vlanId or ()), None
    if isinstance(spec, VDS.PvlanSpec):
        return None, None, spec.pvlanId
    return getattr(spec, "vlanId", 0) or 0, None, None


def policy(value: Any) -> Any:
    """The value of a vSphere inheritable policy (``None`` when unset)."""
    return None if value is None else value.value


def dv_security_value(sec: Any) -> Security:
    """A distributed port's security policy as :class:`Security`."""
    if sec is None:
        return Security()
    return Security(policy(sec.allowPromiscuous), policy(sec.forgedTransmits),
                    policy(sec.macChanges))


def dv_teaming_value(team: Any) -> Teaming:
    """A distributed port's uplink teaming as :class:`Teaming` (uplink names)."""
    if team is None:
        return Teaming()
    order, criteria = team.uplinkPortOrder, team.failureCriteria
    return teaming_of(policy(team.policy), order and order.activeUplinkPort,
                      order and order.standbyUplinkPort, order is not None,
                      policy(team.notifySwitches), policy(team.rollingOrder),
                      policy(criteria.checkBeacon) if criteria is not None else None)


def dv_shaping_value(shaping: Any) -> Shaping:
    """A distributed port's ingress shaping (bit/s, bytes) as :class:`Shaping`."""
    if shaping is None:
        return Shaping()
    return shaping_of(policy(shaping.enabled), policy(shaping.averageBandwidth),
                      policy(shaping.peakBandwidth), policy(shaping.burstSize))


def dv_port_setting(pg: DVPortgroup) -> Any:
    """A VmwarePortConfigPolicy with the VLAN and the policy parts ``pg`` sets."""
    setting = VDS.VmwarePortConfigPolicy()
    if pg.trunk is not None:
        setting.vlan = VDS.TrunkVlanSpec(
            vlanId=[vim.NumericRange(start=a, end=b) for a, b in pg.trunk])
    elif pg.pvlan is not None:
        setting.vlan = VDS.PvlanSpec(pvlanId=pg.pvlan)
    else:
        setting.vlan = VDS.VlanIdSpec(vlanId=pg.vlan or 0)

    def bool_policy(value: bool | None) -> Any:
        return None if value is None else vim.BoolPolicy(inherited=False, value=value)

    def long_policy(value: int | None, unit: int) -> Any:
        return None if value is None else vim.LongPolicy(inherited=False, value=value * unit)

    sec, team, shape = pg.security, pg.teaming, pg.shaping
    if sec != Security():
        setting.securityPolicy = VDS.SecurityPolicy(
            inherited=False, allowPromiscuous=bool_policy(sec.allow_promiscuous),
            forgedTransmits=bool_policy(sec.forged_transmits),
            macChanges=bool_policy(sec.mac_changes))
    if team != Teaming():
        t = setting.uplinkTeamingPolicy = VDS.UplinkPortTeamingPolicy(
            inherited=False, notifySwitches=bool_policy(team.notify_switches),
            rollingOrder=bool_policy(None if team.failback is None else not team.failback))
        if team.load_balancing is not None:
            t.policy = vim.StringPolicy(inherited=False, value=team.load_balancing)
        if team.failure_detection is not None:
            t.failureCriteria = VDS.FailureCriteria(
                inherited=False, checkBeacon=bool_policy(team.failure_detection == "beacon"))
        if team.active_nics is not None or team.standby_nics is not None:
            t.uplinkPortOrder = VDS.UplinkPortOrderPolicy(
                inherited=False, activeUplinkPort=list(team.active_nics or ()),
                standbyUplinkPort=list(team.standby_nics or ()))
    if shape != Shaping():
        setting.inShapingPolicy = vim.dvs.DistributedVirtualPort.TrafficShapingPolicy(
            inherited=False, enabled=bool_policy(shape.enabled),
            averageBandwidth=long_policy(shape.average_kbps, 1000),
            peakBandwidth=long_policy(shape.peak_kbps, 1000),
            burstSize=long_policy(shape.burst_kb, 1024))
    return setting


def uplink_policy(uplinks: tuple[str, ...]) -> Any:
    """The switch's uplink names."""
    return vim.DistributedVirtualSwitch.NameArrayUplinkPortPolicy(uplinkPortName=list(uplinks))


def dvportgroup_spec(pg: DVPortgroup, version: str | None = None) -> Any:
    """A DVPortgroupConfigSpec (``version``: the configVersion a reconfigure quotes)."""
    return DVPG.ConfigSpec(
        configVersion=version, name=pg.name, numPorts=pg.ports,
        type=BINDINGS.get(pg.binding, pg.binding), defaultPortConfig=dv_port_setting(pg))


def pvlan_ops(have: tuple[Pvlan, ...], want: tuple[Pvlan, ...]) -> list[Any]:
    """PvlanConfigSpecs turning the map ``have`` into ``want``: removals of
    secondaries first, promiscuous entries added before the others."""
    def op(entry: Pvlan, operation: str) -> Any:
        return VDS.PvlanConfigSpec(operation=operation, pvlanEntry=VDS.PvlanMapEntry(
            primaryVlanId=entry.primary, secondaryVlanId=entry.secondary,
            pvlanType=entry.type))

    old = {e.secondary: e for e in have}
    new = {e.secondary: e for e in want}
    gone = sorted((e for k, e in old.items() if k not in new),
                  key=lambda e: e.type == "promiscuous")
    added = sorted((e for k, e in new.items() if k not in old),
                   key=lambda e: e.type != "promiscuous")
    edited = [e for k, e in new.items() if k in old and old[k] != e]
    return ([op(e, "remove") for e in gone] + [op(e, "add") for e in added]
            + [op(e, "edit") for e in edited])


def vswitch_spec(spec: VSwitchSpec) -> Any:
    """A HostVirtualSwitchSpec: ports, MTU, uplinks as a bond bridge, the policy
    parts that are set (beacon probing needs the bridge's beacon config)."""
    # A NIC order naming a NIC that is no longer an uplink is refused by ESXi:
    # the order kept from before an uplink change is cut to the new uplinks.
    team = spec.teaming
    if team.active_nics is not None:
        team = replace(team, active_nics=tuple(n for n in team.active_nics if n in spec.nics))
    if team.standby_nics is not None:
        team = replace(team, standby_nics=tuple(n for n in team.standby_nics if n in spec.nics))
    bridge = None
    if spec.nics:
        bridge = vim.host.VirtualSwitch.BondBridge(nicDevice=list(spec.nics))
        if spec.teaming.failure_detection == "beacon":
            bridge.beacon = vim.host.VirtualSwitch.BeaconConfig(interval=1)
    return vim.host.VirtualSwitch.Specification(
        numPorts=spec.num_ports, mtu=spec.mtu, bridge=bridge,
        policy=network_policy(spec.security, team, spec.shaping))


def network_policy(sec: Security, team: Teaming, shape: Shaping) -> Any:
    """A HostNetworkPolicy with the parts that are set; ``None`` fields stay unset."""
    policy = NP()
    if sec != Security():
        policy.security = NP.SecurityPolicy(
            allowPromiscuous=sec.allow_promiscuous, forgedTransmits=sec.forged_transmits,
            macChanges=sec.mac_changes)
    if team != Teaming():
        policy.nicTeaming = NP.NicTeamingPolicy(
            policy=team.load_balancing, notifySwitches=team.notify_switches,
            rollingOrder=None if team.failback is None else not team.failback)
        if team.failure_detection is not None:
            policy.nicTeaming.failureCriteria = NP.NicFailureCriteria(
                checkBeacon=team.failure_detection == "beacon")
        if team.active_nics is not None or team.standby_nics is not None:
            policy.nicTeaming.nicOrder = NP.NicOrderPolicy(
                activeNic=list(team.active_nics or ()), standbyNic=list(team.standby_nics or ()))
    if shape != Shaping():
        policy.shapingPolicy = NP.TrafficShapingPolicy(
            enabled=shape.enabled,
            averageBandwidth=None if shape.average_kbps is None else shape.average_kbps * 1000,
            peakBandwidth=None if shape.peak_kbps is None else shape.peak_kbps * 1000,
            burstSize=None if shape.burst_kb is None else shape.burst_kb * 1024)
    return policy


def portgroup_spec(spec: PortGroupSpec) -> Any:
    """A HostPortGroupSpec; policy fields left unset are inherited from the vSwitch."""
    return vim.host.PortGroup.Specification(
        name=spec.name, vswitchName=spec.vswitch, vlanId=spec.vlan,
        policy=network_policy(spec.security, spec.teaming, spec.shaping))
