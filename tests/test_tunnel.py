"""
txhyperswarm.tunnel on txhyperswarm.testing: in-memory TCP on a Clock.

Host 10.0.0.3 plays the remote swarm peer: it dials the daemon's host
(10.0.0.1), whose "swarm" listener runs ``Tunnels.expose_factory`` towards
a service on 10.0.0.2. The swarm connection is a plain TCP transport here:
the tunnel only needs a transport with producer/consumer and half-close.
"""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.tunnel import NoPeer, PEER_WAIT, Tunnels

DAEMON, SERVICE, PEER = "10.0.0.1", "10.0.0.2", "10.0.0.3"


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self):
        self.data = bytearray()
        self.read_ended = False
        self.lost = None
        self.paused = False

    def dataReceived(self, data):
        self.data += data

    def readConnectionLost(self):
        self.read_ended = True

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost = reason


class Collect:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_namespace") == "txhyperswarm.tunnel":
            self.events.append(event)

    def texts(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


def setup(**net_options):
    net = UDPNetwork(**net_options)
    service = _recording_service(net.reactor(SERVICE), 8000)
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    endpoint = TCP4ClientEndpoint(daemon, SERVICE, 8000)
    daemon.listenTCP(5000, tunnels.expose_factory(endpoint, "tcp:host=10.0.0.2:port=8000"))
    client = Recorder()
    cf = ClientFactory()
    cf.buildProtocol = lambda addr: client
    net.reactor(PEER).connectTCP(DAEMON, 5000, cf)
    net.run(0.1)
    return net, tunnels, client, service



def _recording_service(reactor, port):
    """A TCP service on ``reactor``'s host: the list of the :class:`Recorder` s it built."""
    built = []

    def build(addr):
        built.append(Recorder())
        return built[-1]

    f = Factory()
    f.buildProtocol = build
    reactor.listenTCP(port, f)
    return built

def test_bytes_both_ways_counted_and_logged():
    log = Collect()
    globalLogPublisher.addObserver(log)
    try:
        net, tunnels, client, service = setup()
        assert len(service) == 1 and tunnels.stats()["tunnels"] == 1
        server = service[0]
        client.transport.write(b"x" * 100_000)
        server.transport.write(b"y" * 3000)
        net.run(1)
        assert bytes(server.data) == b"x" * 100_000
        assert bytes(client.data) == b"y" * 3000
        s = tunnels.stats()
        assert s["bytes"][("tcp", "in")] == 100_000 and s["bytes"][("tcp", "out")] == 3000
        (tunnel,) = tunnels.tunnels
        assert (tunnel.to_local, tunnel.to_swarm) == (100_000, 3000)
        entries = s["connections"]
        assert entries == [{"type": "tcp", "client": False, "remote": f"{PEER}:{client.transport.getHost().port}",
                            "topics": []}]
        client.transport.loseConnection()
        net.run(1)
        assert server.read_ended  # the FIN passed on
        server.transport.loseConnection()
        net.run(1)
        assert server.lost is not None and client.lost is not None
        s = tunnels.stats()
        assert s["tunnels"] == 0 and s["opened"] == 1 and s["closed"] == 1 and s["connections"] == []
        texts = log.texts()
        assert any(t.startswith("tunnel opened: tcp 10.0.0.3:") for t in texts), texts
        closed = [t for t in texts if t.startswith("tunnel closed")]
        assert len(closed) == 1 and "100000 bytes in, 3000 bytes out" in closed[0], texts
    finally:
        globalLogPublisher.removeObserver(log)


@implementer(IHalfCloseableProtocol)
class Flood(Recorder):
    """Writes ``total`` bytes as a streaming producer that honours pauses."""

    def __init__(self, total):
        super().__init__()
        self.total = total
        self.sent = 0
        self.pauses = 0

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            chunk = min(16384, self.total - self.sent)
            self.sent += chunk
            self.transport.write(b"z" * chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def stopProducing(self):
        self.paused = True


def test_a_slow_reader_pauses_the_writer_on_the_far_side():
    net = UDPNetwork()
    service = _recording_service(net.reactor(SERVICE), 8000)
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    daemon.listenTCP(5000, tunnels.expose_factory(TCP4ClientEndpoint(daemon, SERVICE, 8000), "svc"))
    flood = Flood(64 * 1024 * 1024)
    cf = ClientFactory()
    cf.buildProtocol = lambda addr: flood
    net.reactor(PEER).connectTCP(DAEMON, 5000, cf)
    net.run(0.05)
    (server,) = service
    server.transport.pauseProducing()  # the reader stops reading
    net.run(5)
    (tunnel,) = tunnels.tunnels
    in_flight = flood.sent - len(server.data)
    # bounded by the windows and send buffers of two TCP hops, not 64 MiB
    assert flood.paused and flood.pauses >= 1
    assert in_flight < 2 * 1024 * 1024, in_flight
    assert tunnel.to_local - len(server.data) < 1024 * 1024
    server.transport.resumeProducing()
    assert net.run_until(lambda: server.read_ended, limit=60)
    assert len(server.data) == 64 * 1024 * 1024 and tunnel.to_local == len(server.data)


def test_half_close_passes_through_both_ways_then_both_close():
    net, tunnels, client, service = setup()
    (server,) = service
    (tunnel,) = tunnels.tunnels
    client.transport.write(b"request")
    client.transport.loseWriteConnection()
    net.run(1)
    assert server.read_ended and bytes(server.data) == b"request"
    assert server.lost is None and client.lost is None  # the other direction is open
    server.transport.write(b"response")
    net.run(1)
    assert bytes(client.data) == b"response"
    server.transport.loseWriteConnection()
    net.run(1)
    assert client.read_ended
    # both directions ended: the daemon closed both of its connections
    assert tunnel.closed and tunnels.stats()["tunnels"] == 0
    assert tunnel.swarm.lost.check(error.ConnectionDone) and tunnel.local.lost.check(error.ConnectionDone)


def test_an_error_on_one_side_closes_both():
    net, tunnels, client, service = setup()
    (server,) = service
    client.transport.write(b"abc")
    net.run(0.5)
    server.transport.abortConnection()
    net.run(1)
    assert client.lost is not None and not client.lost.check(error.ConnectionDone)
    assert tunnels.stats()["tunnels"] == 0 and tunnels.stats()["closed"] == 1


def test_the_swarm_side_dropping_closes_the_local_side():
    net, tunnels, client, service = setup()
    (server,) = service
    client.transport.abortConnection()
    net.run(1)
    assert server.lost is not None
    assert tunnels.tunnels == set()


def test_an_unreachable_service_closes_the_swarm_connection():
    net = UDPNetwork()
    net.reactor(SERVICE)  # up, nothing listening: refused
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    daemon.listenTCP(5000, tunnels.expose_factory(TCP4ClientEndpoint(daemon, SERVICE, 8000), "svc"))
    client = Recorder()
    cf = ClientFactory()
    cf.buildProtocol = lambda addr: client
    net.reactor(PEER).connectTCP(DAEMON, 5000, cf)
    net.run(2)
    assert client.read_ended or client.lost is not None
    s = tunnels.stats()
    assert s["failed"]["local"] == 1 and s["opened"] == 0 and s["tunnels"] == 0 and not tunnels.tunnels


class _Dialler:
    """A fake swarm connect(): dials peer.host:peer.port over in-memory TCP."""

    def __init__(self, reactor, factory):
        self.reactor = reactor
        self.factory = factory
        self.dialled = []

    def __call__(self, peer):
        self.dialled.append((peer.host, peer.port))
        d = TCP4ClientEndpoint(self.reactor, peer.host, peer.port).connect(self.factory)
        return d.addCallback(lambda p: (p, None))


def _local_clients(net, n, run=None):
    """``n`` Recorders connecting from SERVICE to the daemon's local port
    6000 (the clock run ``run`` s after each, when given)."""
    clients = []
    for _ in range(n):
        c = Recorder()
        clients.append(c)
        cf = ClientFactory()
        cf.buildProtocol = lambda addr, c=c: c
        net.reactor(SERVICE).connectTCP(DAEMON, 6000, cf)
        if run is not None:
            net.run(run)
    return clients


def _peer(topic, host, port):
    return PeerRecord(topic=topic, host=host, port=port, local=False, referrer=None, to=None, source="dht")


def test_listen_pipes_each_local_connection_over_a_dialled_connection():
    net = UDPNetwork()
    service = []

    def build():
        p = Recorder()
        service.append(p)
        return p

    f = Factory()
    f.buildProtocol = lambda addr: build()
    net.reactor(PEER).listenTCP(7000, f)  # the remote peer's service, as if exposed
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    topic = b"t" * 32
    swarm_factory, local_factory = tunnels.listen_factories(None, [topic])
    dial = _Dialler(daemon, swarm_factory)
    swarm_factory, local_factory = tunnels.listen_factories(dial, [topic])
    dial.factory = swarm_factory
    daemon.listenTCP(6000, local_factory)
    clients = _local_clients(net, 3)
    net.run(0.5)
    for c in clients:
        c.transport.write(b"early")  # held until a peer is found
    net.run(0.5)
    assert service == []
    tunnels.peer_found(_peer(topic, "10.0.0.9", 7000))  # a dead peer first
    tunnels.peer_found(_peer(topic, PEER, 7000))  # most recent: tried first
    net.run(2)
    assert len(service) == 3 and all(bytes(s.data) == b"early" for s in service)
    assert tunnels.stats()["peers"] == {topic.hex(): 2}
    assert tunnels.stats()["tunnels"] == 3
    assert all(e["client"] for e in tunnels.stats()["connections"])


def test_listen_without_a_peer_closes_the_local_connection(logged_errors):
    net = UDPNetwork()
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    _, local_factory = tunnels.listen_factories(lambda peer: defer.fail(error.ConnectionRefusedError()), [b"t" * 32])
    daemon.listenTCP(6000, local_factory)
    c = Recorder()
    cf = ClientFactory()
    cf.buildProtocol = lambda addr: c
    net.reactor(SERVICE).connectTCP(DAEMON, 6000, cf)
    net.run(PEER_WAIT + 1)
    assert c.read_ended or c.lost is not None
    assert tunnels.stats()["failed"]["swarm"] == 1 and not tunnels.tunnels
    assert NoPeer  # the reason logged


def test_close_all_closes_every_tunnel():
    net, tunnels, client, service = setup()
    d = tunnels.close_all()
    net.run(1)
    assert d.called and client.lost is not None and service[0].lost is not None


def test_a_local_connection_waiting_for_a_peer_is_paused_not_buffered():
    net = UDPNetwork()
    service = _recording_service(net.reactor(PEER), 7000)
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    topic = b"t" * 32
    dial = _Dialler(daemon, None)
    swarm_factory, local_factory = tunnels.listen_factories(dial, [topic])
    dial.factory = swarm_factory
    daemon.listenTCP(6000, local_factory)
    flood = Flood(16 * 1024 * 1024)
    cf = ClientFactory()
    cf.buildProtocol = lambda addr: flood
    net.reactor(SERVICE).connectTCP(DAEMON, 6000, cf)
    net.run(3)
    assert flood.paused and flood.sent < 1024 * 1024, flood.sent  # no peer yet: the sender is held back
    tunnels.peer_found(_peer(topic, PEER, 7000))
    assert net.run_until(lambda: service and service[0].read_ended, limit=60)
    assert len(service[0].data) == 16 * 1024 * 1024


def test_over_utp_backpressure_and_half_close():
    """The swarm end on a uTP connection (UTPConnection as producer and consumer)."""
    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp.socket import UTPSocket

    net = UDPNetwork(latency=0.002)
    service = _recording_service(net.reactor(SERVICE), 8000)
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    udp = UDPSocket(daemon, host=DAEMON, port=5000)
    udp.listen()
    utp = UTPSocket(daemon, udp)
    utp.listen(tunnels.expose_factory(TCP4ClientEndpoint(daemon, SERVICE, 8000), "svc"))
    peer_udp = UDPSocket(net.reactor(PEER), host=PEER, port=5001)
    peer_udp.listen()
    peer = UTPSocket(net.reactor(PEER), peer_udp)
    flood = Flood(8 * 1024 * 1024)
    cf = Factory()
    cf.buildProtocol = lambda addr: flood
    peer.connect(DAEMON, 5000, cf)
    net.run(0.5)
    (server,) = service
    server.transport.pauseProducing()
    net.run(5)
    (tunnel,) = tunnels.tunnels
    assert tunnel.swarm_address[0] == "utp"
    assert flood.sent < 8 * 1024 * 1024 and flood.sent - len(server.data) < 3 * 1024 * 1024, flood.sent
    server.transport.resumeProducing()
    assert net.run_until(lambda: server.read_ended, limit=120)  # the uTP FIN passed on as a half-close
    assert len(server.data) == 8 * 1024 * 1024
    server.transport.write(b"done")
    server.transport.loseWriteConnection()
    assert net.run_until(lambda: flood.read_ended, limit=30)
    assert bytes(flood.data) == b"done"
    assert net.run_until(lambda: tunnel.closed, limit=30)
    assert tunnels.stats()["bytes"][("utp", "in")] == 8 * 1024 * 1024
    peer.close()
    utp.close()
    net.run(5)


def test_listen_refuses_local_connections_beyond_the_limit():
    net = UDPNetwork()
    net.reactor(PEER).listenTCP(7000, Factory.forProtocol(Recorder))
    daemon = net.reactor(DAEMON)
    tunnels = Tunnels(daemon)
    topic = b"t" * 32
    dial = _Dialler(daemon, None)
    swarm_factory, local_factory = tunnels.listen_factories(dial, [topic], max_connections=2)
    dial.factory = swarm_factory
    daemon.listenTCP(6000, local_factory)
    tunnels.peer_found(_peer(topic, PEER, 7000))
    clients = _local_clients(net, 3, run=0.5)
    s = tunnels.stats()
    assert s["tunnels"] == 2 and s["failed"]["limit"] == 1 and len(dial.dialled) == 2
    assert clients[2].read_ended or clients[2].lost is not None
