"""Checks shared by the steps' answers models: connection strings and lists.

A connection string that cannot be parsed is a wrong answer, found while the
answers are validated (exit 3, with its key and line), never left for a
backend to fail on as if the host were unreachable (exit 5).  These checks
are of form only; whether something listens there is the backend's business.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

# One label of a DNS name (RFC 1123).
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
# D-Bus address: transport:key=value,... (several separated by ';'); values use
# the optionally-escaped characters of the D-Bus specification or %XX.
_DBUS_VALUE = r"(?:[-0-9A-Za-z_/.\\*]|%[0-9A-Fa-f]{2})+"
_DBUS_PAIR = rf"[a-z][a-z0-9_-]*={_DBUS_VALUE}"
_DBUS_ONE = rf"[a-z][a-z0-9-]*:(?:{_DBUS_PAIR}(?:,{_DBUS_PAIR})*)?"
_DBUS = re.compile(rf"^{_DBUS_ONE}(?:;{_DBUS_ONE})*;?$")
# An RFC 3986 URI with an authority part (scheme://...), ASCII only.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]"
                  r"|%[0-9A-Fa-f]{2})*$")


def is_host(text: str) -> bool:
    """A DNS name, an IPv4 address or an IPv6 address (bare or in brackets)."""
    if _HOSTNAME.match(text) and len(text) <= 253:
        return True
    try:
        ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        return False
    return True


def dbus_address(bus: str) -> str:
    """``system``, or a D-Bus address such as ``unix:path=/run/dbus/system_bus_socket``."""
    if bus != "system" and not _DBUS.match(bus):
        raise ValueError(f"'{bus}' is not 'system' nor a D-Bus address "
                         "(transport:key=value,..., e.g. unix:path=/run/dbus/system_bus_socket)")
    return bus


def ovsdb_remote(db: str) -> str:
    """An OVSDB remote: ``unix:PATH``, ``tcp:HOST:PORT`` or ``ssl:HOST:PORT``."""
    kind, _, rest = db.partition(":")
    if kind == "unix" and rest.strip():
        return db
    host, _, port = rest.rpartition(":")
    if kind in ("tcp", "ssl") and is_host(host) and port.isdigit() and 0 < int(port) < 65536:
        return db
    raise ValueError(f"'{db}' is not an OVSDB remote: unix:PATH, tcp:HOST:PORT or "
                     "ssl:HOST:PORT (HOST a name or an address, PORT 1-65535)")


def server_name(server: str) -> str:
    """A vCenter/ESXi server: a host name or an address, no scheme, port or path."""
    if not is_host(server):
        raise ValueError(f"'{server}' is not a host name or an address (no https://, "
                         "port or path: the port is 'port')")
    return server


def libvirt_uri(uri: str) -> str:
    """A libvirt connection URI such as ``qemu:///system`` or ``qemu+ssh://host/system``."""
    ok = bool(_URI.match(uri))
    if ok:
        try:
            urlsplit(uri).port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"'{uri}' is not a libvirt URI (driver[+transport]://[host]/path, "
                         "e.g. qemu:///system)")
    return uri


def repeated(items: Iterable[Hashable]) -> list[str]:
    """The items listed more than once, as sorted text (linear, any item types)."""
    return sorted(str(item) for item, n in Counter(items).items() if n > 1)


# The answers models' types for connection strings.
DbusAddress = Annotated[str, AfterValidator(dbus_address)]
OvsdbRemote = Annotated[str, AfterValidator(ovsdb_remote)]
ServerName = Annotated[str, AfterValidator(server_name)]
LibvirtUri = Annotated[str, AfterValidator(libvirt_uri)]
