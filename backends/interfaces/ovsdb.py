"""Interface of the OVSDB backend: bridges, ports and port mirrors of Open vSwitch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from backends.interfaces import BackendError, Backends


@dataclass(frozen=True)
class OvsdbTLS:
    """Paths of the client key, its certificate and the CA certificate for ``ssl:``."""

    key: str
    cert: str
    ca: str


@dataclass(frozen=True)
class Port:
    """A port of a bridge (``Port`` table) with its first interface's ``type``
    (``""`` is a system device) and ``options`` (tunnel endpoints, patch peer).

    Used both for what the switch has (``uuid`` filled in) and for what it
    should have (``uuid`` empty for a port to create; then every setting is
    written).
    """

    name: str
    bridge: str
    uuid: str = ""
    type: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    vlan_mode: str | None = None
    external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bridge:
    """A bridge with its port names and the VLANs it floods without learning."""

    name: str
    ports: tuple[str, ...] = ()
    flood_vlans: tuple[int, ...] = ()
    datapath_type: str = ""
    external_ids: Mapping[str, str] = field(default_factory=dict)
    uuid: str = ""
    fail_mode: str | None = None
    other_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BridgePut:
    """A bridge to create (``uuid`` empty) or to update in place.

    Only what is set is written: ``datapath_type`` / ``fail_mode`` when not
    ``None``, and the ``other_config`` / ``external_ids`` keys listed (a key
    mapped to ``None`` is removed).  A new bridge also gets its local
    (internal) port of the same name, as ``ovs-vsctl add-br`` makes it.
    """

    name: str
    uuid: str = ""
    datapath_type: str | None = None
    fail_mode: str | None = None
    other_config: Mapping[str, str | None] = field(default_factory=dict)
    external_ids: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Mirror:
    """A port mirror (``Mirror`` table), ports given by name.

    Used both for what the switch has (``uuid`` and ``statistics`` filled in)
    and for what it should have (``uuid`` empty for a mirror to create).
    """

    name: str
    bridge: str
    select_all: bool = False
    select_src_port: tuple[str, ...] = ()
    select_dst_port: tuple[str, ...] = ()
    select_vlan: tuple[int, ...] = ()
    output_port: str | None = None
    output_vlan: int | None = None
    snaplen: int | None = None
    # OVS >= 3.4 (Mirror.filter): an OpenFlow match the copies must satisfy.
    filter: str | None = None
    external_ids: Mapping[str, str] = field(default_factory=dict)
    statistics: Mapping[str, int] = field(default_factory=dict)
    uuid: str = ""


@dataclass(frozen=True)
class MirrorEdit:
    """Everything one step changes, applied as one OVSDB transaction.

    ``put``: mirrors to create (no ``uuid``) or to rewrite in place (``uuid``
    of the existing row).  ``delete``: mirrors to remove (by ``uuid``).
    ``flood_add`` / ``flood_remove``: per bridge name, VLANs to add to or
    remove from the bridge's ``flood_vlans`` (RSPAN); ``bridge_ids``: per
    bridge name, ``external_ids`` keys to set (``None``: remove the key).
    ``bridges_put`` / ``bridges_delete``: bridges to create or update, and
    to remove (with everything on them); ``ports_put`` / ``ports_delete``:
    ports (each with its one interface) to create or rewrite, and to remove.
    Mirrors may name ports and bridges that the same edit creates.
    """

    put: Sequence[Mirror] = ()
    delete: Sequence[Mirror] = ()
    flood_add: Mapping[str, Sequence[int]] = field(default_factory=dict)
    flood_remove: Mapping[str, Sequence[int]] = field(default_factory=dict)
    bridge_ids: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    bridges_put: Sequence[BridgePut] = ()
    bridges_delete: Sequence[Bridge] = ()
    ports_put: Sequence[Port] = ()
    ports_delete: Sequence[Port] = ()


class VswitchdTimeout(BackendError):
    """The transaction committed, but ovs-vswitchd did not take it in time."""


class OvsdbAPI(Protocol):
    """What the ovs_mirror step needs from an Open vSwitch database."""

    remote: str
    # Transactions sent to the server by this connection (benchmarks check it).
    transactions: int

    def has_column(self, table: str, column: str) -> bool:
        """True if the server's schema has ``table.column`` (e.g. ``Mirror.snaplen``)."""
        ...

    def bridges(self) -> dict[str, Bridge]:
        """The bridges, by name."""
        ...

    def ports(self) -> dict[str, Port]:
        """All ports of all bridges, by name (port names are unique in a switch)."""
        ...

    def mirrors(self) -> list[Mirror]:
        """Every mirror of every bridge, with its statistics."""
        ...

    def iface_types(self) -> tuple[str, ...]:
        """The interface types this ovs-vswitchd supports (``Open_vSwitch.iface_types``:
        e.g. gre, erspan, vxlan, patch); empty before ovs-vswitchd has reported them."""
        ...

    def datapath_types(self) -> tuple[str, ...]:
        """The datapath types this ovs-vswitchd supports (e.g. system, netdev)."""
        ...

    def apply(self, edit: MirrorEdit, timeout: float) -> int:
        """Apply ``edit`` in ONE transaction, all or nothing, then wait (at most
        ``timeout`` seconds) for ovs-vswitchd to take the new configuration.

        Returns the configuration number ovs-vswitchd reached.  Raises
        ``BackendError`` naming the cause when the transaction fails (e.g. a
        referenced port no longer exists): then nothing was changed;
        :class:`VswitchdTimeout` when the database took the change but
        ovs-vswitchd did not apply it in time.
        """
        ...

    def revalidate(self, target: str) -> None:
        """Ask ovs-vswitchd (``target`` as for ``ovs-appctl -t``: a daemon name or a
        control socket path) to revalidate its cached datapath flows, so that a
        mirror change applies to traffic already flowing.  Raises ``BackendError``."""
        ...

# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "ovsdb"


def ovsdb_api(backends: Backends, remote: str, tls: OvsdbTLS | None = None) -> OvsdbAPI:
    """The OVSDB connection to ``remote`` (``unix:``, ``tcp:`` or ``ssl:`` with ``tls``)."""
    return cast(OvsdbAPI, backends.get(KIND, remote, tls))
