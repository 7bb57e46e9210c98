"""
The Hyperswarm service on a Clock: several swarms on txhyperswarm.testing's
in-memory TCP, each with a fake Network (tests/swarm_fake.py) whose DHT is a
shared directory. Event sequences as Node's (swarm.md 1.3, 2.6), the limits,
the queue's fixes wired in, cancellation and shutdown.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol

from tests.swarm_fake import Directory
from tests.swarm_world import IdExchange
from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import Stage
from txhyperswarm.queue import QueueOptions
from txhyperswarm.stream import Stream
from txhyperswarm.swarm import (
    BindError,
    DialFailed,
    FirewallRefused,
    Hyperswarm,
    NetworkClosed,
    SwarmClosed,
)
from txhyperswarm.testing import UDPNetwork

T1 = b"\x01" * 32
T2 = b"\x02" * 32
EVENTS = ("listening", "join", "leave", "peer", "peer-rejected", "updated", "connection",
          "disconnection", "close")


class World:
    """Swarms on one in-memory network, recording their events."""

    def __init__(self, **directory):
        self.net = UDPNetwork(latency=0.001)
        self.dir = Directory(**directory)
        self.events = []
        self.swarms = []

    def swarm(self, name, host, *, net_options=None, **options):
        options.setdefault("rng", random.Random(1))
        s = Hyperswarm(self.net.reactor(host), network_factory=self.dir.factory(**(net_options or {})),
                       **options)
        s.name = name
        for e in EVENTS:
            s.on(e, self._recorder(name, e))
        self.swarms.append(s)
        return s

    def _recorder(self, name, event):
        def record(*args):
            self.events.append((round(self.net.clock.seconds(), 3), name, event, args))
        return record

    def run(self, seconds):
        self.net.run(seconds, step=0.001)

    def seq(self, name, skip=()):
        return [e[2] for e in self.events if e[1] == name and e[2] not in skip]

    def of(self, name, event):
        return [e for e in self.events if e[1] == name and e[2] == event]

    def stop_all(self):
        results = []
        for s in self.swarms:
            if not s.closed:
                s.stopService().addBoth(results.append)
        self.run(15)
        assert all(r is None for r in results), results
        assert self.net.clock.getDelayedCalls() == []


def fired(d):
    out = []
    d.addBoth(out.append)
    return out


def test_peer_found_then_connection():
    """Node's sequence on both sides (swarm.md 1.3): the announcer sees
    listening, join, updated, connection (server); the looker listening,
    join, peer, updated, connection (client)."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    ja = fired(a.join(T1, announce=True, lookup=False))
    jb = fired(b.join(T1))
    w.run(1)
    assert ja == [True] and jb == [True]
    assert w.seq("a") == ["listening", "join", "updated", "connection"]
    assert w.seq("b") == ["listening", "join", "peer", "updated", "connection"]
    (_, _, _, (topic, flags)), = w.of("a", "join")
    assert topic == T1 and flags == {"lookup": False, "announce": True}
    (_, _, _, (peer,)), = w.of("b", "peer")
    assert (peer.host, peer.port, peer.topic) == ("127.0.0.1", a.address()[1], T1)
    (_, _, _, (pa, ia)), = w.of("a", "connection")
    (_, _, _, (pb, ib)), = w.of("b", "connection")
    assert ia.client is False and ia.peer is None and ia.type == "tcp"
    assert ia.remote == ("127.0.0.2", pb.transport.getHost().port) and ia.local is True
    assert ib.client is True and ib.peer is peer and ib.type == "tcp" and ib.topics == [T1]
    assert ib.remote == ("127.0.0.1", a.address()[1])
    assert a.connections == {pa} and b.connections == {pb}
    assert a.status(T1) == {"lookup": False, "announce": True} and b.status(T2) is None
    assert a.stats()["server_sockets"] == 1 and b.stats()["client_sockets"] == 1
    w.stop_all()
    assert w.seq("a")[-2:] == ["disconnection", "close"]
    assert w.seq("b")[-2:] == ["disconnection", "close"]
    assert a.connections == set() and b.connections == set()


def test_plain_stream_without_factory():
    """Without a factory each side gets a Stream: data kept until on_data,
    writes both ways, and a half-close that the other side follows (Node's
    allowHalfOpen false)."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2")
    streams = {}
    a.on("connection", lambda p, i: streams.setdefault("a", p))
    b.on("connection", lambda p, i: (streams.setdefault("b", p), p.write(b"early")))
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(1)
    sa, sb = streams["a"], streams["b"]
    assert isinstance(sa, Stream) and isinstance(sb, Stream)
    assert sa.read() == b"early"
    got = []
    sa.on_data = got.append
    sb.write(b"hello")
    w.run(0.1)
    assert got == [b"hello"]
    ends = []
    sa.on_end = lambda: ends.append("a")
    sb.on_data = got.append
    sb.allow_half_open = True
    sb.on_end = lambda: ends.append("b")
    sb.end()
    w.run(0.1)
    assert ends == ["a", "b"] and sa.closed and sb.closed
    assert w.seq("a")[-1] == "disconnection" and w.seq("b")[-1] == "disconnection"
    w.stop_all()


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(Protocol):
    def connectionMade(self):
        self.got = []
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.got.append(data)


def test_factory_protocols_run_on_both_sides():
    """Each connection runs factory.buildProtocol(addr) with a real transport."""
    w = World()
    addrs = []

    class F(Factory):
        protocol = Echo

        def buildProtocol(self, addr):
            addrs.append(addr)
            return Factory.buildProtocol(self, addr)

    a = w.swarm("a", "127.0.0.1", factory=F())
    b = w.swarm("b", "127.0.0.2", factory=Factory.forProtocol(Collect))
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(1)
    (_, _, _, (pb, ib)), = w.of("b", "connection")
    (_, _, _, (pa, _)), = w.of("a", "connection")
    assert isinstance(pa, Echo) and isinstance(pb, Collect)
    assert pb.got == [b"ping"]
    assert addrs[0].host == "127.0.0.2"
    w.stop_all()


def test_disconnection_then_redial_on_schedule():
    """A proven connection that lived long closes: disconnection, then the
    redial comes from the first requeue slot (1.32 s: a fresh bulk timer),
    at top priority, as Node."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(10)
    (_, _, _, (pa, _)), = w.of("a", "connection")
    pa.close()
    w.run(0.01)
    closed_at = w.of("b", "disconnection")[0][0]
    w.run(5)
    conns = w.of("b", "connection")
    assert len(conns) == 2
    assert 0.66 <= conns[1][0] - closed_at <= 1.33 + 0.01
    assert w.seq("b", skip=("updated",)) == ["listening", "join", "peer", "connection",
                                              "disconnection", "connection"]
    w.stop_all()


def test_updated_per_dht_cycle():
    """'updated' ends every DHT cycle of every topic, announce ones too."""
    w = World(refresh=300.0)
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    a.join(T1, announce=True, lookup=False)
    a.join(T2)
    w.run(700)
    times = [(round(e[0], 1), e[3][0]["key"]) for e in w.of("a", "updated")]
    assert times == [(0.1, T1), (0.1, T2), (300.1, T1), (300.1, T2), (600.1, T1), (600.1, T2)]
    w.stop_all()


def test_join_without_dht_fires_false_and_updated():
    w = World(reachable=False)
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    r = fired(a.join(T1))
    w.run(1)
    assert r == [False]
    assert w.seq("a") == ["listening", "join", "updated"]
    w.stop_all()


def test_flush_waits_for_the_first_cycle_and_the_dials():
    """flush() fires once the topics had their first cycle and the queued
    prioritised peers were dialled (after the 'connection' event)."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    c = w.swarm("c", "127.0.0.3")
    b = w.swarm("b", "127.0.0.2")
    for s in (a, b, c):
        s.startService()
    a.join(T1, announce=True, lookup=False)
    c.join(T1, announce=True, lookup=False)
    w.run(1)
    b.join(T1)
    f = fired(b.flush())
    b.on("connection", lambda p, i: f.append(("connection", len(f))))
    w.run(1)
    assert f == [("connection", 0), ("connection", 1), None]
    assert fired(b.flush()) == [None]  # nothing queued: at once
    w.stop_all()


def test_firewall_refusing_inbound_and_the_dialler_backing_off():
    """The announcer's firewall refuses the looker: the looker sees an
    accept then a close (as Node's maxPeers refusal), and its queue backs off
    on the requeue schedule (1.32, 6.6, 19.8 s) and then forgets the peer
    instead of redialling every 1.3 s for ever (gotcha 13 fixed)."""
    w = World()
    seen = []

    def firewall(host, port, client):
        seen.append((host, client))
        return host == "127.0.0.2"

    a = w.swarm("a", "127.0.0.1", firewall=firewall)
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(60)
    assert w.of("a", "connection") == []
    conns = [e[0] for e in w.of("b", "connection")]
    discs = [e[0] for e in w.of("b", "disconnection")]
    assert len(conns) == 4 and len(discs) == 4
    gaps = [round(conns[i + 1] - discs[i], 2) for i in range(3)]
    assert gaps[0] <= 1.33 and 3.3 <= gaps[1] <= 6.61 and 9.9 <= gaps[2] <= 19.81, gaps
    assert all(s == ("127.0.0.2", False) for s in seen)
    assert b.queue.infos() == []  # forgotten: the next discovery starts afresh
    w.stop_all()


def test_firewall_refusing_a_dial_counts_as_a_failed_attempt():
    """client=True: the dial is refused before it starts; the queue counts
    a failed attempt (4 attempts, then forgotten), no event."""
    w = World()
    calls = []

    def firewall(host, port, client):
        calls.append((w.net.clock.seconds(), host, client))
        return True

    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2", firewall=firewall)
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(60)
    assert [c[1:] for c in calls] == [("127.0.0.1", True)] * 4
    assert w.of("b", "connection") == [] and w.of("a", "connection") == []
    w.stop_all()


def test_firewall_that_raises_refuses(logged_errors):
    w = World()
    a = w.swarm("a", "127.0.0.1", firewall=lambda h, p, c: 1 / 0)
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(1)
    assert w.of("a", "connection") == []
    assert logged_errors.take(ZeroDivisionError)
    assert a.stats()["errors"]["firewall_error"] >= 1
    w.stop_all()


def test_thirty_peers_with_max_peers_24():
    """Never more than 24 counted at once; the rest dialled as slots free up."""
    w = World()
    hosts = ["127.0.1.%d" % (i + 1) for i in range(30)]
    announcers = [w.swarm("a%d" % i, h) for i, h in enumerate(hosts)]
    b = w.swarm("b", "127.0.0.2", max_peers=24)
    peak = []
    b.on("connection", lambda p, i: peak.append(b.loop.peers))
    for s in announcers + [b]:
        s.startService()
    for s in announcers:
        s.join(T1, announce=True, lookup=False)
    w.run(1)
    b.join(T1)
    for _ in range(300):
        w.run(0.01)
        peak.append(b.loop.peers)
    assert max(peak) == 24 and len(b.connections) == 24
    assert len(w.of("b", "peer")) == 30
    connected = {e[3][1].remote[0] for e in w.of("b", "connection")}
    assert len(connected) == 24
    # free 6 slots: the announcers stop; the 6 waiting peers get dialled
    for s in announcers:
        if s.address()[0] in list(connected)[:6]:
            s.stopService()
    for _ in range(500):
        w.run(0.01)
        peak.append(b.loop.peers)
    assert max(peak) == 24
    connected = {e[3][1].remote[0] for e in w.of("b", "connection")}
    assert connected == set(hosts)
    assert len(b.connections) == 24
    w.stop_all()


def test_validate_peer_rejects():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2", validate_peer=lambda peer: peer.host != "127.0.0.1")
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(2)
    assert w.seq("b") == ["listening", "join", "peer-rejected", "updated"]
    assert b.queue.infos() == [] and b.network.dials == 0
    w.stop_all()


def test_leave_fires_once_unannounced():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    a.join(T1, announce=True)
    w.run(1)
    out = []
    a.leave(T1).addCallback(lambda r: out.append((r, list(w.dir.unannounced))))
    assert a.status(T1) is None and out == []
    w.run(1)
    assert out == [(None, [(T1, a.address())])]
    assert w.seq("a")[-1] == "leave"
    assert fired(a.leave(T2)) == [None]  # unknown: at once
    w.stop_all()


def test_leave_close_connections_closes_only_that_topics_outbound():
    """b dials a on T1 and on T2 (two identities, multiplex off); leaving T1
    with close_connections closes T1's connection only; inbound stay; the
    left topic's peer is not dialled again."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2")
    c = w.swarm("c", "127.0.0.3")
    for s in (a, b, c):
        s.startService()
    a.join(T1, announce=True, lookup=False)
    a.join(T2, announce=True, lookup=False)
    b.join(T1, announce=True)
    b.join(T2)
    c.join(T1)  # c dials b: an inbound connection of b
    w.run(2)
    out = {i.peer.topic: p for _, _, _, (p, i) in w.of("b", "connection") if i.client}
    inbound = [p for _, _, _, (p, i) in w.of("b", "connection") if not i.client]
    assert set(out) == {T1, T2} and len(inbound) == 1
    left = fired(b.leave(T1, close_connections=True))
    w.run(30)
    assert left == [None]
    assert b.connections == {out[T2], inbound[0]}
    assert len(w.of("b", "connection")) == 3  # T1's peer not redialled
    assert b.queue.get(PeerRecord(T1, "127.0.0.1", a.address()[1], False, None, None, "dht")) is None
    w.stop_all()


def test_leave_then_rejoin_dials_again():
    """Node strands a queued peer of a left topic for ever (gotcha 12);
    here re-joining the topic finds and dials it again."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2", max_client_sockets=0)
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(1)
    assert len(b.queue) == 1  # queued, never dialled (max_client_sockets=0)
    b.leave(T1)
    w.run(1)
    b.loop.max_client_sockets = 10
    b.loop.drain()  # the queued peer of the left topic is skipped and forgotten
    assert b.queue.infos() == [] and b.network.dials == 0
    b.join(T1)
    w.run(1)
    assert len(w.of("b", "connection")) == 1
    w.stop_all()


def test_rejoin_changes_flags_as_node():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    first = fired(a.join(T1))
    second = fired(a.join(T1, announce=True))
    assert a.status(T1) == {"lookup": True, "announce": True}
    w.run(1)
    assert first == [None] and second == [True]
    assert a.address() in w.dir.records[T1]
    third = fired(a.join(T1, lookup=True, announce=False))
    w.run(1)
    assert third == [True] and a.address() not in w.dir.records[T1]
    assert [e[3][1] for e in w.of("a", "join")] == [
        {"lookup": True, "announce": False}, {"lookup": True, "announce": True},
        {"lookup": True, "announce": False}]
    w.stop_all()


def test_bad_arguments():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    with pytest.raises(ValueError):
        a.join(b"short")
    with pytest.raises(ValueError):
        a.join(T1, lookup=False, announce=False)
    with pytest.raises(ValueError):
        a.leave(b"x" * 31)
    with pytest.raises(TypeError):
        w.swarm("x", "127.0.0.9", factory=object())


def test_join_before_start_waits_and_after_stop_fails():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    r = fired(a.join(T1, announce=True))
    w.run(1)
    assert r == [] and a.address() is None and w.events == []
    a.startService()
    w.run(1)
    assert r == [True]
    w.stop_all()
    f = fired(a.join(T1))
    assert f[0].check(SwarmClosed) and f[0].check(NetworkClosed)
    assert fired(a.flush())[0].check(SwarmClosed)
    assert fired(a.leave(T1)) == [None]
    c = fired(a.connect(PeerRecord(T1, "127.0.0.9", 1, False, None, None, "dht")))
    assert c[0].check(SwarmClosed)


def test_bind_failure_errbacks_join(logged_errors):
    w = World()
    a = w.swarm("a", "127.0.0.1", net_options={"fail_bind": True})
    a.startService()
    j = fired(a.join(T1))
    f = fired(a.flush())
    w.run(1)
    assert j[0].check(BindError) and f[0].check(BindError)
    assert a.status(T1) is None and w.events == []
    assert logged_errors.take(BindError)
    w.stop_all()
    assert w.events == []  # never bound: no 'close'


def test_stop_fails_what_is_pending():
    w = World()
    a = w.swarm("a", "127.0.0.1")
    j = fired(a.join(T1))  # not started: waits
    f = fired(a.flush())
    stopped = fired(a.stopService())
    assert j[0].check(SwarmClosed) and f[0].check(SwarmClosed)
    assert stopped == [None] and w.events == []
    assert w.net.clock.getDelayedCalls() == []


def test_stop_while_joined_and_dialling():
    """stopService during a dial and a pending first cycle: join and flush
    fail, the dial is cancelled, every socket closes, no delayed call left."""
    w = World(cycle=5.0)
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    a.join(T1, announce=True, lookup=False)
    w.run(6)
    w.net.down.add(("127.0.0.1", None))  # dials now hang
    b = w.swarm("b", "127.0.0.2")
    b.startService()
    b.join(T1)
    w.run(5.5)  # the first cycle found a; the dial hangs
    assert b.network.dials == 1
    j = fired(b.join(T2))
    f = fired(b.flush())
    c = fired(b.connect(PeerRecord(T1, "127.0.0.1", a.address()[1], False, None, None, "dht")))
    s = fired(b.stopService())
    assert j[0].check(SwarmClosed) and f[0].check(SwarmClosed) and c[0].check(SwarmClosed)
    assert b.network.pending == set()  # both dials cancelled at once
    w.run(1)
    assert s == [None] and w.seq("b")[-1] == "close"
    w.net.down.clear()
    w.stop_all()


def test_cancellation():
    w = World(cycle=1.0)
    a = w.swarm("a", "127.0.0.1")
    # a join cancelled before the start is abandoned
    j = a.join(T1)
    j.cancel()
    assert fired(j)[0].check(defer.CancelledError)
    a.startService()
    w.run(2)
    assert a.status(T1) is None and a.topics == [] and w.of("a", "join") == []
    # a join cancelled while waiting for its first cycle stays joined
    j = a.join(T1, announce=True)
    w.run(0.1)
    j.cancel()
    assert fired(j)[0].check(defer.CancelledError)
    assert a.topics == [T1] and a.status(T1) == {"lookup": True, "announce": True}
    # flush
    fl = a.join(T2)
    w.run(0.1)
    f = a.flush()
    f.cancel()
    assert fired(f)[0].check(defer.CancelledError)
    w.run(2)
    assert fired(fl) == [True]
    # leave: the leave still happens
    lv = a.leave(T1)
    lv.cancel()
    assert fired(lv)[0].check(defer.CancelledError)
    w.run(2)
    assert a.topics == [T2] and (T1, a.address()) in w.dir.unannounced
    # connect to a host that does not answer
    w.net.down.add(("127.0.0.7", None))
    c = a.connect(PeerRecord(T1, "127.0.0.7", 9, False, None, None, "dht"))
    w.run(1)
    c.cancel()
    assert fired(c)[0].check(defer.CancelledError)
    w.stop_all()


def test_connect_is_a_raw_dial():
    """connect(peer): (protocol, info), no events on the dialler, nothing
    counted or queued; the remote sees an ordinary inbound connection."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    w.run(0.1)
    peer = PeerRecord(T1, "127.0.0.1", a.address()[1], False, None, None, "dht")
    r = fired(b.connect(peer))
    w.run(0.1)
    (protocol, info), = r
    assert isinstance(protocol, Stream) and info.client and info.peer is peer and info.type == "tcp"
    assert b.connections == {protocol} and w.seq("b") == ["listening"]
    assert b.loop.peers == 0 and b.queue.get(peer) is None
    assert w.seq("a") == ["listening", "connection"]
    protocol.close()
    w.run(0.1)
    assert b.connections == set() and w.seq("b") == ["listening"]
    assert w.seq("a")[-1] == "disconnection"
    bad = fired(b.connect(PeerRecord(T1, "127.0.0.1", 1, False, None, None, "dht")))
    w.run(0.1)
    assert bad[0].check(DialFailed)
    fw = w.swarm("fw", "127.0.0.3", firewall=lambda h, p, c: True)
    fw.startService()
    refused = fired(fw.connect(peer))
    w.run(0.1)
    assert refused[0].check(FirewallRefused)
    w.stop_all()


def test_max_server_sockets_minus_one_refuses_inbound():
    w = World()
    a = w.swarm("a", "127.0.0.1", max_server_sockets=-1)
    b = w.swarm("b", "127.0.0.2")
    a.startService()
    b.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(3)
    assert w.of("a", "connection") == []
    assert a.network.refused >= 1
    w.stop_all()


def test_one_identity_for_mapped_ipv4():
    """hyperswarm#75: 127.0.0.1 and ::ffff:127.0.0.1 are one queue identity."""
    w = World()
    b = w.swarm("b", "127.0.0.2", max_client_sockets=0)
    b.startService()
    b.join(T1)
    w.run(1)
    (joined,) = [t for t in b.network.topics]
    for host in ("127.0.0.1", "::ffff:127.0.0.1"):
        joined.on_peer(PeerRecord(T1, host, 4000, False, None, None, "dht"))
    assert len(w.of("b", "peer")) == 2 and len(b.queue.infos()) == 1
    w.stop_all()


def test_handler_errors_are_logged_not_raised(logged_errors):
    w = World()
    a = w.swarm("a", "127.0.0.1")
    a.on("listening", lambda: 1 / 0)
    a.startService()
    w.run(0.1)
    assert logged_errors.take(ZeroDivisionError)
    assert a.stats()["errors"]["handler_error"] == 1
    w.stop_all()


@pytest.mark.parametrize("ids", [(b"\x01" * 32, b"\x02" * 32), (b"\x02" * 32, b"\x01" * 32)])
def test_simultaneous_connect_deduplicates(ids):
    """Both swarms announce and look up, so both dial; each side exchanges
    ids and calls deduplicate(own, remote): one connection remains on each
    side, the one dialled by the peer with the smaller id, same pair."""
    w = World()
    results = []
    swarms = []
    for name, host, own in (("a", "127.0.0.1", ids[0]), ("b", "127.0.0.2", ids[1])):
        f = Factory()
        f.buildProtocol = (lambda own: lambda addr: IdExchange(own, results))(own)
        s = w.swarm(name, host, factory=f)

        def on_conn(p, info):
            p.info = info
            p.check()

        s.on("connection", on_conn)
        swarms.append(s)
    a, b = swarms
    for s in swarms:
        s.startService()
    for s in swarms:
        s.join(T1, announce=True)
    w.run(10)
    assert len(a.connections) == 1 and len(b.connections) == 1
    (pa,), (pb,) = a.connections, b.connections
    # the survivor is one connection seen from both ends
    assert pa.transport.getPeer().port == pb.transport.getHost().port
    assert pa.transport.getHost().port == pb.transport.getPeer().port
    smaller = "a" if ids[0] < ids[1] else "b"
    assert (pa.info.client, pb.info.client) == ((True, False) if smaller == "a" else (False, True))
    # each survivor's deduplicate said False; a loser said True (the other
    # loser may close before its own side's call, which then says False)
    assert (ids[0], pa.info.client, False) in results and (ids[1], pb.info.client, False) in results
    assert any(r[2] for r in results)
    w.run(60)  # the loser is not redialled while the survivor lives
    assert len(a.connections) == 1 and len(b.connections) == 1
    w.stop_all()


def test_dedup_loser_unbanned_when_the_survivor_closes():
    """Node keeps the dropped client banned for ever (gotcha 18); here it
    is dialled again once the surviving connection closed."""
    w = World()
    results = []
    swarms = []
    for name, host, own in (("a", "127.0.0.1", b"\x01" * 32), ("b", "127.0.0.2", b"\x02" * 32)):
        f = Factory()
        f.buildProtocol = (lambda own: lambda addr: IdExchange(own, results))(own)
        s = w.swarm(name, host, factory=f)
        s.on("connection", lambda p, info: (setattr(p, "info", info), p.check()))
        swarms.append(s)
    a, b = swarms
    for s in swarms:
        s.startService()
    for s in swarms:
        s.join(T1, announce=True)
    w.run(10)
    (pa,), = [a.connections]
    assert pa.info.client  # a (smaller id) dialled the survivor
    b_client = b.queue.infos()[0]
    assert b_client.banned and b_client.stage is Stage.BANNED
    # a stops dialling b (leave), then the survivor closes
    a.leave(T1)
    w.run(1)
    pa.transport.loseConnection()
    w.run(30)
    assert not b_client.banned
    b_conns = [i for _, _, _, (p, i) in w.of("b", "connection") if i.client]
    assert len(b_conns) == 2  # b dialled a again
    assert len(b.connections) == 1
    w.stop_all()


def test_queue_options_dict():
    w = World()
    a = w.swarm("a", "127.0.0.1", queue={"requeue": [0.5], "multiplex": True})
    assert a.queue.options == QueueOptions(requeue=(0.5, 5.0, 15.0), multiplex=True)


def test_max_peers_refuses_inbound_at_the_limit():
    """Node's observed case (swarm.md 1.6): announcer a with max_peers=1
    accepts b; c's dial is accepted then closed at once, so c sees
    connection then disconnection; a never sees c."""
    w = World()
    a = w.swarm("a", "127.0.0.1", max_peers=1)
    b = w.swarm("b", "127.0.0.2")
    c = w.swarm("c", "127.0.0.3")
    for s in (a, b, c):
        s.startService()
    a.join(T1, announce=True, lookup=False)
    b.join(T1)
    w.run(1)
    c.join(T1)
    w.run(1)
    assert len(w.of("a", "connection")) == 1 and len(a.connections) == 1
    assert [e[2] for e in w.events if e[1] == "c" and e[2] in ("connection", "disconnection")] == [
        "connection", "disconnection"]
    assert a.network.refused >= 1
    # once b leaves, a accepts again: c's next redial gets in
    b.stopService()
    w.run(30)
    assert [i.remote[0] for _, _, _, (p, i) in w.of("a", "connection")] == ["127.0.0.2", "127.0.0.3"]
    w.stop_all()


def test_a_pending_join_fires_none_when_left():
    w = World(cycle=5.0)
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    j = fired(a.join(T1, announce=True))
    w.run(1)
    assert j == []
    lv = fired(a.leave(T1))
    w.run(10)
    assert j == [None] and lv == [None]
    w.stop_all()


def test_a_stopped_or_announce_only_join_reports_nothing():
    """Peers and cycle ends of a join that was replaced or left, and peers
    of an announce-only join, make no event and queue nothing."""
    w = World()
    a = w.swarm("a", "127.0.0.1", max_client_sockets=0)
    a.startService()
    a.join(T1)
    a.join(T2, announce=True, lookup=False)
    w.run(1)
    t1, t2 = sorted(a.network.topics, key=lambda t: t.topic)
    a.leave(T1)
    w.run(1)
    before = list(w.events)
    for t in (t1, t2):
        t.on_peer(PeerRecord(t.topic, "127.0.0.9", 4000, False, None, None, "dht"))
    t1.on_update(None)
    assert w.events == before and a.queue.infos() == []
    t2.on_update(None)
    assert w.events[len(before):][0][2] == "updated"
    w.stop_all()


def test_stop_right_after_leave_waits_for_its_unannounce():
    """twist hyperswarm leaves every topic, then stops: the network must not
    close under the unannounce the leave started (it then fails)."""
    w = World()
    a = w.swarm("a", "127.0.0.1")
    a.startService()
    a.join(T1, announce=True)
    w.run(1)
    order = []
    a.leave(T1).addCallback(lambda _: order.append("left"))
    real_close = a.network.close

    def close():
        order.append(("network close", list(w.dir.unannounced)))
        return real_close()

    a.network.close = close
    a.stopService().addCallback(lambda _: order.append("stopped"))
    w.run(2)
    closes = [o for o in order if isinstance(o, tuple)]
    assert len(closes) == 1 and closes[0][1] != [], order  # unannounced before the close
    assert order[-1] == "stopped"
    w.stop_all()
