"""txhyperswarm.testing: the in-memory UDP network runs the real classes unchanged."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from txhyperswarm.dht.node import DHTNode
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp.socket import UTPSocket


class Collect(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


def test_datagrams_arrive_after_the_latency_from_the_senders_address():
    net = UDPNetwork(latency=0.05)
    a, b = Collect(), Collect()
    pa = net.reactor("127.0.0.1").listenUDP(0, a)
    pb = net.reactor("127.0.0.2").listenUDP(7000, b)
    a.transport.write(b"hello", ("127.0.0.2", 7000))
    net.clock.advance(0.049)
    assert b.got == []
    net.clock.advance(0.001)
    assert b.got == [(b"hello", ("127.0.0.1", pa.getHost().port))]
    assert pb.getHost().port == 7000


def test_a_taken_port_cannot_be_bound_and_is_free_again_after_stopListening():
    net = UDPNetwork()
    r = net.reactor("127.0.0.1")
    p = r.listenUDP(5000, Collect())
    with pytest.raises(error.CannotListenError) as e:
        r.listenUDP(5000, Collect())
    assert e.value.socketError.errno == errno.EADDRINUSE
    p.stopListening()
    r.listenUDP(5000, Collect())
    with pytest.raises(error.CannotListenError):
        r.listenUDP(0, Collect(), interface="127.0.0.9")


def test_bad_destinations_raise_as_a_real_udp_port_does():
    net = UDPNetwork()
    a = Collect()
    net.reactor().listenUDP(0, a)
    with pytest.raises(error.InvalidAddressError):
        a.transport.write(b"x", ("localhost", 1))
    with pytest.raises(error.MessageLengthError):
        a.transport.write(b"x" * 65508, ("127.0.0.1", 1))


@settings(max_examples=30, deadline=None)
@given(loss=st.floats(0, 1), dup=st.floats(0, 1), reorder=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_every_datagram_is_counted_once_as_lost_or_delivered(loss, dup, reorder, seed):
    net = UDPNetwork(loss=loss, duplicate=dup, reorder=reorder, seed=seed)
    a, b = Collect(), Collect()
    net.reactor("127.0.0.1").listenUDP(1, a)
    net.reactor("127.0.0.2").listenUDP(2, b)
    for i in range(200):
        a.transport.write(b"%d" % i, ("127.0.0.2", 2))
    net.run(1)
    c = net.counts
    assert c["sent"] == 200
    assert c["delivered"] == len(b.got)
    assert c["delivered"] + c["lost"] == 200 + c["duplicated"]
    assert {d for d, _ in b.got} <= {b"%d" % i for i in range(200)}


def test_reordering_lets_later_datagrams_overtake():
    net = UDPNetwork(latency=0.01, reorder=0.5, seed=3)
    a, b = Collect(), Collect()
    net.reactor("127.0.0.1").listenUDP(1, a)
    net.reactor("127.0.0.2").listenUDP(2, b)
    for i in range(50):
        a.transport.write(bytes([i]), ("127.0.0.2", 2))
        net.clock.advance(0.001)
    net.run(1)
    order = [d[0] for d, _ in b.got]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))


def test_dht_nodes_bootstrap_and_ping_over_it():
    net = UDPNetwork(latency=0.005)
    boot = DHTNode(net.reactor("127.0.0.1"), bootstrap=[], port=49737)
    boot.startService()
    peers = [DHTNode(net.reactor(), bootstrap=[("127.0.0.1", 49737)], ephemeral=False) for _ in range(5)]
    for p in peers:
        p.startService()
    net.run(10)
    assert all(p.routing_table_size >= 1 for p in peers)
    pong = []
    peers[0].ping("127.0.0.1", 49737).addCallback(pong.append)
    net.run(1)
    assert len(pong) == 1
    for n in [boot, *peers]:
        n.stopService()


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Sink(Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_utp_carries_a_stream_through_loss_reordering_and_duplication(loss):
    net = UDPNetwork(latency=0.01, loss=loss, duplicate=0.02, reorder=0.02, seed=7)
    server = UTPSocket(net.reactor("127.0.0.1"), net.udp_socket("127.0.0.1", 6000))
    server.listen(Factory.forProtocol(Echo))
    client = UTPSocket(net.reactor("127.0.0.2"), net.udp_socket("127.0.0.2"))
    got = []
    client.connect("127.0.0.1", 6000, Factory.forProtocol(Sink)).addCallback(got.append)
    assert net.run_until(lambda: got, 5)
    payload = bytes(range(256)) * 1024  # 256 KiB
    got[0].transport.write(payload)
    assert net.run_until(lambda: len(got[0].received) >= len(payload), 60)
    assert bytes(got[0].received) == payload
    client.close()
    server.close()
    net.run(1)
