"""Python <-> Python uTP over real loopback sockets, and the endpoint strings."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint, IStreamServerEndpoint
from zope.interface.verify import verifyObject

from tests.utp.streams import OneFactory, Sink, Source, random_blob
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPConnection, UTPSocket, UTPTimeoutError


@pytest_twisted.inlineCallbacks
def test_python_to_python_16mib_over_loopback(reactor):
    ua, ub = UDPSocket(reactor, host="127.0.0.1"), UDPSocket(reactor, host="127.0.0.1")
    a, b = UTPSocket(reactor, ua), UTPSocket(reactor, ub)
    try:
        blob = random_blob(16 * 1024 * 1024)
        sink = Sink()
        b.listen(OneFactory(sink))
        src = Source(blob)
        proto = yield a.connect("127.0.0.1", b.address()[1], OneFactory(src))
        assert proto is src and isinstance(src.transport, UTPConnection)
        reason = yield sink.done.addTimeout(60, reactor)
        assert isinstance(reason, error.ConnectionDone)
        assert sink.count == len(blob)
        assert sink.hash.digest() == hashlib.sha256(blob).digest()
        assert isinstance((yield src.done.addTimeout(10, reactor)), error.ConnectionDone)
        host = src.transport.getHost()
        assert (host.type, host.host, host.port) == ("UDP", "127.0.0.1", ua.port)
    finally:
        yield a.close()
        yield b.close()
        yield ua.close()
        yield ub.close()


@pytest_twisted.inlineCallbacks
def test_dht_and_utp_share_one_port(reactor):
    udp = UDPSocket(reactor, host="127.0.0.1")
    dht_seen = []
    udp.set_dht_receiver(lambda data, addr: dht_seen.append(data))
    server = UTPSocket(reactor, udp)
    client_udp = UDPSocket(reactor, host="127.0.0.1")
    client = UTPSocket(reactor, client_udp)
    try:
        sink = Sink()
        server.listen(OneFactory(sink))
        src = Source(b"over the shared port")
        yield client.connect("127.0.0.1", udp.listen()[1], OneFactory(src))
        client_udp.send(b"\x58\x01\x08\x01", udp.address())  # a dht-rpc looking datagram
        yield sink.done.addTimeout(10, reactor)
        assert sink.count == len(b"over the shared port")
        assert dht_seen == [b"\x58\x01\x08\x01"]
    finally:
        yield client.close()
        yield server.close()
        yield udp.close()
        yield client_udp.close()


@pytest_twisted.inlineCallbacks
def test_endpoint_strings_make_working_endpoints(reactor):
    server_ep = serverFromString(reactor, "utp:port=0:interface=127.0.0.1")
    verifyObject(IStreamServerEndpoint, server_ep)
    sink = Sink()
    port = yield server_ep.listen(OneFactory(sink))
    verifyObject(IListeningPort, port)
    addr = port.getHost()
    assert (addr.type, addr.host) == ("UDP", "127.0.0.1") and addr.port > 0
    try:
        client_ep = clientFromString(reactor, f"utp:host=127.0.0.1:port={addr.port}")
        verifyObject(IStreamClientEndpoint, client_ep)
        src = Source(b"through endpoints")
        proto = yield client_ep.connect(OneFactory(src))
        assert proto is src
        yield sink.done.addTimeout(10, reactor)
        assert sink.count == len(b"through endpoints")
        yield src.done.addTimeout(10, reactor)
    finally:
        yield port.stopListening()


def test_endpoint_string_errors():
    from twisted.internet import reactor

    with pytest.raises(ValueError):
        clientFromString(reactor, "utp:host=127.0.0.1")
    with pytest.raises(ValueError):
        serverFromString(reactor, "utp:port=1:bogus=2")
    ep = serverFromString(reactor, "utp:4567")
    assert (ep.port, ep.interface) == (4567, "0.0.0.0")


@pytest_twisted.inlineCallbacks
def test_client_endpoint_timeout(reactor):
    silent = UDPSocket(reactor, host="127.0.0.1")
    silent.listen()
    try:
        ep = clientFromString(reactor, f"utp:host=127.0.0.1:port={silent.port}:timeout=0.5")
        with pytest.raises(UTPTimeoutError):
            yield ep.connect(OneFactory(Sink()))
    finally:
        yield silent.close()


@pytest_twisted.inlineCallbacks
def test_dial_and_accept_from_the_dht_port(reactor):
    """The swarm's case: uTP dialled from, and accepted on, the DHT node's own port."""
    from txhyperswarm.dht.node import DHTNode

    udp_a, udp_b = UDPSocket(reactor, host="127.0.0.1"), UDPSocket(reactor, host="127.0.0.1")
    dht_a = DHTNode(reactor, bootstrap=[], udp=udp_a)
    dht_a.startService()
    pinger = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    pinger.startService()
    a, b = UTPSocket(reactor, udp_a), UTPSocket(reactor, udp_b)
    try:
        sink = Sink()
        port = yield b.server_endpoint().listen(OneFactory(sink))
        src = Source(b"from the DHT's port")
        yield a.client_endpoint("127.0.0.1", udp_b.listen()[1], timeout=5).connect(OneFactory(src))
        yield sink.done.addTimeout(10, reactor)
        assert sink.count == len(b"from the DHT's port")
        assert sink.addr.port == dht_a.address()[1]  # the peer saw the DHT's port
        pong = yield pinger.ping(*dht_a.address()).addTimeout(5, reactor)
        assert pong.id == dht_a.id  # and the DHT still answers there
        yield port.stopListening()
        assert not b.closed  # a listener bound to a socket leaves it open
        assert a.stats()["bytes_sent"] == b.stats()["bytes_received"] == sink.count
    finally:
        yield a.close()
        yield b.close()
        yield dht_a.stopService()
        yield pinger.stopService()
        yield udp_a.close()
        yield udp_b.close()
