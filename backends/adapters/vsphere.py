"""The vSphere backend: pyVmomi against ESXi or vCenter.

TLS is verified by default (system CAs, or ``ca_file``).  A pinned SHA-256
``thumbprint`` is checked against the certificate the server presents and
then that certificate, and only it, is trusted for the session.  (pyVmomi's
own ``thumbprint=`` is not used: SmartConnect's version probe fails on an
untrusted certificate before pyVmomi looks at the thumbprint, and on a match
pyVmomi turns verification off in the shared SSL context.)  ``insecure`` turns
verification off and is logged as a warning.

The inventory is one PropertyCollector retrieval over a ContainerView (hosts'
networking, every VM's name), plus one for the host and devices of the VMs a
step names, so the number of SOAP round trips does not grow with the number
of hosts or VMs, and the bulk of the data (device lists) only with the VMs named;
:attr:`VSphereBackend.round_trips` counts them.  Neither SOAP traffic nor the
password is ever logged.
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
from typing import Any

from pyVim.connect import SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.vsphere import (
    VM,
    Adapter,
    Host,
    Inventory,
    PhysicalNic,
    PortGroup,
    PortGroupSpec,
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
]
# VMkernel services: the answers' words -> the virtual NIC manager's nicType.
NIC_TYPES = {"management": "management", "vmotion": "vmotion", "vsan": "vsan",
             "provisioning": "vSphereProvisioning", "ft": "faultToleranceLogging",
             "replication": "vSphereReplication"}
VM_PROPS = ["name", "runtime.host", "config.hardware.device"]
NAMED = [vim.ComputeResource, vim.ClusterComputeResource, vim.Network]
DV_BACKING = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo
TIMEOUT = 30  # seconds for a TCP connect / an HTTP response
NP = vim.host.NetworkPolicy


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
        """One retrieval: the hosts' networking, the names of clusters, networks and
        datacenters (with their VM folder), and every VM's name if ``all_vms``."""
        content = self._content
        types = [vim.HostSystem, vim.Datacenter, *NAMED, *([vim.VirtualMachine] if all_vms
                                                           else [])]
        view = content.viewManager.CreateContainerView(content.rootFolder, types, True)
        try:
            spec = PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
                    PC.TraversalSpec(name="view", path="view", skip=False,
                                     type=vim.view.ContainerView)])],
                propSet=[
                    PC.PropertySpec(type=vim.HostSystem, pathSet=HOST_PROPS),
                    PC.PropertySpec(type=vim.Datacenter, pathSet=["name", "vmFolder"]),
                    *(PC.PropertySpec(type=t, pathSet=["name"]) for t in types[2:]),
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

    def _vm_details(self, names: Collection[str] | None) -> dict[str, dict[str, Any]]:
        """Host and devices of the VMs called ``names`` (every VM for ``None``)."""
        objs = [o for n, o in self._vms.items() if names is None or n in names]
        if not objs:
            return {}
        found = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=o) for o in objs],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPS)])])
        return {o.obj._moId: {p.name: p.val for p in o.propSet} for o in found}

    def _build(self, objects: list[Any], api_type: str,
               detailed: Collection[str] | None) -> Inventory:
        props = {o.obj._moId: (o.obj, {p.name: p.val for p in o.propSet}) for o in objects}
        names = {moid: p.get("name") for moid, (_obj, p) in props.items()}
        hosts = []
        self._hosts, self._netsys = {}, {}
        self._vms = {p["name"]: obj for obj, p in props.values()
                     if isinstance(obj, vim.VirtualMachine)}
        for obj, p in props.values():
            if isinstance(obj, vim.HostSystem):
                self._hosts[p["name"]] = obj
                self._netsys[p["name"]] = p.get("configManager.networkSystem")
                self._vnicmgr[p["name"]] = p.get("configManager.virtualNicManager")
                parent = p.get("parent")
                cluster = (names.get(parent._moId)
                           if isinstance(parent, vim.ClusterComputeResource) else None)
                hosts.append(host_value(p, cluster))
        details = self._vm_details(detailed)
        vms = []
        for name, obj in self._vms.items():
            d = details.get(obj._moId, {})
            host = d.get("runtime.host")
            vms.append(VM(
                name=name, host=names.get(host._moId) if host is not None else None,
                adapters=adapters(d.get("config.hardware.device") or [], names),
            ))
        kind = "vcenter" if api_type == "VirtualCenter" else "esx"
        return Inventory(kind, tuple(sorted(hosts, key=lambda h: h.name)),
                         tuple(sorted(vms, key=lambda v: v.name)))

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

    def _vnic_on(self, host: str, portgroup: str) -> Any:
        """The HostVirtualNic on a standard port group, read fresh."""
        vnic = next((v for v in self._network_system(host).networkInfo.vnic or ()
                     if v.portgroup == portgroup), None)
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

    def add_vmk(self, host: str, spec: VmkSpec) -> None:
        """AddVirtualNic, then SelectVnicForNicType per service; a failed selection
        removes the new adapter again (the change is all or nothing)."""
        with self._guard(f"create VMkernel adapter on '{spec.portgroup}' of {host}"):
            ns = self._network_system(host)
            device = ns.AddVirtualNic(portgroup=spec.portgroup, nic=vnic_spec(spec))
            try:
                self._select(host, device, spec.services, on=True)
            except vmodl.MethodFault:
                ns.RemoveVirtualNic(device=device)
                raise

    def update_vmk(self, host: str, portgroup: str, spec: VmkSpec) -> None:
        """UpdateVirtualNic (port group, IP, MTU), then the service (de)selections
        that differ from the host's."""
        with self._guard(f"update VMkernel adapter on '{portgroup}' of {host}"):
            vnic = self._vnic_on(host, portgroup)
            had = set(vmk_value(vnic, self._selected(host)).services)
            self._network_system(host).UpdateVirtualNic(device=vnic.device, nic=vnic_spec(spec))
            self._select(host, vnic.device, sorted(set(spec.services) - had), on=True)
            self._select(host, vnic.device, sorted(had - set(spec.services)), on=False)

    def _selected(self, host: str) -> set[str]:
        """The host's selected ``nicType.vnicKey`` entries, read fresh."""
        [found] = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=self._hosts[host])],
            propSet=[PC.PropertySpec(type=vim.HostSystem,
                                     pathSet=["config.virtualNicManagerInfo.netConfig"])])])
        return selected_keys(found.propSet[0].val if found.propSet else None)

    def remove_vmk(self, host: str, portgroup: str) -> None:
        """RemoveVirtualNic (ESXi drops its service selections with it)."""
        with self._guard(f"remove VMkernel adapter on '{portgroup}' of {host}"):
            vnic = self._vnic_on(host, portgroup)
            self._network_system(host).RemoveVirtualNic(device=vnic.device)

    def move_adapter(
        self, vm: str, adapter: str, portgroup: str,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """ReconfigVM_Task editing the adapter's backing; waits for the task."""
        with self._guard(f"move '{adapter}' of VM '{vm}' to '{portgroup}'"):
            if vm not in self._vms:
                self.inventory(vms=[vm])
            obj = self._vms.get(vm)
            if obj is None:
                raise BackendError(f"vSphere VM '{vm}' not found")
            device, network = self._adapter_and_network(obj, vm, adapter, portgroup)
            device.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                deviceName=portgroup, network=network)
            change = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
                operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=device)])
            task = obj.ReconfigVM_Task(spec=change)

            def update(_task: Any, pct: Any) -> None:
                # pyVim passes the percentage, or a state name ("queued", "done").
                if progress is not None and isinstance(pct, int | float):
                    progress(pct / 100)

            WaitForTask(task, si=self._si, onProgressUpdate=update)

    def _adapter_and_network(self, vm_obj: Any, vm: str, label: str, portgroup: str) -> Any:
        """The adapter device (read fresh) and the Network called ``portgroup`` on the VM's host."""
        [vm_props] = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=vm_obj)],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine,
                                     pathSet=["config.hardware.device", "runtime.host"])],
        )])
        p = {x.name: x.val for x in vm_props.propSet}
        device = next((d for d in p.get("config.hardware.device") or []
                       if isinstance(d, vim.vm.device.VirtualEthernetCard)
                       and d.deviceInfo is not None and d.deviceInfo.label == label), None)
        if device is None:
            raise BackendError(f"VM '{vm}' has no network adapter '{label}'")
        networks = self._retrieve([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=p["runtime.host"], skip=True, selectSet=[
                PC.TraversalSpec(path="network", skip=False, type=vim.HostSystem)])],
            propSet=[PC.PropertySpec(type=vim.Network, pathSet=["name"])],
        )])
        network = next((o.obj for o in networks if o.propSet[0].val == portgroup), None)
        if network is None:
            raise BackendError(f"the host of VM '{vm}' has no port group '{portgroup}'")
        return device, network


def host_value(p: dict[str, Any], cluster: str | None) -> Host:
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
    pnics = [PhysicalNic(n.device, used.get(n.device)) for n in p.get("config.network.pnic") or []]
    selected = selected_keys(p.get("config.virtualNicManagerInfo.netConfig"))
    vmks = [vmk_value(v, selected) for v in p.get("config.network.vnic") or []]
    return Host(p["name"], cluster, tuple(vswitches), tuple(portgroups), tuple(pnics),
                tuple(vmks))


def selected_keys(net_config: Any) -> set[str]:
    """The ``nicType.vnicKey`` entries selected in a VirtualNicManager netConfig list."""
    return {key for nc in net_config or () for key in nc.selectedVnic or ()}


def vmk_value(vnic: Any, selected: set[str]) -> Vmk:
    """A HostVirtualNic as :class:`Vmk`, its services from the selected keys."""
    ip = vnic.spec.ip
    return Vmk(
        device=vnic.device, portgroup=vnic.portgroup or vnic.spec.portgroup or "",
        dhcp=bool(ip.dhcp) if ip else True,
        address=(ip.ipAddress or None) if ip else None,
        netmask=(ip.subnetMask or None) if ip else None,
        mtu=vnic.spec.mtu or 1500,
        services=tuple(word for word, t in NIC_TYPES.items() if f"{t}.{vnic.key}" in selected))


def vnic_spec(spec: VmkSpec) -> Any:
    """A HostVirtualNicSpec: port group, IPv4 (DHCP or static), MTU."""
    ip = (vim.host.IpConfig(dhcp=True) if spec.address is None else
          vim.host.IpConfig(dhcp=False, ipAddress=spec.address, subnetMask=spec.netmask))
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
    beacon = criteria.checkBeacon if criteria is not None else None
    return Teaming(
        load_balancing=team.policy or None,
        active_nics=tuple(order.activeNic or ()) if order is not None else None,
        standby_nics=tuple(order.standbyNic or ()) if order is not None else None,
        notify_switches=team.notifySwitches,
        failback=None if team.rollingOrder is None else not team.rollingOrder,
        failure_detection=None if beacon is None else "beacon" if beacon else "link",
    )


def shaping_value(shaping: Any) -> Shaping:
    """A pyVmomi traffic shaping policy (bit/s, bytes) as :class:`Shaping` (kbit/s, KB)."""
    if shaping is None:
        return Shaping()

    def scaled(value: int | None, unit: int) -> int | None:
        # An unset bandwidth is 0 on the wire for a port group that inherits it.
        return value // unit if value else None

    return Shaping(shaping.enabled, scaled(shaping.averageBandwidth, 1000),
                   scaled(shaping.peakBandwidth, 1000), scaled(shaping.burstSize, 1024))


def adapters(devices: list[Any], names: dict[str, Any]) -> tuple[Adapter, ...]:
    """A VM's network adapters with the name of the network each is on."""
    found = []
    for d in devices:
        if not isinstance(d, vim.vm.device.VirtualEthernetCard):
            continue
        backing, network = d.backing, None
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            network = backing.deviceName
        elif isinstance(backing, DV_BACKING):
            key = str(backing.port.portgroupKey)
            network = names.get(key) or key
        label = d.deviceInfo.label if d.deviceInfo else f"device {d.key}"
        found.append(Adapter(label, d.key, network, d.macAddress or ""))
    return tuple(found)


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
