"""
The ``peers`` command of ``@hyperswarm/dht`` 4.0.1: announcing and looking up
the peers of a topic on the DHT (spec ``shared/spec/dht.md`` 2.1-2.4b).

Server side, :func:`register` adds the command to a :class:`DHTNode`; every
persistent node stores the records announced to it in a
:class:`~txhyperswarm.dht.records.RecordStore`. Client side, the module
functions take the node as first argument and the topic second:

* :func:`join` -> :class:`DHTTopic`, the DHT half of the discovery contract
  (:class:`~txhyperswarm.interfaces.IDiscoveryTopic`): announce and/or look
  up in cycles on ``@hyperswarm/discovery``'s schedule until
  :meth:`DHTTopic.stop` (swarm.md 4.3, 4.4, 4.8);
* :func:`announce`: :func:`join` that announces (kept for callers of the
  old API);
* :func:`lookup` -> ``Deferred[list[PeerRecord]]`` (one walk, each peer once);
* :func:`lookup_stream` calls ``on_peer`` with every
  :class:`~txhyperswarm.peer_record.PeerRecord` as replies arrive (one walk).

What goes on the wire is exactly what hyperswarm 2.15.3 sends: an announce's
``PeersInput`` carries ``port`` explicitly (0 when none is given: the DHT
node then uses the UDP source port), a lookup's carries no port, and a
``peers`` request always carries a value (at least the empty one: Node's
handler crashes on a ``peers`` request without one).
"""

from __future__ import annotations

import random as _random
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver

from txhyperswarm.dht.messages import (
    DecodeError,
    PeersInput,
    PeersOutput,
    decode_peers,
    decode_peers_input,
    decode_peers_output,
    encode_peer,
    ipv4_bytes,
)
from txhyperswarm.dht.errors import CommandError, IgnoreRequest
from txhyperswarm.dht.records import RecordStore
from txhyperswarm.interfaces import IDiscoveryTopic
from txhyperswarm.peer_record import PeerRecord

__all__ = [
    "COMMAND",
    "PeersCommand",
    "register",
    "join",
    "DHTTopic",
    "announce",
    "lookup",
    "lookup_stream",
    "encode_announce",
    "encode_lookup",
    "encode_unannounce",
    "peer_records",
    "REANNOUNCE_WAIT",
]

COMMAND = "peers"
#: ``@hyperswarm/discovery`` ``_notify(loop, false)``: the next walk starts
#: ``wait + random() * wait`` seconds after the previous one ended.
REANNOUNCE_WAIT = 300.0
#: Full responses that end the first round early (swarm.md 4.4).
EARLY_FLUSH = 6

Address = Tuple[str, int]

log = Logger(namespace="txhyperswarm.dht.peers")


# -- server side --------------------------------------------------------------


class PeersCommand:
    """
    The server half of ``peers`` (Node's ``_onpeers``), over a record store.

    :meth:`query` and :meth:`update` take a request with ``.node``
    ``(host, port)`` (the UDP source), ``.target`` (the topic) and ``.value``
    (``bytes`` or ``None``). A lookup is answered with an encoded
    ``PeersOutput`` (always present, empty when there are no records), an
    announce or unannounce with no value. Bad requests never raise anything
    but :class:`CommandError` (an error reply) or :class:`IgnoreRequest` (no
    reply), and are counted in :attr:`errors` by reason:

    * ``bad-value``: the value is not a ``PeersInput``: no reply, as
      dht-rpc does when a command's input decoder fails;
    * ``no-value``: error "Missing value" (Node's handler crashes the whole
      process on this, dht.md 4.20);
    * ``bad-port``: error "Invalid port", as Node;
    * ``bad-target`` (not 32 bytes), ``bad-local-address`` (not 6 bytes),
      ``bad-source`` (not IPv4): errors "Invalid target", "Invalid local
      address", "Invalid source address" (Node would store such records).

    UPDATEs reach :meth:`update` only with a valid roundtrip token (the RPC
    layer drops the others), so the stored IP is always the sender's.
    """

    log = Logger()

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.errors: Dict[str, int] = {}
        #: How many lookups, announces and unannounces were served.
        self.served: Dict[str, int] = {"lookup": 0, "announce": 0, "unannounce": 0}

    def _fail(self, reason: str, text: Optional[str], request) -> Exception:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        self.log.debug("bad peers request from {node}: {reason}", node=request.node, reason=reason)
        return CommandError(text) if text is not None else IgnoreRequest(reason)

    def _parse(self, request):
        value = request.value
        if value is None:
            raise self._fail("no-value", "Missing value", request)
        target = request.target
        if target is None or len(target) != 32:
            raise self._fail("bad-target", "Invalid target", request)
        try:
            inp = decode_peers_input(value)
        except DecodeError:
            raise self._fail("bad-value", None, request) from None
        host, src_port = request.node
        port = inp.port or src_port
        if not 0 < port < 65536:
            raise self._fail("bad-port", "Invalid port", request)
        local = None
        if inp.HasField("localAddress"):
            local = inp.localAddress
            if len(local) != 6:
                raise self._fail("bad-local-address", "Invalid local address", request)
        try:
            record = encode_peer(host, port)
        except ValueError:  # not an IPv4 source: nothing we can encode
            raise self._fail("bad-source", "Invalid source address", request) from None
        return inp, target, host, record, local

    def query(self, request) -> bytes:
        """A lookup: the encoded ``PeersOutput`` for the asker."""
        _, target, _, record, local = self._parse(request)
        remote, local_peers = self.store.lookup(target, record, local)
        self.served["lookup"] += 1
        out = PeersOutput()
        if remote:
            out.peers = b"".join(remote)
        if local_peers:
            out.localPeers = b"".join(local_peers)
        return out.SerializeToString()

    def update(self, request) -> None:
        """An announce or unannounce: store or remove the sender's records."""
        inp, target, host, record, local = self._parse(request)
        if inp.unannounce:
            self.store.unannounce(target, record, local)
            self.served["unannounce"] += 1
        else:
            self.store.announce(target, record, host, local)
            self.served["announce"] += 1
        return None


def register(node, store: Optional[RecordStore] = None, **store_options) -> PeersCommand:
    """
    Serve ``peers`` on ``node`` (a :class:`~txhyperswarm.dht.node.DHTNode`).

    :param store: the record store; by default a new
        :class:`~txhyperswarm.dht.records.RecordStore` on the node's reactor,
        built with ``store_options`` (``max_records``, ``max_per_topic``,
        ``max_per_ip``, ``max_age``).
    :returns: the :class:`PeersCommand` (its ``store`` holds the records).
    """
    if store is None:
        store = RecordStore(node.reactor, **store_options)
    command = PeersCommand(store)
    node.add_command(COMMAND, query=command.query, update=command.update)
    return command


# -- values a client sends ------------------------------------------------------


def _peers_input(port: Optional[int], local_address: Optional[Address], unannounce: bool = False) -> bytes:
    value = PeersInput()
    if port is not None:
        value.port = port
    if local_address is not None:
        value.localAddress = encode_peer(*local_address)
    if unannounce:
        value.unannounce = True
    return value.SerializeToString()


def encode_announce(port: Optional[int] = None, local_address: Optional[Address] = None) -> bytes:
    """An announce's ``PeersInput``: ``port`` always written (0 when ``None``)."""
    return _peers_input(port or 0, local_address)


def encode_unannounce(port: Optional[int] = None, local_address: Optional[Address] = None) -> bytes:
    """An unannounce's ``PeersInput``: as the announce, plus ``unannounce=true``."""
    return _peers_input(port or 0, local_address, unannounce=True)


def encode_lookup(local_address: Optional[Address] = None) -> bytes:
    """A lookup's ``PeersInput``: no port; empty bytes without a LAN address."""
    return _peers_input(None, local_address)


# -- replies -> PeerRecords ----------------------------------------------------


def _decode_local(prefix: bytes, data: bytes) -> List[Address]:
    # @hyperswarm/dht peers.js local.decodeAll: all-or-nothing
    if len(data) & 3:
        return []
    head = f"{prefix[0]}.{prefix[1]}."
    out = []
    for off in range(0, len(data), 4):
        port = (data[off + 2] << 8) | data[off + 3]
        if not port:
            return []
        out.append((f"{head}{data[off]}.{data[off + 1]}", port))
    return out


def reply_peers(
    reply, local_prefix: Optional[bytes] = None
) -> Tuple[Optional[List[Address]], Optional[List[Address]]]:
    """
    ``(local peers, public peers)`` of one ``peers`` reply, as
    ``@hyperswarm/dht``'s ``mapPeers`` reads them: ``None`` where the list is
    absent (local peers also when the lookup sent no LAN address, whose first
    two octets ``local_prefix`` completes them); a malformed list is empty.
    Never raises.
    """
    value = reply.value
    if not value:
        return None, None
    try:
        out = decode_peers_output(value)
    except DecodeError:
        return None, None
    local = None
    if local_prefix is not None and out.HasField("localPeers"):
        local = _decode_local(local_prefix, out.localPeers)
    public = None
    if out.HasField("peers"):
        try:
            public = decode_peers(out.peers)
        except DecodeError:
            public = []
    return local, public


def peer_records(topic: bytes, reply, local_prefix: Optional[bytes] = None) -> List[PeerRecord]:
    """
    The peers in one ``peers`` reply, as ``@hyperswarm/dht``'s ``mapPeers``
    and discovery's ``_ondhtdata`` read them: LAN peers first (only when the
    lookup sent a LAN address, whose first two octets ``local_prefix``
    completes them; ``referrer`` ``None``), then public peers (``referrer`` =
    the replying node). A malformed list yields no peers; never raises.
    """
    local, public = reply_peers(reply, local_prefix)
    return _records(topic, reply, local, public)


def _records(topic: bytes, reply, local, public) -> List[PeerRecord]:
    to = reply.to
    records: List[PeerRecord] = []
    for host, port in local or ():
        records.append(PeerRecord(topic, host, port, True, None, to, "dht"))
    if public:
        referrer = tuple(reply.node) if reply.node is not None else None
        for host, port in public:
            records.append(PeerRecord(topic, host, port, False, referrer, to, "dht"))
    return records


def _local_prefix(local_address: Optional[Address]) -> Optional[bytes]:
    return ipv4_bytes(local_address[0])[:2] if local_address is not None else None


def _report(on_peer: Callable[[PeerRecord], object], records: List[PeerRecord]) -> None:
    for record in records:
        try:
            on_peer(record)
        except Exception:
            log.failure("on_peer raised for {peer}", peer=record)


# -- client side ----------------------------------------------------------------


def _check_topic(topic: bytes) -> None:
    if not isinstance(topic, bytes) or len(topic) != 32:
        raise ValueError("a topic is 32 bytes")


def lookup_stream(
    node,
    topic: bytes,
    on_peer: Callable[[PeerRecord], object],
    local_address: Optional[Address] = None,
) -> defer.Deferred:
    """
    One walk of the DHT towards ``topic`` asking every node for its ``peers``.

    ``on_peer(record)`` is called with every :class:`PeerRecord` of every
    reply as it arrives: a peer several nodes return is reported each time
    (as Node emits ``'peer'`` per response).

    :param local_address: our ``(host, port)`` on the LAN; sent so that nodes
        return the LAN peers sharing its first two octets.
    :returns: Deferred firing with ``None`` when the walk has ended;
        errbacks as :meth:`DHTNode.query_stream` (no node answered).
        Cancelling it stops the walk.
    :raises ValueError: ``topic`` is not 32 bytes or ``local_address`` is
        not an IPv4 ``(host, port)``.
    """
    _check_topic(topic)
    value = encode_lookup(local_address)  # ValueError for a bad local_address
    prefix = _local_prefix(local_address)

    def on_reply(reply) -> None:
        _report(on_peer, peer_records(topic, reply, prefix))

    d = node.query_stream(COMMAND, topic, value, on_reply=on_reply)
    d.addCallback(lambda _: None)
    return d


def lookup(node, topic: bytes, local_address: Optional[Address] = None) -> defer.Deferred:
    """
    The peers of ``topic`` on the DHT (one walk).

    :returns: Deferred firing with a ``list[PeerRecord]``, each
        ``(host, port, local)`` once (the first report), when the walk has
        ended; errbacks as :meth:`DHTNode.query_stream` (no node answered).
    """
    found: Dict[Tuple[str, int, bool], PeerRecord] = {}

    def keep(record: PeerRecord) -> None:
        found.setdefault((record.host, record.port, record.local), record)

    d = lookup_stream(node, topic, keep, local_address)
    d.addCallback(lambda _: list(found.values()))
    return d


def join(
    node,
    topic: bytes,
    *,
    announce_port: Optional[int] = None,
    local_address: Optional[Address] = None,
    lookup: bool = True,
    on_peer: Optional[Callable[[PeerRecord], object]] = None,
    on_update: Optional[Callable[[Optional[Exception]], object]] = None,
    reactor: Optional[IReactorTime] = None,
    random: Optional[_random.Random] = None,
) -> "DHTTopic":
    """
    Join ``topic`` on the DHT as ``@hyperswarm/discovery``'s topic does
    (swarm.md 4.3, 4.4, 4.8): the first cycle starts now, each next one a
    random 300-600 s after the previous ended, until :meth:`DHTTopic.stop`
    or until the node stops.

    Each cycle announces (a walk sending ``peers`` QUERYs carrying the
    announce value, then UPDATEs to the closest nodes that gave a token:
    the records, kept 8-16 min by the nodes, stay alive) or, when not
    announcing, looks up (the QUERY walk only).

    :param node: a running :class:`~txhyperswarm.dht.node.DHTNode`.
    :param announce_port: ``None``: do not announce (look up only); ``0``:
        announce the UDP source port of our DHT socket (hyperswarm's
        default: the TCP port is the same); any other value: that port.
    :param local_address: our ``(host, port)`` on the LAN: announced as a
        LAN record and sent with lookups, so that nodes return the LAN peers
        sharing its first two octets.
    :param lookup: report the peers found (``on_peer``).
    :param on_peer: called with every :class:`PeerRecord` of every reply
        (repeats included), only when ``lookup``.
    :param on_update: called with ``None`` or the exception at the end of
        every cycle.
    :param reactor: the clock of the cycles; default: the node's.
    :param random: a ``random.Random`` (its ``random()``) for the delays.
    :returns: the :class:`DHTTopic`.
    :raises ValueError: ``topic`` is not 32 bytes, ``announce_port`` is not
        0-65535, ``local_address`` is not an IPv4 ``(host, port)``, or the
        join neither announces nor looks up.
    """
    _check_topic(topic)
    if announce_port is not None and not 0 <= announce_port < 65536:
        raise ValueError(f"bad port {announce_port}")
    if announce_port is None and not lookup:
        raise ValueError("a join announces, looks up or both")
    t = DHTTopic(node, topic, announce_port, local_address, lookup, on_peer, on_update,
                 reactor if reactor is not None else node.reactor, random)
    node.add_stop_hook(t.node_stopped)
    t.refresh()
    return t


def announce(
    node,
    topic: bytes,
    port: Optional[int] = None,
    local_address: Optional[Address] = None,
    *,
    on_peer: Optional[Callable[[PeerRecord], object]] = None,
    reactor: Optional[IReactorTime] = None,
    random: Optional[_random.Random] = None,
) -> "DHTTopic":
    """
    :func:`join` announcing ``port`` (``None``: the DHT socket's port),
    reporting peers to ``on_peer`` when it is given.

    :raises ValueError: as :func:`join`.
    """
    return join(node, topic, announce_port=port or 0, local_address=local_address,
                lookup=on_peer is not None, on_peer=on_peer, reactor=reactor, random=random)


class _FlushCount:
    """
    One cycle's early-flush counters (discovery's ``maxReplies``/``maxCount``
    and their local twins, swarm.md 4.4).
    """

    __slots__ = ("max_replies", "max_count", "max_local_replies", "max_local_count")

    def __init__(self) -> None:
        self.max_replies = 1
        self.max_count = 0
        self.max_local_replies = 1
        self.max_local_count = 0

    def count(self, local: Optional[list], public: Optional[list]) -> bool:
        """Count one response; ``True`` once the round may end early."""
        if public is not None:
            n = len(public)
            if self.max_replies < n < 16:
                self.max_replies = n
                self.max_count = 1
            elif n >= self.max_replies:
                self.max_count += 1
        if local is not None:
            n = len(local)
            # faithfully: compared with the *remote* maximum (discovery 2.0.1)
            if self.max_replies < n < 16:
                self.max_local_replies = n
                self.max_local_count = 1
            elif n >= self.max_local_replies:
                self.max_local_count += 1
        return self.max_local_count >= EARLY_FLUSH or self.max_count >= EARLY_FLUSH


@implementer(IDiscoveryTopic)
class DHTTopic:
    """
    A topic joined on the DHT (see :func:`join`); an
    :class:`~txhyperswarm.interfaces.IDiscoveryTopic`.

    :ivar topic: the 32-byte topic.
    :ivar announce_port: what :func:`join` was given.
    :ivar lookup: whether peers are reported.
    :ivar cycles: cycles ended so far (with or without error).
    """

    log = Logger()

    def __init__(self, node, topic, announce_port, local_address, lookup, on_peer, on_update,
                 reactor, random) -> None:
        self._node = node
        self.topic = topic
        self.announce_port = announce_port
        self.local_address = local_address
        self.lookup = bool(lookup)
        self._on_peer = on_peer if lookup else None
        self._on_update = on_update
        self._reactor = reactor
        self._random = random or _random.Random()
        self._prefix = _local_prefix(local_address)
        if announce_port is None:
            self._value = encode_lookup(local_address)
        else:
            self._value = encode_announce(announce_port, local_address)
        self._ready: OneShotObserver = OneShotObserver()
        self._closed: OneShotObserver = OneShotObserver()
        self._walk: Optional[defer.Deferred] = None
        self._timer = None
        #: No more cycles: stopped, or the node stopped.
        self._ended = False
        self._stop_called = False
        self.cycles = 0

    @property
    def announcing(self) -> bool:
        """Whether this join announces."""
        return self.announce_port is not None

    def when_ready(self) -> defer.Deferred:
        """
        A new Deferred for the first round: fires ``True`` when the first
        cycle ended without error or once 6 full responses came (the cycle
        goes on), ``False`` when it failed (no node answered) or the topic
        (or the node) stopped first. Never errbacks.
        """
        return self._ready.when_fired()

    def refresh(self) -> None:
        """
        Start the next cycle now instead of at its time (Node's
        ``topic.update()``); nothing while a cycle runs or after :meth:`stop`.
        """
        if self._ended or self._walk is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._cycle()

    def _cycle(self) -> None:
        self._timer = None
        counts = _FlushCount()
        topic = self.topic
        prefix = self._prefix

        def on_reply(reply) -> None:
            if self._ended:
                return
            local, public = reply_peers(reply, prefix)
            if self._on_peer is not None:
                _report(self._on_peer, _records(topic, reply, local, public))
            if counts.count(local, public):
                self._ready.fire(True)

        node = self._node
        if self.announcing:
            d = node.query_and_update(COMMAND, topic, self._value, on_reply=on_reply)
        else:
            d = node.query_stream(COMMAND, topic, self._value, on_reply=on_reply)
        self._walk = d
        d.addBoth(self._cycle_ended)

    def _cycle_ended(self, result) -> None:
        if self._ended:  # stopped, or the node stopped: as Node, no 'update'
            self._walk = None
            return None
        error = None
        if isinstance(result, Failure):
            error = result.value
            self.log.warn("{what} of {topic} failed: {err}", what="announce" if self.announcing else "lookup",
                          topic=self.topic.hex(), err=result.getErrorMessage())
        self.cycles += 1
        if self._on_update is not None:
            # still "running" here: a refresh() from on_update does nothing, as Node
            try:
                self._on_update(error)
            except Exception:
                self.log.failure("on_update raised for {topic}", topic=self.topic.hex())
        self._walk = None
        if not self._ended:  # on_update may have stopped us
            delay = REANNOUNCE_WAIT + self._random.random() * REANNOUNCE_WAIT
            self._timer = self._reactor.callLater(delay, self._cycle)
        self._ready.fire(error is None)
        return None

    def _end_cycles(self) -> None:
        self._ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        walk, self._walk = self._walk, None
        if walk is not None:
            walk.cancel()
        self._ready.fire(False)

    def node_stopped(self) -> None:
        """
        The node's stop hook: no more cycles (the running walk is aborted by
        the node); :meth:`stop` then has nothing to unannounce through.
        """
        self._ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._ready.fire(False)

    def stop(self) -> defer.Deferred:
        """
        Stop the cycles (a running walk is cancelled) and, when announcing,
        unannounce: a ``_find_node`` walk towards the topic, then UPDATEs
        with ``unannounce=true`` to the closest nodes.

        :returns: a new Deferred firing with ``None`` once the unannounce is
            done, failed or not (a failure is logged); at once when not
            announcing. Never errbacks; calling it again returns the same
            outcome.
        """
        if not self._stop_called:
            self._stop_called = True
            self._node.remove_stop_hook(self.node_stopped)
            self._end_cycles()
            if self.announcing:
                d = self._node.update(COMMAND, self.topic, encode_unannounce(self.announce_port, self.local_address))
                d.addCallbacks(lambda _: None, self._unannounce_failed)
                d.addBoth(self._closed.fire)
            else:
                self._closed.fire(None)
        return self._closed.when_fired()

    def _unannounce_failed(self, failure: Failure) -> None:
        self.log.warn("unannounce of {topic} failed: {err}", topic=self.topic.hex(),
                      err=failure.getErrorMessage())
        return None
