"""
A small fake of ``txhyperswarm.network.Network`` (the contract in
/work/swarm_contract.md) for the swarm's unit tests: in-memory TCP of
:mod:`txhyperswarm.testing` for connections, and a shared :class:`Directory`
instead of the DHT and mDNS (announce registers ``host:port`` under a
topic; each lookup cycle reports every other registered peer after
``cycle`` seconds, then ``on_update``; next cycle after ``refresh``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm.network import (
    BindError,
    DialFailed,
    DialTimeout,
    FirewallRefused,
    NetworkClosed,
)
from txhyperswarm.peer_record import PeerRecord

Address = Tuple[str, int]


class Directory:
    """The fake DHT: who announced which topic."""

    def __init__(self, *, cycle: float = 0.05, refresh: float = 300.0, reachable: bool = True) -> None:
        self.cycle = cycle
        self.refresh = refresh
        self.reachable = reachable
        self.records: Dict[bytes, Dict[Address, Any]] = {}
        self.unannounced: List[Tuple[bytes, Address]] = []

    def factory(self, **overrides: Any) -> Callable[..., "FakeNetwork"]:
        def make(reactor: Any, **kwargs: Any) -> FakeNetwork:
            kwargs.update(overrides)
            return FakeNetwork(reactor, directory=self, **kwargs)

        return make


class FakeTopic:
    """An IDiscoveryTopic on the :class:`Directory`."""

    def __init__(self, net: "FakeNetwork", topic: bytes, announce: bool, lookup: bool,
                 on_peer: Callable, on_update: Callable) -> None:
        self.net = net
        self.topic = topic
        self.announce = announce
        self.lookup = lookup
        self.on_peer = on_peer
        self.on_update = on_update
        self.ready: OneShotObserver[bool] = OneShotObserver()
        self.stopped: Optional[OneShotObserver[None]] = None
        self.cycles = 0
        self.call = net.reactor.callLater(net.directory.cycle, self._cycle)
        if announce and net.directory.reachable:
            net.directory.records.setdefault(topic, {})[net.address()] = net

    def _cycle(self) -> None:
        d = self.net.directory
        self.cycles += 1
        ok = d.reachable
        if ok and self.lookup:
            for addr in list(d.records.get(self.topic, {})):
                if addr == self.net.address():
                    continue
                self.on_peer(PeerRecord(topic=self.topic, host=addr[0], port=addr[1], local=False,
                                        referrer=None, to=None, source="dht"))
        self.on_update(None if ok else Exception("no nodes"))
        self.ready.fire(ok)
        self.call = self.net.reactor.callLater(d.refresh, self._cycle)

    def when_ready(self) -> defer.Deferred:
        return self.ready.when_fired()

    def refresh(self) -> None:
        if self.call.active():
            self.call.cancel()
            self._cycle()

    def stop(self) -> defer.Deferred:
        if self.stopped is not None:
            return self.stopped.when_fired()
        self.stopped = obs = OneShotObserver()
        self.net.topics.discard(self)
        if self.call.active():
            self.call.cancel()
        recs = self.net.directory.records.get(self.topic, {})
        if self.announce and recs.get(self.net.address()) is self.net:
            def unannounced() -> None:
                del recs[self.net.address()]
                self.net.directory.unannounced.append((self.topic, self.net.address()))
                obs.fire(None)

            self.net.reactor.callLater(self.net.directory.cycle, unannounced)
        else:
            obs.fire(None)
        return obs.when_fired()


@implementer(IHalfCloseableProtocol)
class FakeConnection(Protocol):
    """The contract's Connection on an in-memory TCP transport."""

    type = "tcp"

    def __init__(self, net: "FakeNetwork", client: bool, peer: Optional[PeerRecord]) -> None:
        self.net = net
        self.client = client
        self.peer = peer
        self.remote: Optional[Address] = None
        self.app: Any = None
        self.buffer: List[Any] = []
        self.closed: OneShotObserver[None] = OneShotObserver()
        self.reason: Optional[Failure] = None

    def connectionMade(self) -> None:
        p = self.transport.getPeer()
        self.remote = (p.host, p.port)
        self.net.conns.add(self)
        if not self.client:
            if self.net.closing or (self.net.firewall is not None and self.net.firewall(p.host, p.port, False)):
                self.net.refused += 1
                self.transport.loseConnection()
                return
            self.net.on_connection(self)

    def attach(self, protocol: Any) -> None:
        self.app = protocol
        protocol.makeConnection(self.transport)
        buffered, self.buffer = self.buffer, []
        for kind, data in buffered:
            self._forward(kind, data)

    def _forward(self, kind: str, data: Any) -> None:
        if kind == "data":
            self.app.dataReceived(data)
        elif kind == "read":
            half = IHalfCloseableProtocol(self.app, None)
            if half is not None:
                half.readConnectionLost()
            else:
                self.transport.loseConnection()
        elif kind == "write":
            half = IHalfCloseableProtocol(self.app, None)
            if half is not None:
                half.writeConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        if self.app is None:
            self.buffer.append(("data", data))
        else:
            self._forward("data", data)

    def readConnectionLost(self) -> None:
        if self.app is None:
            self.buffer.append(("read", None))
            if not self.client and self.net.on_connection is None:
                self.transport.loseConnection()
        else:
            self._forward("read", None)

    def writeConnectionLost(self) -> None:
        if self.app is not None:
            self._forward("write", None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.net.conns.discard(self)
        self.reason = reason
        if self.app is not None:
            self.app.connectionLost(reason)
        self.closed.fire(None)

    def when_closed(self) -> defer.Deferred:
        return self.closed.when_fired().addCallback(lambda _: self.reason)

    def close(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class _Dialer(ClientFactory):
    def __init__(self, net: "FakeNetwork", peer: PeerRecord, result: defer.Deferred) -> None:
        self.net = net
        self.peer = peer
        self.result = result

    def buildProtocol(self, addr: Any) -> Protocol:
        return _DialProtocol(self)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if reason.check(error.UserError):
            return  # stopConnecting(): a cancel or a timeout settles the result
        if not self.result.called:
            self.result.errback(DialFailed("All sockets failed"))


class _DialProtocol(FakeConnection):
    def __init__(self, dialer: _Dialer) -> None:
        super().__init__(dialer.net, True, dialer.peer)
        self.dialer = dialer

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.dialer.result.called:
            self.transport.abortConnection()
        else:
            self.dialer.result.callback(self)


class FakeNetwork:
    """The contract's Network, in memory."""

    def __init__(self, reactor: Any, *, directory: Directory, bootstrap: Any = None,
                 ephemeral: Any = None, id: Any = None, port: Optional[int] = None,
                 preferred_port: int = 0, announce_port: Optional[int] = None,
                 announce_local_address: bool = False, host: str = "0.0.0.0",
                 multicast: bool = True, firewall: Any = None, on_connection: Any = None,
                 interfaces: Any = None, monotonic: Any = None, fail_bind: bool = False,
                 timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.directory = directory
        self.port = port
        self.preferred_port = preferred_port
        self.host = host
        self.firewall = firewall
        self.on_connection = on_connection
        self.fail_bind = fail_bind
        self.timeout = timeout
        self.listener: Any = None
        self.bind_d: Optional[defer.Deferred] = None
        self.conns: set = set()
        self.topics: set = set()
        self.closing = False
        self.refused = 0
        self.dials = 0
        self.pending: set = set()  # dials in progress (close() leaves them to the caller)
        self.bound = False

    def bind(self) -> defer.Deferred:
        if self.closing:
            return defer.fail(NetworkClosed("closed"))
        if self.listener is None:
            if self.fail_bind:
                return defer.fail(BindError("no port could be bound"))
            f = Factory()
            f.buildProtocol = lambda addr: FakeConnection(self, False, None)
            self.listener = self.reactor.listenTCP(self.port or self.preferred_port or 0, f)
            self.bound = True
        return defer.succeed(self.address())

    def address(self) -> Address:
        return (self.reactor.host, self.listener.getHost().port)

    def join(self, topic: bytes, *, announce: bool, lookup: bool, on_peer: Callable,
             on_update: Callable) -> FakeTopic:
        if self.closing:
            raise NetworkClosed("closed")
        t = FakeTopic(self, topic, announce, lookup, on_peer, on_update)
        self.topics.add(t)
        return t

    def connect(self, peer: PeerRecord) -> defer.Deferred:
        if self.closing:
            return defer.fail(NetworkClosed("closed"))
        if self.firewall is not None and self.firewall(peer.host, peer.port, True):
            return defer.fail(FirewallRefused(f"{peer.host}:{peer.port} refused by the firewall"))
        self.dials += 1
        timer = []

        def cancel(d: defer.Deferred) -> None:
            connector.stopConnecting() if connector.state == "connecting" else None

        result: defer.Deferred = defer.Deferred(cancel)
        connector = self.reactor.connectTCP(peer.host, peer.port, _Dialer(self, peer, result),
                                            timeout=self.timeout + 1)

        def timed_out() -> None:
            if not result.called:
                result.errback(DialTimeout("Timeout"))
                if connector.state == "connecting":
                    connector.stopConnecting()

        timer.append(self.reactor.callLater(self.timeout, timed_out))

        self.pending.add(result)

        def done(r: Any) -> Any:
            self.pending.discard(result)
            if timer[0].active():
                timer[0].cancel()
            return r

        return result.addBoth(done)

    def close(self) -> defer.Deferred:
        self.closing = True
        stops = [t.stop() for t in list(self.topics)]
        d = defer.DeferredList(stops)

        def sockets(_: Any) -> defer.Deferred:
            waits = []
            for c in list(self.conns):
                waits.append(c.when_closed())
                c.abort()
            if self.listener is not None:
                waits.append(defer.maybeDeferred(self.listener.stopListening))
            return defer.DeferredList(waits, consumeErrors=True)

        return d.addCallback(sockets).addCallback(lambda _: None)

    def stats(self) -> dict:
        return {"dials": self.dials, "refused": self.refused, "connections": len(self.conns)}
