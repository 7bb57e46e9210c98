"""
Python -> Python, 1 GiB to a reader that pauses for 5 s: the sender (its own
process, a streaming producer on the transport) stays within 64 MiB of RSS
growth, and every byte arrives (count + sha256).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import error

from tests.harness import TESTS
from tests.utp.streams import OneFactory, Sink
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket

GiB = 1024 * 1024 * 1024
MiB = 1024 * 1024


class PausingSink(Sink):
    """Pauses the transport once ``pause_at`` bytes arrived, for ``pause_for`` seconds."""

    def __init__(self, reactor, pause_at: int, pause_for: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.pause_at = pause_at
        self.pause_for = pause_for
        self.paused_at = None
        self.resumed = False

    def dataReceived(self, data: bytes) -> None:
        Sink.dataReceived(self, data)
        if self.paused_at is None and self.count >= self.pause_at:
            self.paused_at = self.count
            self.transport.pauseProducing()
            self.reactor.callLater(self.pause_for, self._resume)

    def _resume(self) -> None:
        self.resumed = True
        self.count_at_resume = self.count
        self.transport.resumeProducing()


@pytest_twisted.inlineCallbacks
def test_one_gib_to_a_pausing_reader_keeps_the_sender_small(reactor, processes):
    udp = UDPSocket(reactor, host="127.0.0.1")
    server = UTPSocket(reactor, udp)
    try:
        sink = PausingSink(reactor, 64 * MiB, 5.0)
        server.listen(OneFactory(sink))
        start = reactor.seconds()
        sender = processes.python(str(TESTS / "utp" / "bulk_sender.py"), "127.0.0.1", str(udp.listen()[1]), str(GiB))
        ready = yield sender.wait_for(lambda o: o.get("event") == "ready")
        done = yield sender.wait_for(lambda o: o.get("event") in ("done", "error"), timeout=150)
        reason = yield sink.done.addTimeout(30, reactor)
        elapsed = reactor.seconds() - start
        growth = done["rss_max"] - done["rss0"]
        print(
            f"\n1 GiB to a reader paused 5 s: {elapsed:.1f} s, sender RSS growth {growth / MiB:.1f} MiB"
            f" ({ready['rss'] / MiB:.0f} MiB at start), producer paused {done['pauses']} times,"
            f" largest send buffer {done['max_send_buffer'] // 1024} KiB"
        )
        assert done["event"] == "done" and done["reason"] == "ConnectionDone", done
        assert isinstance(reason, error.ConnectionDone), reason
        assert sink.paused_at is not None and sink.resumed
        assert sink.count_at_resume == sink.paused_at  # nothing delivered while paused
        assert sink.count == done["bytes"] == GiB
        assert sink.hash.hexdigest() == done["sha256"]
        assert growth < 64 * MiB
        assert done["pauses"] > 0  # the transport pushed back on the producer
    finally:
        yield server.close()
        yield udp.close()
