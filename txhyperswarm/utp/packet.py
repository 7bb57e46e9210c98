"""
uTP packet codec (BEP 29 as libutp speaks it; ``shared/spec/utp.md`` 1).

Pure: bytes in, :class:`Packet` out and back; no I/O, no clock. The one error
is :class:`DecodeError`.

Wire layout: a 20-byte big-endian header ``>BBHIIIHH`` (type/version,
first extension type, connection id, timestamp µs, timestamp difference µs,
window bytes, seq_nr, ack_nr), then a chain of extensions
``(next_type u8, length u8, data)``, then the payload up to the end of the
datagram.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

__all__ = [
    "ST_DATA",
    "ST_FIN",
    "ST_STATE",
    "ST_RESET",
    "ST_SYN",
    "TYPE_NAMES",
    "EXT_SACK",
    "EXT_BITS",
    "HEADER",
    "HEADER_SIZE",
    "DecodeError",
    "Packet",
    "decode",
    "encode",
    "sack_mask",
    "sack_bits",
    "seq_less",
]

ST_DATA = 0
ST_FIN = 1
ST_STATE = 2
ST_RESET = 3
ST_SYN = 4
TYPE_NAMES = ("DATA", "FIN", "STATE", "RESET", "SYN")

#: Extension types libutp knows.
EXT_SACK = 1
EXT_BITS = 2

VERSION = 1
HEADER = struct.Struct(">BBHIIIHH")
HEADER_SIZE = HEADER.size  # 20

_MASK16 = 0xFFFF


class DecodeError(ValueError):
    """
    The bytes are not a uTP packet libutp would accept.

    :ivar reason: a short fixed token (``"short"``, ``"version"``,
        ``"type"``, ``"extension"``, ``"ext_bits_length"``), usable as a
        counter label.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Packet:
    """
    One uTP packet.

    :ivar type: ``ST_DATA`` … ``ST_SYN`` (0–4).
    :ivar connection_id: 16-bit id on the wire.
    :ivar timestamp: sender's µs clock, low 32 bits.
    :ivar timestamp_diff: sender's last measured one-way delay of our packets.
    :ivar wnd_size: sender's advertised receive window in bytes.
    :ivar seq_nr: 16-bit sequence number.
    :ivar ack_nr: 16-bit cumulative ack.
    :ivar extensions: tuple of ``(type, data)`` in wire order; a selective
        ack is type 1.
    :ivar payload: bytes after header and extensions.
    """

    __slots__ = (
        "type",
        "connection_id",
        "timestamp",
        "timestamp_diff",
        "wnd_size",
        "seq_nr",
        "ack_nr",
        "extensions",
        "payload",
    )

    def __init__(
        self,
        type: int,
        connection_id: int,
        seq_nr: int = 0,
        ack_nr: int = 0,
        *,
        timestamp: int = 0,
        timestamp_diff: int = 0,
        wnd_size: int = 0,
        extensions: Tuple[Tuple[int, bytes], ...] = (),
        payload: bytes = b"",
    ) -> None:
        self.type = type
        self.connection_id = connection_id
        self.timestamp = timestamp
        self.timestamp_diff = timestamp_diff
        self.wnd_size = wnd_size
        self.seq_nr = seq_nr
        self.ack_nr = ack_nr
        self.extensions = extensions
        self.payload = payload

    @property
    def sack(self) -> Optional[bytes]:
        """The first selective-ack mask, or ``None``."""
        for t, data in self.extensions:
            if t == EXT_SACK:
                return data
        return None

    def fields(self) -> tuple:
        """Every field, in ``__slots__`` order (what ``==`` and ``hash`` compare)."""
        return (
            self.type,
            self.connection_id,
            self.timestamp,
            self.timestamp_diff,
            self.wnd_size,
            self.seq_nr,
            self.ack_nr,
            self.extensions,
            self.payload,
        )

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        return self.fields() == other.fields()

    def __hash__(self):
        return hash(self.fields())

    def __repr__(self) -> str:
        name = TYPE_NAMES[self.type] if 0 <= self.type < 5 else str(self.type)
        return (
            f"<Packet {name} id={self.connection_id} seq={self.seq_nr} ack={self.ack_nr}"
            f" ts={self.timestamp} tsdiff={self.timestamp_diff} wnd={self.wnd_size}"
            f" ext={self.extensions!r} payload={len(self.payload)}B>"
        )


def decode(data) -> Packet:
    """
    Parse one datagram.

    :param data: ``bytes`` (or any buffer).
    :returns: the :class:`Packet`; ``payload`` is ``bytes``.
    :raises DecodeError: shorter than 20 bytes, version not 1, type ≥ 5,
        an extension running past the end, or an extension-2 record whose
        length is not 8 (libutp drops all of these).
    """
    n = len(data)
    if n < HEADER_SIZE:
        raise DecodeError("short", f"{n} bytes")
    tv, ext, cid, ts, tsd, wnd, seq, ack = HEADER.unpack_from(data, 0)
    if tv & 0x0F != VERSION:
        raise DecodeError("version", str(tv & 0x0F))
    ptype = tv >> 4
    if ptype > ST_SYN:
        raise DecodeError("type", str(ptype))
    off = HEADER_SIZE
    exts: Tuple[Tuple[int, bytes], ...] = ()
    if ext:
        out = []
        while ext:
            if off + 2 > n:
                raise DecodeError("extension", "truncated extension header")
            nxt = data[off]
            length = data[off + 1]
            off += 2
            if off + length > n:
                raise DecodeError("extension", "extension runs past the end")
            if ext == EXT_BITS and length != 8:
                raise DecodeError("ext_bits_length", str(length))
            out.append((ext, bytes(data[off : off + length])))
            off += length
            ext = nxt
        exts = tuple(out)
    return Packet(
        ptype,
        cid,
        seq,
        ack,
        timestamp=ts,
        timestamp_diff=tsd,
        wnd_size=wnd,
        extensions=exts,
        payload=bytes(data[off:]),
    )


def encode(p: Packet) -> bytes:
    """
    Serialise a packet (inverse of :func:`decode`).

    :raises ValueError: a field is out of range (a programming error).
    """
    if not 0 <= p.type <= ST_SYN:
        raise ValueError(f"bad packet type {p.type}")
    exts = p.extensions
    first = exts[0][0] if exts else 0
    head = HEADER.pack(
        (p.type << 4) | VERSION,
        first,
        p.connection_id,
        p.timestamp,
        p.timestamp_diff,
        p.wnd_size,
        p.seq_nr,
        p.ack_nr,
    )
    if not exts:
        return head + p.payload
    parts = [head]
    for i, (t, d) in enumerate(exts):
        if not 0 < t < 256 or len(d) > 255:
            raise ValueError(f"bad extension {t} of {len(d)} bytes")
        nxt = exts[i + 1][0] if i + 1 < len(exts) else 0
        parts.append(bytes((nxt, len(d))))
        parts.append(d)
    parts.append(p.payload)
    return b"".join(parts)


def sack_mask(ack_nr: int, received, nbytes: int = 4) -> bytes:
    """
    Build a selective-ack mask: bit *i* is set when ``ack_nr + 2 + i`` is in
    ``received`` (anything supporting ``in`` on 16-bit seq numbers).
    """
    mask = bytearray(nbytes)
    base = ack_nr + 2
    for i in range(nbytes * 8):
        if ((base + i) & _MASK16) in received:
            mask[i >> 3] |= 1 << (i & 7)
    return bytes(mask)


def sack_bits(ack_nr: int, mask: bytes):
    """The seq numbers a selective-ack mask says were received, lowest first."""
    base = ack_nr + 2
    out = []
    for byte_i, b in enumerate(mask):
        if b:
            for bit in range(8):
                if b >> bit & 1:
                    out.append((base + byte_i * 8 + bit) & _MASK16)
    return out


def seq_less(a: int, b: int) -> bool:
    """``a`` before ``b`` in 16-bit sequence space (shorter-distance rule)."""
    return ((b - a) & _MASK16) < ((a - b) & _MASK16)
