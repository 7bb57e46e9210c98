"""
Seeded chaos on the Clock network: loss, duplication and reordering, random
pauses, writes, closes and aborts. Whatever happens, data that arrives is
intact and in order, every connection ends exactly once, and nothing raises.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.utp.streams import HalfCloseSource, OneFactory, RecorderFactory
from tests.utp.test_connection import Net, utp_socket
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp.connection import CONNECTED, UTPConnection
from txhyperswarm.utp.packet import ST_DATA, ST_FIN, ST_RESET, ST_STATE, ST_SYN, Packet, encode

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)


def sockets(seed, loss):
    rng = random.Random(seed)
    clock = Clock()
    clock.advance(1000)
    # loses, duplicates and reorders (held back 2-12 ms) datagrams
    net = UDPNetwork(clock, latency=0.002, loss=loss, duplicate=0.02, reorder=0.3, reorder_delay=0.007, seed=seed)
    a, b = utp_socket(net, A), utp_socket(net, B)
    b._initial_seq = lambda: rng.randrange(65536)
    return rng, net, a, b


@pytest.mark.parametrize("seed", range(6))
def test_both_ways_through_loss_duplication_and_reordering(seed):
    rng, net, a, b = sockets(seed, loss=0.03)
    blob_a, blob_b = os.urandom(rng.choice([1, 1382, 150_000])), os.urandom(rng.choice([0, 1383, 150_000]))
    pa, pb = HalfCloseSource(blob_a, half_close=True), HalfCloseSource(blob_b, half_close=True)
    b.listen(OneFactory(pb))
    a.connect(B[0], B[1], OneFactory(pa), seq_nr=rng.randrange(65536))
    assert net.run_until(lambda: pa.done.called and pb.done.called, 120, step=0.005)
    assert bytes(pb.received) == blob_a and bytes(pa.received) == blob_b
    assert isinstance(pa.done.result, error.ConnectionDone)
    assert isinstance(pb.done.result, error.ConnectionDone)
    assert a.dropped["connection_error"] == 0 and b.dropped["connection_error"] == 0
    assert net.run_until(lambda: not a.connections and not b.connections, 20, step=0.05)


class Chaos(Protocol):
    """Does random things; checks the stream it receives is a prefix of the peer's."""

    def __init__(self, rng, clock, log):
        self.rng, self.clock, self.log = rng, clock, log
        self.sent = hashlib.sha256()
        self.written = bytearray()
        self.got = bytearray()
        self.lost = None
        self.ends = 0

    def connectionMade(self):
        self.act()

    def act(self):
        if self.lost is not None:
            return
        t, r = self.transport, self.rng.random()
        if r < 0.5:
            data = os.urandom(self.rng.choice([1, 100, 3000, 40000]))
            t.write(data)
            self.written += data
        elif r < 0.55:
            t.loseConnection()
        elif r < 0.57:
            t.abortConnection()
        elif r < 0.6:
            t.loseWriteConnection()
        elif r < 0.65:
            t.pauseProducing()
        elif r < 0.75:
            t.resumeProducing()
        if self.lost is None:
            self.clock.callLater(self.rng.choice([0, 0.001, 0.05, 1, 5]), self.act)

    def dataReceived(self, data):
        self.got += data

    def connectionLost(self, reason):
        self.ends += 1
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloseChaos(Chaos):
    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        pass


@pytest.mark.parametrize("seed", range(12))
def test_random_use_of_the_transport_never_breaks_it(seed):
    rng, net, a, b = sockets(seed + 100, loss=rng_loss(seed))
    pa = (HalfCloseChaos if rng.random() < 0.5 else Chaos)(rng, net.clock, "a")
    pb = (HalfCloseChaos if rng.random() < 0.5 else Chaos)(rng, net.clock, "b")
    b.listen(OneFactory(pb))
    connected = []
    a.connect(B[0], B[1], OneFactory(pa)).addBoth(connected.append)
    net.run_until(lambda: connected, 30, step=0.01)
    if not isinstance(connected[0], Protocol):
        return  # e.g. the acceptor aborted before the initiator heard back
    assert net.run_until(lambda: pa.lost is not None and pb.lost is not None, 300, step=0.01)
    assert pa.ends == 1 and pb.ends == 1
    # whatever arrived is exactly the start of what the other side wrote
    assert bytes(pb.got) == bytes(pa.written[: len(pb.got)])
    assert bytes(pa.got) == bytes(pb.written[: len(pa.got)])
    assert a.dropped["connection_error"] == 0 and b.dropped["connection_error"] == 0
    assert net.run_until(lambda: not a.connections and not b.connections, 60, step=0.05)


def rng_loss(seed):
    return (0.0, 0.01, 0.05)[seed % 3]


# -- random packets at a connection with data in flight -------------------------

M16 = 0xFFFF
SACKS = st.one_of(
    st.just(b""),
    st.binary(min_size=4, max_size=4),
    st.sampled_from([b"\xff\xff\xff\xff", b"\x0f\x00\x00\x00", b"\xfe\xff\x00\x00", b"\x00\x00\x00\x80"]),
    st.binary(min_size=8, max_size=8),
)
#: (type, seq offset from the next expected, ack offset from the oldest
#: un-acked packet, window, timestamp, SACK mask, payload)
OPS = st.lists(
    st.tuples(
        st.sampled_from([ST_STATE] * 6 + [ST_DATA] * 4 + [ST_FIN] * 3 + [ST_RESET, ST_SYN]),
        st.one_of(st.just(0), st.just(0), st.integers(-4, 4), st.integers(-1100, 1100)),
        st.one_of(st.integers(-3, 45), st.integers(-2000, 2000)),
        st.sampled_from([0, 1382, 100_000, 1_048_576, 0xFFFFFFFF]),
        st.integers(0, 0xFFFFFFFF),
        SACKS,
        st.sampled_from([b"", b"x", b"y" * 1382]),
    ),
    min_size=10,
    max_size=40,
)


class PathHits:
    """Counts how often the connection logic's paths ran (a test hook on the class)."""

    PATHS = {
        "_selective_ack": "selective ack",
        "_fast_resend": "fast retransmit",
        "_reached_eof": "FIN",
        "_on_reset": "RESET",
    }

    def __init__(self, monkeypatch) -> None:
        self.counts = Counter()
        for name, label in self.PATHS.items():
            monkeypatch.setattr(UTPConnection, name, self._counting(getattr(UTPConnection, name), label))

    def _counting(self, method, label):
        counts = self.counts

        def counted(*args, **kw):
            counts[label] += 1
            return method(*args, **kw)

        return counted


def test_random_packets_reach_the_connection_logic(monkeypatch):
    """
    Packets with sequence and ack numbers drawn around what is in flight, at
    a connection that has 40 packets out: nothing raises (the logged_errors
    fixture fails the test on any error a connection logs), the flight
    bookkeeping stays consistent, and the run exercises selective acks, fast
    retransmits, the peer's FIN and RESETs, each at least 50 times.
    """
    hits = PathHits(monkeypatch)
    examples = []

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(OPS)
    def run(ops):
        n = Net()
        c, s = n.connect()
        n.b.listen(RecorderFactory())  # stray SYNs make connections of their own
        c.transport.write(b"abc")
        n.net.run(0.05, step=0.001)
        n.net.drop = lambda data, src, dst: True  # we play A by hand from now on
        conn = s.transport
        conn.cc.max_window = 100_000
        conn.write(os.urandom(1382 * 40))
        n.clock.advance(0)
        for ptype, dseq, dack, wnd, ts, sack, payload in ops:
            p = Packet(
                ptype,
                conn.recv_id if ptype != ST_SYN else conn.send_id,
                (conn._ack_nr + 1 + dseq) & M16,
                (conn.oldest_unacked - 1 + dack) & M16,
                timestamp=ts,
                timestamp_diff=ts >> 8,
                wnd_size=wnd,
                extensions=((1, sack),) if sack else (),
                payload=payload if ptype in (ST_DATA, ST_FIN) else b"",
            )
            n.b.datagram_received(encode(p), A)
            n.clock.advance(0.002)
            if conn.state <= CONNECTED:
                in_flight = [e for e in conn._inflight.values() if not e.lost]
                assert conn.bytes_in_flight == sum(len(e.payload) for e in in_flight) >= 0
                assert ((conn._seq_nr - conn._oldest) & M16) <= 1023
        n.net.run(40, step=0.5)
        assert n.b.stats()["dropped"]["connection_error"] == 0
        examples.append(len(ops))

    run()
    print(f"\n{len(examples)} examples, {sum(examples)} packets: {dict(hits.counts)}")
    for label in PathHits.PATHS.values():
        assert hits.counts[label] >= 50, (label, dict(hits.counts))
