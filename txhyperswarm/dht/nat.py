"""
Our public address as the DHT sees it: a tally of the ``to`` fields the
latest routing-table contacts sent us (dht-rpc ``remoteAddress()`` /
``holepunchable()``).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from txhyperswarm.dht.query import decode_to

__all__ = ["remote_address", "holepunchable"]

Address = Tuple[str, int]

#: Contacts looked at, newest first.
SAMPLE = 10
#: Contacts that must agree.
AGREE = 3


def tally(latest: Iterable, only_ip: bool) -> Optional[bytes]:
    """
    The 6-byte ``to`` that at least 3 of the 10 newest contacts (with a
    ``to``) agree on, with fewer than 3 dissenting; ``None`` otherwise. With
    ``only_ip`` the ports are ignored in the vote (the first seen wins).

    :param latest: routing-table contacts, newest first (``.to`` bytes).
    """
    counts: Dict[bytes, int] = {}
    result = None
    good = 0
    cnt = 0
    for node in latest:
        if cnt >= SAMPLE:
            break
        to = node.to
        if not to or len(to) != 6:
            continue
        key = to[:4] + b"\0\0" if only_ip else to
        hits = counts.get(key, 0) + 1
        if hits > good:
            good = hits
            result = to
        counts[key] = hits
        cnt += 1
    return result if cnt - good < AGREE and good >= AGREE else None


def remote_address(table) -> Optional[Address]:
    """
    Our public ``(host, port)`` as the contacts of ``table`` (a
    :class:`~txhyperswarm.dht.routing.RoutingTable`) see it, or ``None``:
    ip and port when they agree on both, else the ip with the first port.
    """
    both = tally(table.latest(), False) or tally(table.latest(), True)
    return decode_to(both) if both else None


def holepunchable(table) -> bool:
    """Whether the contacts of ``table`` agree on both our ip and our port."""
    return tally(table.latest(), False) is not None
