"""
The bulk senders of the throughput benchmarks and tests: :class:`Pump`, a
streaming producer that writes a fixed number of bytes in 64 KiB writes as
fast as the transport takes them, then ends; :class:`BulkSender`, a protocol
running one (bench/utp.py, bench/connect.py); :class:`StreamPump`, one into
a swarm ``Stream`` that half-closes it (bench/swarm_lossy.py,
tests/test_swarm_lossy.py).
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
class Pump:
    """
    Writes ``size`` bytes (default ``len(block)``) of ``block`` over and over
    through ``write``, in writes of at most 64 KiB, as a streaming producer
    of ``transport`` (registered here; call :meth:`resumeProducing` to
    start), then unregisters, calls ``finish()`` and ``on_sent()``. With
    ``digest``, ``sent`` is the sha256 of what it wrote.
    """

    def __init__(self, transport, write: Callable[[bytes], object], finish: Callable[[], object], block: bytes,
                 size: Optional[int] = None, on_sent: Optional[Callable[[], None]] = None,
                 digest: bool = False) -> None:
        self.transport = transport
        self.write = write
        self.finish = finish
        self.block = block
        self.view = memoryview(block)
        self.left = len(block) if size is None else size
        self.on_sent = on_sent
        self.sent = hashlib.sha256() if digest else None
        self.offset = 0
        self.paused = False
        self.ended = False
        transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        size = len(self.block)
        while not self.paused and self.left > 0:
            n = min(self.left, CHUNK, size - self.offset)
            chunk = self.block if n == size else self.view[self.offset:self.offset + n].tobytes()
            self.offset = (self.offset + n) % size
            self.left -= n
            if self.sent is not None:
                self.sent.update(chunk)
            self.write(chunk)
        if self.left <= 0 and not self.ended:
            self.ended = True
            self.transport.unregisterProducer()
            self.finish()
            if self.on_sent is not None:
                self.on_sent()


class BulkSender(Protocol):
    """Call :meth:`send` once connected; ``on_sent()`` runs after the last write and ``loseConnection``."""

    def send(self, total: int, on_sent: Optional[Callable[[], None]] = None) -> None:
        t = self.transport
        self.pump = Pump(t, t.write, t.loseConnection, _BLOCK, total, on_sent)
        self.pump.resumeProducing()


class StreamPump(Pump):
    """A :class:`Pump` into a swarm ``Stream`` that half-closes it (``end()``) and hashes what it wrote."""

    def __init__(self, stream, block: bytes, size: Optional[int] = None,
                 on_sent: Optional[Callable[[], None]] = None) -> None:
        super().__init__(stream.transport, stream.write, stream.end, block, size, on_sent, digest=True)
