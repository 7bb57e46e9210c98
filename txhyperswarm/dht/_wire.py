"""
Outgoing dht-rpc envelopes, written in Node's field order.

Decoding uses the generated protobuf class (``messages.Message``). Encoding
is hand-written here for two reasons: Node's encoder (dht-rpc
lib/messages.js) writes ``version`` (field 11) first and ``to`` (field 10)
right after ``rid``, so writing the same order makes our datagrams
byte-identical to Node's (dht.md section 3 vectors); and building the bytes
directly is several times cheaper than filling and serialising a protobuf
object on the per-request responder path.

Every field is a proto2 ``bytes``/``string`` (wire type 2) or a varint; a
field passed as ``None`` is not written, an empty ``bytes`` is written as
present and empty, as Node does.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["varint", "encode", "SMALL_VARINTS", "QUERY_HEAD", "UPDATE_HEAD", "RESPONSE_HEAD"]

#: The one-byte varints 0-127 by value (the responder path writes them inline).
SMALL_VARINTS = [bytes((i,)) for i in range(128)]

#: version=1, type=QUERY/UPDATE/RESPONSE, then the rid tag.
QUERY_HEAD = b"\x58\x01\x08\x01\x10"
UPDATE_HEAD = b"\x58\x01\x08\x02\x10"
RESPONSE_HEAD = b"\x58\x01\x08\x03\x10"


def varint(n: int) -> bytes:
    """Unsigned LEB128 varint."""
    if n < 128:
        return SMALL_VARINTS[n]
    if n < 16384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 2097152:  # every 16-bit rid
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(parts: list, tag: bytes, value: bytes) -> None:
    n = len(value)
    parts.append(tag)
    parts.append(SMALL_VARINTS[n] if n < 128 else varint(n))
    parts.append(value)


def encode(
    head: bytes,
    rid: int,
    to: Optional[bytes] = None,
    node_id: Optional[bytes] = None,
    target: Optional[bytes] = None,
    closer_nodes: Optional[bytes] = None,
    token: Optional[bytes] = None,
    command: Optional[bytes] = None,
    error: Optional[bytes] = None,
    value: Optional[bytes] = None,
) -> bytes:
    """
    One datagram: ``head`` is :data:`QUERY_HEAD`, :data:`UPDATE_HEAD` or
    :data:`RESPONSE_HEAD`; the fields follow in Node's order (requests
    carry target/command, responses closerNodes/error).
    """
    parts = [head, SMALL_VARINTS[rid] if rid < 128 else varint(rid)]
    if to is not None:
        _field(parts, b"\x52", to)
    if node_id is not None:
        _field(parts, b"\x1a", node_id)
    if target is not None:
        _field(parts, b"\x22", target)
    if closer_nodes is not None:
        _field(parts, b"\x2a", closer_nodes)
    if token is not None:
        _field(parts, b"\x32", token)
    if command is not None:
        _field(parts, b"\x3a", command)
    if error is not None:
        _field(parts, b"\x42", error)
    if value is not None:
        _field(parts, b"\x4a", value)
    return b"".join(parts)
