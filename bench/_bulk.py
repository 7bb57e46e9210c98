"""
The bulk sender both throughput benchmarks run (bench/utp.py, bench/connect.py):
a streaming producer that writes a fixed number of bytes in 64 KiB writes as
fast as the transport takes them, then ends the stream.
"""

from __future__ import annotations

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
