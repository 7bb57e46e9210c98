"""
A SYN flood at a swarm at its connection limit (issue 12, "Floods"): every
uTP SYN the swarm lets in is a swarm connection at once (hyperswarm counts
a connection when it is made, swarm.md gotcha 9), so spoofed SYNs fill
``max_peers`` with half-open uTP connections (``SYN_RECV``: the initiator
never sent anything after its SYN). At the limit, a new inbound connection
closes the oldest of them to make room (TCP always; uTP SYNs within
``half_open_evictions`` a second), so real peers still get in at once.

In memory: txhyperswarm.testing's UDPNetwork and a Clock.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from tests.utp.streams import OneFactory, Recorder as UTPRecorder
from txhyperswarm.swarm import HALF_OPEN_EVICTIONS, Hyperswarm
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp import UTPSocket
from txhyperswarm.utp.packet import HEADER

HOST = "10.0.0.1"
MAX_PEERS = 8


def syn(cid: int) -> bytes:
    """A uTP SYN (type 4, version 1) with connection id ``cid``."""
    return HEADER.pack(0x41, 0, cid, 1, 0, 1048576, 1, 0)


class App(protocol.Protocol):
    """The application's protocol on every swarm connection: records what it gets."""

    def __init__(self, greeting: bytes = b""):
        self.greeting = greeting
        self.data = b""
        self.lost = None

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


class Peer(protocol.Protocol):
    """A real TCP peer."""

    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


def scrape(swarm) -> dict:
    """``/metrics`` of the swarm, as ``{(name, labels): value}``."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tests.harness import metric_samples
    from txhyperswarm.web import NodeMetrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(swarm=swarm))
    return metric_samples(generate_latest(registry).decode())


class World:
    def __init__(self, greeting=b"", **options):
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = UDPNetwork(self.clock, latency=0.001)
        self.apps = []

        def build(addr):
            app = App(greeting)
            self.apps.append(app)
            return app

        factory = protocol.Factory()
        factory.buildProtocol = build
        self.swarm = Hyperswarm(self.net.reactor(HOST), bootstrap=[], multicast=False, ephemeral=True,
                                max_peers=MAX_PEERS, host=HOST, factory=factory, **options)
        self.swarm.startService()
        self.net.run_until(lambda: self.swarm.address() is not None, 5.0)
        self.port = self.swarm.address()[1]
        self.sockets = []

    def flood(self, count, first=0):
        """``count`` SYNs from spoofed sources spread over 127.0.0.0/8, a fresh id each."""
        for i in range(first, first + count):
            src = (f"127.{i // 250 % 250}.{i % 250}.{1 + i // 62500}", 1024 + i % 60000)
            self.net.transmit(syn(i & 0xFFFF), src, (HOST, self.port))
        self.net.run(0.01, step=0.001)

    def tcp_peer(self, host):
        peer = Peer()
        self.net.reactor(host).connectTCP(HOST, self.port, protocol.ClientFactory.forProtocol(lambda: peer))
        return peer

    def utp_peer(self, host):
        """A raw UTPSocket on ``host`` dials the swarm; returns (Deferred, protocol)."""
        udp = self.net.udp_socket(host, 4000)
        udp.listen()
        sock = UTPSocket(self.net.reactor(host), udp)
        self.sockets.append(sock)
        proto = UTPRecorder()
        return sock.connect(HOST, self.port, OneFactory(proto)), proto

    def app_of(self, host):
        apps = [a for a in self.apps if a.transport.getPeer().host == host]
        assert len(apps) == 1, apps
        return apps[0]

    def stop(self):
        done = []
        self.swarm.stopService().addBoth(done.append)
        for s in self.sockets:
            s.close()
        self.net.run(5.0, step=0.01)
        assert done == [None]
        assert self.clock.getDelayedCalls() == []


def test_a_syn_flood_at_the_limit_does_not_keep_a_real_tcp_and_a_real_utp_peer_out():
    lines = []

    def observe(event):
        if event.get("log_namespace") == "txhyperswarm.swarm.Hyperswarm" and event.get("log_level") is LogLevel.warn:
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        w = World()
        w.flood(2000)
        stats = w.swarm.stats()
        utp = w.swarm.network.utp.stats()
        # the limit is full of half-open connections from the flood
        assert stats["connections"] == MAX_PEERS and stats["peers"] == MAX_PEERS
        assert utp["half_open"] == MAX_PEERS
        # the flood itself evicted its own, within the budget; the rest refused
        at_limit = stats["inbound_at_limit"]
        assert at_limit["evicted_half_open"] == HALF_OPEN_EVICTIONS
        assert at_limit["refused"] == 2000 - MAX_PEERS - HALF_OPEN_EVICTIONS
        assert utp["dropped"]["syn_firewalled"] == at_limit["refused"]

        # a real TCP peer and a real uTP peer, at once, 0.1 s after the flood
        # (the uTP one needs one of the budget's tokens: 64 a second): both taken
        w.net.run(0.1, step=0.01)
        tcp = w.tcp_peer("10.0.0.2")
        d, utp_proto = w.utp_peer("10.0.0.3")
        w.net.run(0.05, step=0.001)
        assert d.called and tcp.lost is None
        tcp.transport.write(b"hello over tcp")
        utp_proto.transport.write(b"hello over utp")
        w.net.run(0.05, step=0.001)
        assert w.app_of("10.0.0.2").data == b"hello over tcp"
        assert w.app_of("10.0.0.3").data == b"hello over utp"
        w.app_of("10.0.0.2").transport.write(b"back over tcp")
        w.app_of("10.0.0.3").transport.write(b"back over utp")
        w.net.run(0.05, step=0.001)
        assert tcp.data == b"back over tcp" and bytes(utp_proto.received) == b"back over utp"
        stats = w.swarm.stats()
        assert stats["connections"] == MAX_PEERS  # never beyond the limit
        assert stats["inbound_at_limit"]["evicted_half_open"] == HALF_OPEN_EVICTIONS + 2
        assert w.swarm.network.utp.stats()["half_open"] == MAX_PEERS - 2

        # another flood, a second later: the real peers, no longer half-open, stay
        w.net.run(1.0, step=0.01)
        w.flood(2000, first=2000)
        assert w.app_of("10.0.0.2").lost is None and w.app_of("10.0.0.3").lost is None
        tcp.transport.write(b"!")
        utp_proto.transport.write(b"!")
        w.net.run(0.05, step=0.001)
        assert w.app_of("10.0.0.2").data.endswith(b"!") and w.app_of("10.0.0.3").data.endswith(b"!")
        assert w.swarm.stats()["connections"] == MAX_PEERS
        assert w.swarm.stats()["network"]["connections"]["tcp"] == 1
        # one summary line for all of it (the next comes a minute later at most)
        assert len(lines) == 1, [e["log_format"] for e in lines]
        # /metrics counts them
        at_limit = w.swarm.stats()["inbound_at_limit"]
        metrics = scrape(w.swarm)
        for outcome in ("evicted_half_open", "refused"):
            assert metrics[("hyperswarm_inbound_at_limit_total", (("outcome", outcome),))] == at_limit[outcome] > 0
        assert metrics[("hyperswarm_utp_half_open", ())] == w.swarm.network.utp.stats()["half_open"]
        w.stop()
    finally:
        globalLogPublisher.removeObserver(observe)


def test_the_acceptor_may_speak_first_and_a_silent_utp_connection_reaches_the_application():
    # under the limit nothing is evicted: a uTP connection on which the
    # initiator sends nothing reaches the application, which writes first;
    # its bytes leave once the initiator speaks (libutp holds them till then)
    w = World(greeting=b"server first")
    d, proto = w.utp_peer("10.0.0.3")
    w.net.run(0.05, step=0.001)
    assert d.called
    w.net.run(5.0, step=0.01)
    app = w.app_of("10.0.0.3")
    assert app.lost is None and len(w.swarm.connections) == 1
    proto.transport.write(b"x")
    w.net.run(0.05, step=0.001)
    assert bytes(proto.received) == b"server first" and app.data == b"x"
    assert w.swarm.stats()["inbound_at_limit"] == {}
    w.stop()


def test_no_budget_no_evictions_for_utp_but_tcp_still_gets_in():
    w = World(half_open_evictions=0)
    w.flood(MAX_PEERS + 20)
    assert w.swarm.stats()["inbound_at_limit"] == {"refused": 20}
    d, _ = w.utp_peer("10.0.0.3")  # refused: its SYNs go unanswered
    w.net.run(0.5, step=0.001)
    assert not d.called
    tcp = w.tcp_peer("10.0.0.2")
    w.net.run(0.05, step=0.001)
    assert tcp.lost is None and w.app_of("10.0.0.2").lost is None
    assert w.swarm.stats()["inbound_at_limit"]["evicted_half_open"] == 1
    d.addErrback(lambda f: None)
    d.cancel()
    w.stop()


class Banner(protocol.Protocol):
    """A local service that speaks first, then echoes."""

    def connectionMade(self):
        self.factory.made += 1
        self.transport.write(b"220 banner\r\n")

    def dataReceived(self, data):
        self.transport.write(data)


def test_expose_connects_a_half_open_utp_connection_at_its_first_byte_and_a_service_may_speak_first():
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from txhyperswarm.tunnel import Tunnels

    clock = Clock()
    net = UDPNetwork(clock, latency=0.001)
    reactor = net.reactor(HOST)
    service = protocol.Factory.forProtocol(Banner)
    service.made = 0
    local = reactor.listenTCP(8000, service, interface=HOST)
    tunnels = Tunnels(reactor)
    swarm = Hyperswarm(reactor, bootstrap=[], multicast=False, ephemeral=True, max_peers=MAX_PEERS, host=HOST,
                       factory=tunnels.expose_factory(TCP4ClientEndpoint(reactor, HOST, 8000), "service"))
    swarm.on("connection", tunnels.swarm_connection)
    swarm.startService()
    net.run_until(lambda: swarm.address() is not None, 5.0)
    port = swarm.address()[1]
    # spoofed SYNs: swarm connections, but no connection to the service
    for i in range(MAX_PEERS - 2):
        net.transmit(syn(i), (f"127.1.{i}.1", 1000 + i), (HOST, port))
    net.run(0.1, step=0.001)
    assert len(swarm.connections) == MAX_PEERS - 2 and service.made == 0
    # a real uTP peer: the service is reached at its first byte, and its banner comes first
    udp = net.udp_socket("10.0.0.3", 4000)
    udp.listen()
    sock = UTPSocket(net.reactor("10.0.0.3"), udp)
    peer = UTPRecorder()
    d = sock.connect(HOST, port, OneFactory(peer))
    net.run(0.1, step=0.001)
    assert d.called and service.made == 0
    peer.transport.write(b"x")
    net.run(0.1, step=0.001)
    assert service.made == 1 and bytes(peer.received) == b"220 banner\r\nx"
    # a real TCP peer: the service at once, its banner without a word from the peer
    tcp = Peer()
    net.reactor("10.0.0.2").connectTCP(HOST, port, protocol.ClientFactory.forProtocol(lambda: tcp))
    net.run(0.1, step=0.001)
    assert service.made == 2 and tcp.data == b"220 banner\r\n"
    assert tunnels.stats()["tunnels"] == 2
    done = []
    swarm.stopService().addBoth(done.append)
    tunnels.close_all()
    sock.close()
    local.stopListening()
    net.run(5.0, step=0.01)
    assert done == [None] and clock.getDelayedCalls() == []
