"""
uTP connection behaviour on a fake network driven by a ``Clock``:
handshake numbering, timers (RTO, backoff, connect timeout, keep-alive),
fast retransmit, RESET, close/half-close, flow control, regressions.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.utp.streams import HalfCloseSource, OneFactory, Recorder, RecorderFactory, Sink, Source
from txhyperswarm.utp.connection import (
    UTPConnectionRefusedError,
    UTPConnectionResetError,
    UTPTimeoutError,
)
from txhyperswarm.utp.packet import (
    HEADER,
    ST_DATA,
    ST_FIN,
    ST_RESET,
    ST_STATE,
    ST_SYN,
    Packet,
    decode,
    encode,
)
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp.socket import UTPSocket

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)


def utp_socket(net, addr, **kw):
    """A UTPSocket on ``addr``'s host of ``net``, its UDP port bound."""
    udp = net.udp_socket(addr[0], addr[1])
    udp.listen()
    return UTPSocket(net.reactor(addr[0]), udp, **kw)


def packets(net, src=None, dst=None):
    """The uTP packets ``net`` carried (``record=True``), as ``(time, packet)``."""
    return [(t, decode(d)) for t, s, r, d in net.sent(src, dst)]


class Net:
    """Two UTPSockets, A (client) and B (listening), on one in-memory network."""

    def __init__(self, latency: float = 0.001, seq_b=None) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = UDPNetwork(self.clock, latency=latency, record=True)
        self.a = utp_socket(self.net, A)
        self.b = utp_socket(self.net, B)
        if seq_b is not None:
            self.b._initial_seq = lambda: seq_b

    def connect(self, client_proto=None, server_proto=None, **kw):
        server_proto = server_proto or Recorder()
        client_proto = client_proto or Recorder()
        self.b.listen(OneFactory(server_proto))
        d = self.a.connect(B[0], B[1], OneFactory(client_proto), **kw)
        self.net.run_until(lambda: d.called, 1.0, step=0.001)
        assert d.called
        return client_proto, server_proto

    def sent(self, src=None, dst=None, types=None):
        out = packets(self.net, src, dst)
        if types is not None:
            out = [(t, p) for t, p in out if p.type in types]
        return out


def test_handshake_numbers_and_ids_are_libutps():
    n = Net(seq_b=39017)
    c, s = n.connect(connection_id=0x4567, seq_nr=9158)
    c.transport.write(b"hello")
    n.net.run(0.1, step=0.001)
    syn = n.sent(A, B)[0][1]
    assert (syn.type, syn.connection_id, syn.seq_nr, syn.ack_nr, syn.timestamp_diff) == (ST_SYN, 0x4567, 9158, 0, 0)
    reply = n.sent(B, A)[0][1]
    assert (reply.type, reply.connection_id, reply.seq_nr, reply.ack_nr, reply.timestamp_diff) == (
        ST_STATE, 0x4567, 39017, 9158, 0,
    )
    data = n.sent(A, B, {ST_DATA})[0][1]
    assert (data.connection_id, data.seq_nr, data.ack_nr, data.payload) == (0x4568, 9159, 39016, b"hello")
    assert data.timestamp_diff != 0  # a real delay sample, or libutp never grows its window
    assert s.received == b"hello"
    s.transport.write(b"pong")
    n.net.run(0.1, step=0.001)
    pong = n.sent(B, A, {ST_DATA})[0][1]
    assert (pong.connection_id, pong.seq_nr, pong.ack_nr) == (0x4567, 39017, 9159)
    assert c.received == b"pong"
    assert c.transport.getPeer().type == "UDP"
    assert (c.transport.getPeer().host, c.transport.getPeer().port) == B
    assert (s.transport.getPeer().host, s.transport.getPeer().port) == A
    assert (c.transport.getHost().host, c.transport.getHost().port) == A


def test_acceptor_holds_data_until_the_initiators_first_packet():
    n = Net()

    class Greeter(Recorder):
        def connectionMade(self):
            self.transport.write(b"server first")

    c, s = n.connect(server_proto=Greeter())
    n.net.run(1.0, step=0.001)
    assert n.sent(B, A, {ST_DATA}) == []
    c.transport.write(b"x")
    n.net.run(0.1, step=0.001)
    assert c.received == b"server first"


def test_connect_timeout_after_three_syns_at_libutp_times():
    n = Net()
    d = n.a.connect("10.0.0.9", 9, RecorderFactory())  # nobody there
    failures = []
    d.addErrback(failures.append)
    n.net.run_events(20.99)
    assert failures == []
    n.net.run_events(0.02)
    assert failures and failures[0].check(UTPTimeoutError)
    assert "10.0.0.9:9" in str(failures[0].value)
    times = [t - 1000.0 for t, p in n.sent(A, ("10.0.0.9", 9))]
    assert times == pytest.approx([0.0, 3.0, 9.0], abs=1e-6)  # SYN, +3 s, +6 s; error at +12 s more
    assert n.a.connections == {}


def test_rto_backoff_and_death_after_the_retry_limit():
    n = Net()
    c, s = n.connect()
    assert c.transport.rto == 1000  # floor: loopback RTT is ~2 ms
    n.net.drop = lambda data, src, dst: src == A  # the path dies
    start = n.clock.seconds()
    c.transport.write(b"x" * 100)
    n.clock.advance(0)
    n.net.run_events(30.99)
    assert c.lost is None
    times = [t - start for t, p in n.sent(A, B, {ST_DATA})]
    # three loss probes (3 RTTs, at least 30 ms, doubling), then the RTO:
    # 1 s, doubling: 1, 2, 4, 8; each resend goes out three times, 10 ms apart
    expect = [0.0] + [t + gap for t in (0.03, 0.09, 0.21, 1.0, 3.0, 7.0, 15.0) for gap in (0.0, 0.01, 0.02)]
    assert times == pytest.approx(expect, abs=1e-6)
    assert c.transport.probes == 3 and c.transport.timeouts == 4
    assert c.transport.retransmit_timeout == 16000
    n.net.run_events(0.02)
    assert c.lost is not None and c.lost.check(UTPTimeoutError)
    assert "10.0.0.2:2222" in str(c.lost.value)
    assert n.a.connections == {}


def test_a_run_of_lost_acks_costs_no_rto_against_a_batch_acking_receiver():
    # libutp (and our own receiver) ACKs once per read batch: two copies of
    # a resend that arrive together draw one ACK. Through the lossy relay a
    # run of 6 lost ACKs then cost 3 loss probes and 3 RTO expiries (a
    # 15 s stall in CI): the copies now go out apart, each drawing an ACK.
    n = Net()
    c, s = n.connect()
    drop = {"data": 1, "acks": 6}

    def lossy(data, src, dst):
        kind = decode(data).type
        if src == A and kind == ST_DATA and drop["data"]:
            drop["data"] -= 1  # the one DATA packet: a tail loss
            return True
        if src == B and kind == ST_STATE and drop["acks"]:
            drop["acks"] -= 1
            return True
        return False

    n.net.drop = lossy
    start = n.clock.seconds()
    c.transport.write(b"x" * 100)
    n.net.run_until(lambda: s.received == b"x" * 100 and c.transport.bytes_in_flight == 0, 30.0, step=0.001)
    assert s.received == b"x" * 100 and c.transport.bytes_in_flight == 0
    assert drop == {"data": 0, "acks": 0}
    assert n.clock.seconds() - start < 0.5
    assert c.transport.timeouts == 0


def test_rto_from_measured_rtt():
    n = Net(latency=0.3)  # RTT 600 ms: rto = 600 + 4 * 300
    c, s = n.connect()
    rtt = c.transport.rtt
    assert abs(rtt - 600) <= 1  # µs rounding of float clock
    assert c.transport.rto == rtt + 4 * (rtt // 2)


def test_an_ack_resets_the_backoff():
    n = Net()
    c, s = n.connect()
    drop = {"on": True}
    n.net.drop = lambda data, src, dst: drop["on"] and src == A
    c.transport.write(b"x" * 100)
    n.net.run(3.5, step=0.05)
    assert c.transport.retransmit_timeout == 4000
    drop["on"] = False
    n.net.run(4.0, step=0.05)
    assert s.received == b"x" * 100
    assert c.transport.retransmit_timeout == c.transport.rto


def test_fast_retransmit_after_three_duplicate_acks():
    n = Net()
    c, s = n.connect()
    conn = c.transport
    conn.cc.max_window = 100_000
    n.net.drop = lambda data, src, dst: src == A  # we play B by hand
    conn.write(os.urandom(1382 * 4))
    n.clock.advance(0)
    first = n.sent(A, B, {ST_DATA})[0][1]
    assert len(n.sent(A, B, {ST_DATA})) == 4
    peer_next = n.sent(B, A)[0][1].seq_nr
    dup = HEADER.pack(0x21, 0, conn.recv_id, 1, 5000, 1048576, peer_next, (first.seq_nr - 1) & 0xFFFF)
    for i in range(3):
        n.a.datagram_received(dup, B)
    resent = n.sent(A, B, {ST_DATA})[4:]
    assert [p.seq_nr for t, p in resent] == [first.seq_nr]
    assert n.clock.seconds() - n.sent(A, B, {ST_DATA})[0][0] < 0.5  # well before the RTO
    # more duplicates in the same window do not resend it again
    for i in range(3):
        n.a.datagram_received(dup, B)
    assert len(n.sent(A, B, {ST_DATA})) == 5


def test_selective_ack_fast_resend_before_rto():
    n = Net()
    c, s = n.connect()
    c.transport.cc.max_window = 100_000
    dropped = []

    def drop(data, src, dst):
        p = decode(data)
        if src == A and p.type == ST_DATA and not dropped and len(n.sent(A, B, {ST_DATA})) == 2:
            dropped.append(p.seq_nr)
            return True
        return False

    n.net.drop = drop
    blob = os.urandom(1382 * 20)
    c.transport.write(blob)
    n.net.run_until(lambda: len(s.received) == len(blob), 0.5, step=0.001)
    assert bytes(s.received) == blob
    sacks = [p for t, p in n.sent(B, A, {ST_STATE}) if p.sack]
    assert sacks  # the receiver told us what it had
    resends = [t for t, p in n.sent(A, B, {ST_DATA}) if p.seq_nr == dropped[0]]
    assert len(resends) == 2 and resends[1] - resends[0] < 0.1


def test_keepalive_is_a_duplicate_ack_after_29_idle_seconds():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"hi")
    n.net.run(0.1, step=0.001)
    before = len(n.sent(A, B))
    last_ack = n.sent(A, B)[-1][1].ack_nr
    n.net.run(28.5, step=0.5)
    assert len(n.sent(A, B)) == before
    n.net.run(1.0, step=0.5)
    ka = n.sent(A, B)[before:]
    assert len(ka) == 1
    assert ka[0][1].type == ST_STATE and ka[0][1].ack_nr == (last_ack - 1) & 0xFFFF
    n.net.run(60, step=1)
    assert c.lost is None and s.lost is None  # keep-alives are harmless


def test_unknown_connection_packet_is_answered_with_libutps_reset():
    n = Net()
    probe = encode(Packet(ST_DATA, 4242, 777, 5, timestamp=1, wnd_size=1000, payload=b"x"))
    n.b.datagram_received(probe, A)
    n.clock.advance(0)
    (t, rst), = n.sent(B, A)
    assert (rst.type, rst.connection_id, rst.ack_nr, rst.timestamp, rst.timestamp_diff, rst.wnd_size) == (
        ST_RESET, 4242, 777, 0, 0, 0,
    )
    # rate limit: the same offender is not answered again within 10 s
    n.b.datagram_received(probe, A)
    assert len(n.sent(B, A)) == 1
    # a RESET or a SYN (not listening) for nobody gets no answer
    n.b.datagram_received(encode(Packet(ST_RESET, 4242, 1, 2)), A)
    n.b.datagram_received(encode(Packet(ST_SYN, 4242, 1, 0)), A)
    assert len(n.sent(B, A)) == 1


def test_reset_during_connect_is_refused():
    n = Net()
    d = n.a.connect(B[0], B[1], RecorderFactory())  # B does not listen: silence
    failures = []
    d.addErrback(failures.append)
    syn = n.sent(A, B)[0][1]
    n.a.datagram_received(encode(Packet(ST_RESET, syn.connection_id, 1, syn.seq_nr)), B)
    assert failures and failures[0].check(UTPConnectionRefusedError)


def test_reset_on_an_established_connection_is_reported():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"x")
    n.net.run(0.1, step=0.001)
    s.transport.abortConnection()
    n.net.run(0.1, step=0.001)
    assert s.lost.check(error.ConnectionAborted)
    assert c.lost is not None and c.lost.check(UTPConnectionResetError)
    assert n.a.connections == {} and n.b.connections == {}


def test_reset_matches_either_id_of_the_connection():
    n = Net()
    c, s = n.connect()
    conn = c.transport
    # libutp matches a RESET carrying our send_id too (utp.md 2.7)
    n.a.datagram_received(encode(Packet(ST_RESET, conn.send_id, 1, 2)), B)
    assert c.lost is not None and c.lost.check(UTPConnectionResetError)


def test_clean_close_both_ways():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"request")
    c.transport.loseConnection()
    n.net.run(0.5, step=0.001)
    assert s.received == b"request"
    assert c.lost.check(error.ConnectionDone)
    assert s.lost.check(error.ConnectionDone)  # not half-closeable: closed on EOF
    fins = n.sent(None, None, {ST_FIN})
    assert len(fins) == 2
    n.net.run(15, step=0.001)
    assert n.a.connections == {} and n.b.connections == {}
    assert not [p for t, p in n.sent() if p.type == ST_RESET]


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    read_lost = write_lost = False

    def readConnectionLost(self):
        self.read_lost = True
        self.transport.write(b"answer after your EOF")
        self.transport.loseWriteConnection()

    def writeConnectionLost(self):
        self.write_lost = True


def test_half_close():
    n = Net()
    c, s = n.connect(client_proto=HalfCloser(), server_proto=HalfCloser())
    c.transport.write(b"question")
    c.transport.loseWriteConnection()
    n.net.run(0.5, step=0.001)
    assert s.received == b"question" and s.read_lost
    assert c.received == b"answer after your EOF" and c.read_lost and c.write_lost
    assert c.lost.check(error.ConnectionDone) and s.lost.check(error.ConnectionDone)


def test_the_close_state_walks_forward_through_a_half_close():
    from txhyperswarm.utp.connection import Receiving, Sending, State

    n = Net()
    c, s = n.connect(client_proto=HalfCloser(), server_proto=HalfCloser())
    ct, st = c.transport, s.transport
    assert (ct.state, ct.sending, ct.receiving) == (State.CONNECTED, Sending.OPEN, Receiving.OPEN)
    ct.write(b"question")
    ct.loseWriteConnection()
    assert ct.sending == Sending.FIN_SENT and not ct.disconnecting
    ct.write(b"ignored: the write side is closed")
    n.clock.advance(0.001)  # the FIN arrives: the server answers and half-closes too
    assert st.receiving == Receiving.EOF_TOLD and st.sending == Sending.FIN_SENT
    n.clock.advance(0.001)  # the server's ack of our FIN, and its FIN
    assert ct.sending == Sending.DONE and c.write_lost
    assert ct.receiving == Receiving.EOF_TOLD and ct.state == State.LINGER
    assert c.lost.check(error.ConnectionDone)
    n.net.run(0.1, step=0.001)
    assert st.state == State.LINGER and s.lost.check(error.ConnectionDone)
    assert s.received == b"question"
    n.net.run(3.5, step=0.001)  # TIME_WAIT: both FINs seen
    assert ct.state == State.CLOSED and st.state == State.CLOSED
    assert n.a.connections == {} and n.b.connections == {}


def test_lossy_python_to_python_transfer_with_integrity():
    n = Net(latency=0.005)
    rng = random.Random(7)
    n.net.drop = lambda data, src, dst: rng.random() < 0.05
    blob = os.urandom(2 * 1024 * 1024)
    src, sink = Source(blob), Sink(hello=b"")
    n.connect(client_proto=src, server_proto=sink)
    assert n.net.run_until(lambda: sink.done.called and src.done.called, 120, step=0.005)
    assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
    assert src.transport.packets_resent > 0


def test_sequence_numbers_wrap_mid_transfer():
    n = Net(latency=0.002, seq_b=65500)
    rng = random.Random(3)
    n.net.drop = lambda data, src, dst: rng.random() < 0.02
    blob = os.urandom(1382 * 300)
    up, down = HalfCloseSource(blob, half_close=True), HalfCloseSource(blob, half_close=True)
    n.b.listen(OneFactory(down))
    n.a.connect(B[0], B[1], OneFactory(up), seq_nr=65400)
    assert n.net.run_until(lambda: up.done.called and down.done.called, 60, step=0.002)
    assert bytes(up.received) == blob and bytes(down.received) == blob
    seqs = {p.seq_nr for t, p in n.sent(None, None, {ST_DATA})}
    assert 65535 in seqs and 0 in seqs and 100 in seqs  # both directions crossed zero


def test_paused_reader_closes_the_window_and_is_not_counted_as_loss():
    """Regression: a send stalled by a full window must not be treated as loss."""
    n = Net()
    blob = os.urandom(3 * 1024 * 1024)
    src, sink = Source(blob), Recorder()
    n.connect(client_proto=src, server_proto=sink)
    sink.transport.pauseProducing()
    n.net.run(2.0, step=0.005)
    conn = src.transport
    assert conn.bytes_in_flight == 0  # everything sent was acked, window 0
    received_while_paused = sink.transport._readbuf_bytes
    assert received_while_paused <= 1024 * 1024 + 1382
    # far longer than the 31 s a lost connection would take to die
    n.net.run(120.0, step=0.05)
    assert not src.done.called and sink.lost is None
    # (the 50 ms clock steps delay each ack past the 30 ms loss probe, which
    # then resends the zero-window probe once; never a timeout)
    assert conn.timeouts == 0 and conn._retransmit_count == 0
    assert conn.packets_resent <= conn.probes
    assert sink.transport._readbuf_bytes <= received_while_paused + 10 * 1382  # only probes
    sink.transport.resumeProducing()
    assert n.net.run_until(lambda: len(sink.received) == len(blob), 30, step=0.002)
    assert bytes(sink.received) == blob


def test_a_full_send_buffer_pauses_the_producer_and_never_deadlocks():
    """Regression: both sides write far more than the windows at once."""
    n = Net(latency=0.003)
    rng = random.Random(11)
    n.net.drop = lambda data, src, dst: rng.random() < 0.01
    a_blob, b_blob = os.urandom(3 * 1024 * 1024), os.urandom(3 * 1024 * 1024)
    a = HalfCloseSource(a_blob, half_close=True)
    b = HalfCloseSource(b_blob, half_close=True, wait_first=True)
    n.connect(client_proto=a, server_proto=b)
    assert n.net.run_until(lambda: a.done.called and b.done.called, 60, step=0.003)
    assert bytes(a.received) == b_blob and bytes(b.received) == a_blob
    assert a.pauses > 0 and b.pauses > 0  # the high-water mark paused both writers
    assert a.max_send_buffer <= 512 * 1024 and b.max_send_buffer <= 512 * 1024


def test_unregistered_writer_is_still_flushed():
    n = Net()
    c, s = n.connect()
    blob = os.urandom(500_000)
    c.transport.write(blob)
    n.net.run(2.0, step=0.001)
    assert bytes(s.received) == blob


def test_duplicate_syn_is_answered_again_without_a_second_connection():
    n = Net()
    drops = {"n": 0}

    def drop(data, src, dst):
        if src == B and decode(data).type == ST_STATE and drops["n"] == 0:
            drops["n"] += 1
            return True
        return False

    n.net.drop = drop
    factory = RecorderFactory()
    n.b.listen(factory)
    d = n.a.connect(B[0], B[1], RecorderFactory())
    n.net.run(3.5, step=0.05)
    assert d.called
    assert len(factory.built) == 1 and len(n.b.connections) == 1


def test_cancel_connect():
    n = Net()
    d = n.a.connect("10.0.0.9", 9, RecorderFactory())
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(error.ConnectingCancelledError)
    assert n.a.connections == {}


def test_connection_provides_the_transport_interfaces():
    from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
    from zope.interface.verify import verifyObject

    n = Net()
    c, s = n.connect()
    for iface in (ITransport, IPushProducer, IConsumer):
        verifyObject(iface, c.transport)
        verifyObject(iface, s.transport)
    assert callable(c.transport.loseWriteConnection)  # half-close, as ITCPTransport


def test_a_protocol_exception_drops_the_connection_with_it(logged_errors):
    class Boom(Recorder):
        def dataReceived(self, data):
            raise ZeroDivisionError("bad protocol")

    n = Net()
    c, s = n.connect(server_proto=Boom())
    c.transport.write(b"x")
    n.net.run(0.1, step=0.001)
    assert s.lost.check(ZeroDivisionError)
    assert len(logged_errors.take(ZeroDivisionError)) == 1
    assert c.lost.check(UTPConnectionResetError)
    assert n.a.dropped["connection_error"] == 0 and n.b.dropped["connection_error"] == 0


def test_no_second_reset_for_late_packets_of_an_aborted_connection():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"x")
    n.net.run(0.1, step=0.001)
    conn = s.transport
    late = encode(Packet(ST_STATE, conn.recv_id, 5, 6, timestamp=1, wnd_size=100))
    conn.abortConnection()
    n.net.log.clear()
    n.b.datagram_received(late, A)
    assert n.sent(B, A) == []
    n.net.run(11.0, step=0.5)  # after 10 s libutp's rule applies again
    n.b.datagram_received(late, A)
    assert [p.type for t, p in n.sent(B, A)] == [ST_RESET]


def test_pull_producer_is_driven_until_done():
    from twisted.internet.interfaces import IPullProducer

    @implementer(IPullProducer)
    class Pull:
        def __init__(self, transport, chunks):
            self.transport, self.chunks = transport, chunks

        def resumeProducing(self):
            if self.chunks:
                self.transport.write(self.chunks.pop(0))
            else:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def stopProducing(self):
            pass

    n = Net()
    c, s = n.connect()
    chunks = [os.urandom(10_000) for _ in range(100)]
    expected = b"".join(chunks)
    c.transport.registerProducer(Pull(c.transport, list(chunks)), False)
    assert n.net.run_until(lambda: s.lost is not None, 10, step=0.001)
    assert bytes(s.received) == expected
    assert s.lost.check(error.ConnectionDone)


def test_an_accepted_connection_without_data_times_out():
    n = Net()
    c, s = n.connect()  # the client never writes: the acceptor stays in SYN_RECV
    n.net.run(59.5, step=0.5)
    assert s.lost is None
    n.net.run(1.0, step=0.5)
    assert s.lost is not None and s.lost.check(UTPTimeoutError)
    assert n.b.connections == {}


def test_a_selectively_acked_fin_does_not_end_the_connection_early():
    """Regression: data lost just before a FIN that arrives must still be resent."""
    n = Net()
    c, s = n.connect(client_proto=HalfCloser(), server_proto=HalfCloser())
    c.transport.cc.max_window = 100_000
    dropped = []

    def drop(data, src, dst):
        p = decode(data)
        if src == A and p.type == ST_DATA and len(p.payload) == 1 and not dropped:
            dropped.append(p.seq_nr)
            return True
        return False

    n.net.drop = drop
    c.transport.write(b"x" * 1382 * 3 + b"!")
    c.transport.loseWriteConnection()  # FIN goes right after the lost 1-byte packet
    n.net.run(5.0, step=0.001)
    assert dropped
    assert bytes(s.received) == b"x" * 1382 * 3 + b"!"
    assert c.lost.check(error.ConnectionDone) and s.lost.check(error.ConnectionDone)


def test_rto_estimate_stays_sane_under_heavy_loss():
    """Regression: packets acked only once a hole is refilled are not RTT samples
    (Karn); otherwise the RTO estimate grew to minutes and transfers stalled."""
    n = Net(latency=0.005)
    rng = random.Random(11)
    n.net.drop = lambda data, src, dst: rng.random() < 0.12
    blob = os.urandom(600_000)
    src, sink = Source(blob), Sink()
    n.connect(client_proto=src, server_proto=sink)
    worst = 0
    for _ in range(6000):
        if sink.done.called:
            break
        n.net.run(0.05, step=0.005)
        if src.transport is not None and src.transport.connected:
            worst = max(worst, src.transport.rto)
    assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
    assert worst < 5000


def test_a_reset_after_the_peers_fin_keeps_what_a_paused_reader_has_not_read():
    """The sender closed and forgot the connection; our keep-alive draws a RESET
    while our reader is paused: the buffered data is still delivered, and the
    end is orderly."""
    n = Net()
    blob = os.urandom(300_000)
    src, sink = Source(blob), Sink()
    n.connect(client_proto=src, server_proto=sink)
    sink.transport.pauseProducing()
    n.net.run(45.0, step=0.01)  # past the sender's linger and our keep-alive
    assert isinstance(src.done.result, error.ConnectionDone)
    assert n.a.connections == {}
    assert any(p.type == ST_RESET for t, p in n.sent(A, B))  # the forgotten sender's answer
    assert not sink.done.called
    sink.transport.resumeProducing()
    assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
    assert isinstance(sink.done.result, error.ConnectionDone)


def test_time_wait_reacks_a_duplicate_fin_instead_of_resetting():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"bye")
    c.transport.loseConnection()
    n.net.run(0.5, step=0.001)
    assert c.lost.check(error.ConnectionDone) and s.lost.check(error.ConnectionDone)
    server_fin = [d for t, src, dst, d in n.net.log if src == B and decode(d).type == ST_FIN][0]
    n.net.log.clear()
    n.a.datagram_received(server_fin, B)  # a late duplicate
    n.clock.advance(0)
    assert [p.type for t, p in n.sent(A, B)] == [ST_STATE]
    n.net.run(5.0, step=0.001)
    assert n.a.connections == {} and n.b.connections == {}


def test_a_peer_ignoring_our_window_cannot_grow_the_read_buffer():
    n = Net()
    c, s = n.connect()
    c.transport.write(b"x")
    n.net.run(0.1, step=0.001)
    s.transport.pauseProducing()
    conn = c.transport  # the sender; we bypass its windows by injecting DATA
    server = s.transport
    chunk = b"y" * 1382
    for i in range(3000):  # ~4 MiB, far past a 1 MiB window
        seq = (conn._seq_nr + i) & 0xFFFF
        pkt = HEADER.pack(0x01, 0, server.recv_id, 1, 1000, 1048576, seq, (server._seq_nr - 1) & 0xFFFF) + chunk
        n.b.datagram_received(pkt, A)
    assert server._readbuf_bytes <= 2 * 1024 * 1024 + 1382
    assert n.b.dropped["window_overrun"] > 0
    assert n.b.dropped["connection_error"] == 0


def _warm(n, c, s):
    """Open the congestion window so that writes leave as one burst."""
    c.transport.write(b"w" * 300_000)
    assert n.net.run_until(lambda: len(s.received) == 300_000, 10, step=0.001)
    n.net.run(0.1, step=0.001)
    s.received.clear()


def test_out_of_order_data_is_acked_at_once_and_a_lossy_path_acks_every_two():
    """One deferred ACK per burst, when lost, stalls a libutp sender for its RTO."""
    n = Net()
    c, s = n.connect()
    _warm(n, c, s)
    dropped = []

    def drop(data, src, dst):
        p = decode(data)
        if src == A and p.type == ST_DATA and not dropped:
            dropped.append(p.seq_nr)  # the first DATA of the burst, once
            return True
        return False

    n.net.drop = drop
    start = len(n.sent(B, A, {ST_STATE}))
    c.transport.write(b"x" * (1382 * 8))  # 8 packets in one burst
    n.net.run(0.5, step=0.001)
    states = [p for t, p in n.sent(B, A, {ST_STATE})][start:]
    # each of the 7 out-of-order packets drew its own selective ack
    assert len([p for p in states if p.extensions]) == 7
    assert bytes(s.received) == b"x" * (1382 * 8)
    # the path lost a packet: in-order data is now acked every 2 packets
    n.net.drop = None
    start = len(n.sent(B, A, {ST_STATE}))
    c.transport.write(b"y" * (1382 * 8))
    n.net.run(0.5, step=0.001)
    assert len(n.sent(B, A, {ST_STATE})) - start == 4
    assert bytes(s.received).endswith(b"y" * (1382 * 8))


def test_clean_path_acks_a_burst_once():
    n = Net()
    c, s = n.connect()
    _warm(n, c, s)
    start = len(n.sent(B, A, {ST_STATE}))
    c.transport.write(b"x" * (1382 * 8))
    n.net.run(0.5, step=0.001)
    assert len(n.sent(B, A, {ST_STATE})) - start == 1
    assert bytes(s.received) == b"x" * (1382 * 8)


@pytest_twisted.inlineCallbacks
def test_window_is_capped_by_the_kernel_receive_queue(reactor):
    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp.socket import kernel_window

    small = UDPSocket(reactor, host="127.0.0.1", buffer_size=0)
    big = UDPSocket(reactor, host="127.0.0.1", buffer_size=4 * 1024 * 1024)
    try:
        assert kernel_window(small) is None  # not bound yet
        small.listen()
        big.listen()
        # the default ~208 KiB holds ~92 datagrams of 1402 bytes; 3/4 of them
        assert 40 * 1382 <= kernel_window(small) <= 92 * 1382
        assert kernel_window(big) >= 1024 * 1024
        sock = UTPSocket(reactor, small)
        conn = sock._new_connection(("127.0.0.1", 9), 1, 2, 0, initiator=True)
        assert conn._adv_window() == kernel_window(small)
    finally:
        yield small.close()
        yield big.close()
