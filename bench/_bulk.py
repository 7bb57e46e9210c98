"""
The bulk senders of the throughput benchmarks and tests: streaming producers
that write a fixed number of bytes in 64 KiB writes as fast as the transport
takes them, then end. :class:`BulkSender` is a protocol (bench/utp.py,
bench/connect.py); :class:`StreamPump` writes into a swarm ``Stream`` and
half-closes it (bench/swarm_lossy.py, tests/test_swarm_lossy.py).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

CHUNK = 65536
_BLOCK = b"a" * CHUNK


@implementer(IPushProducer)
class BulkSender(Protocol):
    """Call :meth:`send` once connected; ``on_sent()`` runs after the last write and ``loseConnection``."""

    left = 0
    paused = False
    ended = False
    on_sent: Optional[Callable[[], None]] = None

    def send(self, total: int, on_sent: Optional[Callable[[], None]] = None) -> None:
        self.left = total
        self.on_sent = on_sent
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        t = self.transport
        while not self.paused and self.left > 0:
            n = min(self.left, CHUNK)
            self.left -= n
            t.write(_BLOCK if n == CHUNK else _BLOCK[:n])
        if self.left <= 0 and not self.ended:
            self.ended = True
            t.unregisterProducer()
            t.loseConnection()
            if self.on_sent is not None:
                self.on_sent()


@implementer(IPushProducer)
class StreamPump:
    """
    Writes ``size`` bytes (default ``len(block)``) of ``block`` over and over
    into a swarm ``stream``, then ``stream.end()`` (a half-close) and
    ``on_sent()``. Registered as the transport's producer; call
    :meth:`resumeProducing` to start. ``sent`` is the sha256 of what it wrote.
    """

    def __init__(self, stream, block: bytes, size: Optional[int] = None,
                 on_sent: Optional[Callable[[], None]] = None) -> None:
        self.stream = stream
        self.block = block
        self.view = memoryview(block)
        self.left = len(block) if size is None else size
        self.on_sent = on_sent
        self.sent = hashlib.sha256()
        self.offset = 0
        self.paused = False
        self.ended = False
        stream.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            n = min(self.left, CHUNK, len(self.block) - self.offset)
            chunk = self.view[self.offset:self.offset + n].tobytes()
            self.offset = (self.offset + n) % len(self.block)
            self.left -= n
            self.sent.update(chunk)
            self.stream.write(chunk)
        if self.left <= 0 and not self.ended:
            self.ended = True
            self.stream.transport.unregisterProducer()
            self.stream.end()
            if self.on_sent is not None:
                self.on_sent()
