"""
The dial flow of swarm.md 3.3: txhyperswarm.dial.Dial with fakes (every
branch driven by hand on a MemoryReactorClock), and Network.connect on the
in-memory network (TCP wins, TCP refused -> holepunch + uTP, failures,
timeout, cancel, firewall both ways).
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tests.test_network import BOOT, Recorder, World, record, result_of
from txhyperswarm.connection import Connection
from txhyperswarm.dht.errors import RequestTimeout
from txhyperswarm.dial import CONNECTION_TIMEOUT, Dial, DialFailed, DialTimeout
from txhyperswarm.network import FirewallRefused, NetworkClosed


class AbortableTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def setTcpKeepAlive(self, enabled):
        self.keepalive = enabled


class Hands:
    """A Dial on fakes: the test settles the bind, the holepunch and the uTP connect."""

    def __init__(self, referrer=("10.0.0.100", 49737)):
        self.reactor = MemoryReactorClock()
        self.peer = record("10.0.0.1", 4000, referrer)
        self.opened = defer.Deferred()
        self.punch = defer.Deferred()
        self.punched_for = []
        self.utp = []
        self.dial = Dial(
            self.reactor, self.peer,
            connection=lambda type, remote, on_made: Connection(type, True, remote, self.peer, on_made=on_made),
            opened=lambda: self.opened,
            holepunch=self.holepunch,
            utp_connect=self.utp_connect,
        )
        self.result = []
        self.dial.start().addBoth(self.result.append)

    def holepunch(self, peer):
        self.punched_for.append(peer)
        return self.punch

    def utp_connect(self, host, port, factory):
        d = defer.Deferred()
        self.utp.append((host, port, factory, d))
        return d

    @property
    def tcp(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[0]
        return factory

    def tcp_connects(self):
        conn = self.tcp.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
        t = AbortableTransport()
        conn.makeConnection(t)
        return conn, t

    def utp_connects(self):
        host, port, factory, d = self.utp[0]
        conn = factory.buildProtocol(IPv4Address("UDP", host, port))
        t = AbortableTransport()
        conn.makeConnection(t)
        d.callback(conn)
        return conn, t


def test_tcp_starts_at_once_and_the_holepunch_waits_for_the_bind():
    h = Hands()
    assert [(c[0], c[1]) for c in h.reactor.tcpClients] == [("10.0.0.1", 4000)]
    assert h.punched_for == []
    h.opened.callback(("0.0.0.0", 5000))
    assert h.punched_for == [h.peer]
    assert h.utp == []
    h.punch.callback(None)
    assert [(u[0], u[1]) for u in h.utp] == [("10.0.0.1", 4000)]


def test_tcp_wins_and_the_holepunch_branch_is_stopped():
    h = Hands()
    h.opened.callback(None)
    conn, t = h.tcp_connects()
    assert h.result == [conn] and conn.type == "tcp" and conn.client
    assert h.dial.outcome == "tcp"
    assert t.nodelay and t.keepalive
    assert h.punch.called  # cancelled
    assert h.reactor.getDelayedCalls() == []  # the 10 s timer is gone


def test_utp_wins_and_a_late_tcp_is_aborted():
    h = Hands()
    h.opened.callback(None)
    h.punch.callback(None)
    conn, _ = h.utp_connects()
    assert h.result == [conn] and conn.type == "utp"
    assert h.reactor.connectors[0].stoppedConnecting
    late, t = h.tcp_connects()  # it connected anyway (a race): closed at once
    assert t.aborted
    assert h.result == [conn]


def test_a_late_utp_is_aborted():
    h = Hands()
    h.opened.callback(None)
    h.punch.callback(None)
    conn, _ = h.tcp_connects()
    late, t = h.utp_connects()
    assert t.aborted and h.result == [conn]


def test_all_sockets_failed_when_tcp_fails_last():
    h = Hands()
    h.opened.callback(None)
    h.punch.callback(None)
    h.utp[0][3].errback(error.ConnectionRefusedError())
    assert h.result == []
    h.tcp.clientConnectionFailed(None, error.ConnectionRefusedError())
    [f] = h.result
    assert f.check(DialFailed) and str(f.value) == "All sockets failed"


def test_the_holepunch_error_when_the_holepunch_fails_last():
    h = Hands()
    h.opened.callback(None)
    h.tcp.clientConnectionFailed(None, error.ConnectionRefusedError())
    assert h.result == []
    h.punch.errback(RequestTimeout("_holepunch", "10.0.0.1", 4000))
    [f] = h.result
    assert f.check(DialFailed) and str(f.value).startswith("Request timed out")
    assert isinstance(f.value.__cause__, RequestTimeout)


def test_the_utp_failing_last_is_all_sockets_failed():
    h = Hands()
    h.opened.callback(None)
    h.tcp.clientConnectionFailed(None, error.ConnectionRefusedError())
    h.punch.callback(None)
    h.utp[0][3].errback(error.ConnectionRefusedError())
    [f] = h.result
    assert str(f.value) == "All sockets failed"


def test_without_referrer_only_tcp_is_tried():
    h = Hands(referrer=None)
    h.opened.callback(None)
    assert h.punched_for == []
    h.tcp.clientConnectionFailed(None, error.ConnectionRefusedError())
    [f] = h.result
    assert str(f.value) == "All sockets failed"


def test_timeout_at_exactly_ten_seconds_stops_every_attempt():
    h = Hands()
    h.opened.callback(None)
    h.punch.callback(None)
    h.reactor.advance(CONNECTION_TIMEOUT - 0.001)
    assert h.result == []
    h.reactor.advance(0.001)
    [f] = h.result
    assert f.check(DialTimeout) and str(f.value) == "Timeout"
    assert h.reactor.connectors[0].stoppedConnecting
    assert h.utp[0][3].called  # the uTP connect was cancelled
    assert h.dial.outcome == "timeout"
    # what fails afterwards changes nothing
    h.tcp.clientConnectionFailed(None, error.ConnectionRefusedError())
    assert len(h.result) == 1


def test_cancelling_the_deferred():
    reactor = MemoryReactorClock()
    peer = record("10.0.0.1", 4000, ("10.0.0.100", 49737))
    punch = defer.Deferred()
    dial = Dial(
        reactor, peer,
        connection=lambda type, remote, on_made: Connection(type, True, remote, peer, on_made=on_made),
        opened=lambda: defer.succeed(None), holepunch=lambda p: punch, utp_connect=None,
    )
    d = dial.start()
    out = []
    d.addBoth(out.append)
    d.cancel()
    assert out[0].check(defer.CancelledError)
    assert dial.outcome == "cancelled"
    assert punch.called and reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


# -- on the in-memory network ------------------------------------------------------


def pair(w, a_kwargs=None, b_kwargs=None):
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted, **(a_kwargs or {}))
    b = w.network("10.0.0.2", **(b_kwargs or {}))
    _, port = result_of(a.bind())
    result_of(b.bind())
    w.run(1)  # both bootstrapped
    return a, b, port, accepted


def test_memory_tcp_wins_when_reachable():
    w = World()
    a, b, port, accepted = pair(w)
    d = b.connect(record("10.0.0.1", port, BOOT))
    w.run(1)
    conn = result_of(d)
    assert conn.type == "tcp"
    assert len(accepted) == 1 and accepted[0].type == "tcp"
    assert b.utp.stats()["connections"] == 0 and a.utp.stats()["connections"] == 0
    w.close_all()


def test_memory_tcp_refused_then_holepunch_and_utp_win():
    w = World()
    a, b, port, accepted = pair(w)
    a.tcp_port.stopListening()
    d = b.connect(record("10.0.0.1", port, BOOT))
    w.run(1)
    conn = result_of(d)
    assert isinstance(conn, Connection), conn
    assert (conn.type, conn.client, conn.remote) == ("utp", True, ("10.0.0.1", port))
    assert len(accepted) == 1
    inbound = accepted[0]
    assert (inbound.type, inbound.client) == ("utp", False)
    assert inbound.remote == ("10.0.0.2", b.address()[1])
    # data both ways over the application protocols
    pa, pb = Recorder(), Recorder()
    inbound.attach(pa)
    conn.attach(pb)
    pb.transport.write(b"ping")
    pa.transport.write(b"pong")
    w.run(1)
    assert (pa.data, pb.data) == (b"ping", b"pong")
    assert b.stats()["dialled"]["utp"] == 1
    assert b.stats()["connections"]["utp"] == 1
    w.close_all()


def test_memory_nothing_listening_and_no_holepunch_answer_fails_with_the_holepunch_error():
    w = World()
    a, b, port, accepted = pair(w)
    d = b.connect(record("10.0.0.1", 7777, BOOT))  # no TCP, no UDP on 7777
    w.run(9.9)
    f = result_of(d)
    assert f.check(DialFailed) and not f.check(DialTimeout)
    assert "timed out" in str(f.value).lower()
    w.close_all()


def test_memory_without_referrer_refused_is_all_sockets_failed():
    w = World()
    a, b, port, accepted = pair(w)
    d = b.connect(record("10.0.0.1", 7777))
    w.run(0.1)
    f = result_of(d)
    assert str(f.value) == "All sockets failed"
    w.close_all()


def test_memory_timeout_at_exactly_ten_seconds():
    w = World()
    a, b, port, accepted = pair(w)
    w.net.down.add(("10.0.0.1", None))
    out = []
    start = w.clock.seconds()
    b.connect(record("10.0.0.1", port)).addBoth(out.append)
    w.net.run_events(CONNECTION_TIMEOUT - 0.01)
    assert out == []
    w.net.run_events(0.02)
    assert out[0].check(DialTimeout)
    assert b.stats()["dialled"]["timeout"] == 1
    assert w.clock.seconds() - start == pytest.approx(CONNECTION_TIMEOUT, abs=0.02)
    w.net.down.clear()
    w.close_all()


def test_memory_cancel_leaves_no_attempt():
    w = World()
    a, b, port, accepted = pair(w)
    a.tcp_port.stopListening()
    w.net.down.add(("10.0.0.1", None))
    d = b.connect(record("10.0.0.1", port, BOOT))
    w.run(0.5)
    d.cancel()
    assert result_of(d).check(defer.CancelledError)
    assert b.stats()["dials"] == 0 and b.stats()["dialled"]["cancelled"] == 1
    w.net.down.clear()
    w.run(12)
    assert accepted == [] and b.connections == {}
    w.close_all()


def test_firewall_refuses_a_dial_before_anything_is_sent():
    w = World()
    seen = []

    def firewall(host, port, client):
        seen.append((host, port, client))
        return True

    a, b, port, accepted = pair(w, b_kwargs={"firewall": firewall})
    f = result_of(b.connect(record("10.0.0.1", port, BOOT)))
    assert f.check(FirewallRefused) and f.check(DialFailed)
    assert seen == [("10.0.0.1", port, True)]
    w.run(1)
    assert accepted == []
    assert b.stats()["dialled"]["firewall"] == 1
    w.close_all()


def test_firewall_refuses_inbound_tcp_and_utp():
    w = World()
    seen = []

    def firewall(host, port, client):
        seen.append((host, client))
        return host == "10.0.0.2"

    a, b, port, accepted = pair(w, a_kwargs={"firewall": firewall})
    # TCP: accepted by the kernel, then closed before anyone saw it (Node: accept-then-close)
    d = b.connect(record("10.0.0.1", port))
    w.run(1)
    conn = result_of(d)
    assert conn.type == "tcp"
    app = Recorder()
    conn.attach(app)  # it gets the connection, then its end at once
    w.run(1)
    assert conn.closed and app.events == ["made", ("lost", error.ConnectionDone)]
    assert accepted == [] and seen == [("10.0.0.2", False)]
    # uTP: the SYN gets no answer (libutp's firewall): the dial times out
    a.tcp_port.stopListening()
    f = result_of_after(w, b.connect(record("10.0.0.1", port, BOOT)), 10.5)
    assert f.check(DialTimeout)
    assert accepted == []
    syns = a.utp.stats()["dropped"]["syn_firewalled"]
    assert syns == 3  # the SYN at 0 s, its resends at 3 and 9 s
    assert a.stats()["refused"]["firewall"] == 1 + syns  # and the TCP one
    assert a.utp.stats()["connections"] == 0
    assert seen[-1] == ("10.0.0.2", False)
    w.close_all()


def result_of_after(w, d, seconds):
    w.run(seconds)
    return result_of(d)


def test_connect_before_bind_binds_for_the_holepunch():
    w = World()
    a = w.network("10.0.0.1")
    _, port = result_of(a.bind())
    a.tcp_port.stopListening()
    b = w.network("10.0.0.2")
    d = b.connect(record("10.0.0.1", port, BOOT))
    assert b.bound
    w.run(2)
    assert result_of(d).type == "utp"
    w.close_all()


def test_close_fails_dials_in_progress():
    w = World()
    a, b, port, accepted = pair(w)
    w.net.down.add(("10.0.0.1", None))
    d = b.connect(record("10.0.0.1", port, BOOT))
    b.close()
    assert result_of(d).check(NetworkClosed)
    w.net.down.clear()
    w.close_all()
