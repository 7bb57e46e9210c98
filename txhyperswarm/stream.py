"""
:class:`Stream`: the plain stream protocol a :class:`~txhyperswarm.swarm.Hyperswarm`
without a ``factory`` hands over in its ``"connection"`` event (Node hands
over its socket, a duplex stream).

It is an ordinary Twisted ``Protocol`` already connected to the swarm
connection's transport (TCP or uTP). Until the application sets
:attr:`Stream.on_data`, what arrives is kept, in order, and handed to
``on_data`` the moment it is set (or taken with :meth:`Stream.read`)::

    def connection(stream, info):
        stream.on_data = lambda data: print("got", data)
        stream.on_end = lambda: print("the peer ended its side")
        stream.when_closed().addCallback(lambda _: print("closed", stream.reason))
        stream.write(b"hello")
        stream.end()            # half-close: FIN after what was written

    swarm.on("connection", connection)

Half-close: by default the stream behaves as a Node socket with
``allowHalfOpen: false``: when the peer ends its side, :attr:`on_end` runs and
the stream then ends its own side too (after what was written). With
``allow_half_open = True`` (set it in the ``"connection"`` handler) the stream
stays writable until :meth:`end`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver

__all__ = ["Stream"]


@implementer(IHalfCloseableProtocol)
class Stream(Protocol):
    """
    A byte stream over one swarm connection.

    :ivar transport: the connection's transport (TCP or uTP): ``getPeer()``,
        ``getHost()``, producer/consumer flow control, as any transport.
    :ivar on_data: ``on_data(bytes)`` for each chunk received, or ``None``
        (the default): chunks are kept until it is set or :meth:`read`.
    :ivar on_end: ``on_end()`` once the peer ended its side (FIN), or ``None``.
    :ivar on_close: ``on_close(reason: Failure)`` once the connection closed.
    :ivar allow_half_open: ``False`` (Node's default): end our side when the
        peer ends its; ``True``: stay writable until :meth:`end`.
    :ivar ended: the peer ended its side.
    :ivar write_ended: :meth:`end` was called (our side ended).
    :ivar closed: the connection is closed.
    :ivar reason: why it closed (the ``Failure`` of ``connectionLost``).
    """

    log = Logger()
    transport: Any  # the swarm connection's transport (TCP or uTP)

    def __init__(self) -> None:
        self._on_data: Optional[Callable[[bytes], Any]] = None
        self._buffer: List[bytes] = []
        self.on_end: Optional[Callable[[], Any]] = None
        self.on_close: Optional[Callable[[Failure], Any]] = None
        self.allow_half_open = False
        self.ended = False
        self.write_ended = False
        self.closed = False
        self._closed: OneShotObserver[None] = OneShotObserver()
        self.reason: Optional[Failure] = None

    # -- reading ----------------------------------------------------------

    @property
    def on_data(self) -> Optional[Callable[[bytes], Any]]:
        return self._on_data

    @on_data.setter
    def on_data(self, handler: Optional[Callable[[bytes], Any]]) -> None:
        self._on_data = handler
        if handler is not None and self._buffer:
            kept, self._buffer = self._buffer, []
            for chunk in kept:
                self._call(handler, chunk)

    def read(self) -> bytes:
        """Everything kept so far (while :attr:`on_data` is ``None``), at once."""
        data, self._buffer = b"".join(self._buffer), []
        return data

    def when_closed(self) -> "defer.Deferred[None]":
        """A new Deferred firing ``None`` once closed (the reason is :attr:`reason`)."""
        return self._closed.when_fired()

    # -- writing ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` (ignored once closed)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def end(self) -> None:
        """Half-close: FIN after what was written; reading goes on."""
        if self.transport is not None and not self.closed and not self.write_ended:
            self.write_ended = True
            self.transport.loseWriteConnection()
            if self.ended:
                self.close()

    def close(self) -> None:
        """Close both directions after what was written."""
        if self.transport is not None and not self.closed:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Close at once, dropping what was not sent."""
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    # -- Protocol ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._on_data is None:
            self._buffer.append(data)
        else:
            self._call(self._on_data, data)

    def readConnectionLost(self) -> None:
        self.ended = True
        if self.on_end is not None:
            self._call(self.on_end)
        if not self.allow_half_open or self.write_ended:
            self.close()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.reason = reason
        if self.on_close is not None:
            self._call(self.on_close, reason)
        self._closed.fire(None)

    def _call(self, handler: Callable[..., Any], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            self.log.failure("stream handler {handler!r} raised", handler=handler)
