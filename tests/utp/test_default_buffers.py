"""
Regression: with the kernel's default socket buffers (~208 KiB, as hyperswarm
2 leaves them) a big transfer completes without a stall beyond the sender's
backoff. The default queue holds ~92 full datagrams; a 1 MiB window used to
overflow it and every tail loss cost a 1 s timeout.
"""

from __future__ import annotations

import hashlib

import pytest_twisted
from twisted.internet import error

from tests.utp.streams import OneFactory, Sink, Source, random_blob
from tests.utp.test_lossy import STALL_LIMIT, StallMonitor
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket

MiB = 1024 * 1024


@pytest_twisted.inlineCallbacks
def test_16mib_python_to_python_with_default_kernel_buffers(reactor):
    ua = UDPSocket(reactor, host="127.0.0.1", buffer_size=0)
    ub = UDPSocket(reactor, host="127.0.0.1", buffer_size=0)
    a, b = UTPSocket(reactor, ua), UTPSocket(reactor, ub)
    monitor = None
    try:
        blob = random_blob(16 * MiB)
        sink = Sink()
        b.listen(OneFactory(sink))
        src = Source(blob)
        start = reactor.seconds()
        yield a.connect("127.0.0.1", ub.listen()[1], OneFactory(src))
        conn = src.transport
        monitor = StallMonitor(reactor, lambda: (sink.count, conn.oldest_unacked))
        reason = yield sink.done.addTimeout(60, reactor)
        monitor.stop()
        print(
            f"\n16 MiB, default buffers: {reactor.seconds() - start:.2f} s, longest stall"
            f" {monitor.worst:.3f} s (limit {STALL_LIMIT} s); {conn.timeouts} timeouts,"
            f" {conn.probes} probes, {conn.packets_resent} resent"
        )
        assert isinstance(reason, error.ConnectionDone), reason
        assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
        assert isinstance((yield src.done.addTimeout(10, reactor)), error.ConnectionDone)
        assert monitor.violations == []
    finally:
        if monitor is not None:
            monitor.stop()
        yield a.close()
        yield b.close()
        yield ua.close()
        yield ub.close()
