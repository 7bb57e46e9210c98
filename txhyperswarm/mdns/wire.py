"""
The multicast DNS datagrams of ``@hyperswarm/discovery`` 2.0.1: pure codec, no I/O.

Node's discovery speaks raw ``multicast-dns`` 7.2.5 / ``dns-packet`` 5.6.1
records (no DNS-SD):

* a query is one question ``<40 hex>.hyperswarm.local`` type SRV class IN,
  header id 0 and flags 0;
* a response has header id 0, flags ``0x8400`` (QR|AA), and in the answers
  section, per announcing topic, an SRV record (priority 0, weight 0, the
  announced port, target ``0.0.0.0``) and a TXT record holding one string,
  ``id=`` + 32 random bytes; when it answers a real query it appends an A
  record ``referrer.hyperswarm.local`` with the querier's address. Every TTL
  is 0, the cache-flush bit is clear, and no name is compressed.

Records are built and parsed with ``zeroconf``'s DNS classes
(:class:`zeroconf.DNSOutgoing`/:class:`zeroconf.DNSIncoming`,
:class:`zeroconf.DNSService`, :class:`zeroconf.DNSText`,
:class:`zeroconf.DNSAddress`, :class:`zeroconf.DNSQuestion`); only its
codec, never its ``Zeroconf`` engine (whose cache reads TTL 0 as "goodbye").
Two small things zeroconf has no switch for are done here: names are written
uncompressed (as dns-packet writes them, so our datagrams are byte-identical
to Node's), and a TXT record's rdata is split into its character-strings
(zeroconf keeps TXT rdata as raw bytes).
"""

from __future__ import annotations

import socket
from typing import List, Optional, Sequence, Tuple

import attrs
from zeroconf import DNSAddress, DNSIncoming, DNSOutgoing, DNSQuestion, DNSRecord, DNSService, DNSText

__all__ = [
    "CLASS_IN",
    "FLAGS_QUERY",
    "FLAGS_RESPONSE",
    "MalformedPacket",
    "Packet",
    "SRV_TARGET",
    "TYPE_A",
    "TYPE_SRV",
    "TYPE_TXT",
    "decode_packet",
    "domain_name",
    "encode_query",
    "encode_response",
    "first_txt_string",
    "fqdn",
    "id_record",
    "referrer_record",
    "srv_record",
    "srv_target",
    "txt_strings",
]

TYPE_A = 1
TYPE_TXT = 16
TYPE_SRV = 33
CLASS_IN = 1
FLAGS_QUERY = 0x0000
#: QR | AA: multicast-dns's ``respond()`` ORs in AUTHORITATIVE_ANSWER.
FLAGS_RESPONSE = 0x8400
_FLAG_QR = 0x8000
#: The SRV target Node announces; a receiver reads it as "the datagram's source".
SRV_TARGET = "0.0.0.0"
#: Node's TTL for every record (it ignores TTLs when receiving).
TTL = 0
_DEFAULT_DOMAIN = "hyperswarm.local"


class MalformedPacket(ValueError):
    """
    A datagram that is not a DNS message Node's dns-packet would decode.

    :ivar reason: a short word for counters: ``"short"``, ``"undecodable"``,
        ``"bad_record"`` or ``"bad_txt"``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@attrs.frozen
class Packet:
    """
    A decoded mDNS message: what ``@hyperswarm/discovery`` looks at.

    :ivar id: the header id.
    :ivar flags: the 16 header flag bits (QR is ``0x8000``).
    :ivar questions: the question section (:class:`zeroconf.DNSQuestion`).
    :ivar answers: the answers section only (:class:`zeroconf.DNSRecord`);
        authority and additional records are decoded (a bad one makes the
        packet malformed) but not kept, as Node never reads them.
    """

    id: int
    flags: int
    questions: Tuple[DNSQuestion, ...]
    answers: Tuple[DNSRecord, ...]

    @property
    def is_response(self) -> bool:
        """True when the QR bit is set (Node: ``type === 'response'``)."""
        return bool(self.flags & _FLAG_QR)


def domain_name(topic: bytes, domain: str = _DEFAULT_DOMAIN) -> str:
    """
    The mDNS name of ``topic``: lowercase hex of its first 20 bytes, then ``domain``.

    Exactly Node's ``key.slice(0, 20).toString('hex') + '.hyperswarm.local'``
    (no trailing dot).
    """
    return topic[:20].hex() + "." + domain


def fqdn(name: str) -> str:
    """``name`` with the trailing dot zeroconf's records carry."""
    return name if name.endswith(".") else name + "."


class _Outgoing(DNSOutgoing):
    """
    A :class:`zeroconf.DNSOutgoing` that writes every name in full.

    dns-packet never compresses names; writing them the same way makes our
    datagrams byte-identical to Node's. ``write_name`` is a ``cpdef`` method,
    so zeroconf's compiled record writers call this override too.
    """

    __slots__ = ()

    def write_name(self, name: str) -> None:
        self.names.clear()  # nothing earlier in the packet to point at
        DNSOutgoing.write_name(self, name)


def _single(out: DNSOutgoing) -> bytes:
    packets = out.packets()
    if len(packets) != 1:
        raise ValueError(f"the records need {len(packets)} datagrams; send fewer at a time")
    return packets[0]


def encode_query(names: Sequence[str]) -> bytes:
    """
    A query datagram asking for the SRV records of ``names``, as Node sends it.

    :param names: mDNS names without the trailing dot (see :func:`domain_name`).
    """
    out = _Outgoing(FLAGS_QUERY, multicast=True)
    for name in names:
        out.add_question(DNSQuestion(fqdn(name), TYPE_SRV, CLASS_IN))
    return _single(out)


def encode_response(records: Sequence[DNSRecord]) -> bytes:
    """
    A response datagram carrying ``records`` in its answers section, as Node sends it.

    :raises ValueError: when the records do not fit one datagram.
    """
    out = _Outgoing(FLAGS_RESPONSE, multicast=True)
    for record in records:
        # now=0: write record.ttl as it is (0), never "remaining" TTLs.
        out.add_answer_at_time(record, 0)
    return _single(out)


def srv_record(name: str, port: int, target: str = SRV_TARGET) -> DNSService:
    """The SRV answer Node's Topic serves: priority 0, weight 0, ``port``, target ``0.0.0.0``."""
    return DNSService(fqdn(name), TYPE_SRV, CLASS_IN, TTL, 0, 0, port, fqdn(target))


def id_record(name: str, topic_id: bytes) -> DNSText:
    """The TXT answer Node's Topic serves beside its SRV: one string, the topic's id."""
    if len(topic_id) > 255:
        raise ValueError("a TXT string holds at most 255 bytes")
    return DNSText(fqdn(name), TYPE_TXT, CLASS_IN, TTL, bytes((len(topic_id),)) + topic_id)


def referrer_record(domain: str, address: str) -> DNSAddress:
    """The A record ``referrer.<domain>`` Node appends when answering a query from ``address``."""
    return DNSAddress(fqdn("referrer." + domain), TYPE_A, CLASS_IN, TTL, socket.inet_aton(address))


def txt_strings(rdata: bytes) -> List[bytes]:
    """
    Split TXT rdata into its character-strings, as dns-packet's ``txt.decode``.

    :raises MalformedPacket: (``"bad_txt"``) when a length byte runs past the end.
    """
    strings = []
    offset = 0
    end = len(rdata)
    while offset < end:
        length = rdata[offset]
        offset += 1
        if offset + length > end:
            raise MalformedPacket("bad_txt", f"string of {length} bytes at {offset - 1} overruns {end}")
        strings.append(rdata[offset : offset + length])
        offset += length
    return strings


def first_txt_string(record: DNSText) -> Optional[bytes]:
    """The first string of a TXT record, or ``None`` when it has none (Node's ``data[0]``)."""
    strings = txt_strings(record.text)
    return strings[0] if strings else None


def srv_target(record: DNSService) -> str:
    """The SRV target as dns-packet decodes it: no trailing dot, the root is ``"."``."""
    server = record.server
    if len(server) > 1 and server.endswith("."):
        return server[:-1]
    return server


def decode_packet(data: bytes) -> Packet:
    """
    Decode one mDNS datagram.

    A datagram Node would drop (dns-packet throws) is refused as a whole:
    a short header, a name, question or record that runs past the end, a
    record zeroconf could not decode within its rdata length or does not
    know, or a TXT whose strings overrun.

    :raises MalformedPacket: with ``.reason`` saying why.
    """
    if len(data) < 12:
        raise MalformedPacket("short", f"{len(data)} bytes")
    incoming = DNSIncoming(data)
    if not incoming.valid:
        raise MalformedPacket("undecodable")
    records = incoming.answers()
    num_answers = incoming.num_answers
    expected = num_answers + incoming.num_authorities + incoming.num_additionals
    if len(records) != expected:
        # zeroconf skips records of types it does not know (dns-packet decodes
        # those: OPT, MX, NSEC-less responders' extras...) as well as records
        # it cannot decode, and stops at the first broken header; Node drops
        # only the latter. Walk the record headers to tell which.
        answers = _known_answers(data, incoming, records)
    else:
        answers = records[:num_answers]
    for record in records:
        if record.type == TYPE_TXT:
            txt_strings(record.text)
    return Packet(
        id=incoming.id,
        flags=incoming.flags,
        questions=tuple(incoming.questions),
        answers=tuple(answers),
    )


#: The record types zeroconf's DNSIncoming decodes; it skips every other.
_ZEROCONF_TYPES = frozenset((1, 5, 12, 13, 16, 28, 33, 47))


def _skip_name(data: bytes, offset: int) -> int:
    """The offset after the name at ``offset`` (labels and at most one pointer)."""
    end = len(data)
    for _ in range(128):
        if offset >= end:
            break
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > end:
                break
            return offset + 2
        if length & 0xC0:
            raise MalformedPacket("undecodable", f"bad label type at {offset}")
        offset += 1 + length
    raise MalformedPacket("bad_record", f"name at {offset} overruns {end}")


def _known_answers(data: bytes, incoming: DNSIncoming, records: Sequence[DNSRecord]) -> List[DNSRecord]:
    """
    The answers-section records of a datagram some of whose records zeroconf
    skipped, if it skipped only records of types it does not know.

    :raises MalformedPacket: (``"bad_record"``) when a record overruns the
        datagram or zeroconf failed to decode a record of a type it knows.
    """
    offset = 12
    for _ in range(incoming.num_questions):
        offset = _skip_name(data, offset) + 4
    types = []
    total = incoming.num_answers + incoming.num_authorities + incoming.num_additionals
    for _ in range(total):
        offset = _skip_name(data, offset)
        if offset + 10 > len(data):
            raise MalformedPacket("bad_record", f"record header at {offset} overruns {len(data)}")
        types.append(int.from_bytes(data[offset : offset + 2], "big"))
        offset += 10 + int.from_bytes(data[offset + 8 : offset + 10], "big")
        if offset > len(data):
            raise MalformedPacket("bad_record", f"record data overruns {len(data)}")
    known = [i for i, t in enumerate(types) if t in _ZEROCONF_TYPES]
    if len(known) != len(records):
        raise MalformedPacket("bad_record", f"{len(records)} of {len(known)} known records decoded")
    return [record for i, record in zip(known, records) if i < incoming.num_answers]
