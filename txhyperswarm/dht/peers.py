"""
The ``peers`` command of ``@hyperswarm/dht`` 4.0.1: announcing and looking up
the peers of a topic on the DHT (spec ``shared/spec/dht.md`` 2.1-2.4b).

Server side, :func:`register` adds the command to a :class:`DHTNode`; every
persistent node stores the records announced to it in a
:class:`~txhyperswarm.dht.records.RecordStore`. Client side, the module
functions take the node as first argument and the topic second:

* :func:`announce` -> :class:`Announcement` (re-announces on
  ``@hyperswarm/discovery``'s schedule until :meth:`Announcement.stop`);
* :func:`lookup` -> ``Deferred[list[PeerRecord]]``;
* :func:`lookup_stream` calls ``on_peer`` with each
  :class:`~txhyperswarm.peer_record.PeerRecord` as replies arrive.

What goes on the wire is exactly what hyperswarm 2.15.3 sends: an announce's
``PeersInput`` carries ``port`` explicitly (0 when none is given: the DHT
node then uses the UDP source port), a lookup's carries no port, and a
``peers`` request always carries a value (at least the empty one: Node's
handler crashes on a ``peers`` request without one).
"""

from __future__ import annotations

import random as _random
from typing import Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

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
from txhyperswarm.peer_record import PeerRecord

__all__ = [
    "COMMAND",
    "PeersCommand",
    "register",
    "announce",
    "lookup",
    "lookup_stream",
    "Announcement",
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


def peer_records(topic: bytes, reply, local_prefix: Optional[bytes] = None) -> List[PeerRecord]:
    """
    The peers in one ``peers`` reply, as ``@hyperswarm/dht``'s ``mapPeers``
    and discovery's ``_ondhtdata`` read them: LAN peers first (only when the
    lookup sent a LAN address, whose first two octets ``local_prefix``
    completes them; ``referrer`` ``None``), then public peers (``referrer`` =
    the replying node). A malformed list yields no peers; never raises.
    """
    value = reply.value
    if not value:
        return []
    try:
        out = decode_peers_output(value)
    except DecodeError:
        return []
    to = reply.to
    records: List[PeerRecord] = []
    if local_prefix is not None and out.localPeers:
        for host, port in _decode_local(local_prefix, out.localPeers):
            records.append(PeerRecord(topic, host, port, True, None, to, "dht"))
    if out.peers:
        try:
            peers = decode_peers(out.peers)
        except DecodeError:
            peers = []
        referrer = tuple(reply.node) if reply.node is not None else None
        for host, port in peers:
            records.append(PeerRecord(topic, host, port, False, referrer, to, "dht"))
    return records


class _Collector:
    """Turns replies into PeerRecords, each (host, port, local) once."""

    def __init__(self, topic: bytes, local_address: Optional[Address], on_peer: Callable[[PeerRecord], object]):
        self.topic = topic
        self.prefix = ipv4_bytes(local_address[0])[:2] if local_address is not None else None
        self.on_peer = on_peer
        self.seen: Set[Tuple[str, int, bool]] = set()

    def __call__(self, reply) -> None:
        for record in peer_records(self.topic, reply, self.prefix):
            key = (record.host, record.port, record.local)
            if key in self.seen:
                continue
            self.seen.add(key)
            try:
                self.on_peer(record)
            except Exception:
                log.failure("on_peer raised for {peer}", peer=record)


# -- client side ----------------------------------------------------------------


def lookup_stream(
    node,
    topic: bytes,
    on_peer: Callable[[PeerRecord], object],
    local_address: Optional[Address] = None,
) -> defer.Deferred:
    """
    Walk the DHT towards ``topic`` asking every node for its ``peers``.

    ``on_peer(record)`` is called with each :class:`PeerRecord` as its reply
    arrives; a peer several nodes return is reported once (first referrer).

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
    collect = _Collector(topic, local_address, on_peer)
    d = node.query_stream(COMMAND, topic, value, on_reply=collect)
    d.addCallback(lambda _: None)
    return d


def lookup(node, topic: bytes, local_address: Optional[Address] = None) -> defer.Deferred:
    """
    The peers of ``topic`` on the DHT.

    :returns: Deferred firing with a ``list[PeerRecord]`` (each
        ``(host, port, local)`` once) when the walk has ended; errbacks as
        :meth:`DHTNode.query_stream` (no node answered).
    """
    found: List[PeerRecord] = []
    d = lookup_stream(node, topic, found.append, local_address)
    d.addCallback(lambda _: found)
    return d


def _check_topic(topic: bytes) -> None:
    if not isinstance(topic, bytes) or len(topic) != 32:
        raise ValueError("a topic is 32 bytes")


def announce(
    node,
    topic: bytes,
    port: Optional[int] = None,
    local_address: Optional[Address] = None,
    *,
    on_peer: Optional[Callable[[PeerRecord], object]] = None,
    reactor: Optional[IReactorTime] = None,
    random: Optional[_random.Random] = None,
) -> "Announcement":
    """
    Announce ``topic`` on the DHT now and keep it announced.

    Each announce is Node's: a walk sending ``peers`` QUERYs carrying the
    announce value (so it doubles as a lookup: ``on_peer`` gets the peers it
    finds), then UPDATEs to the closest nodes that gave a token. The next
    announce starts a random 300-600 s after a walk ends, as
    ``@hyperswarm/discovery``, which keeps the records (8-16 min) alive.

    :param port: the port to announce; ``None`` (sent as 0) makes every node
        record the UDP source port of our DHT socket, as hyperswarm does.
    :param local_address: our ``(host, port)`` on the LAN, stored as a LAN
        record for peers on the same /16.
    :returns: an :class:`Announcement`; its ``ready`` fires after the first
        announce.
    :raises ValueError: ``topic`` is not 32 bytes, ``port`` is out of range,
        or ``local_address`` is not an IPv4 ``(host, port)``.
    """
    _check_topic(topic)
    if port is not None and not 0 <= port < 65536:
        raise ValueError(f"bad port {port}")
    a = Announcement(node, topic, port, local_address, on_peer,
                     reactor if reactor is not None else node.reactor, random)
    node._stop_hooks[a._node_stopped] = None
    a._start()
    return a


class _Outcome:
    """
    The outcome of a one-time event, handed to each caller as a new Deferred,
    so a failure nobody waits for is not logged as an unhandled error.
    """

    _PENDING = object()

    def __init__(self) -> None:
        self._result = self._PENDING
        self._waiters: List[defer.Deferred] = []

    @property
    def settled(self) -> bool:
        return self._result is not self._PENDING

    def settle(self, result) -> None:
        if self.settled:
            return
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d: defer.Deferred) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)

    def when(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.settled:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d


class Announcement:
    """
    A topic being announced (see :func:`announce`).

    :ivar ready: a new Deferred at each access, firing with ``None`` when the
        first announce walk has ended, or errbacking with its failure
        (announcing goes on). A failure nobody waits for is not logged.

    Announcing ends when the DHT node stops (no timer outlives the node's
    ``stopService``); :meth:`stop` then has nothing to unannounce through.
    :ivar announces: how many announce walks have completed.
    """

    log = Logger()

    def __init__(self, node, topic, port, local_address, on_peer, reactor, random) -> None:
        from txhyperswarm._reactor import default_reactor

        self._node = node
        self.topic = topic
        self.port = port
        self.local_address = local_address
        self._reactor = default_reactor(reactor)
        self._random = random or _random.Random()
        self._value = encode_announce(port, local_address)
        self._on_reply = _Collector(topic, local_address, on_peer) if on_peer is not None else None
        self._ready = _Outcome()
        self.announces = 0
        self._walk: Optional[defer.Deferred] = None
        self._timer = None
        self._stopped = False
        self._stopping: Optional[defer.Deferred] = None

    def _start(self) -> None:
        if self._stopped:
            return
        self._timer = None
        if self._on_reply is not None:
            self._on_reply.seen.clear()
        d = self._node.query_and_update(COMMAND, self.topic, self._value, on_reply=self._on_reply)
        self._walk = d
        d.addBoth(self._walk_ended)

    def _walk_ended(self, result) -> None:
        self._walk = None
        if isinstance(result, Failure) and result.check(defer.CancelledError) and self._stopped:
            self._ready.settle(result)
            return None
        if isinstance(result, Failure):
            self.log.warn("announce of {topic} failed: {err}", topic=self.topic.hex(),
                          err=result.getErrorMessage())
        else:
            self.announces += 1
        self._ready.settle(result if isinstance(result, Failure) else None)
        if not self._stopped:
            delay = REANNOUNCE_WAIT + self._random.random() * REANNOUNCE_WAIT
            self._timer = self._reactor.callLater(delay, self._start)
        return None

    @property
    def ready(self) -> defer.Deferred:
        return self._ready.when()

    def refresh(self) -> None:
        """
        Announce again now instead of at the scheduled time (Node's
        ``topic.update()``); does nothing while a walk is running or after
        :meth:`stop`.
        """
        if self._stopped or self._walk is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._start()

    @property
    def active(self) -> bool:
        """``True`` until :meth:`stop` is called or the node stops."""
        return not self._stopped

    def _node_stopped(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self) -> defer.Deferred:
        """
        Stop re-announcing and unannounce: a ``_find_node`` walk towards the
        topic, then UPDATEs with ``unannounce=true`` to the closest nodes.

        :returns: Deferred firing with ``True`` when at least one node took
            the unannounce, ``False`` when none did (logged); never errbacks.
            Calling it again returns the same result.
        """
        if self._stopping is not None:
            return _chain(self._stopping)
        self._node._stop_hooks.pop(self._node_stopped, None)
        self._node_stopped()
        if self._walk is not None:
            self._walk.cancel()
        d = self._node.update(COMMAND, self.topic, encode_unannounce(self.port, self.local_address))

        def done(result):
            if isinstance(result, Failure):
                self.log.warn("unannounce of {topic} failed: {err}", topic=self.topic.hex(),
                              err=result.getErrorMessage())
                return False
            return True

        d.addBoth(done)
        self._stopping = d
        return _chain(d)


def _chain(d: defer.Deferred) -> defer.Deferred:
    out: defer.Deferred = defer.Deferred()

    def fire(result):
        out.callback(result)
        return result

    d.addBoth(fire)
    return out
