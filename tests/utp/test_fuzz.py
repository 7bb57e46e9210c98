"""
Seeded chaos on the Clock network: loss, duplication and reordering, random
pauses, writes, closes and aborts. Whatever happens, data that arrives is
intact and in order, every connection ends exactly once, and nothing raises.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.utp.streams import HalfCloseSource, OneFactory
from tests.utp.test_connection import utp_socket
from txhyperswarm.testing import UDPNetwork

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
