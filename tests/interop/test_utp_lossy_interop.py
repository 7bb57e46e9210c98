"""
uTP against utp-native 2.5.3 through a lossy relay (drops, reorders and
duplicates in both directions, seeded), both directions.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import error

from tests.utp.relay import LossyRelay
from tests.utp.streams import OneFactory, Sink, Source, random_blob
from tests.utp.test_lossy import STALL_LIMIT, StallMonitor

from tests.interop.conftest import event

MiB = 1024 * 1024
BIG_RCVBUF = {"UTP_RCVBUF": str(4 * MiB)}
TIMEOUT = 180  # libutp under loss on a loaded machine: 12 s idle, 24 s with the cores busy


#: Fixed stall limits (not derived from the code under test): STALL_LIMIT,
#: 1.5 s, one RTO expiry. At 5 % the longest stall measured 0.11-0.12 s. At
#: 20 % it was 1-15 s (runs of 1, 2, 4, 8 s RTO expiries: libutp ACKs once
#: per read batch, and copies of a resend sent together drew one ACK that
#: the relay could lose 6 times in a row); with the copies 10 ms apart,
#: 0.09-0.24 s in 27 runs (2.4-3.4 s), no RTO expiry.
@pytest.mark.parametrize(
    "size,loss",
    [(4 * MiB, 0.20), (64 * MiB, 0.05)],
    ids=["4MiB-20%", "64MiB-5%"],
)
@pytest_twisted.inlineCallbacks
def test_python_to_utp_native_through_loss(reactor, node, processes, utp_socket, size, loss):
    peer = processes.node("utp_peer.js", "listen", "0", "sink", env=BIG_RCVBUF)
    port = (yield peer.wait_for(event("listening")))["port"]
    relay = LossyRelay(reactor, ("127.0.0.1", port), loss=loss, seed=int(loss * 100) + 1)
    monitor = None
    try:
        blob = random_blob(size)
        src = Source(blob)
        start = reactor.seconds()
        yield utp_socket.connect("127.0.0.1", relay.port, OneFactory(src))
        conn = src.transport
        monitor = StallMonitor(reactor, lambda: conn.oldest_unacked)
        end = yield peer.wait_for(event("end"), timeout=120)
        monitor.stop()
        print(
            f"\nPython -> utp-native, {size // MiB} MiB at {loss:.0%} loss:"
            f" {reactor.seconds() - start:.1f} s, longest stall {monitor.worst:.3f} s"
            f" (limit {STALL_LIMIT} s); {conn.timeouts} timeouts, {conn.probes} probes,"
            f" {conn.packets_resent} resent; {relay.stats()}"
        )
        assert end["bytes"] == size
        assert end["sha256"] == hashlib.sha256(blob).hexdigest()
        assert isinstance((yield src.done.addTimeout(30, reactor)), error.ConnectionDone)
        assert monitor.violations == []
        assert not [o for o in peer.lines if o.get("event") == "error"]
        assert relay.up.dropped and relay.down.dropped
    finally:
        if monitor is not None:
            monitor.stop()
        yield relay.close()


#: libutp as the *sender* crawls under random loss whoever receives: a
#: selective-ack resend goes out once per packet (a lost resend waits for the
#: RTO, 1 s floor, doubling), each resend halves its window (at most every
#: 100 ms), and a window below one packet waits for the RTO too
#: (utp_internal.cpp selective_ack, check_timeouts). Measured through this
#: relay: at 5%, utp-native -> utp-native 2 MiB in 12-28 s, utp-native ->
#: Python 2 MiB in 7-10 s and 16 MiB in 71 s; at 20%, utp-native -> Python
#: moved 294 datagrams in 100 s. So this direction runs 4 MiB at 5% (a known
#: shortfall: not the 64 MiB at 5% / 4 MiB at 20% asked).
@pytest.mark.parametrize("size,loss", [(4 * MiB, 0.05)], ids=["4MiB-5%"])
@pytest_twisted.inlineCallbacks
def test_utp_native_to_python_through_loss(reactor, node, processes, utp_socket, size, loss):
    sink = Sink()
    utp_socket.listen(OneFactory(sink))
    relay = LossyRelay(reactor, ("127.0.0.1", utp_socket.address()[1]), loss=loss, seed=int(loss * 100) + 2)
    try:
        start = reactor.seconds()
        peer = processes.node(
            "utp_peer.js", "connect", "127.0.0.1", str(relay.port), f"source:{size}", env=BIG_RCVBUF
        )
        sent = yield peer.wait_for(event("sent"), timeout=TIMEOUT)
        reason = yield sink.done.addTimeout(TIMEOUT, reactor)
        print(
            f"\nutp-native -> Python, {size // MiB} MiB at {loss:.0%} loss:"
            f" {reactor.seconds() - start:.1f} s; {relay.stats()}"
        )
        assert isinstance(reason, error.ConnectionDone), reason
        assert sink.count == size
        assert sink.hash.hexdigest() == sent["sha256"]
        yield peer.wait_for(event("close"), timeout=30)
        assert not [o for o in peer.lines if o.get("event") == "error"]
        assert relay.up.dropped and relay.down.dropped
    finally:
        yield relay.close()
