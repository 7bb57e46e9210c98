"""Protocols that send or check a large random stream (shared by uTP tests)."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

CHUNK = 64 * 1024


def random_blob(n: int) -> bytes:
    return os.urandom(n)


@implementer(IPushProducer)
class Source(Protocol):
    """
    Writes ``blob`` through the transport as a streaming producer (64 KiB per
    step, pausing when the transport says so), then ``loseConnection()``
    (or ``loseWriteConnection()`` with ``half_close``). Records what it gets back.
    """

    def __init__(self, blob: bytes, half_close: bool = False, wait_first: bool = False) -> None:
        self.blob = memoryview(blob)
        self.offset = 0
        self.paused = False
        self.half_close = half_close
        self.wait_first = wait_first
        self.started = False
        self.pauses = 0
        self.received = bytearray()
        self.done = defer.Deferred()
        self.max_send_buffer = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if not self.wait_first:
            self.started = True
            self.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.wait_first and not self.started:
            self.started = True
            self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.started:
            return
        t = self.transport
        while not self.paused and self.offset < len(self.blob):
            t.write(self.blob[self.offset : self.offset + CHUNK].tobytes())
            self.offset += CHUNK
            self.max_send_buffer = max(self.max_send_buffer, getattr(t, "send_buffer_size", 0))
        if self.offset >= len(self.blob) and t is not None and not getattr(self, "_closed", False):
            self._closed = True
            t.unregisterProducer()
            if self.half_close:
                t.loseWriteConnection()
            else:
                t.loseConnection()

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(reason.value)


@implementer(IHalfCloseableProtocol)
class HalfCloseSource(Source):
    def readConnectionLost(self) -> None:
        self.read_lost = True

    def writeConnectionLost(self) -> None:
        self.write_lost = True


class Sink(Protocol):
    """Hashes what arrives; ``hello`` is written on connect (an initiator must speak first)."""

    def __init__(self, hello: bytes = b"") -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.hello = hello
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        if self.hello:
            self.transport.write(self.hello)

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(reason.value)


class OneFactory(Factory):
    """Builds the given protocols in order; ``built`` fires with the first."""

    def __init__(self, *protocols) -> None:
        self.protocols = list(protocols)
        self.built = defer.Deferred()

    def buildProtocol(self, addr):
        p = self.protocols.pop(0)
        p.factory = self
        p.addr = addr
        if not self.built.called:
            self.built.callback(p)
        return p


class Recorder(Protocol):
    """Records what happens to it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = None
        self.made = False
        self.eof = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class RecorderFactory(Factory):
    """Builds a new ``protocol`` (a :class:`Recorder`) per connection; keeps them in ``built``."""

    def __init__(self, protocol=Recorder) -> None:
        self.protocol = protocol
        self.built = []

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        p.addr = addr
        self.built.append(p)
        return p
