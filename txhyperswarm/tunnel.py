"""
Tunnels: the piping between one swarm connection and one local TCP
connection, as ``twist hyperswarm --expose`` and ``--listen`` run them.

A :class:`Tunnel` joins two :class:`TunnelEnd` protocols, one on a swarm
connection (TCP or uTP) and one on a local connection:

* Bytes go both ways as they arrive; each end's transport is the streaming
  producer of the other end's transport, so a slow reader pauses the
  writer on the far side (nothing buffers without bound; the swarm
  transports' and the kernel's windows carry the pressure end to end).
* Half-close passes through: when one end's peer ends its side (FIN), the
  other end's transport ends its writing side (``loseWriteConnection``).
* Both ends are closed once both directions have ended, or as soon as one
  end is lost (aborted when it was lost with an error, closed in order
  otherwise).
* One log line when a tunnel opens, one when it closes (transport, remote
  address, bytes each way).

The first end of a tunnel exists before the second one (``--expose``: the
swarm connection arrives, then the local connection is made; ``--listen``:
the local connection is accepted, then a swarm connection is dialled).
Until both exist the first end holds what it reads and pauses its
transport. :class:`Tunnels` keeps the live tunnels and the figures
``/status`` and ``/metrics`` read (:class:`~txhyperswarm.interfaces.IStatsSource`)::

    tunnels = Tunnels(reactor)
    swarm = Hyperswarm(factory=tunnels.expose_factory("tcp:host=127.0.0.1:port=8000"))
    swarm.on("connection", tunnels.swarm_connection)
    swarm.on("peer", tunnels.peer_found)
"""

from __future__ import annotations

import math
import random as _random
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.utp.connection import State as UTPState

__all__ = ["Tunnel", "TunnelEnd", "Tunnels", "NoPeer", "PEER_WAIT"]

log = Logger(namespace="txhyperswarm.tunnel")

#: Seconds a ``--listen`` connection waits for a first peer of the topics.
PEER_WAIT = 15.0


class NoPeer(Exception):
    """No peer of the topics could be reached for a local connection."""


def _address(transport: Any) -> Tuple[str, str, int]:
    """``(transport, host, port)`` of a transport's peer; uTP's is ``"UDP"``."""
    try:
        addr = transport.getPeer()
        kind = "utp" if getattr(addr, "type", "TCP") == "UDP" else "tcp"
        return kind, str(addr.host), int(addr.port)
    except Exception:
        return "tcp", "?", 0


@implementer(IHalfCloseableProtocol, IPushProducer)
class TunnelEnd(Protocol):
    """
    One end of a tunnel: the protocol on a swarm or a local connection.

    It is also the push producer registered with the other end's transport:
    the other end's consumer pauses this end's reading through it.

    :param side: ``"swarm"`` or ``"local"``.
    :param on_made: ``on_made(end)`` once connected (the wiring that makes
        its tunnel), or ``None``.
    :ivar tunnel: the :class:`Tunnel`, once one holds this end.
    :ivar held: what was read before the tunnel ran.
    :ivar read_ended: the peer ended its sending side.
    :ivar lost: the ``Failure`` of ``connectionLost``, or ``None``.
    :ivar info: the swarm's ``PeerInfo`` of a swarm end, once known.
    :ivar client: whether we dialled this connection (swarm ends).
    :ivar waiting: an inbound uTP swarm end still half-open (``SYN_RECV``)
        waits for the initiator's first byte (or FIN) before ``on_made``
        runs: its local connection is made only then. The wire is the same
        (a uTP acceptor sends nothing before that, utp.md 2.4, so a local
        service that speaks first is heard then as before), and spoofed
        SYNs open no local connection and write no log line.
    """

    transport: Any  # TCP transport or UTPConnection (IConsumer, IPushProducer, half-close)

    def __init__(self, side: str, on_made: Optional[Callable[["TunnelEnd"], Any]] = None,
                 client: bool = False) -> None:
        self.side = side
        self.on_made = on_made
        self.client = client
        self.tunnel: Optional["Tunnel"] = None
        self.held: List[bytes] = []
        self.read_ended = False
        self.lost: Optional[Failure] = None
        self.info: Any = None
        self.pauses: Set[str] = set()
        self.on_lost: Optional[Callable[["TunnelEnd"], Any]] = None
        self.waiting = False
        self.on_heard: Optional[Callable[["TunnelEnd"], Any]] = None

    # -- pausing (reasons: "hold" until the tunnel runs, "consumer") --------

    def pause(self, why: str) -> None:
        if not self.pauses and self.lost is None and self.transport is not None:
            self.transport.pauseProducing()
        self.pauses.add(why)

    def resume(self, why: str) -> None:
        if why not in self.pauses:
            return
        self.pauses.discard(why)
        if not self.pauses and self.lost is None and self.transport is not None:
            self.transport.resumeProducing()

    # IPushProducer, for the other end's transport
    def pauseProducing(self) -> None:
        self.pause("consumer")

    def resumeProducing(self) -> None:
        self.resume("consumer")

    def stopProducing(self) -> None:
        pass  # the tunnel closes the ends itself

    # -- IProtocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        if (self.side == "swarm" and not self.client and self.on_made is not None
                and getattr(self.transport, "state", None) == UTPState.SYN_RECV):
            self.waiting = True  # made at the initiator's first byte or FIN
            return
        self._made()

    def _heard(self) -> None:
        """A waiting end heard from the initiator: make the tunnel now."""
        self.waiting = False
        if self.on_heard is not None:
            self.on_heard(self)
        self._made()

    def _made(self) -> None:
        if self.tunnel is None or not self.tunnel.running:
            self.pause("hold")
        if self.on_made is not None:
            try:
                self.on_made(self)
            except Exception:
                log.failure("setting up a tunnel failed")
                self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None and tunnel.running:
            tunnel.forward(self, data)
        else:
            self.held.append(data)
            if self.waiting:
                self._heard()

    def readConnectionLost(self) -> None:
        self.read_ended = True
        if self.waiting:
            self._heard()
        tunnel = self.tunnel
        if tunnel is not None and tunnel.running:
            tunnel.end_read_ended(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.lost = reason if reason is not None else Failure(error.ConnectionDone())
        self.pauses.clear()
        if self.on_lost is not None:
            self.on_lost(self)
        if self.tunnel is not None:
            self.tunnel.end_lost(self)


class Tunnel:
    """
    The pipe between a swarm end and a local end (module docstring).

    Made with its first end; :meth:`open` adds the second and starts the
    piping; :meth:`fail` gives up before that (closes the first end).

    :ivar to_local: bytes piped from the swarm connection to the local one.
    :ivar to_swarm: bytes piped from the local connection to the swarm one.
    """

    def __init__(self, registry: "Tunnels", first: TunnelEnd, target: str = "") -> None:
        self.registry = registry
        self.swarm: Optional[TunnelEnd] = first if first.side == "swarm" else None
        self.local: Optional[TunnelEnd] = first if first.side == "local" else None
        self.target = target
        first.tunnel = self
        self.running = False
        self.closed = False
        self.to_local = 0
        self.to_swarm = 0
        self.pending: Optional[defer.Deferred] = None
        self._done: OneShotObserver[None] = OneShotObserver()
        registry.add(self)

    def when_closed(self) -> "defer.Deferred[None]":
        """A new Deferred firing once both ends are closed (or it never opened)."""
        return self._done.when_fired()

    @property
    def swarm_address(self) -> Tuple[str, str, int]:
        end = self.swarm
        return _address(end.transport) if end is not None and end.transport is not None else ("tcp", "?", 0)

    def other(self, end: TunnelEnd) -> Optional[TunnelEnd]:
        return self.local if end is self.swarm else self.swarm

    # -- opening ---------------------------------------------------------------

    def open(self, second: TunnelEnd) -> None:
        """The second end is connected: pipe both ways."""
        self.pending = None
        second.tunnel = self
        if second.side == "swarm":
            self.swarm = second
        else:
            self.local = second
        swarm, local = self.swarm, self.local
        assert swarm is not None and local is not None
        if self.closed:  # the first end went away meanwhile
            if second.lost is None:
                second.transport.abortConnection()
            else:
                self._finish()
            return
        self.running = True
        kind, host, port = self.swarm_address
        log.info(
            "tunnel opened: {kind} {host}:{port} <-> {target}",
            kind=kind, host=host, port=port, target=self.target or _describe(local),
        )
        # each transport consumes what the other end reads
        for src, dst in ((swarm, local), (local, swarm)):
            if src.lost is None and dst.lost is None:
                dst.transport.registerProducer(src, True)
        for src in (swarm, local):
            held, src.held = src.held, []
            for chunk in held:
                self.forward(src, chunk)
        for src in (swarm, local):
            if src.read_ended and src.lost is None:
                self.end_read_ended(src)
        for src in (swarm, local):
            if src.lost is not None:
                self.end_lost(src)
                return
        for src in (swarm, local):
            src.resume("hold")

    def fail(self, reason: Failure) -> None:
        """No second end: close the first one (at once)."""
        self.pending = None
        self.closed = True
        for end in (self.swarm, self.local):
            if end is not None and end.lost is None and end.transport is not None:
                end.transport.loseConnection()
        if all(e is None or e.lost is not None for e in (self.swarm, self.local)):
            self._finish()

    def close(self) -> None:
        """Close both ends now (the daemon is stopping)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        self.closed = True
        for end in (self.swarm, self.local):
            if end is not None and end.lost is None and end.transport is not None:
                end.transport.abortConnection()

    # -- piping -------------------------------------------------------------------

    def forward(self, src: TunnelEnd, data: bytes) -> None:
        dst = self.other(src)
        if dst is None or dst.lost is not None:
            return
        if src is self.swarm:
            self.to_local += len(data)
            self.registry.count(self.swarm_address[0], "in", len(data))
        else:
            self.to_swarm += len(data)
            self.registry.count(self.swarm_address[0], "out", len(data))
        dst.transport.write(data)

    def end_read_ended(self, src: TunnelEnd) -> None:
        """``src``'s peer ended its side: end the other end's writing side."""
        dst = self.other(src)
        if dst is None or dst.lost is not None:
            return
        dst.transport.unregisterProducer()
        if self.swarm is not None and self.local is not None and self.swarm.read_ended and self.local.read_ended:
            for end in (self.swarm, self.local):
                if end.lost is None:
                    end.transport.loseConnection()
        else:
            dst.transport.loseWriteConnection()

    def end_lost(self, end: TunnelEnd) -> None:
        """``end``'s connection is gone: close the other one too."""
        if not self.running:
            if self.pending is not None:
                pending, self.pending = self.pending, None
                pending.cancel()
            self.closed = True
            other = self.other(end)
            if other is None or other.lost is not None or other.transport is None:
                self._finish()
            return
        other = self.other(end)
        assert other is not None
        if other.lost is None:
            other.transport.unregisterProducer()
            clean = end.lost is None or end.lost.check(error.ConnectionDone) is not None
            if clean:
                other.transport.loseConnection()
            else:
                other.transport.abortConnection()
            return
        self._finish()

    def _finish(self) -> None:
        if self._done.fired:
            return
        self.closed = True
        self.registry.remove(self)
        if self.running:
            kind, host, port = self.swarm_address
            reasons = [e.lost.getErrorMessage() for e in (self.swarm, self.local)
                       if e is not None and e.lost is not None and not e.lost.check(error.ConnectionDone)]
            log.info(
                "tunnel closed: {kind} {host}:{port} <-> {target}: {to_local} bytes in, {to_swarm} bytes out{why}",
                kind=kind, host=host, port=port, target=self.target or _describe(self.local),
                to_local=self.to_local, to_swarm=self.to_swarm,
                why=(" (" + "; ".join(reasons) + ")") if reasons else "",
            )
        self._done.fire(None)


def _describe(end: Optional[TunnelEnd]) -> str:
    if end is None or end.transport is None:
        return "?"
    _, host, port = _address(end.transport)
    return f"local {host}:{port}"


class _EndFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], TunnelEnd]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> TunnelEnd:
        return self.build()


@implementer(IStatsSource)
class Tunnels:
    """
    The daemon's tunnels: factories for the swarm and the local side, the
    peers found per topic, and live figures.

    :param reactor: for the endpoints and the wait for a peer.
    :param rng: a ``random.Random`` for choosing among peers.
    """

    def __init__(self, reactor: Any, rng: Optional[_random.Random] = None) -> None:
        self.reactor = reactor
        self.rng = rng if rng is not None else _random.Random()
        self.tunnels: Set[Tunnel] = set()
        self.swarm_ends: Set[TunnelEnd] = set()
        self.opened = 0
        self.closed = 0
        self.bytes: Counter = Counter()
        self.peers: Dict[bytes, Dict[Tuple[str, int], Any]] = {}
        self.failed: Counter = Counter()
        self._peer_waiters: List[defer.Deferred] = []

    # -- registry ------------------------------------------------------------------

    def add(self, tunnel: Tunnel) -> None:
        self.tunnels.add(tunnel)

    def remove(self, tunnel: Tunnel) -> None:
        if tunnel in self.tunnels:
            self.tunnels.discard(tunnel)
            if tunnel.running:
                self.closed += 1

    def count(self, transport: str, direction: str, n: int) -> None:
        self.bytes[(transport, direction)] += n

    def close_all(self) -> defer.Deferred:
        """Close every tunnel; fires once all are closed."""
        waits = [t.when_closed() for t in self.tunnels]
        for t in list(self.tunnels):
            t.close()
        for w in self._peer_waiters:
            w.cancel()
        return defer.DeferredList(waits, consumeErrors=True)

    # -- swarm side ---------------------------------------------------------------

    def _track_swarm_end(self, end: TunnelEnd) -> TunnelEnd:
        self.swarm_ends.add(end)
        end.on_lost = self._swarm_end_lost
        return end

    def swarm_connection(self, protocol: Any, info: Any) -> None:
        """The swarm's ``"connection"`` handler: note the connection's ``PeerInfo``."""
        if isinstance(protocol, TunnelEnd):
            protocol.info = info
        kind, host, port = _address(protocol.transport) if protocol.transport is not None else ("tcp", "?", 0)

        def say(_: Any = None) -> None:
            log.info("swarm connection opened: {kind} {side} {host}:{port}", kind=kind,
                     side="outbound" if info.client else "inbound", host=host, port=port)

        if isinstance(protocol, TunnelEnd) and protocol.waiting:
            protocol.on_heard = say  # half-open: said once the initiator speaks
        else:
            say()

    def _swarm_end_lost(self, end: TunnelEnd) -> None:
        self.swarm_ends.discard(end)
        if end.transport is not None:
            kind, host, port = _address(end.transport)
            why = end.lost.getErrorMessage() if end.lost is not None and not end.lost.check(error.ConnectionDone) else ""
            (log.debug if end.waiting else log.info)("swarm connection closed: {kind} {side} {host}:{port}{why}", kind=kind,
                     side="outbound" if end.client else "inbound", host=host, port=port,
                     why=f" ({why})" if why else "")

    def peer_found(self, peer: Any) -> None:
        """The swarm's ``"peer"`` handler: remember the peer per topic."""
        known = self.peers.setdefault(peer.topic, {})
        key = (peer.host, peer.port)
        if key not in known:
            log.info("peer found for topic {topic}: {host}:{port} ({source})", topic=peer.topic.hex(),
                     host=peer.host, port=peer.port, source=getattr(peer, "source", "dht"))
        known.pop(key, None)
        known[key] = peer  # most recently seen last
        if self._peer_waiters:
            # wake the waiting dials on the next turn, when the peers found
            # together (one DHT response, one mDNS answer) are all known
            self.reactor.callLater(0, self._wake)

    def _wake(self) -> None:
        waiters, self._peer_waiters = self._peer_waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)

    def expose_factory(self, endpoint: Any, target: str) -> Factory:
        """
        The swarm's factory for ``--expose``: every swarm connection gets a
        new client connection to ``endpoint`` (an ``IStreamClientEndpoint``).
        """

        def made(swarm_end: TunnelEnd) -> None:
            tunnel = Tunnel(self, swarm_end, target)
            d = endpoint.connect(_EndFactory(lambda: TunnelEnd("local")))
            tunnel.pending = d

            def connected(local_end: TunnelEnd) -> None:
                self.opened += 1
                tunnel.open(local_end)

            def failed(f: Failure) -> None:
                if not f.check(defer.CancelledError):
                    self.failed["local"] += 1
                    kind, host, port = tunnel.swarm_address
                    log.warn("cannot reach {target} for {kind} {host}:{port}: {why}",
                             target=target, kind=kind, host=host, port=port, why=f.getErrorMessage())
                tunnel.fail(f)

            d.addCallbacks(connected, failed)

        def build() -> TunnelEnd:
            return self._track_swarm_end(TunnelEnd("swarm", on_made=made, client=False))

        return _EndFactory(build)

    def listen_factories(self, connect: Callable[[Any], defer.Deferred], topics: List[bytes],
                         target: str = "", max_connections: float = math.inf) -> Tuple[Factory, Factory]:
        """
        ``(swarm_factory, local_factory)`` for ``--listen``: every local
        connection is piped over a swarm connection of its own, dialled
        with ``connect(peer) -> Deferred[(protocol, info)]`` (the swarm's
        :meth:`~txhyperswarm.swarm.Hyperswarm.connect`) to a peer of
        ``topics``, trying the peers found until one answers. A local
        connection beyond ``max_connections`` tunnels (open or being
        dialled) is closed at once.
        """

        def build_swarm() -> TunnelEnd:
            return self._track_swarm_end(TunnelEnd("swarm", client=True))

        def made(local_end: TunnelEnd) -> None:
            if len(self.tunnels) >= max_connections:
                self.failed["limit"] += 1
                log.warn("refused a local connection from {who}: {n} tunnels open (--max-peers)",
                         who=_describe(local_end), n=len(self.tunnels))
                local_end.transport.loseConnection()
                return
            tunnel = Tunnel(self, local_end, target)
            d = self._dial_some_peer(connect, topics)
            tunnel.pending = d

            def connected(result: Tuple[Any, Any]) -> None:
                protocol, info = result
                protocol.info = info
                kind, host, port = _address(protocol.transport)
                log.info("swarm connection opened: {kind} outbound {host}:{port}", kind=kind, host=host, port=port)
                self.opened += 1
                tunnel.open(protocol)

            def failed(f: Failure) -> None:
                if not f.check(defer.CancelledError):
                    self.failed["swarm"] += 1
                    log.warn("no peer for a local connection from {who}: {why}",
                             who=_describe(local_end), why=f.getErrorMessage())
                tunnel.fail(f)

            d.addCallbacks(connected, failed)

        return _EndFactory(build_swarm), _EndFactory(lambda: TunnelEnd("local", on_made=made))

    def candidates(self, topics: List[bytes]) -> List[Any]:
        """The peers found for ``topics``, most recently seen first."""
        out: List[Any] = []
        seen = set()
        for topic in topics:
            for key, peer in reversed(list(self.peers.get(topic, {}).items())):
                if key not in seen:
                    seen.add(key)
                    out.append(peer)
        return out

    @defer.inlineCallbacks
    def _dial_some_peer(self, connect: Callable[[Any], defer.Deferred], topics: List[bytes]):
        deadline = self.reactor.seconds() + PEER_WAIT
        tried: Set[Tuple[str, int]] = set()
        last: Optional[Failure] = None
        while True:
            todo = [p for p in self.candidates(topics) if (p.host, p.port) not in tried]
            if not todo:
                left = deadline - self.reactor.seconds()
                if left <= 0:
                    if last is not None:
                        raise NoPeer(f"no peer answered (last: {last.getErrorMessage()})")
                    raise NoPeer(f"no peer of the topics found within {PEER_WAIT:g} s")
                wait: defer.Deferred = defer.Deferred()
                self._peer_waiters.append(wait)
                timer = self.reactor.callLater(left, lambda: None if wait.called else wait.callback(None))
                try:
                    yield wait
                finally:
                    if timer.active():
                        timer.cancel()
                    if wait in self._peer_waiters:
                        self._peer_waiters.remove(wait)
                continue
            peer = todo[0]
            tried.add((peer.host, peer.port))
            try:
                result = yield connect(peer)
            except defer.CancelledError:
                raise
            except Exception:
                last = Failure()
                log.info("dialling {host}:{port} failed: {why}", host=peer.host, port=peer.port,
                         why=last.getErrorMessage())
                continue
            return result

    # -- IStatsSource -----------------------------------------------------------------

    def connection_entries(self) -> List[dict]:
        """``/status`` connection entries of the live swarm connections."""
        out = []
        for end in list(self.swarm_ends):
            if end.transport is None or end.lost is not None:
                continue
            kind, host, port = _address(end.transport)
            info = end.info
            topics: List[bytes] = []
            client = end.client
            if info is not None:
                kind = info.type
                client = info.client
                topics = list(info.topics)
                peer = info.peer
                if peer is not None and peer.topic and peer.topic not in topics:
                    topics.append(peer.topic)
            out.append({"type": kind, "client": bool(client), "remote": f"{host}:{port}",
                        "topics": [t.hex() for t in topics]})
        return out

    def stats(self) -> dict:
        """
        ``tunnels`` (open now), ``opened``, ``closed``, ``failed``
        (``Counter``: ``local``, ``swarm``), ``bytes`` (``Counter`` keyed
        ``(transport, "in"|"out")``: bytes piped over swarm connections,
        ``in`` = from the swarm), ``peers`` (``{topic_hex: distinct peers
        found}``), ``peers_discovered`` (their sum), ``connections`` (the
        ``/status`` entries of the live swarm connections).
        """
        peers = {t.hex(): len(p) for t, p in self.peers.items()}
        return {
            "tunnels": sum(1 for t in self.tunnels if t.running),
            "opened": self.opened,
            "closed": self.closed,
            "failed": Counter(self.failed),
            "bytes": Counter(self.bytes),
            "peers": peers,
            "peers_discovered": sum(peers.values()),
            "connections": self.connection_entries(),
        }
