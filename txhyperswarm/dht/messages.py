"""
The dht-rpc 4.9.6 wire codec: datagram <-> :class:`Message`, and the compact
address encodings of ``ipv4-peers`` (spec: ``shared/spec/dht.md`` 1.1, 1.2, 2.1).

Pure functions, no I/O. Every decoder raises :class:`DecodeError` and nothing
else on bad input.

The envelope is the protobuf-generated ``Message`` class (``messages_pb2``):
decoding a datagram into it and encoding it back are the per-datagram hot path,
so no second value class is built on top. Presence is ``msg.HasField(name)``.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Iterable, List, Optional, Tuple

from google.protobuf.message import DecodeError as _PBDecodeError

from txhyperswarm.dht import messages_pb2 as _pb

__all__ = [
    "DecodeError",
    "Message",
    "Holepunch",
    "PeersInput",
    "PeersOutput",
    "QUERY",
    "UPDATE",
    "RESPONSE",
    "ID_LENGTH",
    "decode_message",
    "encode_message",
    "text",
    "encode_peer",
    "decode_peer",
    "encode_peers",
    "decode_peers",
    "encode_node",
    "encode_nodes",
    "decode_nodes",
    "decode_holepunch",
    "decode_peers_input",
    "decode_peers_output",
    "is_ipv4_literal",
    "ipv4_bytes",
]

Message = _pb.Message
Holepunch = _pb.Holepunch
PeersInput = _pb.PeersInput
PeersOutput = _pb.PeersOutput

QUERY = _pb.QUERY
UPDATE = _pb.UPDATE
RESPONSE = _pb.RESPONSE

#: Length of a node id, a topic and a roundtrip token.
ID_LENGTH = 32
#: A compact node: 32-byte id, then the 6-byte peer.
NODE_LENGTH = ID_LENGTH + 6

_PEER = struct.Struct(">4sH")
_NODE = struct.Struct(">32s4sH")


class DecodeError(ValueError):
    """
    Bytes from the network are not a valid value of the expected encoding.

    ``reason`` is a short stable word for counters (``protobuf``, ``id``,
    ``address``...).
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


def decode_message(data: bytes) -> Message:
    """
    Decode one datagram.

    Applies dht-rpc's acceptance rules: a message with an ``id`` that is not
    32 bytes is rejected; a message without ``version`` (or version < 1)
    loses its ``id`` (the sender is treated as ephemeral).

    :raises DecodeError: the datagram is not a dht-rpc message.
    """
    msg = Message()
    try:
        msg.ParseFromString(data)
    except (_PBDecodeError, RuntimeError, ValueError) as e:
        raise DecodeError(f"not a dht-rpc message: {e}", "protobuf") from None
    if not (msg.HasField("type") and msg.HasField("rid")):
        raise DecodeError("message without a known type or a rid", "protobuf")
    if msg.HasField("id"):
        if len(msg.id) != ID_LENGTH:
            raise DecodeError(f"node id of {len(msg.id)} bytes", "id")
        if msg.version < 1:
            msg.ClearField("id")
    return msg


def encode_message(msg: Message) -> bytes:
    """Encode a message for the wire (``version`` is set to 1 if absent)."""
    if not msg.HasField("version"):
        msg.version = 1
    return msg.SerializeToString()


def text(value: bytes) -> str:
    """A ``command``/``error`` field as Node reads it (lenient UTF-8)."""
    return value.decode("utf-8", "replace")


_IPV4_LITERAL = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)


def ipv4_bytes(host: str) -> bytes:
    """
    The 4 bytes of a dotted-decimal IPv4 literal, read as Node reads it
    (``parseInt(octet, 10)``: ``010`` is ten, not octal eight).

    :raises ValueError: not four decimal octets of at most 255.
    """
    if not _IPV4_LITERAL.fullmatch(host):
        raise ValueError(f"not a dotted-decimal IPv4 address: {host!r}")
    octets = [int(part, 10) for part in host.split(".")]
    if max(octets) > 255:
        raise ValueError(f"IPv4 octet above 255 in {host!r}")
    return bytes(octets)


def is_ipv4_literal(host: str) -> bool:
    """True for a dotted-quad IPv4 literal, the only hosts dht-rpc encodes
    (dht-rpc's ``/^\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}$/``, octets <= 255)."""
    try:
        ipv4_bytes(host)
    except ValueError:
        return False
    return True


def encode_peer(host: str, port: int) -> bytes:
    """``127.0.0.1``, ``10001`` -> ``7f000001 2711``."""
    try:
        return _PEER.pack(ipv4_bytes(host), port)
    except (ValueError, struct.error) as e:
        raise ValueError(f"cannot encode {host}:{port} as an IPv4 peer: {e}") from None


def decode_peer(data: bytes) -> Tuple[str, int]:
    """
    One 6-byte peer.

    :raises DecodeError: not 6 bytes, or port 0 (ipv4-peers rejects it).
    """
    if len(data) != 6:
        raise DecodeError(f"peer of {len(data)} bytes", "address")
    ip, port = _PEER.unpack(data)
    if port == 0:
        raise DecodeError("peer with port 0", "address")
    return socket.inet_ntoa(ip), port


def encode_peers(peers: Iterable[Tuple[str, int]]) -> bytes:
    return b"".join(encode_peer(h, p) for h, p in peers)


def decode_peers(data: bytes) -> List[Tuple[str, int]]:
    """
    N concatenated 6-byte peers, as ``@hyperswarm/dht`` decodes ``peers``.

    :raises DecodeError: length not a multiple of 6, a 0 port or ``0.0.0.0``.
    """
    if len(data) % 6:
        raise DecodeError(f"peers buffer of {len(data)} bytes", "address")
    out = []
    for off in range(0, len(data), 6):
        ip, port = _PEER.unpack_from(data, off)
        if port == 0 or ip == b"\0\0\0\0":
            raise DecodeError("peer with port 0 or host 0.0.0.0", "address")
        out.append((socket.inet_ntoa(ip), port))
    return out


def encode_node(node_id: bytes, host: str, port: int) -> bytes:
    """One 38-byte compact node: the 32-byte id, then the IPv4 address and port."""
    return _NODE.pack(node_id, socket.inet_aton(host), port)


def encode_nodes(nodes: Iterable[Tuple[bytes, str, int]]) -> bytes:
    """``(id, host, port)`` triples -> concatenated 38-byte compact nodes."""
    return b"".join(encode_node(i, h, p) for i, h, p in nodes)


def decode_nodes(data: Optional[bytes]) -> List[Tuple[bytes, str, int]]:
    """
    ``closerNodes`` -> ``(id, host, port)`` triples.

    As dht-rpc: trailing bytes short of a whole node are ignored, and a node
    with port 0 makes the whole list empty.
    """
    if not data:
        return []
    out = []
    unpack = _NODE.unpack_from
    ntoa = socket.inet_ntoa
    for off in range(0, len(data) - NODE_LENGTH + 1, NODE_LENGTH):
        node_id, ip, port = unpack(data, off)
        if port == 0:
            return []
        out.append((node_id, ntoa(ip), port))
    return out


def _parse(cls, data: bytes, what: str):
    value = cls()
    try:
        value.ParseFromString(data)
    except (_PBDecodeError, RuntimeError, ValueError) as e:
        raise DecodeError(f"not a {what}: {e}", "value") from None
    return value


def decode_holepunch(data: bytes) -> Holepunch:
    """:raises DecodeError: not a ``Holepunch``."""
    return _parse(Holepunch, data, "Holepunch")


def decode_peers_input(data: bytes) -> PeersInput:
    """:raises DecodeError: not a ``PeersInput``."""
    return _parse(PeersInput, data, "PeersInput")


def decode_peers_output(data: bytes) -> PeersOutput:
    """:raises DecodeError: not a ``PeersOutput``."""
    return _parse(PeersOutput, data, "PeersOutput")
