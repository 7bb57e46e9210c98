"""
Loss recovery, Python <-> Python.

On a Clock (``txhyperswarm.testing``), where time is exact: seeded lossy
transfers whose longest stall and number of RTO expiries are held to fixed
figures measured on that network. On real loopback sockets through a lossy
relay (drops, reorders and duplicates in both directions, seeded): the data
arrives intact, and no stall outlasts a fixed, generous limit.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer, error
from twisted.internet.task import Clock, LoopingCall

from tests.utp.relay import LossyRelay
from tests.utp.streams import OneFactory, Sink, Source, random_blob
from tests.utp.test_connection import utp_socket
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket

MiB = 1024 * 1024
A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)

#: Longest stall allowed on real sockets: a fixed, generous liveness bound
#: (measured 0.06-0.13 s through the relay; one RTO expiry, 1 s, still
#: passes; the machine is shared). Not derived from the code under test.
STALL_LIMIT = 1.5


class StallMonitor:
    """
    Polls ``progress()`` (anything that changes when data moves) every
    10 ms and keeps the longest gap between changes (:attr:`worst`) and
    every gap over ``limit`` seconds (:attr:`violations`).
    """

    def __init__(self, reactor, progress, limit: float = STALL_LIMIT) -> None:
        self.reactor = reactor
        self.progress = progress
        self.limit = limit
        self.last = progress()
        self.last_t = reactor.seconds()
        self.worst = 0.0
        self.violations = []
        self.loop = LoopingCall(self.poll)
        self.loop.clock = reactor
        self.loop.start(0.01, now=False)

    def poll(self) -> None:
        now = self.reactor.seconds()
        v = self.progress()
        if v != self.last:
            gap = now - self.last_t
            self.worst = max(self.worst, gap)
            if gap > self.limit:
                self.violations.append(gap)
            self.last, self.last_t = v, now

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


# -- on a Clock -------------------------------------------------------------------

#: (size, loss, seed, longest stall allowed, simulated seconds allowed).
#: Measured on this network (0.5 ms latency, 1 % duplicated, 1 % reordered):
#: 4 MiB at 20 %: 4.3 s, longest stall 0.121 s, no RTO expiry; 16 MiB at
#: 5 %: 1.6 s, longest stall 0.060 s, no RTO expiry. A loss probe slowed to
#: 0.99 x RTO: 4 MiB at 20 % unfinished after 60 s (3 s stalls, 27 RTO
#: expiries), 16 MiB at 5 % in 33 s (1 s stalls).
CLOCK_RUNS = [
    (4 * MiB, 0.20, 3, 0.25, 10.0),
    (16 * MiB, 0.05, 1, 0.15, 5.0),
]


@pytest.mark.parametrize(
    "size,loss,seed,max_stall,max_time", CLOCK_RUNS, ids=["4MiB-20%", "16MiB-5%"]
)
def test_recovery_on_a_clock(size, loss, seed, max_stall, max_time):
    clock = Clock()
    clock.advance(1000.0)
    net = UDPNetwork(clock, latency=0.0005, loss=loss, duplicate=0.01, reorder=0.01, seed=seed)
    a, b = utp_socket(net, A), utp_socket(net, B)
    blob = random_blob(size)
    sink, src = Sink(), Source(blob)
    b.listen(OneFactory(sink))
    connected = []
    a.connect(B[0], B[1], OneFactory(src)).addBoth(connected.append)
    assert net.run_until(lambda: connected, 10.0, step=0.001)
    assert connected == [src]
    conn = src.transport
    start = last_t = clock.seconds()
    last, worst = (sink.count, conn.oldest_unacked), 0.0
    while not sink.done.called and clock.seconds() - start < 60:
        clock.advance(0.001)
        now = (sink.count, conn.oldest_unacked)
        if now != last:
            worst = max(worst, clock.seconds() - last_t)
            last, last_t = now, clock.seconds()
    elapsed = clock.seconds() - start
    print(
        f"\n{size // MiB} MiB at {loss:.0%} loss on a Clock: {elapsed:.2f} s, longest stall {worst:.3f} s;"
        f" {conn.timeouts} RTO expiries, {conn.probes} probes, {conn.packets_resent} resent; {dict(net.counts)}"
    )
    assert sink.done.called, "not done in 60 s"
    assert isinstance(sink.done.result, error.ConnectionDone), sink.done.result
    assert sink.count == size and sink.hash.digest() == hashlib.sha256(blob).digest()
    assert net.counts["lost"] > size // 1382 * loss  # the loss happened
    assert worst <= max_stall
    assert conn.timeouts == 0
    assert elapsed <= max_time


# -- on real sockets ------------------------------------------------------------


@defer.inlineCallbacks
def relayed_transfer(reactor, size: int, loss: float, seed: int, limit: float):
    """
    ``size`` bytes through the relay at ``loss``; done within ``limit``
    seconds, a fixed, generous bound (about 8x what was measured on an idle
    machine; a loss probe slowed to 0.99 x RTO took 64 s for 4 MiB at 20 %).
    """
    ua, ub = UDPSocket(reactor, host="127.0.0.1"), UDPSocket(reactor, host="127.0.0.1")
    a, b = UTPSocket(reactor, ua), UTPSocket(reactor, ub)
    relay = LossyRelay(reactor, ("127.0.0.1", ub.listen()[1]), loss=loss, seed=seed)
    monitor = None
    try:
        blob = random_blob(size)
        sink = Sink()
        b.listen(OneFactory(sink))
        src = Source(blob)
        start = reactor.seconds()
        yield a.connect("127.0.0.1", relay.port, OneFactory(src))
        conn = src.transport
        monitor = StallMonitor(reactor, lambda: (sink.count, conn.oldest_unacked))
        reason = yield sink.done.addTimeout(limit, reactor)
        elapsed = reactor.seconds() - start
        monitor.stop()
        print(
            f"\n{size // MiB} MiB at {loss:.0%} loss: {elapsed:.1f} s, longest stall"
            f" {monitor.worst:.3f} s (limit {STALL_LIMIT} s); sender: {conn.timeouts}"
            f" timeouts, {conn.probes} probes, {conn.packets_resent} resent; {relay.stats()}"
        )
        assert isinstance(reason, error.ConnectionDone), reason
        assert sink.count == size
        assert sink.hash.digest() == hashlib.sha256(blob).digest()
        assert isinstance((yield src.done.addTimeout(30, reactor)), error.ConnectionDone)
        assert monitor.violations == []
        assert relay.up.dropped and relay.down.dropped and relay.up.reordered and relay.up.duplicated
    finally:
        if monitor is not None:
            monitor.stop()
        yield a.close()
        yield b.close()
        yield relay.close()
        yield ua.close()
        yield ub.close()


@pytest_twisted.inlineCallbacks
def test_64mib_at_5_percent_loss(reactor):
    yield relayed_transfer(reactor, 64 * MiB, 0.05, seed=5, limit=60)  # measured 8.2 s


@pytest_twisted.inlineCallbacks
def test_4mib_at_20_percent_loss(reactor):
    yield relayed_transfer(reactor, 4 * MiB, 0.20, seed=20, limit=30)  # measured 3.7 s
