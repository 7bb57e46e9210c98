"""
The host's network interfaces as Node's ``os.networkInterfaces()`` lists them.

Multicast DNS joins its group on every interface this lists (as
``multicast-dns`` 7.2.5), and the swarm's ``announce_local_address`` picks
its LAN address from it. Only IPv4 is considered, as both of those do.

::

    interfaces()           # [("127.0.0.1", True), ("192.168.1.5", False)]
    interface_addresses()  # ["127.0.0.1", "192.168.1.5"]
    default_outgoing()     # "0.0.0.0" (a non-internal IPv4 exists) or "127.0.0.1"
"""

from __future__ import annotations

import ipaddress
import sys
from typing import List, Optional, Tuple

__all__ = [
    "IFF_LOOPBACK",
    "IFF_RUNNING",
    "IFF_UP",
    "default_outgoing",
    "interface_addresses",
    "interface_flags",
    "interfaces",
]

#: ``<linux/if.h>`` interface flags.
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40


def interface_flags(name: str) -> Optional[int]:
    """
    An interface's flags as ``getifaddrs()`` reports them (``SIOCGIFFLAGS``,
    which includes ``IFF_RUNNING``; sysfs does not), or ``None`` where they
    cannot be read (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sh14x", name.encode("utf-8")[:15], 0)
            answer = fcntl.ioctl(s.fileno(), 0x8913, request)  # SIOCGIFFLAGS
        return struct.unpack("16sH14x", answer)[1]
    except (OSError, UnicodeError):
        return None


def interfaces() -> List[Tuple[str, bool]]:
    """
    ``(first IPv4 address, internal)`` of every interface, as Node's
    ``os.networkInterfaces()`` lists them: libuv leaves out interfaces that
    are not both up and running (e.g. a docker0 bridge without containers),
    and ``internal`` is the loopback flag.
    """
    try:
        import ifaddr
    except ImportError:  # pragma: no cover - zeroconf depends on ifaddr
        return [("0.0.0.0", False)]
    result = []
    for adapter in ifaddr.get_adapters():
        flags = interface_flags(adapter.name)
        if flags is not None and (flags & (IFF_UP | IFF_RUNNING)) != IFF_UP | IFF_RUNNING:
            continue
        for ip in adapter.ips:
            if ip.is_IPv4:
                internal = bool(flags & IFF_LOOPBACK) if flags is not None else ipaddress.IPv4Address(ip.ip).is_loopback
                result.append((ip.ip, internal))
                break
    return result


def interface_addresses() -> List[str]:
    """The first IPv4 address of every interface (multicast-dns's ``allInterfaces``)."""
    return [address for address, _ in interfaces()]


def default_outgoing() -> str:
    """multicast-dns's ``defaultInterface()`` (Linux): ``0.0.0.0`` if a non-internal IPv4 exists."""
    for _, internal in interfaces():
        if not internal:
            return "0.0.0.0"
    return "127.0.0.1"
