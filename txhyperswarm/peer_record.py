"""
:class:`PeerRecord`: one peer found for a topic, by the DHT or by multicast DNS.

It is the value discovery hands to the swarm's queue, the same fields as the
``peer`` objects of Node's ``@hyperswarm/discovery`` 2.x
(``{port, host, local, to, referrer, topic}``) plus ``source``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attrs

__all__ = ["PeerRecord"]

Address = Tuple[str, int]


@attrs.frozen
class PeerRecord:
    """
    A peer announced on ``topic``.

    :ivar topic: the 32-byte topic.
    :ivar host: the peer's IPv4 address (dotted quad).
    :ivar port: the peer's port.
    :ivar local: ``True`` for a LAN address (a DHT ``localPeers`` entry or an
        mDNS answer).
    :ivar referrer: the DHT node that returned the record, as ``(host, port)``;
        needed to holepunch. ``None`` for local and mDNS peers (as Node).
    :ivar to: our own address as that DHT node saw it, ``(host, port)``, or
        ``None``.
    :ivar source: ``"dht"`` or ``"mdns"``.
    """

    topic: bytes
    host: str
    port: int
    local: bool
    referrer: Optional[Address]
    to: Optional[Address]
    source: str
