"""
Hyperswarm on the real Network, DHT, uTP and mDNS, all on
txhyperswarm.testing's in-memory UDP, TCP and multicast on one Clock: two or
more swarms as in production, without sockets.
"""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol

from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.stream import Stream
from txhyperswarm.swarm import BindError

from tests.swarm_world import BOOT, IdExchange, World

T1 = b"\x11" * 32


def fired(d):
    out = []
    d.addBoth(out.append)
    return out


def test_dht_peer_then_tcp_connection_with_data():
    w = World()
    a = w.swarm("a", "10.0.0.2")
    b = w.swarm("b", "10.0.0.3")
    ja = fired(a.join(T1, announce=True, lookup=False))
    w.run(1)
    jb = fired(b.join(T1))
    w.run(1)
    assert ja == [True] and jb == [True]
    (_, _, _, (peer,)), = w.of("b", "peer")
    assert (peer.host, peer.port, peer.referrer, peer.source) == ("10.0.0.2", a.address()[1], BOOT, "dht")
    (_, _, _, (sa, ia)), = w.of("a", "connection")
    (_, _, _, (sb, ib)), = w.of("b", "connection")
    assert isinstance(sa, Stream) and sa.transport.getPeer().host == "10.0.0.3"
    assert (ia.client, ia.type, ia.peer, ia.remote[0], ia.local) == (False, "tcp", None, "10.0.0.3", True)
    assert (ib.client, ib.type, ib.peer, ib.remote) == (True, "tcp", peer, ("10.0.0.2", a.address()[1]))
    got = []
    sa.on_data = got.append
    sb.write(b"x" * 100000)
    w.run(1)
    assert b"".join(got) == b"x" * 100000
    w.stop_all()
    assert w.seq("a")[-2:] == ["disconnection", "close"]


def test_leave_unannounces_before_it_fires():
    """Once leave() fired, a DHT lookup no longer finds the peer."""
    w = World()
    a = w.swarm("a", "10.0.0.2")
    a.join(T1, announce=True, lookup=False)
    w.run(1)
    node = DHTNode(w.net.reactor("10.0.0.9"), bootstrap=[BOOT], ephemeral=True)
    node.startService()
    w.run(1)

    def lookup():
        out = []
        dht_peers.lookup(node, T1).addBoth(out.append)
        w.run(1)
        return [(r.host, r.port) for r in out[0]]

    assert lookup() == [("10.0.0.2", a.address()[1])]
    left = fired(a.leave(T1))
    assert left == []
    w.run(1)
    assert left == [None]
    assert lookup() == []
    node.stopService()
    w.stop_all()


def test_mdns_discovery_in_memory():
    """With no DHT node answering, mDNS still finds the peer (join fires False)."""
    w = World()
    a = w.swarm("a", "10.0.0.2", multicast=True, bootstrap=[])
    b = w.swarm("b", "10.0.0.3", multicast=True, bootstrap=[])
    ja = fired(a.join(T1, announce=True, lookup=False))
    jb = fired(b.join(T1))
    w.run(2)
    assert ja == [False] and jb == [False]
    peers = [e[3][0] for e in w.of("b", "peer")]
    assert peers and all(p.source == "mdns" and p.local for p in peers)
    assert len(w.of("b", "connection")) == 1 and len(w.of("a", "connection")) == 1
    w.stop_all()


@pytest.mark.parametrize("ids", [(b"\x01" * 32, b"\x02" * 32), (b"\x02" * 32, b"\x01" * 32)])
def test_simultaneous_connect_with_dht_and_mdns(ids):
    """Both announce and look up with the DHT and mDNS on, so both dial;
    within 10 s one connection remains on each side, dialled by the peer
    with the smaller id, the same address pair on both sides."""
    w = World()
    results = []
    swarms = []
    for name, host, own in (("a", "10.0.0.2", ids[0]), ("b", "10.0.0.3", ids[1])):
        f = Factory()
        f.buildProtocol = (lambda own: lambda addr: IdExchange(own, results))(own)
        s = w.swarm(name, host, factory=f, multicast=True)
        s.on("connection", lambda p, info: (setattr(p, "info", info), p.check()))
        swarms.append(s)
    a, b = swarms
    for s in swarms:
        s.join(T1, announce=True)
    w.run(10)
    assert len(a.connections) == 1 and len(b.connections) == 1
    (pa,), (pb,) = a.connections, b.connections
    assert (pa.transport.getHost().port, pa.transport.getPeer().port) == (
        pb.transport.getPeer().port, pb.transport.getHost().port)
    assert pa.info.client == (ids[0] < ids[1]) and pb.info.client == (ids[1] < ids[0])
    w.run(30)
    assert len(a.connections) == 1 and len(b.connections) == 1
    w.stop_all()


def test_bind_failure_with_the_real_network(logged_errors):
    w = World()
    blocker = w.swarm("x", "10.0.0.2", port=40000)
    w.run(0.1)
    a = w.swarm("a", "10.0.0.2", port=40000)
    j = fired(a.join(T1))
    w.run(0.1)
    assert j[0].check(BindError)
    assert logged_errors.take(BindError)
    assert blocker.address() == ("0.0.0.0", 40000)
    w.stop_all()


def test_adaptive_ephemerality_turns_persistent_on_a_clock():
    """ephemeral=None: the DHT node starts ephemeral and, 20-30 min later,
    with a consistent external address, becomes persistent."""
    w = World()
    others = []
    for i in range(3):  # enough nodes that agree on our address
        n = DHTNode(w.net.reactor("10.0.1.%d" % (i + 1)), bootstrap=[BOOT], port=49737, ephemeral=False)
        dht_peers.register(n)
        n.startService()
        others.append(n)
    w.run(2)
    a = w.swarm("a", "10.0.0.2", ephemeral=None)
    a.join(T1, announce=True)
    w.run(2)
    assert a.network.dht.ephemeral is True
    w.run(31 * 60)
    assert a.network.dht.ephemeral is False
    for n in others:
        n.stopService()
    w.stop_all()


def test_utp_through_a_holepunch_when_tcp_cannot_connect():
    """The announcer's TCP listener is gone: the looker's dial holepunches
    through the referrer and connects over uTP; both sides see "utp", the
    stream carries data both ways and half-closes."""
    w = World()
    a = w.swarm("a", "10.0.0.2")
    b = w.swarm("b", "10.0.0.3")
    a.join(T1, announce=True, lookup=False)
    w.run(1)
    w.net.tcp_unlisten(("10.0.0.2", a.address()[1]))
    b.join(T1)
    w.run(3)
    (_, _, _, (sa, ia)), = w.of("a", "connection")
    (_, _, _, (sb, ib)), = w.of("b", "connection")
    assert (ia.type, ia.client, ib.type, ib.client) == ("utp", False, "utp", True)
    assert ib.peer.referrer == BOOT and ia.remote == ("10.0.0.3", b.address()[1])
    assert sa.transport.getPeer().type == "UDP"
    got_a, got_b = [], []
    sa.on_data, sb.on_data = got_a.append, got_b.append
    sa.write(b"a" * 50000)
    sb.write(b"b" * 50000)
    w.run(2)
    assert b"".join(got_a) == b"b" * 50000 and b"".join(got_b) == b"a" * 50000
    sb.end()
    w.run(0.5)
    assert sa.ended and sb.ended and sa.closed and sb.closed
    assert w.seq("a")[-1] == "disconnection" and w.seq("b")[-1] == "disconnection"
    w.run(2)  # b redials its proven peer over uTP again (~1.3 s)
    assert w.seq("b")[-1] == "connection" and w.of("b", "connection")[-1][3][1].type == "utp"
    w.stop_all()


@pytest.mark.parametrize("transport", ["tcp", "utp"])
def test_a_half_closeable_factory_protocol_keeps_writing_after_the_peers_end(transport):
    """A protocol providing IHalfCloseableProtocol gets readConnectionLost
    when the peer ends its side, and may still write, over TCP and uTP."""
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class Half(Protocol):
        def connectionMade(self):
            self.got, self.events = b"", []

        def dataReceived(self, data):
            self.got += data

        def readConnectionLost(self):
            self.events.append("read_lost")
            self.transport.write(b"after your end")
            self.transport.loseConnection()

        def writeConnectionLost(self):
            self.events.append("write_lost")

        def connectionLost(self, reason):
            self.events.append("lost")

    w = World()
    a = w.swarm("a", "10.0.0.2", factory=Factory.forProtocol(Half))
    b = w.swarm("b", "10.0.0.3", factory=Factory.forProtocol(Half))
    a.join(T1, announce=True, lookup=False)
    w.run(1)
    if transport == "utp":
        w.net.tcp_unlisten(("10.0.0.2", a.address()[1]))
    b.join(T1)
    w.run(3)
    (_, _, _, (pa, ia)), = w.of("a", "connection")
    (_, _, _, (pb, ib)), = w.of("b", "connection")
    assert ia.type == ib.type == transport
    pb.transport.write(b"hello")
    pb.transport.loseWriteConnection()
    w.run(1)
    assert pa.got == b"hello" and pa.events[:1] == ["read_lost"]
    assert pb.got == b"after your end" and "write_lost" in pb.events and pb.events[-1] == "lost"
    assert pa.events[-1] == "lost"
    w.stop_all()
