"""
Hand-made dht-rpc datagrams for floods and probes (the tests and the benches
bench/dht_flood.py, bench/daemon_flood.py share them).
"""

from __future__ import annotations

from txhyperswarm.dht import messages as m


def dht_message(kind: int, command: bytes, rid: int, *, node_id=None, target=None, value=None,
                token=None) -> bytes:
    """One encoded message of type ``kind`` (``m.QUERY``, ``m.UPDATE``, ...); ``rid`` is taken mod 2**16."""
    msg = m.Message()
    msg.version = 1
    msg.type = kind
    msg.rid = rid & 0xFFFF
    if node_id is not None:
        msg.id = node_id
    msg.command = command
    if target is not None:
        msg.target = target
    if value is not None:
        msg.value = value
    if token is not None:
        msg.roundtripToken = token
    return msg.SerializeToString()


def query(command: bytes, rid: int, node_id=None, target=None) -> bytes:
    """An encoded QUERY."""
    return dht_message(m.QUERY, command, rid, node_id=node_id, target=target)
