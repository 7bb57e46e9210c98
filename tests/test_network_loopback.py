"""
Two Networks on real loopback sockets (127.0.0.1) with a local DHT bootstrap
node: a TCP connection, and uTP through a holepunch once the announcer's TCP
listener is closed. The logged_errors fixture fails any test in which an
error was swallowed.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, error
from twisted.internet.protocol import Protocol

from txhyperswarm import connection as connection_module
from txhyperswarm.dht import peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.network import Network
from txhyperswarm.peer_record import PeerRecord

TOPIC = bytes(32)


class Echo(Protocol):
    """Sends ``greeting`` on connect; records data; ``done`` fires at connectionLost."""

    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.data = b""
        self.got = defer.Deferred()
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.data += data
        if not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason):
        self.done.callback(reason.value)


class Loopback:
    def __init__(self, reactor):
        self.reactor = reactor
        self.boot = DHTNode(reactor, bootstrap=[], host="127.0.0.1", port=0, ephemeral=False)
        peers.register(self.boot)
        self.boot.startService()
        self.boot_addr = ("127.0.0.1", self.boot.address()[1])
        self.accepted = []
        self.a = Network(
            reactor, bootstrap=[self.boot_addr], host="127.0.0.1", multicast=False,
            ephemeral=True, on_connection=self.on_connection,
        )
        self.b = Network(reactor, bootstrap=[self.boot_addr], host="127.0.0.1", multicast=False, ephemeral=True)
        self.inbound = defer.Deferred()

    def on_connection(self, conn):
        self.accepted.append(conn)
        proto = Echo(b"from a")
        conn.attach(proto)
        self.inbound.callback((conn, proto))

    @defer.inlineCallbacks
    def close(self):
        yield self.a.close()
        yield self.b.close()
        yield self.boot.stopService()


@pytest_twisted.inlineCallbacks
def test_tcp_between_two_networks_on_one_port_each(reactor):
    lo = Loopback(reactor)
    try:
        _, port = yield lo.a.bind()
        yield lo.b.bind()
        assert lo.a.dht.address() == ("127.0.0.1", port)
        conn = yield lo.b.connect(PeerRecord(TOPIC, "127.0.0.1", port, False, lo.boot_addr, None, "dht"))
        assert (conn.type, conn.client) == ("tcp", True)
        handle = conn.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == connection_module.TCP_KEEPIDLE
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == connection_module.TCP_KEEPCNT
        client = Echo(b"from b")
        conn.attach(client)
        inbound, server = yield lo.inbound.addTimeout(5, reactor)
        assert (inbound.type, inbound.client) == ("tcp", False)
        assert (yield server.got.addTimeout(5, reactor)) == b"from b"
        assert (yield client.got.addTimeout(5, reactor)) == b"from a"
        assert inbound.remote == ("127.0.0.1", client.transport.getHost().port)
        client.transport.loseConnection()
        assert isinstance((yield server.done.addTimeout(5, reactor)), error.ConnectionDone)
        assert isinstance((yield client.done.addTimeout(5, reactor)), error.ConnectionDone)
    finally:
        yield lo.close()


@pytest_twisted.inlineCallbacks
def test_utp_through_a_holepunch_when_the_tcp_listener_is_closed(reactor):
    lo = Loopback(reactor)
    try:
        _, port = yield lo.a.bind()
        yield lo.b.bind()
        yield lo.a.dht.bootstrapped()
        yield lo.b.dht.bootstrapped()
        yield lo.a.tcp_port.stopListening()
        conn = yield lo.b.connect(PeerRecord(TOPIC, "127.0.0.1", port, False, lo.boot_addr, None, "dht"))
        assert (conn.type, conn.client, conn.remote) == ("utp", True, ("127.0.0.1", port))
        client = Echo(b"from b")
        conn.attach(client)
        inbound, server = yield lo.inbound.addTimeout(5, reactor)
        assert (inbound.type, inbound.client) == ("utp", False)
        assert inbound.remote == ("127.0.0.1", lo.b.address()[1])  # uTP leaves from B's one port
        assert (yield server.got.addTimeout(5, reactor)) == b"from b"
        assert (yield client.got.addTimeout(5, reactor)) == b"from a"
        assert lo.b.stats()["dialled"]["utp"] == 1
        client.transport.loseConnection()
        assert isinstance((yield server.done.addTimeout(5, reactor)), error.ConnectionDone)
        assert isinstance((yield client.done.addTimeout(5, reactor)), error.ConnectionDone)
    finally:
        yield lo.close()


@pytest_twisted.inlineCallbacks
def test_announce_and_lookup_over_the_loopback_dht(reactor):
    lo = Loopback(reactor)
    try:
        _, port = yield lo.a.bind()
        yield lo.b.bind()
        yield lo.a.dht.bootstrapped()
        yield lo.b.dht.bootstrapped()
        ta = lo.a.join(TOPIC, announce=True, lookup=False)
        assert (yield ta.when_ready().addTimeout(10, reactor)) is True
        found = []
        tb = lo.b.join(TOPIC, lookup=True, on_peer=found.append)
        assert (yield tb.when_ready().addTimeout(10, reactor)) is True
        assert ("127.0.0.1", port) in {(p.host, p.port) for p in found}
        yield tb.stop()
    finally:
        yield lo.close()
