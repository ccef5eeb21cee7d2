"""OVSDB backend: one IDL connection (the ``ovs`` Python library) to Open vSwitch.

The IDL keeps a replica of the tables this step needs (Open_vSwitch, Bridge,
Port, Interface, Mirror) and is the only way we talk to ovsdb-server: no ``ovs-vsctl``
process per operation.  :meth:`OvsdbBackend.apply` writes a whole step's
changes as ONE transaction (the server applies it all or nothing), every
referenced port verified, then waits for ovs-vswitchd to report the new
``cur_cfg``.
"""

from __future__ import annotations

import errno
import os
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.ovsdb import (
    Bridge,
    BridgePut,
    Mirror,
    MirrorEdit,
    OvsdbTLS,
    Port,
    VswitchdTimeout,
)

Txn = ovs.db.idl.Transaction
DATABASE = "Open_vSwitch"
# Columns replicated by the IDL; the Mirror table is replicated whole, so a
# column this OVS has (e.g. snaplen) is seen and one it lacks is not asked for.
COLUMNS = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg", "iface_types", "datapath_types"],
    "Bridge": ["name", "ports", "mirrors", "flood_vlans", "datapath_type", "external_ids",
               "fail_mode", "other_config"],
    "Port": ["name", "interfaces", "tag", "trunks", "vlan_mode", "external_ids"],
    "Interface": ["name", "type", "options"],
}
# A commit that meets a concurrent change (verify failed) is rebuilt from the
# refreshed replica this many times before giving up.
ATTEMPTS = 3


def _opt(value: list[Any]) -> Any:
    """An optional OVSDB column (a 0/1-element list in the IDL) as value or None."""
    return value[0] if value else None


class OvsdbBackend:
    """A connection to the ``Open_vSwitch`` database at ``remote``.

    ``remote`` is ``unix:PATH``, ``tcp:HOST:PORT`` or ``ssl:HOST:PORT`` (then
    ``tls`` is required).  Connecting is bounded by ``timeout`` seconds; a
    server that cannot be reached raises :class:`BackendUnreachable`.
    """

    def __init__(self, remote: str, tls: OvsdbTLS | None = None, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        self.transactions = 0
        if not ovs.stream.Stream.is_valid_name(remote):
            raise BackendError(
                f"'{remote}' is not an OVSDB remote (expected unix:PATH, tcp:HOST:PORT "
                "or ssl:HOST:PORT)"
            )
        if remote.startswith("ssl:"):
            self._set_tls(tls)
        helper = ovs.db.idl.SchemaHelper(None, self._fetch_schema())
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        helper.register_table("Mirror")
        self.idl = ovs.db.idl.Idl(remote, helper, leader_only=False)
        if not self._run_until(self.idl.has_ever_connected, time.monotonic() + timeout):
            self.idl.close()
            raise BackendUnreachable("OVSDB", remote, f"no reply within {timeout:g}s")

    # -- connection ---------------------------------------------------------

    def _set_tls(self, tls: OvsdbTLS | None) -> None:
        if tls is None:
            raise BackendError(f"{self.remote}: an ssl: remote needs ssl_key, ssl_cert and ssl_ca")
        for what, path in (("key", tls.key), ("certificate", tls.cert), ("CA", tls.ca)):
            if not os.access(path, os.R_OK):
                raise BackendError(f"{self.remote}: cannot read the SSL {what} file {path}")
        # The ovs library keeps these per process, as ovs-vsctl's -p/-c/-C.
        ovs.stream.Stream.ssl_set_private_key_file(tls.key)
        ovs.stream.Stream.ssl_set_certificate_file(tls.cert)
        ovs.stream.Stream.ssl_set_ca_cert_file(tls.ca)

    def _fetch_schema(self) -> Any:
        """The server's own schema (``get_schema``), so columns match its OVS version."""
        deadline = time.monotonic() + self.timeout
        try:
            error, stream = ovs.stream.Stream.open_block(
                ovs.stream.Stream.open(self.remote), int(self.timeout * 1000)
            )
        except ssl.SSLError as exc:  # raised while loading the key/certificate/CA
            raise BackendError(
                f"{self.remote}: cannot use the SSL key, certificate or CA: {exc.reason or exc}"
            ) from None
        if error:
            raise BackendUnreachable("OVSDB", self.remote, self._reason(error))
        rpc = ovs.jsonrpc.Connection(stream)
        try:
            request = ovs.jsonrpc.Message.create_request("get_schema", [DATABASE])
            error = rpc.send(request)
            while not error:
                error, reply = rpc.recv()
                if error == errno.EAGAIN:
                    if time.monotonic() > deadline:
                        error = errno.ETIMEDOUT
                        break
                    rpc.run()
                    poller = ovs.poller.Poller()
                    rpc.wait(poller)
                    rpc.recv_wait(poller)
                    poller.timer_wait(100)
                    poller.block()
                    error = 0
                elif reply is not None and reply.id == request.id:
                    if reply.error:
                        raise BackendError(f"{self.remote}: get_schema failed: {reply.error}")
                    return reply.result
            raise BackendUnreachable("OVSDB", self.remote, self._reason(error))
        finally:
            rpc.close()

    def _reason(self, error: int) -> str:
        reason = "connection closed" if error == ovs.jsonrpc.EOF else os.strerror(error)
        if self.remote.startswith("ssl:") and error not in (errno.ECONNREFUSED, errno.ETIMEDOUT):
            # The server drops a client it does not trust during the handshake.
            reason += " (TLS handshake refused? check ssl_key, ssl_cert and ssl_ca)"
        return reason

    def _connected(self) -> bool:
        # The Idl has no public "is connected"; its session knows.
        return bool(self.idl._session.is_connected())

    def _run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Run the IDL until ``done()`` or the deadline; returns ``done()``."""
        while True:
            self.idl.run()
            if done():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(max(1, int(min(left, 0.5) * 1000)))
            poller.block()

    def _sync(self) -> None:
        """Take in what the server sent; a lost connection is unreachable."""
        self.idl.run()
        if not self._connected():
            raise BackendUnreachable("OVSDB", self.remote, "connection lost")

    def close(self) -> None:
        """Close the IDL connection."""
        self.idl.close()

    # -- reading ------------------------------------------------------------

    def _rows(self, table: str) -> list[Any]:
        return list(self.idl.tables[table].rows.values())

    def has_column(self, table: str, column: str) -> bool:
        """True if the server's schema has ``table.column``."""
        tables = self.idl.tables
        return table in tables and column in tables[table].columns

    def bridges(self) -> dict[str, Bridge]:
        """The bridges, by name."""
        self._sync()
        return {
            row.name: Bridge(
                name=row.name,
                ports=tuple(sorted(p.name for p in row.ports)),
                flood_vlans=tuple(sorted(row.flood_vlans)),
                datapath_type=row.datapath_type,
                external_ids=dict(row.external_ids),
                uuid=str(row.uuid),
                fail_mode=_opt(row.fail_mode),
                other_config=dict(row.other_config),
            )
            for row in self._rows("Bridge")
        }

    def ports(self) -> dict[str, Port]:
        """All ports of all bridges, by name, with their first interface's type and options."""
        self._sync()
        out = {}
        for bridge in self._rows("Bridge"):
            for p in bridge.ports:
                iface = p.interfaces[0] if p.interfaces else None
                out[p.name] = Port(
                    p.name, bridge.name, str(p.uuid),
                    type=iface.type if iface is not None else "",
                    options=dict(iface.options) if iface is not None else {},
                    tag=_opt(p.tag), trunks=tuple(sorted(p.trunks)),
                    vlan_mode=_opt(p.vlan_mode), external_ids=dict(p.external_ids))
        return out

    def _root_set(self, column: str) -> tuple[str, ...]:
        self._sync()
        rows = self._rows("Open_vSwitch")
        return tuple(sorted(getattr(rows[0], column))) if rows else ()

    def iface_types(self) -> tuple[str, ...]:
        """``Open_vSwitch.iface_types`` (filled in by ovs-vswitchd)."""
        return self._root_set("iface_types")

    def datapath_types(self) -> tuple[str, ...]:
        """``Open_vSwitch.datapath_types`` (filled in by ovs-vswitchd)."""
        return self._root_set("datapath_types")

    def mirrors(self) -> list[Mirror]:
        """Every mirror of every bridge, ports by name, with statistics."""
        self._sync()
        snaplen = self.has_column("Mirror", "snaplen")
        has_filter = self.has_column("Mirror", "filter")
        return [
            Mirror(
                name=m.name,
                bridge=bridge.name,
                select_all=bool(m.select_all),
                select_src_port=tuple(sorted(p.name for p in m.select_src_port)),
                select_dst_port=tuple(sorted(p.name for p in m.select_dst_port)),
                select_vlan=tuple(sorted(m.select_vlan)),
                output_port=_opt([p.name for p in m.output_port]),
                output_vlan=_opt(m.output_vlan),
                snaplen=_opt(m.snaplen) if snaplen else None,
                filter=_opt(m.filter) if has_filter else None,
                external_ids=dict(m.external_ids),
                statistics=dict(m.statistics),
                uuid=str(m.uuid),
            )
            for bridge in self._rows("Bridge")
            for m in bridge.mirrors
        ]

    # -- writing ------------------------------------------------------------

    def apply(self, edit: MirrorEdit, timeout: float) -> int:
        """Apply ``edit`` in one transaction, then wait for ovs-vswitchd (bounded).

        The transaction is built from the IDL's replica with every referenced
        port verified: if a port was deleted meanwhile the server rejects the
        whole transaction, the replica is refreshed and the check is made
        again, so the error names the missing port and nothing is changed.
        """
        deadline = time.monotonic() + timeout
        for _attempt in range(ATTEMPTS):
            txn = Txn(self.idl)
            try:
                self._build(txn, edit)
            except BackendError:
                txn.abort()
                raise
            status = self._commit(txn, deadline)
            if status == Txn.SUCCESS:
                return self._wait_cfg(txn.get_increment_new_value(), deadline, timeout)
            if status != Txn.TRY_AGAIN:
                raise BackendError(
                    f"OVSDB transaction failed ({txn.get_error()}); nothing was changed"
                )
            # Someone changed what we verified, or the connection dropped:
            # refresh the replica and rebuild (the rebuild re-checks the ports).
            seqno = self.idl.change_seqno
            if not self._run_until(
                lambda s=seqno: self._connected() and self.idl.change_seqno != s,  # type: ignore[misc]
                deadline,
            ):
                if not self._connected():
                    raise BackendUnreachable("OVSDB", self.remote, "connection lost during apply")
        raise BackendError(
            f"the database kept changing under the transaction ({ATTEMPTS} attempts); "
            "nothing was changed, try again"
        )

    def revalidate(self, target: str) -> None:
        """``ovs-appctl -t TARGET revalidator/purge`` over OVS's unixctl protocol."""
        import ovs.daemon  # noqa: F401 - socket_name_from_target reads pidfiles with it
        import ovs.unixctl
        import ovs.unixctl.client

        error, path = ovs.unixctl.socket_name_from_target(target)
        if error:
            raise BackendError(f"ovs-vswitchd control socket: {path}")
        error, client = ovs.unixctl.client.UnixctlClient.create(path)
        if error:
            raise BackendError(f"ovs-vswitchd control socket {path}: {os.strerror(error)}")
        try:
            error, err, _out = client.transact("revalidator/purge", [])
        finally:
            client.close()
        if error or err:
            raise BackendError(
                f"revalidator/purge via {path}: {os.strerror(error) if error else err.strip()}")

    def _commit(self, txn: Any, deadline: float) -> str:
        """Commit ``txn``, waiting for the server's reply until ``deadline``."""
        status = txn.commit()
        if status != Txn.UNCHANGED:
            self.transactions += 1
        while status == Txn.INCOMPLETE:
            if time.monotonic() > deadline:
                txn.abort()
                raise BackendUnreachable(
                    "OVSDB", self.remote,
                    "no reply to the transaction (it may or may not have been applied: "
                    "run plan to see)")
            self.idl.run()
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            txn.wait(poller)
            poller.timer_wait(100)
            poller.block()
            status = txn.commit()
        return str(status)

    def _wait_cfg(self, want: int, deadline: float, timeout: float) -> int:
        """Wait until ovs-vswitchd has taken configuration ``want`` (cur_cfg)."""

        def cur() -> int:
            rows = self._rows("Open_vSwitch")
            return int(rows[0].cur_cfg) if rows else -1

        if not self._run_until(lambda: cur() >= want, deadline):
            raise VswitchdTimeout(
                f"the change is committed to the database, but ovs-vswitchd has not "
                f"applied it within {timeout:g}s (is ovs-vswitchd running?); it will "
                "take effect when ovs-vswitchd reads the database"
            )
        return cur()

    def _build(self, txn: Any, edit: MirrorEdit) -> None:
        """Write ``edit`` into ``txn``; raises BackendError for what does not exist.

        Order: deletions (mirrors, ports, bridges), then bridges, ports and
        mirrors to create or update, so that a mirror can name a port (e.g. a
        tunnel) and a port a bridge that the same transaction creates.
        """
        root = self._rows("Open_vSwitch")
        if not root:
            raise BackendError(f"{self.remote}: the Open_vSwitch table is empty (not initialised)")
        bridges = {row.name: row for row in self._rows("Bridge")}
        mirror_rows = self.idl.tables["Mirror"].rows

        def bridge(name: str) -> Any:
            if name not in bridges:
                raise BackendError(f"bridge '{name}' does not exist; nothing was changed")
            return bridges[name]

        ports: dict[str, dict[str, Any]] = {}  # bridge -> port name -> row, as needed

        def on_bridge(bridge_name: str) -> dict[str, Any]:
            if bridge_name not in ports:
                ports[bridge_name] = {row.name: row for row in bridge(bridge_name).ports}
            return ports[bridge_name]

        def port(name: str, bridge_name: str) -> Any:
            row = on_bridge(bridge_name).get(name)
            if row is not None:
                # Fails the transaction if the port goes away before it commits.
                # The Python IDL sends the prerequisites only of rows that are
                # part of the transaction (the C IDL's verify adds the row).
                txn._txn_rows[row.uuid] = row
                row.verify("name")
                return row
            raise BackendError(
                f"port '{name}' is not on bridge '{bridge_name}' (deleted since the plan?); "
                "nothing was changed"
            )

        def existing(table: str, what: str, uuid_: str) -> Any:
            row = self.idl.tables[table].rows.get(uuid.UUID(uuid_))
            if row is None:
                raise BackendError(f"{what} was deleted since the plan; nothing was changed")
            return row

        for m in edit.delete:
            row = mirror_rows.get(uuid.UUID(m.uuid))
            if row is not None:  # already gone is fine: the goal is its absence
                bridge(m.bridge).delvalue("mirrors", row)
                row.delete()
        for p in edit.ports_delete:
            row = self.idl.tables["Port"].rows.get(uuid.UUID(p.uuid))
            if row is not None:
                bridge(p.bridge).delvalue("ports", row)
                on_bridge(p.bridge).pop(p.name, None)
                row.delete()
        for gone in edit.bridges_delete:
            row = self.idl.tables["Bridge"].rows.get(uuid.UUID(gone.uuid))
            if row is not None:  # its ports, interfaces and mirrors go with it
                root[0].delvalue("bridges", row)
                bridges.pop(gone.name, None)
                row.delete()
        for b in edit.bridges_put:
            self._put_bridge(txn, b, bridges, root[0], existing)
        for p in edit.ports_put:
            if p.uuid:
                row = existing("Port", f"port '{p.name}'", p.uuid)
            else:
                row = txn.insert(self.idl.tables["Port"])
                row.name = p.name
                iface = txn.insert(self.idl.tables["Interface"])
                iface.name = p.name  # immutable once created
                row.interfaces = [iface]
                bridge(p.bridge).addvalue("ports", row)
                on_bridge(p.bridge)[p.name] = row
            self._write_port(row, p)
        snaplen = self.has_column("Mirror", "snaplen")
        has_filter = self.has_column("Mirror", "filter")
        for m in edit.put:
            if m.uuid:
                row = existing("Mirror", f"mirror '{m.name}' on bridge '{m.bridge}'", m.uuid)
            else:
                row = txn.insert(self.idl.tables["Mirror"])
                bridge(m.bridge).addvalue("mirrors", row)
            row.name = m.name
            row.select_all = m.select_all
            row.select_src_port = [port(p, m.bridge) for p in m.select_src_port]
            row.select_dst_port = [port(p, m.bridge) for p in m.select_dst_port]
            row.select_vlan = list(m.select_vlan)
            row.output_port = [port(m.output_port, m.bridge)] if m.output_port else []
            row.output_vlan = [m.output_vlan] if m.output_vlan is not None else []
            for column, value, present in (("snaplen", m.snaplen, snaplen),
                                           ("filter", m.filter, has_filter)):
                if present:
                    setattr(row, column, [value] if value is not None else [])
                elif value is not None:
                    raise BackendError(
                        f"this Open vSwitch has no Mirror.{column} (mirror '{m.name}')")
            row.external_ids = dict(m.external_ids)
        for name, vlans in edit.flood_add.items():
            for vlan in vlans:
                bridge(name).addvalue("flood_vlans", vlan)
        for name, vlans in edit.flood_remove.items():
            for vlan in vlans:
                bridge(name).delvalue("flood_vlans", vlan)
        for name, ids in edit.bridge_ids.items():
            _set_keys(bridge(name), "external_ids", ids)
        # ovs-vswitchd sets cur_cfg to this once it has taken the change.
        root[0].increment("next_cfg")

    def _put_bridge(self, txn: Any, b: BridgePut, bridges: dict[str, Any], root: Any,
                    existing: Callable[[str, str, str], Any]) -> None:
        """Create bridge ``b`` (with its local port) or update what ``b`` sets."""
        if b.uuid:
            row = existing("Bridge", f"bridge '{b.name}'", b.uuid)
        else:
            row = txn.insert(self.idl.tables["Bridge"])
            row.name = b.name
            iface = txn.insert(self.idl.tables["Interface"])
            iface.name, iface.type = b.name, "internal"
            local = txn.insert(self.idl.tables["Port"])
            local.name, local.interfaces = b.name, [iface]
            row.ports = [local]
            root.addvalue("bridges", row)
            bridges[b.name] = row
        if b.datapath_type is not None:
            row.datapath_type = b.datapath_type
        if b.fail_mode is not None:
            row.fail_mode = [b.fail_mode] if b.fail_mode else []
        _set_keys(row, "other_config", b.other_config)
        _set_keys(row, "external_ids", b.external_ids)

    @staticmethod
    def _write_port(row: Any, p: Port) -> None:
        """Every setting of port ``p`` (and of its interface) into ``row``."""
        row.tag = [p.tag] if p.tag is not None else []
        row.trunks = list(p.trunks)
        row.vlan_mode = [p.vlan_mode] if p.vlan_mode else []
        row.external_ids = dict(p.external_ids)
        iface = row.interfaces[0]
        iface.type = p.type
        iface.options = dict(p.options)


def _set_keys(row: Any, column: str, keys: Any) -> None:
    """Set (or, for ``None``, remove) the given keys of a map column."""
    for key, value in keys.items():
        if value is None:
            row.delkey(column, key)
        else:
            row.setkey(column, key, value)
