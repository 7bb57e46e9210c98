"""
Limits against abuse at the swarm's network layer: inbound TCP connections
per IP address (refused at accept, before the application sees them), the
bytes a connection holds before a protocol is attached (a peer that keeps
sending to a paused reader, over TCP and uTP), the uTP limits passed through
:class:`~txhyperswarm.network.Network`, and the multicast DNS answers per
second. In-memory (txhyperswarm.testing, a Clock) first, then one test on
real sockets per limit where that is cheap. Each test hits its limit, reads
what was refused from a counter, and shows the node still serving others.
"""

from __future__ import annotations

import hashlib
import os
import socket

import pytest_twisted
from twisted.internet import protocol
from twisted.internet.task import Clock, deferLater

from tests.utp.streams import OneFactory, Recorder as UTPRecorder, Source
from txhyperswarm.mdns import MulticastDiscovery
from txhyperswarm.mdns import wire
from txhyperswarm.mdns.service import MAX_ANSWERS_PER_SECOND
from txhyperswarm.network import MAX_TCP_PER_ADDRESS, Network
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket
from txhyperswarm.utp.packet import HEADER

TOPIC = bytes(range(32))


class Client(protocol.Protocol):
    """A raw TCP client: records what it gets and whether it was closed."""

    def __init__(self):
        self.data = b""
        self.made = False
        self.lost = None

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


class Sink(protocol.Protocol):
    def __init__(self):
        self.data = bytearray()

    def dataReceived(self, data):
        self.data += data


class World:
    def __init__(self, **net_kwargs):
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = UDPNetwork(self.clock, **net_kwargs)
        self.networks = []

    def network(self, host, **kwargs):
        kwargs.setdefault("bootstrap", [])
        kwargs.setdefault("multicast", False)
        kwargs.setdefault("ephemeral", True)
        self.accepted = []
        n = Network(self.net.reactor(host), on_connection=self.accepted.append, host=host, **kwargs)
        self.host = host
        out = []
        n.bind().addBoth(out.append)
        self.networks.append(n)
        return n

    def tcp_client(self, host, port):
        c = Client()
        f = protocol.ClientFactory.forProtocol(lambda: c)
        self.net.reactor(host).connectTCP(self.host, port, f)
        return c

    def close_all(self):
        done = []
        for n in self.networks:
            n.close().addCallback(done.append)
        self.net.run_until(lambda: len(done) == len(self.networks), 15)


# -- TCP connections per address ----------------------------------------------------


def test_tcp_default_per_address_limit_is_generous():
    assert MAX_TCP_PER_ADDRESS >= 256  # the daemon's default --max-peers


def test_inbound_tcp_per_address_is_capped_at_accept_and_others_still_get_in():
    w = World()
    n = w.network("10.0.0.1", max_tcp_per_address=3)
    addr = n.address()[1]
    clients = [w.tcp_client("10.0.0.2", addr) for _ in range(5)]
    w.net.run(0.1)
    assert len(w.accepted) == 3  # the application saw three
    assert n.stats()["refused"]["tcp_per_address"] == 2
    assert sum(1 for c in clients if c.lost is not None) == 2  # closed at once
    other = w.tcp_client("10.0.0.3", addr)
    w.net.run(0.1)
    assert len(w.accepted) == 4 and other.lost is None
    # the accepted ones carry data
    sink = Sink()
    w.accepted[-1].attach(sink)
    other.transport.write(b"hello")
    w.net.run(0.1)
    assert bytes(sink.data) == b"hello"
    # one of 10.0.0.2's ends: it may connect again
    w.accepted[0].close()
    w.net.run(0.1)
    again = w.tcp_client("10.0.0.2", addr)
    w.net.run(0.1)
    assert again.lost is None and len(w.accepted) == 5
    assert n.stats()["refused"]["tcp_per_address"] == 2
    w.close_all()


# -- bytes held before attach -------------------------------------------------------------


def test_a_tcp_peer_that_keeps_sending_to_an_unattached_connection_is_held_at_the_pause_mark():
    w = World()
    limit = 64 * 1024
    n = w.network("10.0.0.1", connection_buffer=limit)
    client = w.tcp_client("10.0.0.2", n.address()[1])
    w.net.run(0.1)
    blob = os.urandom(4 * 1024 * 1024)
    client.transport.write(blob)  # far beyond the limit and the TCP window
    w.net.run(2.0)
    [conn] = w.accepted
    assert limit < conn.buffered <= limit + 256 * 1024  # one TCP window at most past the mark
    w.net.run(5.0)
    assert conn.buffered <= limit + 256 * 1024  # it stays there: the transport is paused
    sink = Sink()
    conn.attach(sink)
    w.net.run(5.0)
    assert bytes(sink.data) == blob  # nothing lost by pausing
    w.close_all()


def utp_dial(w, host, server_addr, proto):
    """A raw UTPSocket on ``host`` dials ``server_addr``; returns the socket."""
    udp = w.net.udp_socket(host, 4000)
    udp.listen()
    sock = UTPSocket(w.net.reactor(host), udp)
    d = sock.connect(server_addr[0], server_addr[1], OneFactory(proto))
    w.net.run_until(lambda: d.called, 2.0, step=0.001)
    assert d.called
    return sock


def test_a_utp_peer_that_keeps_sending_to_an_unattached_connection_is_bounded():
    w = World()
    limit = 64 * 1024
    n = w.network("10.0.0.1", connection_buffer=limit)
    blob = os.urandom(8 * 1024 * 1024)
    src = Source(blob)
    utp_dial(w, "10.0.0.2", n.address(), src)
    w.net.run(3.0, step=0.001)
    [conn] = w.accepted
    transport = conn.transport
    assert limit < conn.buffered <= limit + 1382  # paused at the mark (uTP delivers a packet at a time)
    # the rest waits in uTP's bounded read buffer, and the sender is held by the window
    assert transport.read_buffered <= 2 * 1024 * 1024 + 1382
    assert src.offset < len(blob)
    # (a peer ignoring the window: tests/utp/test_connection.py's
    # test_a_peer_ignoring_our_window_cannot_grow_the_read_buffer)
    w.net.run(10.0, step=0.001)
    assert limit < conn.buffered <= limit + 1382 and transport.read_buffered <= 2 * 1024 * 1024 + 1382
    sink = Sink()
    conn.attach(sink)
    w.net.run(30.0, step=0.001)
    assert hashlib.sha256(bytes(sink.data)).digest() == hashlib.sha256(blob).digest()
    w.close_all()


# -- uTP limits through the Network ---------------------------------------------------------


def syn(cid: int) -> bytes:
    return HEADER.pack(0x41, 0, cid, 1, 0, 1048576, 1, 0)


def test_network_passes_its_utp_limits_to_the_utp_socket_and_a_syn_flood_is_held():
    w = World()
    n = w.network(
        "10.0.0.1", max_utp_connections=100, max_utp_per_address=10, max_half_open=20,
        max_half_open_per_address=5, half_open_timeout=7.0,
    )
    assert (n.utp.max_connections, n.utp.max_connections_per_address, n.utp.max_half_open,
            n.utp.max_half_open_per_address, n.utp.half_open_timeout) == (100, 10, 20, 5, 7.0)
    port = n.address()[1]
    # a flood of SYNs from 100 ports of each of 50 addresses of 127.0.0.0/8
    for i in range(50):
        for p in range(1000, 1100):
            w.net.transmit(syn(p), (f"127.0.{i}.1", p), ("10.0.0.1", port))
    w.net.run(0.1)
    dropped = n.utp.stats()["dropped"]
    assert n.utp.stats()["half_open"] == 20
    assert dropped["syn_half_open_per_address"] == 50 * 95
    assert dropped["half_open_evicted"] == 50 * 5 - 20
    # a real peer still gets a connection to the application
    proto = UTPRecorder()
    utp_dial(w, "10.0.0.2", ("10.0.0.1", port), proto)
    proto.transport.write(b"hello")
    w.net.run(0.1)
    real = [c for c in w.accepted if c.remote[0] == "10.0.0.2"]
    assert len(real) == 1
    sink = Sink()
    real[0].attach(sink)
    assert bytes(sink.data) == b"hello"
    # the flood's half-open connections end after the half-open timeout
    w.net.run(7.5)
    assert n.utp.stats()["half_open"] == 0
    assert real[0].closed is False
    w.close_all()


# -- mDNS answers per second ---------------------------------------------------------------


def test_mdns_answers_at_most_n_per_second_under_a_query_flood_and_peers_still_find_it():
    net = UDPNetwork(latency=0.001)
    net.clock.advance(1000.0)
    a = MulticastDiscovery(net.reactor("10.0.0.1"), interface="10.0.0.1", max_answers_per_second=20)
    b = MulticastDiscovery(net.reactor("10.0.0.2"), interface="10.0.0.2")
    a.startService()
    b.startService()
    a.announce(TOPIC, 4000)
    net.run(0.1)
    responses0 = a.sent["response"]
    query = wire.encode_query([wire.domain_name(TOPIC)])
    # 10,000 queries in 2 s from 2,000 addresses of 127.0.0.0/8, for the name it announces
    def burst(first):
        for i in range(first, first + 50):
            net.transmit(query, (f"127.1.{i % 2000 // 256}.{i % 256}", 5353), ("224.0.0.251", 5353))

    for k in range(200):  # 50 every 10 ms
        net.clock.callLater(k * 0.01, burst, k * 50)
    found = []
    b.lookup(TOPIC, found.append)  # a real peer looks up during the flood
    net.run(2.1, step=0.01)
    answered = a.sent["response"] - responses0
    assert 20 * 2 <= answered <= 20 * 2.1 + 20  # the rate for 2 s plus the initial burst of 20
    # every query (the flood's and the real peer's) was answered or counted
    assert answered + a.dropped["answer_rate_limited"] == 10_001
    assert a.stats()["dropped"]["answer_rate_limited"] == a.dropped["answer_rate_limited"]
    assert any((p.host, p.port) == ("10.0.0.1", 4000) for p in found)
    a.stopService()
    b.stopService()
    net.run(0.1)


def test_mdns_default_rate_does_not_throttle_normal_queries():
    assert MAX_ANSWERS_PER_SECOND >= 20
    net = UDPNetwork(latency=0.001)
    a = MulticastDiscovery(net.reactor("10.0.0.1"), interface="10.0.0.1")
    a.startService()
    a.announce(TOPIC, 4000)
    others = [MulticastDiscovery(net.reactor(f"10.0.1.{i}"), interface=f"10.0.1.{i}") for i in range(1, 21)]
    found = {}
    for i, d in enumerate(others):
        d.startService()
        d.lookup(TOPIC, lambda p, i=i: found.setdefault(i, p))
    net.run(0.5)
    assert len(found) == 20  # twenty peers looking up at once all heard it
    assert a.dropped["answer_rate_limited"] == 0
    for d in [a] + others:
        d.stopService()
    net.run(0.1)


# -- real sockets -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_real_tcp_per_address_limit(reactor):
    accepted = []
    n = Network(reactor, bootstrap=[], multicast=False, ephemeral=True, host="127.0.0.1",
                max_tcp_per_address=2, on_connection=accepted.append)
    try:
        _, port = yield n.bind()
        socks = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            socks.append(s)
        yield deferLater(reactor, 0.3, lambda: None)
        assert len(accepted) == 2
        assert n.stats()["refused"]["tcp_per_address"] == 1
        closed = []
        for s in socks:
            try:
                closed.append(s.recv(1) == b"")
            except BlockingIOError:
                closed.append(False)
        assert closed.count(True) == 1  # the third, closed at accept
        other = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
        socks.append(other)
        yield deferLater(reactor, 0.3, lambda: None)
        assert len(accepted) == 3 and accepted[-1].remote[0] == "127.0.0.2"
        for s in socks:
            s.close()
    finally:
        yield n.close()


@pytest_twisted.inlineCallbacks
def test_real_utp_syn_flood_from_many_addresses(reactor):
    udp = UDPSocket(reactor, host="127.0.0.1")
    server = UTPSocket(reactor, udp, max_half_open=30, max_half_open_per_address=3)
    built = []

    class F(protocol.Factory):
        def buildProtocol(self, addr):
            p = UTPRecorder()
            built.append(p)
            return p

    server.listen(F())
    _, port = udp.listen()
    flooders = []
    client_udp = client = None
    try:
        for i in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.3.{i + 1}", 0))
            flooders.append(s)
            for cid in range(10):
                s.sendto(syn(cid * 2), ("127.0.0.1", port))
        yield deferLater(reactor, 0.3, lambda: None)
        dropped = server.stats()["dropped"]
        assert server.stats()["half_open"] == 30
        assert dropped["syn_half_open_per_address"] == 20 * 7
        assert dropped["half_open_evicted"] == 20 * 3 - 30
        client_udp = UDPSocket(reactor, host="127.0.0.2")
        client = UTPSocket(reactor, client_udp)
        proto = UTPRecorder()
        got = yield client.connect("127.0.0.1", port, OneFactory(proto), timeout=5.0)
        got.transport.write(b"hello")
        yield deferLater(reactor, 0.2, lambda: None)
        assert any(bytes(p.received) == b"hello" for p in built)
    finally:
        for s in flooders:
            s.close()
        if client is not None:
            yield client.close()
            yield client_udp.close()
        yield server.close()
        yield udp.close()


def test_hyperswarm_passes_network_options_through():
    from txhyperswarm import Hyperswarm

    net = UDPNetwork()
    swarm = Hyperswarm(net.reactor("10.0.0.1"), bootstrap=[], multicast=False,
                       network_options={"max_tcp_per_address": 3, "max_half_open": 40})
    assert swarm.network.max_tcp_per_address == 3
    assert swarm.network.utp_limits["max_half_open"] == 40


def test_libutps_3000_connections_in_all_is_the_default_and_holds():
    """3,000 established connections from 3,000 addresses of 127.0.0.0/8 fill
    the table at the default limit; the next SYN is dropped and counted."""
    from tests.utp.test_connection import utp_socket

    clock = Clock()
    net = UDPNetwork(clock)
    server = utp_socket(net, ("10.0.0.1", 7000))
    server._initial_seq = lambda: 100  # so the spoofed DATA acks the reply
    built = []

    class F(protocol.Factory):
        def buildProtocol(self, addr):
            built.append(addr)
            return UTPRecorder()

    server.listen(F())
    hosts = [f"127.2.{i // 250}.{i % 250 + 1}" for i in range(3001)]
    for host in hosts:
        server.datagram_received(syn(1000), (host, 9))
        server.datagram_received(HEADER.pack(0x01, 0, 1001, 1, 0, 1048576, 2, 99) + b"hi", (host, 9))
    assert len(server.connections) == 3000 and server.stats()["half_open"] == 0
    assert server.dropped["syn_too_many"] == 1
    assert len(built) == 3000
    server.close()


@pytest_twisted.inlineCallbacks
def test_real_tcp_peer_sending_to_an_unattached_connection_is_held_at_the_pause_mark(reactor):
    accepted = []
    limit = 256 * 1024
    n = Network(reactor, bootstrap=[], multicast=False, ephemeral=True, host="127.0.0.1",
                connection_buffer=limit, on_connection=accepted.append)
    s = None
    try:
        _, port = yield n.bind()
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        blob = os.urandom(32 * 1024 * 1024)
        sent = 0
        for _ in range(50):  # write what the kernel takes for about a second
            try:
                sent += s.send(blob[sent:sent + 1024 * 1024])
            except BlockingIOError:
                pass
            yield deferLater(reactor, 0.02, lambda: None)
        [conn] = accepted
        assert limit < conn.buffered <= limit + 64 * 1024  # one read past the mark
        assert sent < len(blob)  # the sender is held back by TCP
        sink = Sink()
        conn.attach(sink)
        while sent < len(blob):
            try:
                sent += s.send(blob[sent:sent + 1024 * 1024])
            except BlockingIOError:
                yield deferLater(reactor, 0.005, lambda: None)
        for _ in range(500):
            if len(sink.data) == len(blob):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert bytes(sink.data) == blob
    finally:
        if s is not None:
            s.close()
        yield n.close()


@pytest_twisted.inlineCallbacks
def test_real_mdns_query_flood_is_answered_at_the_rate(private_netns, reactor):
    d = MulticastDiscovery(reactor, max_answers_per_second=10)
    d.startService()
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        d.announce(TOPIC, 4000)
        yield deferLater(reactor, 0.05, lambda: None)
        base = d.sent["response"]
        query = wire.encode_query([wire.domain_name(TOPIC)])
        for _ in range(10):  # 1,000 queries in 0.5 s
            for _ in range(100):
                flooder.sendto(query, ("224.0.0.251", 5353))
            yield deferLater(reactor, 0.05, lambda: None)
        yield deferLater(reactor, 0.2, lambda: None)
        answered = d.sent["response"] - base
        assert answered <= 10 + 10 * 1.0  # a burst of 10, then 10/s for under a second
        assert answered + d.dropped["answer_rate_limited"] == 1000
    finally:
        flooder.close()
        yield d.stopService()


def test_the_default_tcp_limit_takes_a_daemons_worth_of_connections_from_one_address():
    w = World()
    n = w.network("10.0.0.1")
    port = n.address()[1]
    clients = [w.tcp_client("10.0.0.2", port) for _ in range(MAX_TCP_PER_ADDRESS + 1)]
    w.net.run(0.5)
    assert len(w.accepted) == MAX_TCP_PER_ADDRESS
    assert n.stats()["refused"]["tcp_per_address"] == 1
    assert sum(1 for c in clients if c.lost is None) == MAX_TCP_PER_ADDRESS
    w.close_all()


def test_what_a_paused_transport_hands_over_at_attach_comes_after_the_buffer_and_its_end_is_told():
    """uTP hands its read buffer over synchronously on resumeProducing (and,
    when the peer has gone, its end): the protocol gets it after what the
    connection held, then connectionLost."""
    from twisted.internet import error
    from twisted.python.failure import Failure

    from txhyperswarm.connection import Connection

    class SyncTransport:
        def __init__(self):
            self.conn = None

        def pauseProducing(self):
            pass

        def resumeProducing(self):
            self.conn.dataReceived(b"late")
            self.conn.readConnectionLost()
            self.conn.connectionLost(Failure(error.ConnectionDone()))

        def loseConnection(self):
            pass

    class Rec(protocol.Protocol):
        def __init__(self):
            self.data, self.lost = b"", None

        def dataReceived(self, data):
            self.data += data

        def connectionLost(self, reason):
            self.lost = reason

    c = Connection("utp", False, ("1.2.3.4", 5), buffer_pause=4)
    t = SyncTransport()
    t.conn = c
    c.makeConnection(t)
    c.dataReceived(b"early")  # past the mark: paused
    p = Rec()
    c.attach(p)
    assert p.data == b"earlylate"
    assert p.lost is not None and p.lost.check(error.ConnectionDone)
