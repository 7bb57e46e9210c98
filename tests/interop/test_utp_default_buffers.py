"""
Regression against utp-native with the kernel's default socket buffers on
both sides (utp-native never raises them; our UDPSocket(buffer_size=0)): a
16 MiB transfer each way completes with no stall beyond the backoff.
"""

from __future__ import annotations

import hashlib

import pytest_twisted
from twisted.internet import error

from tests.utp.streams import OneFactory, Sink, Source, random_blob
from tests.utp.test_lossy import STALL_LIMIT, StallMonitor

from tests.interop.conftest import event

SIZE = 16 * 1024 * 1024




@pytest_twisted.inlineCallbacks
def test_python_to_utp_native_default_buffers(reactor, node, processes, default_socket):
    peer = processes.node("utp_peer.js", "listen", "0", "sink")
    port = (yield peer.wait_for(event("listening")))["port"]
    blob = random_blob(SIZE)
    src = Source(blob)
    start = reactor.seconds()
    yield default_socket.connect("127.0.0.1", port, OneFactory(src))
    conn = src.transport
    monitor = StallMonitor(reactor, lambda: conn.oldest_unacked)
    try:
        end = yield peer.wait_for(event("end"), timeout=60)
    finally:
        monitor.stop()
    print(
        f"\nPython -> utp-native, 16 MiB, default buffers: {reactor.seconds() - start:.2f} s, longest"
        f" stall {monitor.worst:.3f} s (limit {STALL_LIMIT} s); {conn.timeouts} timeouts,"
        f" {conn.probes} probes, {conn.packets_resent} resent"
    )
    assert end["bytes"] == SIZE and end["sha256"] == hashlib.sha256(blob).hexdigest()
    assert isinstance((yield src.done.addTimeout(10, reactor)), error.ConnectionDone)
    assert monitor.violations == []


@pytest_twisted.inlineCallbacks
def test_utp_native_to_python_default_buffers(reactor, node, processes, default_socket):
    sink = Sink()
    default_socket.listen(OneFactory(sink))
    last = [reactor.seconds(), 0, 0.0]  # time, count, longest gap

    def watch():
        now = reactor.seconds()
        if sink.count != last[1]:
            last[2] = max(last[2], now - last[0])
            last[0], last[1] = now, sink.count

    from twisted.internet.task import LoopingCall

    loop = LoopingCall(watch)
    loop.clock = reactor
    loop.start(0.01)
    start = reactor.seconds()
    try:
        peer = processes.node("utp_peer.js", "connect", "127.0.0.1", str(default_socket.address()[1]), f"source:{SIZE}")
        sent = yield peer.wait_for(event("sent"), timeout=60)
        reason = yield sink.done.addTimeout(60, reactor)
    finally:
        loop.stop()
    print(f"\nutp-native -> Python, 16 MiB, default buffers: {reactor.seconds() - start:.2f} s,"
          f" longest gap between deliveries {last[2]:.3f} s")
    assert isinstance(reason, error.ConnectionDone), reason
    assert sink.count == SIZE and sink.hash.hexdigest() == sent["sha256"]
    # libutp's own floor: 1 s RTO on a 500 ms timer grid (utp.md 3.1-3.3)
    assert last[2] < 1.5 + 0.5
