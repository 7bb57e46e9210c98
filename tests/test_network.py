"""
txhyperswarm.network and txhyperswarm.connection on the in-memory network of
txhyperswarm.testing (TCP, UDP, multicast on one Clock): binding, inbound
connections, the Connection's buffering and attach, half-close, close.
"""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txhyperswarm.connection import Connection
from txhyperswarm.dht import peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.network import (
    BindError,
    Network,
    NetworkClosed,
    local_address,
    port_candidates,
)
from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.testing import UDPNetwork

BOOT = ("10.0.0.100", 49737)
TOPIC = bytes(range(32))


class Recorder(Protocol):
    """Records what reaches it."""

    def __init__(self):
        self.events = []
        self.data = b""

    def connectionMade(self):
        self.events.append("made")

    def dataReceived(self, data):
        self.data += data
        self.events.append(("data", data))

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


@implementer(IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    def readConnectionLost(self):
        self.events.append("read_lost")

    def writeConnectionLost(self):
        self.events.append("write_lost")


class World:
    """A Clock, an in-memory network with a DHT bootstrap node, and Networks on hosts."""

    def __init__(self, **net_kwargs):
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = UDPNetwork(self.clock, **net_kwargs)
        self.boot = DHTNode(self.net.reactor(BOOT[0]), bootstrap=[], port=BOOT[1], ephemeral=False)
        self.boot_store = peers.register(self.boot).store
        self.boot.startService()
        self.networks = []

    def network(self, host, **kwargs):
        kwargs.setdefault("bootstrap", [BOOT])
        kwargs.setdefault("multicast", False)
        accepted = kwargs.pop("accepted", None)
        if accepted is not None:
            kwargs["on_connection"] = accepted.append
        n = Network(self.net.reactor(host), **kwargs)
        self.networks.append(n)
        return n

    def run(self, seconds):
        self.net.run(seconds)

    def close_all(self):
        done = []
        for n in self.networks:
            n.close().addCallback(done.append)
        self.net.run_until(lambda: len(done) == len(self.networks), 15)
        assert len(done) == len(self.networks)
        self.boot.stopService()


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def record(host, port, referrer=None, topic=TOPIC):
    return PeerRecord(topic, host, port, False, referrer, None, "dht" if referrer else "mdns")


# -- Connection on its own ---------------------------------------------------------


class FakeTransport:
    def __init__(self):
        self.paused = 0
        self.resumed = 0
        self.lost = 0
        self.aborted = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.resumed += 1

    def loseConnection(self):
        self.lost += 1

    def abortConnection(self):
        self.aborted += 1


def test_connection_buffers_until_attach_then_forwards_in_order():
    c = Connection("utp", True, ("1.2.3.4", 5), None)
    t = FakeTransport()
    c.makeConnection(t)
    c.dataReceived(b"a")
    c.dataReceived(b"b")
    c.readConnectionLost()
    c.connectionLost(Failure(error.ConnectionDone()))
    closed = result_of(c.when_closed())
    assert isinstance(closed, error.ConnectionDone) and c.reason.check(error.ConnectionDone)
    p = HalfRecorder()
    c.attach(p)
    assert p.transport is t
    assert p.events == ["made", ("data", b"a"), ("data", b"b"), "read_lost", ("lost", error.ConnectionDone)]
    with pytest.raises(RuntimeError):
        c.attach(Recorder())


def test_connection_closes_at_the_peers_end_for_a_protocol_that_cannot_half_close():
    c = Connection("tcp", False, ("1.2.3.4", 5))
    t = FakeTransport()
    c.transport = t  # no connectionMade: no TCP options on the fake
    c.attach(Recorder())
    c.readConnectionLost()
    assert t.lost == 1
    c2 = Connection("tcp", False, ("1.2.3.4", 5))
    c2.transport = t
    c2.readConnectionLost()  # before attach: held
    c2.attach(HalfRecorder())
    assert t.lost == 1
    assert c2.protocol.events == ["made", "read_lost"]


def test_connection_pauses_its_transport_when_much_is_held_and_resumes_at_attach():
    from txhyperswarm.connection import BUFFER_PAUSE

    c = Connection("utp", True, ("1.2.3.4", 5))
    t = FakeTransport()
    c.makeConnection(t)
    c.dataReceived(b"x" * BUFFER_PAUSE)
    assert t.paused == 0
    c.dataReceived(b"y")
    assert t.paused == 1
    p = Recorder()
    c.attach(p)
    assert t.resumed == 1
    assert p.data == b"x" * BUFFER_PAUSE + b"y"


def test_connection_rejects_an_unknown_type():
    with pytest.raises(ValueError):
        Connection("quic", True, ("1.2.3.4", 5))


# -- pure helpers ----------------------------------------------------------------


def test_port_candidates_as_node():
    assert port_candidates(4000, 5000) == [4000]
    assert port_candidates(None, 5000) == [5000, 5001, 5002, 0, 0, 0, 0]
    assert port_candidates(None, 0) == [0] * 7
    assert port_candidates(0, 0) == [0] * 7


def test_local_address_is_the_first_non_internal_ipv4():
    listing = [("127.0.0.1", True), ("fe80::1", False), ("192.168.1.5", False), ("10.0.0.1", False)]
    assert local_address(lambda: listing, 4000) == ("192.168.1.5", 4000)
    assert local_address(lambda: [("127.0.0.1", True)], 4000) is None


# -- bind --------------------------------------------------------------------------


def test_bind_puts_tcp_udp_dht_and_utp_on_one_port():
    w = World()
    n = w.network("10.0.0.1")
    assert not n.bound
    assert n.stats()["port"] is None
    host, port = result_of(n.bind())
    assert n.bound and n.address() == (host, port) == ("0.0.0.0", port)
    assert ("10.0.0.1", port) in w.net.listening()
    assert ("10.0.0.1", port) in w.net.bound()
    assert n.dht.address()[1] == port and n.utp.address()[1] == port
    assert n.dht.udp is n.udp and n.utp.udp is n.udp
    verifyObject(IStatsSource, n)
    assert n.stats()["port"] == port
    # idempotent: every caller gets the same address
    assert result_of(n.bind()) == (host, port)
    w.close_all()


def test_port_option_binds_that_port_only():
    w = World()
    n = w.network("10.0.0.1", port=4000)
    assert result_of(n.bind())[1] == 4000
    taken = w.network("10.0.0.1", port=4000)
    f = result_of(taken.bind())
    assert f.check(BindError)
    assert isinstance(f.value.__cause__, error.CannotListenError)
    w.close_all()


def test_preferred_port_then_the_next_two_then_random():
    w = World()
    # TCP 5000 taken, UDP 5001 taken: 5002 is the first free pair
    tcp_holder = w.net.reactor("10.0.0.1").listenTCP(5000, Factory())
    udp_holder = w.net.udp_socket("10.0.0.1", 5001)
    udp_holder.listen()
    n = w.network("10.0.0.1", preferred_port=5000)
    assert result_of(n.bind())[1] == 5002
    # 5000-5002 all taken: a random port
    m = w.network("10.0.0.1", preferred_port=5000)
    port = result_of(m.bind())[1]
    assert port not in (5000, 5001, 5002)
    tcp_holder.stopListening()
    udp_holder.close()
    w.close_all()


def test_seven_tries_then_bind_error_with_the_last_error():
    w = World()
    reactor = w.net.reactor("10.0.0.1")
    tries = []
    listen = reactor.listenTCP

    def counting(port, factory, **kw):
        tries.append(port)
        return listen(port, factory, **kw)

    reactor.listenTCP = counting
    # the memory network hands out TCP port 32768 first: UDP 32768 taken makes every try fail
    holder = w.net.udp_socket("10.0.0.1", 32768)
    holder.listen()
    n = Network(reactor, bootstrap=[BOOT], multicast=False)
    f = result_of(n.bind())
    assert f.check(BindError)
    assert tries == [0] * 7
    assert isinstance(f.value.__cause__, error.CannotListenError)
    assert ("10.0.0.1", 32768) not in w.net.listening()  # each TCP listener closed again
    assert not n.bound
    holder.close()
    assert result_of(n.close()) is None


def test_bind_after_close_fails_and_close_of_an_unbound_network_is_quiet():
    w = World()
    n = w.network("10.0.0.1")
    assert result_of(n.close()) is None
    assert result_of(n.bind()).check(NetworkClosed)
    assert result_of(n.connect(record("10.0.0.2", 1))).check(NetworkClosed)
    with pytest.raises(NetworkClosed):
        n.join(TOPIC, announce=True)


def test_join_before_bind_raises():
    w = World()
    n = w.network("10.0.0.1")
    with pytest.raises(RuntimeError, match="Bind before announcing"):
        n.join(TOPIC, announce=True)
    with pytest.raises(RuntimeError, match="Bind before doing a lookup"):
        n.join(TOPIC, lookup=True)


# -- inbound and outbound over TCP ---------------------------------------------------


def test_tcp_connection_both_sides_and_data():
    w = World()
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted)
    b = w.network("10.0.0.2")
    _, port = result_of(a.bind())
    result_of(b.bind())
    d = b.connect(record("10.0.0.1", port))
    w.run(0.1)
    out = result_of(d)
    assert isinstance(out, Connection), out
    assert (out.type, out.client, out.remote) == ("tcp", True, ("10.0.0.1", port))
    assert out.peer.port == port
    assert len(accepted) == 1
    inbound = accepted[0]
    assert (inbound.type, inbound.client, inbound.peer) == ("tcp", False, None)
    assert inbound.remote[0] == "10.0.0.2"
    assert inbound.transport.getTcpNoDelay() and inbound.transport.getTcpKeepAlive()
    assert out.transport.getTcpNoDelay() and out.transport.getTcpKeepAlive()
    pa, pb = Recorder(), Recorder()
    out.attach(pb)
    pb.transport.write(b"hello")
    w.run(0.1)
    inbound.attach(pa)  # attached after the data came: it was held
    assert pa.data == b"hello"
    assert a.stats()["inbound"] == 1 and b.stats()["outbound"] == 1
    assert b.stats()["dialled"]["tcp"] == 1
    w.close_all()
    # closing ends each connection in order (a FIN, as Node's destroy), not with a reset
    assert pa.events[-1] == ("lost", error.ConnectionDone)
    assert pb.events[-1] == ("lost", error.ConnectionDone)


def test_close_aborts_a_connection_that_cannot_end_in_order_within_the_grace():
    from txhyperswarm.network import CLOSE_GRACE

    w = World()
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted)
    b = w.network("10.0.0.2")
    _, port = result_of(a.bind())
    result_of(b.bind())
    d = b.connect(record("10.0.0.1", port))
    w.run(0.1)
    out = result_of(d)
    pa, pb = Recorder(), Recorder()
    out.attach(pb)
    w.run(0.1)
    accepted[0].attach(pa)
    pa.transport.pauseProducing()  # a reads nothing more: b's queued bytes cannot drain
    pb.transport.write(b"x" * (4 << 20))
    w.run(0.5)
    closed = []
    b.close().addCallback(closed.append)
    w.net.run_until(lambda: closed, CLOSE_GRACE - 0.5)
    assert not closed and pb.events[-1] != ("lost", error.ConnectionAborted)
    assert w.net.run_until(lambda: closed, 12)
    assert pb.events[-1] == ("lost", error.ConnectionAborted)
    w.close_all()


from twisted.internet.protocol import Factory  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402


def test_an_on_connection_handler_that_raises_is_logged_and_the_connection_aborted(logged_errors):
    w = World()

    def broken(conn):
        raise ValueError("the handler broke")

    a = w.network("10.0.0.1", on_connection=broken)
    b = w.network("10.0.0.2")
    _, port = result_of(a.bind())
    result_of(b.bind())
    d = b.connect(record("10.0.0.1", port))
    w.run(1)
    out = result_of(d)
    app = Recorder()
    out.attach(app)
    w.run(1)
    assert app.events[-1][0] == "lost"
    assert a.connections == {}
    assert logged_errors.take(ValueError)
    w.close_all()


def test_attach_before_the_transport_is_connected_raises():
    c = Connection("tcp", True, ("1.2.3.4", 5))
    with pytest.raises(RuntimeError):
        c.attach(Recorder())
