"""
Python <-> Python uTP through a lossy relay on loopback (drops, reorders and
duplicates in both directions, seeded): the data arrives intact, no stall
outlasts the backoff the sending connection reports, and it never dies.
"""

from __future__ import annotations

import hashlib

import pytest_twisted
from twisted.internet import defer, error
from twisted.internet.task import LoopingCall

from tests.utp.relay import LossyRelay
from tests.utp.streams import OneFactory, Sink, Source, random_blob
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket

MiB = 1024 * 1024
#: Scheduling noise allowed on top of the connection's own timeout (the
#: machine is shared; this is a liveness bound, not a speed assertion).
SLACK = 0.5


class StallMonitor:
    """
    Polls ``progress()`` (anything that changes when data moves) every 10 ms
    and keeps, for each gap between changes, the gap and the largest
    retransmission timeout ``conn`` reported during it. The timeout doubles
    with each expiry, so a gap that waits out timeouts T, 2T, ... 2^k T
    (the last value it reported before the ack reset it) lasts less than
    twice that: the bound is ``2 * largest + SLACK``.
    """

    def __init__(self, reactor, progress, conn) -> None:
        self.reactor = reactor
        self.progress = progress
        self.conn = conn
        self.last = progress()
        self.last_t = reactor.seconds()
        self.gap_rto = conn.retransmit_timeout
        self.worst = (0.0, 0.0)  # (gap, bound) with the largest gap
        self.violations = []
        self.loop = LoopingCall(self._poll)
        self.loop.clock = reactor
        self.loop.start(0.01, now=False)

    def _poll(self) -> None:
        now = self.reactor.seconds()
        rto = self.conn.retransmit_timeout
        if rto > self.gap_rto:
            self.gap_rto = rto
        v = self.progress()
        if v != self.last:
            gap = now - self.last_t
            bound = 2 * self.gap_rto / 1000.0 + SLACK
            if gap > self.worst[0]:
                self.worst = (gap, bound)
            if gap > bound:
                self.violations.append((gap, bound))
            self.last, self.last_t, self.gap_rto = v, now, rto

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


@defer.inlineCallbacks
def relayed_transfer(reactor, size: int, loss: float, seed: int, timeout: float):
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
        monitor = StallMonitor(reactor, lambda: (sink.count, conn._oldest), conn)
        reason = yield sink.done.addTimeout(timeout, reactor)
        elapsed = reactor.seconds() - start
        monitor.stop()
        print(
            f"\n{size // MiB} MiB at {loss:.0%} loss: {elapsed:.1f} s, longest stall"
            f" {monitor.worst[0]:.3f} s (bound {monitor.worst[1]:.2f} s); sender: {conn.timeouts}"
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
    yield relayed_transfer(reactor, 64 * MiB, 0.05, seed=5, timeout=120)


@pytest_twisted.inlineCallbacks
def test_4mib_at_20_percent_loss(reactor):
    yield relayed_transfer(reactor, 4 * MiB, 0.20, seed=20, timeout=120)
