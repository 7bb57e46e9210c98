"""
UTPSocket on a Clock: connect timeout, endpoints bound to the socket,
close_when_idle(), stats(), and time that does not follow wall-clock jumps.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.utp.streams import OneFactory, Recorder, RecorderFactory, Sink, Source
from tests.utp.test_connection import packets, utp_socket
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp import UTPConnection, UTPSocket, UTPTimeoutError
from txhyperswarm.utp.connection import CONNECT_TIMEOUT, IConnectionOwner
from txhyperswarm.utp.packet import ST_DATA, decode

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)


def pair(latency=0.001):
    clock = Clock()
    clock.advance(1000.0)
    net = UDPNetwork(clock, latency=latency, record=True)
    return clock, net, utp_socket(net, A), utp_socket(net, B)


def test_the_socket_provides_what_connections_call_up_through():
    clock, net, a, b = pair()
    verifyObject(IConnectionOwner, a)
    verifyObject(IStatsSource, a)


def test_connect_timeout_argument():
    clock, net, a, b = pair()
    failures = []
    a.connect("10.0.0.9", 9, RecorderFactory(), timeout=5.0).addErrback(failures.append)
    net.run_events(4.99)
    assert failures == []
    net.run_events(0.02)
    assert failures and failures[0].check(UTPTimeoutError)
    assert "10.0.0.9:9" in str(failures[0].value) and "5s" in str(failures[0].value)
    assert a.connections == {}
    assert len(packets(net, A)) == 2  # the SYN at 0 and its resend at 3 s


def test_connect_default_timeout_is_libutps():
    clock, net, a, b = pair()
    failures = []
    a.connect("10.0.0.9", 9, RecorderFactory()).addErrback(failures.append)
    net.run_events(CONNECT_TIMEOUT - 0.01)
    assert failures == []
    net.run_events(0.02)
    assert failures[0].check(UTPTimeoutError)


def test_a_connect_that_succeeds_is_not_timed_out_later():
    clock, net, a, b = pair()
    b.listen(RecorderFactory())
    got = []
    a.connect(B[0], B[1], RecorderFactory(), timeout=1.0).addBoth(got.append)
    net.run(5.0, step=0.01)
    assert len(got) == 1 and isinstance(got[0], Recorder) and got[0].lost is None


def test_bound_endpoints_dial_and_accept_on_the_sockets_own_port():
    clock, net, a, b = pair()
    server_ep, client_ep = b.server_endpoint(), a.client_endpoint(B[0], B[1], timeout=2.0)
    verifyObject(IStreamServerEndpoint, server_ep)
    verifyObject(IStreamClientEndpoint, client_ep)
    ports, protos = [], []
    server = Recorder()
    server_ep.listen(OneFactory(server)).addCallback(ports.append)
    verifyObject(IListeningPort, ports[0])
    client_ep.connect(OneFactory(Recorder())).addCallback(protos.append)
    net.run_until(lambda: protos, 1.0, step=0.001)
    c = protos[0]
    c.transport.write(b"from the shared port")
    net.run(0.1, step=0.001)
    assert server.received == b"from the shared port"
    assert (server.transport.getPeer().host, server.transport.getPeer().port) == A
    # a second listener on the same socket is refused
    refused = []
    b.server_endpoint().listen(RecorderFactory()).addErrback(refused.append)
    assert refused[0].check(error.CannotListenError)
    # stopping the listener leaves the socket and its connection open
    ports[0].stopListening()
    assert not b.listening and not b.closed
    c.transport.write(b"!")
    net.run(0.1, step=0.001)
    assert server.received.endswith(b"!")


def test_bound_client_endpoint_times_out():
    clock, net, a, b = pair()
    failures = []
    a.client_endpoint("10.0.0.9", 9, timeout=1.5).connect(RecorderFactory()).addErrback(failures.append)
    net.run_events(1.6)
    assert failures[0].check(UTPTimeoutError)


def test_close_when_idle_waits_for_the_last_connection():
    clock, net, a, b = pair()
    b.listen(RecorderFactory())
    protos = []
    a.connect(B[0], B[1], RecorderFactory()).addCallback(protos.append)
    net.run_until(lambda: protos, 1.0, step=0.001)
    closed = []
    a.close_when_idle().addCallback(closed.append)
    protos[0].transport.write(b"x")
    net.run(1.0, step=0.001)
    assert closed == [] and not a.closed
    protos[0].transport.loseConnection()
    assert net.run_until(lambda: closed, 30.0, step=0.01)
    assert a.closed and a.connections == {}
    assert protos[0].lost.check(error.ConnectionDone)


def test_close_when_idle_with_nothing_open_closes_now():
    clock, net, a, b = pair()
    closed = []
    a.close_when_idle().addCallback(closed.append)
    assert closed == [None] and a.closed
    failures = []
    a.connect(B[0], B[1], RecorderFactory()).addErrback(failures.append)
    assert failures[0].check(error.ConnectingCancelledError)


def test_close_fails_connects_in_progress_and_aborts_connections():
    clock, net, a, b = pair()
    b.listen(RecorderFactory())
    protos, failures = [], []
    a.connect(B[0], B[1], RecorderFactory()).addCallback(protos.append)
    net.run_until(lambda: protos, 1.0, step=0.001)
    a.connect("10.0.0.9", 9, RecorderFactory()).addErrback(failures.append)
    a.close()
    assert failures[0].check(error.ConnectingCancelledError)
    assert protos[0].lost.check(error.ConnectionAborted)
    assert a.close().called  # idempotent


def test_stats():
    clock, net, a, b = pair()
    sink = Sink()
    b.listen(OneFactory(sink))
    blob = os.urandom(100_000)
    src = Source(blob)
    a.connect(B[0], B[1], OneFactory(src))
    net.run_until(lambda: sink.count == len(blob), 5.0, step=0.001)
    sa, sb = a.stats(), b.stats()
    assert sa["connections"] == 1 and sb["connections"] == 1
    assert sa["bytes_sent"] == sb["bytes_received"] == len(blob)
    assert sa["bytes_received"] == sb["bytes_sent"] == 0
    b.datagram_received(b"\x01\x00" + bytes(10), A)  # uTP-shaped, too short
    assert b.stats()["dropped"]["short"] == 1
    net.run_until(lambda: not a.connections and not b.connections, 30.0, step=0.01)
    sa, sb = a.stats(), b.stats()
    assert sa["connections"] == 0 and sa["bytes_sent"] == sb["bytes_received"] == len(blob)
    sa["dropped"]["x"] += 1
    assert "x" not in a.stats()["dropped"]  # a copy


def not_utp(call):
    """Whether a delayed call is not uTP's own (a datagram the network carries)."""
    return not isinstance(getattr(call.func, "__self__", None), (UTPConnection, UTPSocket))


class WallClock(Clock):
    """A Clock as Twisted's reactor has it (wall time), with a monotonic
    clock beside it that a jump does not move."""

    def __init__(self):
        super().__init__()
        self.jumped = 0.0

    def monotonic(self):
        return self.seconds() - self.jumped

    def jump(self, by, keep):
        """Set the wall clock ``by`` seconds; the calls ``keep`` says are not
        timers (datagrams the kernel is carrying) move with it."""
        self.rightNow += by
        self.jumped += by
        for call in self.getDelayedCalls():
            if keep(call):
                call.time += by


@pytest.mark.parametrize("jump", [3600.0, -3600.0])
def test_a_transfer_across_a_wall_clock_jump(jump):
    clock = WallClock()
    clock.advance(1_700_000_000.0)
    net = UDPNetwork(clock, latency=0.005)
    a = utp_socket(net, A, monotonic=clock.monotonic)
    b = utp_socket(net, B, monotonic=clock.monotonic)
    blob = os.urandom(4 * 1024 * 1024)
    src, sink = Source(blob), Sink()
    b.listen(OneFactory(sink))
    a.connect(B[0], B[1], OneFactory(src))
    dropped = []  # one DATA packet lost before the jump and one after

    def drop(data, src, dst):
        if src == A and decode(data).type == ST_DATA and sink.count > len(dropped) * len(blob) // 2:
            if len(dropped) < 2 and clock.monotonic() > since[0] + 0.05:
                dropped.append(decode(data).seq_nr)
                since[0] = 1e300
                return True
        return False

    since = [clock.monotonic()]
    net.drop = drop
    assert net.run_until(lambda: sink.count > len(blob) // 2 and dropped, 30.0, step=0.001)
    conn = src.transport
    rtt_before = conn.rtt
    assert 9 <= rtt_before <= 40
    decays = []
    on_loss = conn.cc.on_loss

    def recording_on_loss(now):
        before = conn.cc.max_window
        on_loss(now)
        decays.append((before, conn.cc.max_window))

    conn.cc.on_loss = recording_on_loss
    clock.jump(jump, not_utp)
    since[0] = clock.monotonic()
    net.run_until(lambda: sink.done.called and src.done.called, 60.0, step=0.001)
    assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
    assert isinstance(sink.done.result, error.ConnectionDone)
    assert isinstance(src.done.result, error.ConnectionDone)
    # the RTT estimate stays what the path gives, no timer fired for nothing,
    # and the window still reacts to the loss after the jump (a clock gone
    # backwards held LEDBAT's decay off for the hour)
    assert 9 <= conn.rtt <= 40 and conn.rto == 1000
    assert conn.timeouts == 0 and conn.probes <= 2
    assert len(dropped) == 2 and any(after < before for before, after in decays)
