"""
Multicast DNS peer discovery, compatible with ``@hyperswarm/discovery`` 2.0.1.

One :class:`MulticastDiscovery` (a Twisted service) owns one UDP socket on
``0.0.0.0:5353``, shared with other mDNS responders on the host
(``SO_REUSEADDR``), in group ``224.0.0.251``, with multicast loopback on so
several peers on one host hear each other. Topics are joined on it with
:meth:`MulticastDiscovery.join` (or :meth:`~MulticastDiscovery.announce`,
:meth:`~MulticastDiscovery.lookup`, the one-shot
:meth:`~MulticastDiscovery.query`); each join is one :class:`MDNSTopic`,
Node's ``Topic``:

* a looking-up topic sends an SRV query for ``<hex of topic[:20]>.hyperswarm.local``
  at once and then every 30–60 s (uniform);
* an announcing topic sends one unsolicited response on the next reactor
  turn and answers every SRV query for its name (from anyone, ourselves
  included) with SRV (target ``0.0.0.0``, its port) + TXT (its 35-byte id),
  plus an A record ``referrer.hyperswarm.local`` with the querier's address;
* every SRV answer for the name is reported to every topic on that name as a
  :class:`~txhyperswarm.peer_record.PeerRecord` (``host`` = the datagram's
  source when the target is ``0.0.0.0``, ``local=True``, ``referrer=None``,
  ``to=None``, ``source="mdns"``), except to the topic whose id is in the
  response's TXT record: suppression is per join, so a join never reports
  itself while two joins (two swarms) on one host find each other.

Nothing is cached and TTLs are ignored (Node's TTL is 0 everywhere); there is
no goodbye when a topic stops. Wire format: :mod:`txhyperswarm.mdns.wire`.

API::

    d = MulticastDiscovery(reactor=None, *, interface=None, port=5353,
                           group="224.0.0.251", domain="hyperswarm.local")
    d.startService()                    # binds now (CannotListenError if it cannot)
    t = d.join(topic, announce_port=None, lookup=True, on_peer=None)  # -> MDNSTopic
    t.when_ready()   # new Deferred: True once its first datagram went out
    t.refresh()      # query now, restart the 30-60 s schedule
    t.stop()         # -> Deferred (already fired); no goodbye
    t = d.announce(topic, port, host=None, *, lookup=False, on_peer=None)
    t = d.lookup(topic, on_peer)
    peers = yield d.query(topic, timeout=3.0)   # distinct PeerRecords heard
    d.dropped, d.sent, d.stats()                # Counters by reason / kind
    yield d.stopService()               # stops every topic, closes the socket
"""

from __future__ import annotations

import ipaddress
import math
import os
import random as _random
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txhyperswarm import netif
from txhyperswarm._reactor import default_reactor
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.mdns.topic import IMDNSTopicOwner, MDNSTopic, PeerCallback
from txhyperswarm.mdns.wire import (
    SRV_TARGET,
    TYPE_SRV,
    TYPE_TXT,
    MalformedPacket,
    Packet,
    decode_packet,
    encode_response,
    first_txt_string,
    referrer_record,
    srv_target,
)
from txhyperswarm.peer_record import PeerRecord

__all__ = ["MDNSTopic", "MalformedPacket", "MulticastDiscovery", "MAX_ANSWERS_PER_SECOND"]

#: Default limit of responses sent to queries per second (a token bucket
#: holding one second's worth): a flood of queries, from any number of
#: sources, cannot make us flood the group.
MAX_ANSWERS_PER_SECOND = 50.0

#: Node's re-query delay: floor(30000 + random * 30000) ms.
QUERY_INTERVAL = 30.0
#: multicast-dns re-checks the interface list (joins new ones) this often.
MEMBERSHIP_REFRESH = 5.0
#: Largest datagram read whole (Node's dgram reads up to 64 KiB; Twisted's
#: default of 8192 bytes would cut longer ones, which then fail to decode).
_MAX_DATAGRAM = 65535
#: SRV+TXT pairs per response datagram. Node puts every announcing Topic of
#: the name in one response, but its receivers take the *first* TXT of the
#: name as the sender id for every SRV, so with two joins of one name in one
#: instance the second would hear itself. One pair per datagram keeps the id
#: of each SRV unambiguous for Node and for us; with one join per name (what
#: Node's swarm does) the datagrams are identical to Node's.
_PAIRS_PER_RESPONSE = 1


def _first_id(answers: Sequence, name: str) -> Optional[bytes]:
    """Node's ``_getId``: the first string of the first non-empty TXT answer for ``name``."""
    for record in answers:
        if record.type == TYPE_TXT and record.name == name:
            first = first_txt_string(record)
            if first is not None:
                return first
    return None


class _MDNSProtocol(DatagramProtocol):
    """The socket side: hands every datagram to its receiver (the discovery's)."""

    def __init__(self, received: Callable[[bytes, Tuple[str, int]], None]) -> None:
        self._received = received

    def datagramReceived(self, data: bytes, addr: Tuple[str, int]) -> None:
        self._received(data, addr)


@implementer(IMDNSTopicOwner, IStatsSource)
class MulticastDiscovery(service.Service):
    """
    mDNS discovery for hyperswarm topics, as ``@hyperswarm/discovery`` 2.0.1.

    :param reactor: provides ``IReactorMulticast`` and ``IReactorTime``;
        ``None`` means the global reactor.
    :param interface: IPv4 address of the one interface to use (group
        membership and outgoing datagrams), or ``None`` for multicast-dns's
        default: join the group on the first IPv4 address of every interface
        (loopback included), re-checked every 5 s, and send through the
        kernel's default (``127.0.0.1`` when the host has only loopback).
        The socket itself is always bound to ``0.0.0.0``.
    :param port: UDP port (5353).
    :param group: multicast group (``224.0.0.251``).
    :param domain: the name suffix (``hyperswarm.local``; Node's swarm never
        changes it).
    :param ttl: multicast TTL (255, as multicast-dns).
    :param loopback: multicast loopback (on, so peers on this host hear us).
    :param random: a ``random.Random``-like object for the query schedule
        (tests); topic ids always come from ``os.urandom``.
    :param interfaces: the interface listing to join the group on when
        ``interface`` is ``None``: ``() -> [(address, internal)]`` as
        :func:`txhyperswarm.netif.interfaces` (the default); e.g. a
        :class:`txhyperswarm.testing.MemoryHostReactor`'s ``interfaces``.

    Start it with ``startService()`` (binds now; raises
    ``twisted.internet.error.CannotListenError`` if the port cannot be bound)
    and stop it with ``stopService()``. Topics may be joined before it
    starts: their first datagrams are sent once it listens.

    :param max_answers_per_second: responses to queries sent per second at
        most, in all (a token bucket of one second's worth, so a burst of
        that many goes at once); the ones beyond are not sent and counted
        (``dropped["answer_rate_limited"]``). Our own announcements are not
        limited. ``math.inf``: no limit.

    :ivar dropped: a ``collections.Counter`` of refused datagrams by reason
        (``"short"``, ``"undecodable"``, ``"bad_record"``, ``"bad_txt"``), of
        answers suppressed by the rate limit (``"answer_rate_limited"``) and
        of sends that failed (``"send_error"``).
    :ivar sent: a ``Counter`` of datagrams sent: ``"query"``, ``"response"``.

    It is its topics' :class:`~txhyperswarm.mdns.topic.IMDNSTopicOwner`
    (:attr:`listening`, :meth:`send`, :meth:`call_later`,
    :meth:`next_query_delay`, :meth:`topic_stopped`: the seam they call
    through, not meant for other callers).
    """

    log = Logger()

    def __init__(
        self,
        reactor=None,
        *,
        interface: Optional[str] = None,
        port: int = 5353,
        group: str = "224.0.0.251",
        domain: str = "hyperswarm.local",
        ttl: int = 255,
        loopback: bool = True,
        random=None,
        interfaces: Optional[Callable[[], List[Tuple[str, bool]]]] = None,
        max_answers_per_second: float = MAX_ANSWERS_PER_SECOND,
    ) -> None:
        self._reactor = default_reactor(reactor)
        if not max_answers_per_second > 0:
            raise ValueError("max_answers_per_second must be positive")
        self.max_answers_per_second = max_answers_per_second
        self._answer_tokens = max(max_answers_per_second, 1.0)
        self._answer_tokens_at = self._reactor.seconds()
        self._interfaces = interfaces
        if interface in ("", "0.0.0.0"):
            interface = None
        if interface is not None:
            ipaddress.IPv4Address(interface)  # ValueError for a bad address
        ipaddress.IPv4Address(group)
        for label in domain.split("."):
            if not 0 < len(label.encode("utf-8")) < 64:
                raise ValueError(f"bad domain {domain!r}: labels must be 1..63 bytes")
        self.interface = interface
        self.port = port
        self.group = group
        self.domain = domain
        self._ttl = ttl
        self._loopback = loopback
        self._random = random if random is not None else _random.Random()
        self._protocol = _MDNSProtocol(self._datagram)
        self._listening_port = None
        self._memberships: Dict[str, bool] = {}
        self._refresh: Optional[LoopingCall] = None
        # fqdn -> ordered set of topics (Node's _domains: Map name -> Set)
        self._domains: Dict[str, Dict[MDNSTopic, None]] = {}
        self._topics: Dict[MDNSTopic, None] = {}
        self._announce_queue: List[MDNSTopic] = []
        self._announce_call = None
        # announcing topics whose announcement fell due while not listening
        self._unsent_announcements: Dict[MDNSTopic, None] = {}
        # query() Deferred -> its finish(): stopService() ends them early
        self._queries: Dict[defer.Deferred, Callable[[], None]] = {}
        self.dropped: Counter = Counter()
        self.sent: Counter = Counter()

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        """
        Bind ``0.0.0.0:<port>`` (shared), set TTL and loopback, join the
        group, pick the outgoing interface, then send what topics queued.

        :raises twisted.internet.error.CannotListenError: if binding fails.
        """
        if self._listening_port is not None:
            return
        self._listening_port = self._reactor.listenMulticast(
            self.port, self._protocol, listenMultiple=True, maxPacketSize=_MAX_DATAGRAM
        )
        service.Service.startService(self)
        lp = self._listening_port
        lp.setTTL(self._ttl)
        lp.setLoopbackMode(1 if self._loopback else 0)
        if self.interface is None:
            self._refresh = LoopingCall(self._update_memberships)
            self._refresh.clock = self._reactor
            self._refresh.start(MEMBERSHIP_REFRESH, now=True).addErrback(
                lambda f: self.log.failure("mDNS membership refresh stopped", f)
            )
        else:
            self._join(self.interface)
            self._set_outgoing(self.interface)
        # What Node's multicast-dns queues until its socket is bound: the
        # first query of every looking-up topic, then the announcement of
        # every announcing one that fell due meanwhile. Kept per topic, not
        # as datagrams, so it is bounded by the live topics.
        for t in list(self._topics):
            if t.lookup:
                t.refresh()
        unsent, self._unsent_announcements = self._unsent_announcements, {}
        for t in unsent:
            if not t.stopped:
                self._answer([t.fqdn], (), None, t.datagram_sent)

    def stopService(self) -> defer.Deferred:
        """
        Stop every topic and close the socket (memberships go with it).

        :returns: a Deferred firing with ``None`` once the socket is closed.
        """
        service.Service.stopService(self)
        for finish in list(self._queries.values()):
            finish()
        for topic in list(self._topics):
            topic.stop()
        self._announce_queue = []
        self._unsent_announcements = {}
        if self._announce_call is not None and self._announce_call.active():
            self._announce_call.cancel()
        self._announce_call = None
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        self._refresh = None
        self._memberships = {}
        lp, self._listening_port = self._listening_port, None
        if lp is None:
            return defer.succeed(None)
        return defer.maybeDeferred(lp.stopListening).addCallback(lambda _: None)

    def address(self) -> Optional[Tuple[str, int]]:
        """The bound ``(host, port)``, or ``None`` when not listening."""
        if self._listening_port is None:
            return None
        a = self._listening_port.getHost()
        return (a.host, a.port)

    # -- topics ------------------------------------------------------------

    def join(
        self,
        topic: bytes,
        *,
        announce_port: Optional[int] = None,
        local_address=None,
        lookup: bool = True,
        on_peer: Optional[PeerCallback] = None,
        on_update: Optional[Callable[[object], object]] = None,
        host: Optional[str] = None,
    ) -> MDNSTopic:
        """
        Join ``topic``: one Node ``Topic`` (one id, so it never reports
        itself), an :class:`~txhyperswarm.interfaces.IDiscoveryTopic`.

        :param topic: 32 bytes (only the first 20 name the mDNS record, as Node).
        :param announce_port: ``None``: do not announce; 1..65535: answer SRV
            queries for the name with this port, and send one announcement on
            the next reactor turn. (0, "the port of our DHT socket", has no
            meaning on mDNS alone: :class:`txhyperswarm.discovery.Discovery`
            passes the DHT node's bound port instead.)
        :param local_address: accepted for the shared contract and ignored
            (it only concerns the DHT's LAN records).
        :param lookup: send queries (now, then every 30-60 s) and report the
            peers heard to ``on_peer``. Node: a lookup topic queries, an
            announcing one only with ``lookup``.
        :param on_peer: called with a :class:`PeerRecord` for every SRV
            answer heard for the name that is not this join's own (repeats
            included, as Node's ``'peer'`` events), when ``lookup``.
        :param on_update: accepted for the shared contract; never called
            (mDNS has no DHT cycles).
        :param host: the IPv4 address to put in the SRV target; ``None``
            (Node's only behaviour) puts ``0.0.0.0``, which receivers read as
            "the datagram's source address". Receivers (Node too) use any
            other target verbatim as the peer's host.
        :raises ValueError: for a topic that is not 32 bytes, an
            ``announce_port`` outside 1..65535, neither ``announce_port``
            nor ``lookup``, or a bad ``host``.
        """
        if not isinstance(topic, bytes) or len(topic) != 32:
            raise ValueError("topic must be 32 bytes")
        if announce_port is not None:
            if announce_port == 0:
                raise ValueError(
                    "announce_port=0 means the DHT socket's port, which mDNS alone does not know: "
                    "pass the port (txhyperswarm.discovery.Discovery passes the DHT node's bound port)"
                )
            if not 0 < announce_port <= 65535:
                raise ValueError(f"bad port {announce_port}")
        if announce_port is None and not lookup:
            raise ValueError("a topic must announce (announce_port), look up, or both")
        if host is not None:
            host = str(ipaddress.IPv4Address(host))
        t = MDNSTopic(self, topic, announce_port, bool(lookup), on_peer, b"id=" + os.urandom(32), host)
        self._domains.setdefault(t.fqdn, {})[t] = None
        self._topics[t] = None
        if t.lookup:
            t.refresh()
        if t.announcing:
            # Node: process.nextTick(_fireAnnounce) -- after the caller's
            # current work, but before any datagram is handled.
            self._announce_queue.append(t)
            if self._announce_call is None:
                self._announce_call = self._reactor.callLater(0, self._fire_announces)
        return t

    def announce(
        self,
        topic: bytes,
        port: int,
        host: Optional[str] = None,
        *,
        lookup: bool = False,
        on_peer: Optional[PeerCallback] = None,
    ) -> MDNSTopic:
        """
        Announce ``port`` for ``topic`` (Node's ``discovery.announce``).

        Same as ``join(topic, announce_port=port, host=host, lookup=lookup,
        on_peer=on_peer)``; ``port`` must be 1..65535.
        """
        return self.join(topic, announce_port=port, host=host, lookup=lookup, on_peer=on_peer)

    def lookup(self, topic: bytes, on_peer: PeerCallback) -> MDNSTopic:
        """Look ``topic`` up (Node's ``discovery.lookup``): ``join(topic, on_peer=on_peer)``."""
        return self.join(topic, on_peer=on_peer)

    def query(self, topic: bytes, timeout: float = 3.0) -> defer.Deferred:
        """
        Query once and collect answers for ``timeout`` seconds.

        :returns: a Deferred firing with the list of distinct
            :class:`PeerRecord` heard (first seen first), after ``timeout``
            or at ``stopService()`` if that comes first. Cancelling it stops
            the lookup and errbacks with ``CancelledError``.
        """
        found: Dict[Tuple[str, int], PeerRecord] = {}

        def on_peer(peer: PeerRecord) -> None:
            found.setdefault((peer.host, peer.port), peer)

        handle = self.join(topic, on_peer=on_peer)

        def cancel(d):
            self._queries.pop(d, None)
            if call.active():
                call.cancel()
            handle.stop()

        d: defer.Deferred = defer.Deferred(cancel)

        def finish():
            self._queries.pop(d, None)
            if call.active():
                call.cancel()
            handle.stop()
            d.callback(list(found.values()))

        call = self._reactor.callLater(timeout, finish)
        self._queries[d] = finish
        return d

    def stats(self) -> dict:
        """
        Live figures (:class:`~txhyperswarm.interfaces.IStatsSource`):
        ``listening`` (bool), ``topics`` (joins alive), ``sent`` and
        ``dropped`` (copies of the Counters above).
        """
        return {
            "listening": self.listening,
            "topics": len(self._topics),
            "sent": Counter(self.sent),
            "dropped": Counter(self.dropped),
        }

    # -- IMDNSTopicOwner: what the topics call -----------------------------

    @property
    def listening(self) -> bool:
        """Whether the socket is bound (between ``startService`` and ``stopService``)."""
        return self._listening_port is not None

    def send(self, data: bytes, sent: Optional[Callable[[], None]] = None) -> None:
        """
        Send the datagram ``data`` to the group, then call ``sent()`` if
        given; nothing while not listening (``startService`` sends what is due).
        A send error is counted (``dropped["send_error"]``) and logged.
        """
        if self._listening_port is None:
            return  # not started (or stopped): startService() sends what is due
        kind = "response" if data[2] & 0x80 else "query"
        try:
            self._listening_port.write(data, (self.group, self.port))
        except OSError as e:
            self.dropped["send_error"] += 1
            self.log.warn("mDNS {kind} not sent: {err}", kind=kind, err=e)
        else:
            self.sent[kind] += 1
        if sent is not None:
            sent()

    def call_later(self, delay: float, fn: Callable[[], object]):
        """``fn()`` in ``delay`` seconds on this discovery's reactor."""
        return self._reactor.callLater(delay, fn)

    def next_query_delay(self) -> float:
        """Node's re-query delay: ``floor(30000 + random * 30000)`` ms, in seconds."""
        return math.floor(QUERY_INTERVAL * 1000 + self._random.random() * QUERY_INTERVAL * 1000) / 1000.0

    def topic_stopped(self, topic: MDNSTopic) -> None:
        """Forget ``topic``: it neither answers nor hears anything more."""
        self._topics.pop(topic, None)
        self._unsent_announcements.pop(topic, None)
        topics = self._domains.get(topic.fqdn)
        if topics is not None:
            topics.pop(topic, None)
            if not topics:
                del self._domains[topic.fqdn]

    # -- internal: topics --------------------------------------------------

    def _fire_announces(self) -> None:
        # Node's _fireAnnounce, per topic joined since: answer a synthetic SRV
        # query for the topic's own name, with no source (so no A record).
        if self._announce_call is not None and self._announce_call.active():
            self._announce_call.cancel()
        self._announce_call = None
        queue, self._announce_queue = self._announce_queue, []
        for topic in queue:
            if topic.stopped:
                continue
            if self._listening_port is None:
                self._unsent_announcements[topic] = None  # sent by startService()
            else:
                self._answer([topic.fqdn], (), None, topic.datagram_sent)

    # -- internal: receiving -----------------------------------------------

    def _datagram(self, data: bytes, addr: Tuple[str, int]) -> None:
        if self._announce_queue:
            try:
                self._fire_announces()  # a nextTick runs before any I/O callback
            except Exception:
                self.dropped["internal_error"] += 1
                self.log.failure("sending mDNS announcements failed")
        try:
            packet = decode_packet(data)
        except MalformedPacket as e:
            self.dropped[e.reason] += 1
            self.log.debug("dropped mDNS datagram from {addr}: {reason}", addr=addr, reason=str(e))
            return
        try:
            if packet.is_response:
                self._on_response(packet, addr[0])
            else:
                self._on_query(packet, addr[0])
        except Exception:
            # A bug, not the sender's fault; never let it out of datagramReceived.
            self.dropped["internal_error"] += 1
            self.log.failure("handling mDNS datagram from {addr} failed", addr=addr)

    def _on_query(self, packet: Packet, source: str) -> None:
        names = [q.name for q in packet.questions if q.type == TYPE_SRV]
        if names:
            self._answer(names, packet.answers, source, None)

    def _answer(self, names: Sequence[str], known: Sequence, source: Optional[str], sent) -> None:
        """Node's ``_onmdnsquery``: SRV+TXT of every announcing topic asked for."""
        answers = []
        for name in names:
            topics = self._domains.get(name)
            if not topics:
                continue
            own = _first_id(known, name)
            for t in topics:
                if own is not None and own == t.id:
                    continue
                if t.answer_records is not None:
                    answers.append(t.answer_records)
        if not answers:
            return
        for i in range(0, len(answers), _PAIRS_PER_RESPONSE):
            records = [r for pair in answers[i : i + _PAIRS_PER_RESPONSE] for r in pair]
            if source is not None:
                if not self._answer_allowed():
                    self.dropped["answer_rate_limited"] += 1
                    continue
                records.append(referrer_record(self.domain, source))
            self.send(encode_response(records), sent)

    def _answer_allowed(self) -> bool:
        """Take a token from the answers' bucket (refilled at the rate)."""
        rate = self.max_answers_per_second
        if rate == math.inf:
            return True
        now = self._reactor.seconds()
        tokens = min(max(rate, 1.0), self._answer_tokens + (now - self._answer_tokens_at) * rate)
        self._answer_tokens_at = now
        if tokens < 1:
            self._answer_tokens = tokens
            return False
        self._answer_tokens = tokens - 1
        return True

    def _on_response(self, packet: Packet, source: str) -> None:
        """Node's ``_onmdnsresponse``."""
        answers = packet.answers
        for record in answers:
            if record.type != TYPE_SRV:
                continue
            topics = self._domains.get(record.name)
            if not topics:
                continue
            target = srv_target(record)
            host = source if target == SRV_TARGET else target
            sender = _first_id(answers, record.name)
            for t in list(topics):
                if sender is not None and sender == t.id:
                    continue
                t.report(
                    PeerRecord(
                        topic=t.topic,
                        host=host,
                        port=record.port,
                        local=True,
                        referrer=None,
                        to=None,
                        source="mdns",
                    )
                )

    # -- internal: interfaces ----------------------------------------------

    def _update_memberships(self) -> None:
        """multicast-dns's ``update()``: join on interfaces not joined yet."""
        joined = False
        listing = self._interfaces() if self._interfaces is not None else netif.interfaces()
        for address, _ in listing:
            if address not in self._memberships:
                joined = self._join(address) or joined
        if joined:
            # multicast-dns's defaultInterface() (netif.default_outgoing)
            outgoing = "0.0.0.0" if any(not internal for _, internal in listing) else "127.0.0.1"
            self._set_outgoing(outgoing)

    def _join(self, address: str) -> bool:
        lp = self._listening_port
        if lp is None:
            return False
        self._memberships[address] = True
        d = lp.joinGroup(self.group, address)

        def failed(f):
            self._memberships.pop(address, None)
            self.log.warn(
                "cannot join {group} on {address}: {err}", group=self.group, address=address, err=f.value
            )

        d.addErrback(failed)
        return True

    def _set_outgoing(self, address: str) -> None:
        lp = self._listening_port
        if lp is None:
            return
        lp.setOutgoingInterface(address).addErrback(
            lambda f: self.log.warn("cannot send mDNS via {address}: {err}", address=address, err=f.value)
        )
