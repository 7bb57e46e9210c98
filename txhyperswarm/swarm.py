"""
:class:`Hyperswarm`: hyperswarm 2.15.3's ``Swarm`` as a Twisted ``Service``
(swarm.md 1 and 2): join 32-byte topics, find peers through the DHT and
multicast DNS, dial them from a peer queue, and run each TCP or uTP
connection with the application's ``IProtocolFactory``.

::

    from twisted.internet.protocol import Factory
    from txhyperswarm import Hyperswarm

    swarm = Hyperswarm(factory=Factory.forProtocol(MyProtocol))
    swarm.on("connection", lambda protocol, info: print(info.type, info.remote))
    swarm.startService()
    ok = yield swarm.join(topic, announce=True)   # False: no DHT node answered
    ...
    yield swarm.leave(topic)                      # unannounced
    yield swarm.stopService()                     # every connection and socket closed

Layers: the swarm builds a :class:`txhyperswarm.network.Network` (sockets,
dialling, discovery), a :class:`~txhyperswarm.queue.PeerQueue` and a
:class:`~txhyperswarm.dialloop.DialLoop` (whom to dial, when, and the
``max_*`` counting); it owns the topics, the events and the connections'
protocols.

Events (pyee, the seed's names and arguments):

==================  =====================  ===================================
event               arguments              when
==================  =====================  ===================================
``connection``      ``(protocol, info)``   inbound: on accept, before it is
                                           counted; outbound: a queue dial
                                           connected. Not for :meth:`connect`.
``disconnection``   ``(protocol, info)``   once per ``connection``, on close
``peer``            ``(peer)``             a lookup topic found a peer (repeats
                                           included) and ``validate_peer``
                                           took it; before it is queued
``peer-rejected``   ``(peer)``             ``validate_peer`` refused it
``updated``         ``({"key": topic})``   end of every DHT cycle of a topic
``join``            ``(topic, flags)``     a topic was joined on the network
``leave``           ``(topic)``            a topic was left (unannounced)
``listening``       ``()``                 the sockets are bound (once)
``close``           ``()``                 :meth:`stopService` closed everything
                                           (not if the swarm never bound)
==================  =====================  ===================================

A handler that raises is logged (``handler_error`` in :meth:`stats`); it does
not disturb the swarm. There is no ``error`` event: a bind failure errbacks
:meth:`join` / :meth:`flush` / :meth:`connect` (and is logged by
:meth:`startService`).

Differences from Node 2.x are listed in ``docs/interop.rst``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from typing import Any, Callable, Dict, Generator, List, Optional, Set, Tuple

from pyee import EventEmitter
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._reactor import default_reactor
from txhyperswarm.dialloop import DialLoop, IDialLoopListener
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.network import (
    BindError,
    DialFailed,
    DialTimeout,
    FirewallRefused,
    NetworkClosed,
)
from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import IPeerConnection, PeerInfo
from txhyperswarm.queue import PeerQueue, QueueOptions
from txhyperswarm.stream import Stream
from txhyperswarm.utp.connection import State as UTPState

__all__ = [
    "Hyperswarm",
    "Stream",
    "SwarmClosed",
    "BindError",
    "DialFailed",
    "DialTimeout",
    "FirewallRefused",
    "NetworkClosed",
]


#: Default budget of half-open uTP connections that new inbound uTP
#: connections may evict per second when the swarm is at its connection
#: limit (a token bucket that holds as many); inbound TCP connections evict
#: without a budget (their three-way handshake proves their address).
HALF_OPEN_EVICTIONS = 64.0
#: Seconds between the log lines that sum up the inbound connections
#: refused or admitted by eviction at the connection limit.
LIMIT_LOG_INTERVAL = 60.0


class SwarmClosed(NetworkClosed):
    """
    The swarm is stopped (or stopping): :meth:`Hyperswarm.join`,
    :meth:`~Hyperswarm.flush` and :meth:`~Hyperswarm.connect` after
    ``stopService()``, and whatever of them was still pending when it was
    called. A :class:`~txhyperswarm.network.NetworkClosed`.
    """


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, bytes) or len(topic) != 32:
        raise ValueError("a topic is a 32-byte bytes value")


def _on_lan(host: str) -> bool:
    """Whether an address is on the LAN (private, loopback or link-local)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_private or addr.is_loopback or addr.is_link_local


def _either(first: defer.Deferred, second: defer.Deferred) -> defer.Deferred:
    """``(0, result)`` or ``(1, result)``: whichever fires first (the other is
    cancelled); cancelling it cancels both."""
    cancelling = []

    def cancel(_: defer.Deferred) -> None:
        cancelling.append(True)
        first.cancel()
        second.cancel()

    out: defer.Deferred = defer.Deferred(cancel)

    def won(result: Any, index: int) -> None:
        if cancelling or out.called:
            return
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback((index, result))
        (second if index == 0 else first).cancel()

    first.addBoth(won, 0)
    second.addBoth(won, 1)
    return out


def _shield(d: defer.Deferred) -> defer.Deferred:
    """``d``'s result; cancelling it only stops waiting (``d`` goes on)."""
    out: defer.Deferred = defer.Deferred()

    def settle(result: Any) -> None:
        if not out.called:
            out.errback(result) if isinstance(result, Failure) else out.callback(result)

    d.addBoth(settle)
    return out


@implementer(IPeerConnection)
class _Link:
    """One swarm connection: the network's ``Connection`` and the protocol on it."""

    def __init__(self, conn: Any, protocol: Any) -> None:
        self.conn = conn
        self.protocol = protocol
        self.info: Optional[PeerInfo] = None
        self.counted = False  # got a "connection" event (a queue or inbound link)

    @property
    def tcp(self) -> bool:
        return self.conn.type == "tcp"

    def loseConnection(self) -> None:
        self.conn.close()

    def abortConnection(self) -> None:
        self.conn.abort()


class _Topic:
    """A joined topic: the network's join and the join Deferreds waiting for it."""

    def __init__(self, topic: bytes, handle: Any, flags: Dict[str, bool]) -> None:
        self.topic = topic
        self.handle = handle
        self.flags = flags
        self.current = True
        self.replaced: OneShotObserver[None] = OneShotObserver()

    def retire(self) -> None:
        """Replaced by a later join, or left: its pending joins fire ``None``."""
        self.current = False
        self.replaced.fire(None)


@implementer(IDialLoopListener, IStatsSource)
class Hyperswarm(service.Service, EventEmitter):
    """
    A hyperswarm 2 swarm (Node's ``hyperswarm(opts)``), as a Service.

    :param reactor: ``None``: the global reactor. A
        :class:`txhyperswarm.testing` host reactor runs it in memory.
    :param bootstrap: DHT bootstrap nodes ``[(host, port)]``; ``None``: the
        public hyperswarm 2 list; ``[]``: none.
    :param ephemeral: ``None``: adaptive (swarm.md 3.7); ``True`` / ``False``.
    :param max_peers: limit of dials in flight + outbound + inbound connections.
    :param max_server_sockets: inbound limit (``0`` and ``inf``: none; ``-1``:
        refuse every inbound connection).
    :param max_client_sockets: limit of dials in flight + outbound
        connections (``0``: never dial).
    :param validate_peer: ``validate_peer(peer) -> bool`` for every peer found.
    :param queue: :class:`~txhyperswarm.queue.QueueOptions` (or a dict of its
        arguments).
    :param multicast: use multicast DNS (Node always does).
    :param announce_local_address: send our LAN address in DHT announces and
        lookups.
    :param preferred_port: the first port to try (then +1, +2, random).
    :param port: that port only (else binding fails).
    :param announce_port: the port announced instead of the bound one.
    :param id: the DHT node id (32 bytes).
    :param host: the address the sockets bind.
    :param factory: an ``IProtocolFactory`` run on every connection; ``None``:
        a :class:`~txhyperswarm.stream.Stream` is handed over.
    :param firewall: ``firewall(host, port, client: bool) -> bool``; ``True``
        refuses that connection before it is accepted (``client=False``) or
        dialled (``client=True``).
    :param network_factory: builds the network (``Network``'s signature);
        a seam for tests.
    :param network_options: more keyword arguments for the network, e.g.
        its limits against abuse (``max_tcp_per_address``,
        ``max_utp_per_address``, ``max_half_open``, ... of
        :class:`~txhyperswarm.network.Network`).
    :param rng: the ``random.Random`` of the queue's shuffling.
    :param half_open_evictions: at the connection limit (``max_peers``
        reached, or ``max_server_sockets`` inbound), a new inbound connection
        closes the oldest inbound uTP connection that is still half-open
        (``SYN_RECV``: the initiator sent nothing after its SYN, as spoofed
        SYNs never do) to make room, instead of being refused. A TCP one
        always may; uTP SYNs may evict this many per second (a token bucket
        of as many; ``0``: never), so a sustained flood of SYNs churns at
        most that many connections through the application. Counted in
        ``stats()["inbound_at_limit"]`` (``evicted_half_open``,
        ``refused``), summed up in one log line a minute at most.

    :ivar connections: the protocols of every live connection (inbound,
        queue-dialled, duplicates and :meth:`connect` ones), as Node's
        ``swarm.connections``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        *,
        bootstrap: Any = None,
        ephemeral: Optional[bool] = None,
        max_peers: float = 24,
        max_server_sockets: float = math.inf,
        max_client_sockets: float = math.inf,
        validate_peer: Optional[Callable[[PeerRecord], bool]] = None,
        queue: Any = None,
        multicast: bool = True,
        announce_local_address: bool = False,
        preferred_port: int = 0,
        port: Optional[int] = None,
        announce_port: Optional[int] = None,
        id: Optional[bytes] = None,
        host: str = "0.0.0.0",
        factory: Any = None,
        firewall: Optional[Callable[[str, int, bool], bool]] = None,
        network_factory: Optional[Callable[..., Any]] = None,
        rng: Any = None,
        network_options: Optional[Dict[str, Any]] = None,
        half_open_evictions: float = HALF_OPEN_EVICTIONS,
    ) -> None:
        EventEmitter.__init__(self)
        self.reactor = default_reactor(reactor)
        if factory is not None and not IProtocolFactory.providedBy(factory):
            raise TypeError("factory must provide IProtocolFactory")
        if isinstance(queue, dict):
            queue = QueueOptions(**queue)
        self.factory = factory
        self.firewall = firewall
        self.validate_peer = validate_peer
        self.max_peers = max_peers
        self.max_server_sockets = max_server_sockets
        self.max_client_sockets = max_client_sockets
        self.queue_options = queue if queue is not None else QueueOptions()
        if network_factory is None:
            from txhyperswarm.network import Network as network_factory  # noqa: N813
        self.network: Any = network_factory(  # type: ignore[misc]  # bound just above when None
            self.reactor, bootstrap=bootstrap, ephemeral=ephemeral, id=id, port=port,
            preferred_port=preferred_port, announce_port=announce_port,
            announce_local_address=announce_local_address, host=host, multicast=multicast,
            firewall=self._network_firewall, on_connection=self._accepted,
            **(network_options or {}),
        )
        if getattr(self.network, "make_room", False) is None:
            self.network.make_room = self._make_room
        self.half_open_evictions = half_open_evictions
        self.inbound_at_limit: Counter = Counter()
        self._tokens = half_open_evictions
        self._tokens_at = self.reactor.seconds()
        self._unlogged: Counter = Counter()
        self._summary_call: Any = None
        self.queue = PeerQueue(self.reactor, self.queue_options, rng=rng)
        self.loop = DialLoop(
            self.reactor, self.queue, self._dial, self,
            max_peers=max_peers, max_client_sockets=max_client_sockets,
            max_server_sockets=max_server_sockets, topic_joined=self._topic_joined,
        )
        self.connections: Set[Any] = set()
        self.errors: Counter = Counter()
        self._links: Dict[Any, _Link] = {}
        self._status: Dict[bytes, Dict[str, bool]] = {}
        self._topics: Dict[bytes, _Topic] = {}
        self._tails: Dict[bytes, defer.Deferred] = {}
        self._inbound_limit = max_server_sockets
        self._started: OneShotObserver[None] = OneShotObserver()
        self._bound: Optional[OneShotObserver[Tuple[str, int]]] = None
        self._guards: Dict[defer.Deferred, defer.Deferred] = {}
        self._dials: Set[defer.Deferred] = set()
        self._leaving: Set[defer.Deferred] = set()  # unannounces of leave() in progress
        self._stopped: Optional[OneShotObserver[None]] = None
        self._factory_started = False

    # -- Service ----------------------------------------------------------

    def startService(self) -> None:
        """Start: bind the sockets (``listening`` once bound)."""
        if self._stopped is not None:
            raise SwarmClosed("a stopped swarm does not start again")
        service.Service.startService(self)
        if self.factory is not None and not self._factory_started:
            self._factory_started = True
            self.factory.doStart()
        self._started.fire(None)
        d = self._bind()

        def failed(f: Failure) -> None:
            if not f.check(SwarmClosed):
                self.log.failure("the swarm could not bind: {err}", f, err=f.getErrorMessage())

        d.addErrback(failed)

    def stopService(self) -> "defer.Deferred[None]":
        """
        Stop: fail what is pending with :class:`SwarmClosed`, stop dialling,
        unannounce every topic, close every connection and socket. Fires
        once all is closed (``close`` was emitted just before, if the swarm
        had bound). Idempotent.
        """
        if self._stopped is not None:
            return self._stopped.when_fired()
        stopped: OneShotObserver[None] = OneShotObserver()
        self._stopped = stopped
        service.Service.stopService(self)
        reason = SwarmClosed("the swarm is stopped")
        self.loop.stop(reason)
        self.queue.destroy()
        if self._summary_call is not None and self._summary_call.active():
            self._summary_call.cancel()
        self._log_at_limit(again=False)
        self._started.fire(Failure(reason))
        guards, self._guards = self._guards, {}
        for out, inner in guards.items():
            if not out.called:
                out.errback(Failure(reason))
            inner.cancel()
        for d in list(self._dials):
            d.cancel()
        was_bound = self._bound is not None and self._bound.fired and bool(self.network.bound)
        self._status.clear()
        topics = list(self._topics.values())
        self._topics.clear()
        for t in topics:
            t.retire()

        def stop_topics() -> defer.Deferred:
            stops = [self._quietly(t.handle.stop) for t in topics]
            # a leave() in progress finishes its unannounce before the network closes
            stops += [_shield(d) for d in self._leaving]
            return defer.DeferredList(stops, consumeErrors=True)

        def close_network(_: Any) -> defer.Deferred:
            return self._quietly(self.network.close)

        def close_links(_: Any) -> defer.Deferred:
            waits = []
            for link in list(self._links.values()):
                waits.append(link.conn.when_closed())
                link.abortConnection()
            return defer.DeferredList(waits, consumeErrors=True)

        def done(_: Any) -> None:
            if self.factory is not None and self._factory_started:
                self._factory_started = False
                self.factory.doStop()
            if was_bound:
                self._emit("close")
            stopped.fire(None)

        d = stop_topics()
        d.addCallback(close_network)
        d.addCallback(close_links)
        d.addCallback(done)
        d.addErrback(self._bug, "stopService")
        return stopped.when_fired()

    @property
    def closed(self) -> bool:
        """``stopService()`` was called."""
        return self._stopped is not None

    # -- the public methods -----------------------------------------------

    def join(self, topic: bytes, *, lookup: bool = True, announce: bool = False) -> defer.Deferred:
        """
        Join ``topic``: look peers up (and dial them), announce us, or both.

        :returns: a Deferred firing ``ok`` as Node's ``onjoin``: after the
            topic's first DHT cycle (or its early flush), ``False`` when no
            DHT node answered; ``None`` when a later join or a leave of the
            topic replaced this one first. It errbacks with
            :class:`BindError` when the sockets could not be bound and with
            :class:`SwarmClosed` after (or during) ``stopService()``; before
            ``startService()`` it waits for the start. Joining a joined
            topic again stops the old join (its unannounce done) and joins
            with the new flags. Cancelling it before the topic is joined on
            the network abandons the join; afterwards it only stops waiting
            (the topic stays joined: use :meth:`leave`).
        :raises ValueError: a topic that is not 32 bytes, or neither
            ``lookup`` nor ``announce``.
        """
        _check_topic(topic)
        if not lookup and not announce:
            raise ValueError("join options must enable lookup, announce or both, but not neither")
        if self._stopped is not None:
            return defer.fail(SwarmClosed("the swarm is stopped"))
        flags = {"lookup": bool(lookup), "announce": bool(announce)}
        self._status[topic] = flags
        tail, previous = self._tail(topic)
        return self._join(topic, flags, tail, previous)

    @defer.inlineCallbacks
    def _join(
        self, topic: bytes, flags: Dict[str, bool], tail: OneShotObserver, previous: Any
    ) -> Generator[Any, Any, Any]:
        joined: Optional[_Topic] = None
        try:
            yield self._guard(self._when_bound())
            yield self._guard(self._previous(previous))
            old = self._topics.pop(topic, None)
            if old is not None:
                old.retire()
                yield self._guard(self._quietly(old.handle.stop))
            handle = self.network.join(
                topic, announce=flags["announce"], lookup=flags["lookup"],
                on_peer=lambda peer: self._found(joined, peer),
                on_update=lambda err: self._cycle_ended(joined),
            )
            joined = _Topic(topic, handle, flags)
            self._topics[topic] = joined
            tail.fire(None)
            self._emit("join", topic, dict(flags))
        except BaseException:
            tail.fire(None)
            if self._status.get(topic) is flags:
                del self._status[topic]
            raise
        first, ok = yield self._guard(_either(handle.when_ready(), joined.replaced.when_fired()))
        if first == 1 or not joined.current:
            return None
        return ok

    def leave(self, topic: bytes, *, close_connections: bool = False) -> defer.Deferred:
        """
        Leave ``topic``: stop announcing (unannounce on the DHT) and looking up.

        :param close_connections: also close the outbound connections dialled
            for this topic and no other joined topic (inbound connections
            carry no topic in hyperswarm 2: they stay).
        :returns: a Deferred firing ``None`` once the topic is unannounced
            (a lookup-only topic: once stopped); at once for a topic that is
            not joined, and after ``stopService()``. A pending :meth:`join`
            of the topic fires ``None``. Cancelling it only stops waiting.
        :raises ValueError: a topic that is not 32 bytes.
        """
        _check_topic(topic)
        self._status.pop(topic, None)
        if self._stopped is not None or (topic not in self._topics and topic not in self._tails):
            return defer.succeed(None)
        tail, previous = self._tail(topic)
        return self._leave(topic, close_connections, tail, previous)

    @defer.inlineCallbacks
    def _leave(
        self, topic: bytes, close_connections: bool, tail: OneShotObserver, previous: Any
    ) -> Generator[Any, Any, Any]:
        try:
            yield self._previous(previous)
            joined = self._topics.pop(topic, None)
            if joined is None:
                return None
            joined.retire()
            if close_connections:
                self._close_topic_links(topic)
            stopped = self._quietly(joined.handle.stop)
            stopped.addCallback(lambda _: self._emit("leave", topic))
            if not stopped.called:
                self._leaving.add(stopped)
                stopped.addBoth(self._left, stopped)
        finally:
            tail.fire(None)
        yield _shield(stopped)
        return None

    def flush(self) -> defer.Deferred:
        """
        As Node's ``swarm.flush``: fires ``None`` once every joined topic
        had its first DHT cycle and then as many dials ended as peers were
        queued with priority >= 2 or being dialled (at once if none, or when
        the client sockets are saturated). Errbacks with :class:`BindError`
        / :class:`SwarmClosed`; cancellable.
        """
        if self._stopped is not None:
            return defer.fail(SwarmClosed("the swarm is stopped"))
        return self._flush()

    @defer.inlineCallbacks
    def _flush(self) -> Generator[Any, Any, Any]:
        yield self._guard(self._when_bound())
        waits = [t.handle.when_ready() for t in self._topics.values()]
        yield self._guard(defer.DeferredList(waits, consumeErrors=True))
        yield self._guard(self.loop.flush_dials())
        return None

    def connect(self, peer: PeerRecord) -> defer.Deferred:
        """
        Dial ``peer`` now, outside the queue (Node's raw ``connect``).

        :returns: a Deferred firing ``(protocol, info)``: ``info`` is a
            client :class:`~txhyperswarm.peerinfo.PeerInfo` that is never
            queued; no event is emitted and nothing is counted; the protocol
            is in :attr:`connections` until it closes. Errbacks with the
            network's :class:`DialTimeout`, :class:`DialFailed`,
            :class:`FirewallRefused`, or :class:`BindError` /
            :class:`SwarmClosed`. Cancelling it cancels the dial.
        """
        if self._stopped is not None:
            return defer.fail(SwarmClosed("the swarm is stopped"))
        return self._connect(peer)

    @defer.inlineCallbacks
    def _connect(self, peer: PeerRecord) -> Generator[Any, Any, Any]:
        yield self._guard(self._when_bound())
        d = self.network.connect(peer)
        self._track_dial(d)
        conn = yield self._guard(d)
        if self._stopped is not None:
            conn.abort()
            raise SwarmClosed("the swarm is stopped")
        link = self._attach(conn)
        if link is None:
            raise DialFailed("the factory refused the connection")
        info = self.queue.direct(peer, link, tcp=link.tcp)
        link.info = info
        conn.when_closed().addBoth(self._direct_closed, link)
        return (link.protocol, info)

    def status(self, topic: bytes) -> Optional[Dict[str, bool]]:
        """``{"lookup": bool, "announce": bool}`` of a joined topic, else ``None``."""
        flags = self._status.get(topic)
        return dict(flags) if flags is not None else None

    def address(self) -> Optional[Tuple[str, int]]:
        """``(host, port)`` of the sockets (TCP and UDP share the port); ``None`` before binding."""
        if not self.network.bound:
            return None
        return self.network.address()

    @property
    def topics(self) -> List[bytes]:
        """The topics joined on the network now."""
        return list(self._topics)

    def stats(self) -> dict:
        """The dial loop's counters, topics, connections, errors and the network's stats."""
        out = dict(self.loop.stats())
        out["topics"] = [
            {"topic": t.topic.hex(), **t.flags} for t in self._topics.values()
        ]
        out["connections"] = len(self.connections)
        out["errors"] = Counter(self.errors)
        out["inbound_at_limit"] = Counter(self.inbound_at_limit)
        if self.network.bound:
            out["network"] = self.network.stats()
        return out

    # -- IDialLoopListener --------------------------------------------------

    def connection(self, link: _Link, info: PeerInfo) -> None:
        link.info = info
        link.counted = True
        self._emit("connection", link.protocol, info)
        link.conn.when_closed().addBoth(self._counted_closed, link)

    def disconnection(self, link: _Link, info: PeerInfo) -> None:
        self._emit("disconnection", link.protocol, info)

    def inbound_limit(self, limit: float) -> None:
        self._inbound_limit = limit

    # -- connections --------------------------------------------------------

    def _at_limit(self) -> bool:
        limit = self._inbound_limit  # -1 (at max_peers) refuses all; 0 and inf: none
        return bool(limit and limit != math.inf and self.loop.server_sockets >= limit)

    def _network_firewall(self, host: str, port: int, client: bool) -> bool:
        if not client:
            if self._stopped is not None:
                return True
            if self._at_limit():
                return True
        return self._user_firewall(host, port, client)

    def _user_firewall(self, host: str, port: int, client: bool) -> bool:
        if self.firewall is None:
            return False
        try:
            return bool(self.firewall(host, port, client))
        except Exception:
            self.errors["firewall_error"] += 1
            self.log.failure("the firewall raised; refusing {host}:{port}", host=host, port=port)
            return True

    # -- at the connection limit -------------------------------------------

    def _make_room(self, type: str, host: str, port: int) -> bool:
        """
        The network's ``make_room(type, host, port)``: the firewall refused
        an inbound ``type`` connection. When the connection limit refused
        it, close the oldest inbound uTP connection still half-open (for
        uTP: within the eviction budget) and say ``True``: admit it.
        """
        if self._stopped is not None or self.max_server_sockets < 0 or not self._at_limit():
            return False  # (max_server_sockets -1: no inbound connection at all)
        # a uTP SYN spends a token even when it finds no victim: a flood at a
        # swarm full of real connections scans the links 64 times a second at most
        if (type != "tcp" and not self._take_token()) or (victim := self._oldest_half_open()) is None:
            self._count_at_limit("refused")
            return False
        if self.firewall is not None and self._user_firewall(host, port, False):
            return False  # refused anyway
        self._count_at_limit("evicted_half_open")
        victim.conn.transport.evict()  # sends nothing; closed (and uncounted) at once
        if victim.conn in self._links:  # not closed: a transport that would not evict
            victim.abortConnection()
        return not self._at_limit()

    def _oldest_half_open(self) -> Optional[_Link]:
        for link in self._links.values():  # oldest first
            info = link.info
            if info is None or info.client or link.tcp or link.conn.transport is None:
                continue
            if getattr(link.conn.transport, "state", None) == UTPState.SYN_RECV:
                return link
        return None

    def _take_token(self) -> bool:
        rate = self.half_open_evictions
        if rate <= 0:
            return False
        now = self.reactor.seconds()
        self._tokens = min(rate, self._tokens + max(0.0, now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _count_at_limit(self, outcome: str) -> None:
        self.inbound_at_limit[outcome] += 1
        self._unlogged[outcome] += 1
        if self._summary_call is None:
            self._log_at_limit()

    def _log_at_limit(self, again: bool = True) -> None:
        """One line for what happened at the limit since the last one; the next in a minute at most."""
        self._summary_call = None
        if not self._unlogged:
            return
        evicted, refused = self._unlogged["evicted_half_open"], self._unlogged["refused"]
        self._unlogged.clear()
        self.log.warn(
            "at the connection limit ({peers} connections): {evicted} half-open uTP connection(s)"
            " closed to make room for new inbound ones, {refused} inbound connection(s) refused"
            " (since the last such line; one a minute at most)",
            peers=self.loop.peers, evicted=evicted, refused=refused,
        )
        if again:
            self._summary_call = self.reactor.callLater(LIMIT_LOG_INTERVAL, self._log_at_limit)

    def _attach(self, conn: Any) -> Optional[_Link]:
        """Put the application's protocol on a network connection."""
        try:
            if self.factory is None:
                protocol: Any = Stream()
            else:
                protocol = self.factory.buildProtocol(conn.transport.getPeer())
        except Exception:
            self.errors["factory_error"] += 1
            self.log.failure("buildProtocol raised")
            protocol = None
        if protocol is None:
            conn.abort()
            return None
        link = _Link(conn, protocol)
        self._links[conn] = link
        self.connections.add(protocol)
        conn.attach(protocol)
        return link

    def _forget_link(self, link: _Link) -> None:
        self._links.pop(link.conn, None)
        self.connections.discard(link.protocol)

    def _accepted(self, conn: Any) -> None:
        """The network accepted an inbound connection."""
        if self._stopped is not None:
            conn.abort()
            return
        link = self._attach(conn)
        if link is None:
            return
        host, port = conn.remote
        self.loop.accepted(link, (host, port), tcp=link.tcp, local=_on_lan(host))

    def _dial(self, info: PeerInfo) -> defer.Deferred:
        """The dial loop's dial: ``(link, tcp)``."""
        d = self.network.connect(info.peer)
        self._track_dial(d)

        def connected(conn: Any) -> Tuple[_Link, bool]:
            if self._stopped is not None:
                conn.abort()
                raise SwarmClosed("the swarm is stopped")
            link = self._attach(conn)
            if link is None:
                raise DialFailed("the factory refused the connection")
            return (link, link.tcp)

        return d.addCallback(connected)

    def _track_dial(self, d: defer.Deferred) -> None:
        self._dials.add(d)

        def untrack(result: Any) -> Any:
            self._dials.discard(d)
            return result

        d.addBoth(untrack)

    def _counted_closed(self, _: Any, link: _Link) -> None:
        self._forget_link(link)
        try:
            if link.info is None:
                return
            if link.info.client:
                self.loop.client_closed(link, link.info)
            else:
                self.loop.server_closed(link, link.info)
        except Exception:
            self._bug(Failure(), "connection close")

    def _direct_closed(self, _: Any, link: _Link) -> None:
        self._forget_link(link)
        if link.info is not None:
            link.info.disconnected()

    def _close_topic_links(self, topic: bytes) -> None:
        """Close outbound links dialled for ``topic`` and no other joined topic."""
        for link in list(self._links.values()):
            info = link.info
            if info is None or not info.client:
                continue
            topics = set(info.known_topics)
            if info.peer is not None and info.peer.topic:
                topics.add(info.peer.topic)
            if topic in topics and not (topics - {topic}) & set(self._topics):
                link.loseConnection()

    # -- topics -------------------------------------------------------------

    def _found(self, joined: Optional[_Topic], peer: PeerRecord) -> None:
        if joined is None or not joined.current or not joined.flags["lookup"]:
            return
        try:
            ok = True if self.validate_peer is None else self.validate_peer(peer)
        except Exception:
            self.errors["validate_peer_error"] += 1
            self.log.failure("validate_peer raised; rejecting {peer}", peer=peer)
            ok = False
        if not ok:
            self._emit("peer-rejected", peer)
            return
        self._emit("peer", peer)
        if joined.current and self._stopped is None:
            self.queue.add(peer)

    def _cycle_ended(self, joined: Optional[_Topic]) -> None:
        if joined is not None and joined.current:
            self._emit("updated", {"key": joined.topic})

    def _topic_joined(self, topic: bytes) -> bool:
        return topic in self._topics

    def _tail(self, topic: bytes) -> Tuple[OneShotObserver, Optional[defer.Deferred]]:
        """Queue an operation on ``topic`` behind the ones before it: its own
        done-observer, and the previous operation's (``None``: none)."""
        tail: OneShotObserver[None] = OneShotObserver()
        previous = self._tails.get(topic)
        self._tails[topic] = d = tail.when_fired()

        def done(_: Any) -> None:
            if self._tails.get(topic) is d:
                del self._tails[topic]

        d.addBoth(done)
        return tail, previous

    @staticmethod
    def _previous(previous: Optional[defer.Deferred]) -> defer.Deferred:
        """A Deferred firing ``None`` once the previous operation is done."""
        if previous is None or previous.called:
            return defer.succeed(None)
        wait: defer.Deferred = defer.Deferred()
        previous.addBoth(lambda _: None if wait.called else wait.callback(None))
        return wait

    # -- helpers --------------------------------------------------------------

    def _bind(self) -> defer.Deferred:
        """Bind the network once; ``listening`` when bound."""
        if self._bound is None:
            bound: OneShotObserver[Tuple[str, int]] = OneShotObserver()
            self._bound = bound

            def ok(address: Tuple[str, int]) -> Tuple[str, int]:
                self._emit("listening")
                return address

            def failed(f: Failure) -> Failure:
                if f.check(BindError, SwarmClosed, NetworkClosed):
                    return f
                return Failure(BindError(f"binding failed: {f.getErrorMessage()}"))

            try:
                d = self.network.bind()
            except Exception:
                d = defer.fail()
            d.addCallbacks(ok, failed).addBoth(bound.fire)
        return self._bound.when_fired()

    def _when_bound(self) -> defer.Deferred:
        """After ``startService()`` and the bind."""
        return self._started.when_fired().addCallback(lambda _: self._bind())

    def _guard(self, d: defer.Deferred) -> defer.Deferred:
        """``d``'s outcome, or :class:`SwarmClosed` as soon as the swarm stops
        (``d`` is then cancelled); cancelling the result cancels ``d``."""
        if self._stopped is not None:
            d.addErrback(lambda _: None)
            d.cancel()
            return defer.fail(SwarmClosed("the swarm is stopped"))
        cancelling = []

        def cancel(_: defer.Deferred) -> None:
            cancelling.append(True)
            d.cancel()  # whatever d gives now, ``out`` fails with CancelledError

        out: defer.Deferred = defer.Deferred(cancel)
        self._guards[out] = d

        def settle(result: Any) -> None:
            self._guards.pop(out, None)
            if not out.called and not cancelling:
                if isinstance(result, Failure):
                    out.errback(result)
                else:
                    out.callback(result)

        d.addBoth(settle)
        return out

    def _quietly(self, stop: Callable[[], defer.Deferred]) -> defer.Deferred:
        """Call ``stop()``; a failure is logged and swallowed."""
        try:
            d = defer.maybeDeferred(stop)
        except Exception:
            d = defer.fail()

        def failed(f: Failure) -> None:
            self.errors["stop_error"] += 1
            self.log.failure("stopping failed", f)

        return d.addErrback(failed)

    def _left(self, result: Any, d: defer.Deferred) -> Any:
        self._leaving.discard(d)
        return result

    def _emit(self, event: str, *args: Any) -> None:
        try:
            self.emit(event, *args)
        except Exception:
            self.errors["handler_error"] += 1
            self.log.failure("a {event!r} handler raised", event=event)

    def _bug(self, failure: Failure, where: str) -> None:
        self.errors["internal_error"] += 1
        self.log.failure("swarm: {where} failed", failure, where=where)
