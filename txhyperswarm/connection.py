"""
:class:`Connection`: the protocol the network puts on every TCP and uTP
transport it makes, inbound and outbound (swarm.md 3.1, 3.3).

It holds what arrives until the swarm attaches the application's protocol,
then hands everything over to it: ``dataReceived``, ``readConnectionLost``,
``writeConnectionLost`` and ``connectionLost`` reach the attached protocol
in the order they happened. The attached protocol's ``transport`` is the
real transport (a TCP transport or a
:class:`~txhyperswarm.utp.connection.UTPConnection`), so producer/consumer,
``getPeer``/``getHost`` and ``loseWriteConnection`` work natively::

    conn = yield network.connect(peer)      # a Connection, type "tcp" or "utp"
    conn.attach(factory.buildProtocol(addr))
    exc = yield conn.when_closed()          # e.g. ConnectionDone (conn.reason: the Failure)

Half-close: the peer's end of its sending side reaches an attached protocol
that provides ``IHalfCloseableProtocol`` as ``readConnectionLost()``; for
any other protocol the connection is closed from our side then, as Node's
network does for inbound connections (TCP's ``allowHalfOpen: false``, and
``socket.on('end', () => socket.end())`` for uTP) and as Twisted does for a
protocol that cannot half-close.

Dead peers (a peer that vanishes without a FIN or RESET) end the connection
within a bounded time:

* TCP: keepalive on every connection, first probe after
  :data:`TCP_KEEPIDLE` seconds of silence, then every
  :data:`TCP_KEEPINTVL` seconds, :data:`TCP_KEEPCNT` unanswered probes end
  it (``connectionLost`` with ``ConnectionLost``): at most
  ``30 + 10 * 3 = 60`` s after the last segment heard; while our data is
  unacknowledged, ``TCP_USER_TIMEOUT`` (:data:`TCP_USER_TIMEOUT` s, Linux)
  ends it instead of the kernel's ~15 min of retransmissions.
* uTP: both ends send a keepalive after 29 s without sending (libutp's
  ``KEEPALIVE_INTERVAL``, also :class:`~txhyperswarm.utp.connection.UTPConnection`),
  so a live peer is heard at least every 29 s; a connection that heard
  nothing for :data:`UTP_IDLE_TIMEOUT` seconds (three keepalive periods)
  is aborted (``connectionLost`` with ``ConnectionAborted``). Once the peer
  has ended its side (libutp sends no keepalive after its FIN) only the
  retransmission timeout of data we send ends it (``UTPTimeoutError``).
"""

from __future__ import annotations

import socket
from typing import Callable, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver

__all__ = [
    "Connection",
    "TCP_KEEPIDLE",
    "TCP_KEEPINTVL",
    "TCP_KEEPCNT",
    "TCP_USER_TIMEOUT",
    "UTP_IDLE_TIMEOUT",
    "BUFFER_PAUSE",
]

Address = Tuple[str, int]

#: Seconds of silence before the first TCP keepalive probe.
TCP_KEEPIDLE = 30
#: Seconds between TCP keepalive probes.
TCP_KEEPINTVL = 10
#: Unanswered probes that end a TCP connection.
TCP_KEEPCNT = 3
#: Seconds our sent data may stay unacknowledged before the kernel ends the
#: connection (Linux ``TCP_USER_TIMEOUT``).
TCP_USER_TIMEOUT = 60
#: Seconds without any packet from a uTP peer (whose keepalive comes every
#: 29 s of its own silence) after which the connection is aborted.
UTP_IDLE_TIMEOUT = 90.0
#: Bytes held for a protocol not attached yet beyond which the transport
#: is paused (resumed at :meth:`Connection.attach`). The transport then stops
#: reading (TCP: the kernel's window closes; uTP: the advertised window
#: shrinks, and data beyond twice the receive buffer is refused unacked), so
#: a connection holds at most this plus one read.
BUFFER_PAUSE = 1 << 20

_DATA, _READ_LOST, _WRITE_LOST = "data", "read_lost", "write_lost"


def _set_tcp_options(transport) -> None:
    """No-delay and keepalive (with our timers where the handle takes them)."""
    transport.setTcpNoDelay(True)
    transport.setTcpKeepAlive(True)
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    if handle is None or not hasattr(handle, "setsockopt"):
        return
    options = (
        ("TCP_KEEPIDLE", TCP_KEEPIDLE),
        ("TCP_KEEPINTVL", TCP_KEEPINTVL),
        ("TCP_KEEPCNT", TCP_KEEPCNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT * 1000),
    )
    for name, value in options:
        option = getattr(socket, name, None)
        if option is None:
            continue
        try:
            handle.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:  # pragma: no cover - a kernel without the option
            pass


@implementer(IHalfCloseableProtocol)
class Connection(Protocol):
    """
    One swarm connection, TCP or uTP, inbound or outbound.

    :param type: ``"tcp"`` or ``"utp"``.
    :param client: ``True`` when we dialled it.
    :param remote: the peer's ``(host, port)``.
    :param peer: the :class:`~txhyperswarm.peer_record.PeerRecord` dialled
        (outbound), or ``None``.
    :param on_made: ``on_made(connection)`` once the transport is connected
        (the network's wiring; exceptions are logged and abort it).
    :param clock: ``IReactorTime`` for the uTP idle check (``None``: no check).
    :param monotonic: the clock uTP stamps ``last_received`` with
        (``None``: ``clock.seconds``).
    :param buffer_pause: bytes held before a protocol is attached beyond
        which the transport is paused (:data:`BUFFER_PAUSE`).

    :ivar transport: the real transport, once connected.
    :ivar protocol: the attached application protocol, or ``None``.
    :ivar closed: whether ``connectionLost`` happened.
    """

    log = Logger()

    def __init__(
        self,
        type: str,
        client: bool,
        remote: Address,
        peer=None,
        *,
        on_made: Optional[Callable[["Connection"], object]] = None,
        clock=None,
        monotonic: Optional[Callable[[], float]] = None,
        buffer_pause: int = BUFFER_PAUSE,
    ) -> None:
        if type not in ("tcp", "utp"):
            raise ValueError(f"a connection is tcp or utp, not {type!r}")
        self.type = type
        self.client = bool(client)
        self.remote = (remote[0], int(remote[1]))
        self.peer = peer
        self.protocol = None
        self.closed = False
        self._on_made = on_made
        self._clock = clock
        self._mono = monotonic or (clock.seconds if clock is not None else None)
        self._events: List[tuple] = []
        self._buffered = 0
        self._buffer_pause = buffer_pause
        self._attaching = False
        self._paused = False
        self._reason: Optional[Failure] = None
        self._read_ended = False
        self._lost_obs: OneShotObserver = OneShotObserver()
        self._idle_call = None

    def __repr__(self) -> str:
        side = "out" if self.client else "in"
        return f"<Connection {self.type} {side} {self.remote[0]}:{self.remote[1]}>"

    @property
    def buffered(self) -> int:
        """Bytes held until a protocol is attached (``0`` once attached)."""
        return self._buffered

    # -- the swarm's side ----------------------------------------------------

    def attach(self, protocol) -> None:
        """
        Run ``protocol`` on this connection's transport
        (``makeConnection``), then hand it what arrived so far, in order.
        Once only.
        """
        if self.protocol is not None:
            raise RuntimeError(f"{self!r} already has a protocol")
        if self.transport is None:
            raise RuntimeError(f"{self!r} is not connected yet")
        if self._paused and not self.closed:
            # A transport may hand over what it held at once (uTP's read
            # buffer): it joins the events, after what came first.
            self._attaching = True
            self._paused = False
            try:
                self.transport.resumeProducing()
            finally:
                self._attaching = False
        lost_before = self.closed  # else connectionLost tells the protocol itself
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        events, self._events = self._events, []
        self._buffered = 0
        for event in events:
            self._forward(event)
        if lost_before:
            self._tell_lost()

    def when_closed(self) -> defer.Deferred:
        """
        A new Deferred that fires (never errbacks) once ``connectionLost``
        happened, with the exception of the reason it got (a Deferred cannot
        fire with a ``Failure`` as a value): ``ConnectionDone`` for an
        orderly close, ``ConnectionAborted``, ``ConnectionLost``, a uTP
        error, ... The whole ``Failure`` is :attr:`reason`.
        """
        return self._lost_obs.when_fired()

    @property
    def reason(self) -> Optional[Failure]:
        """The ``Failure`` ``connectionLost`` got, or ``None`` while open."""
        return self._reason

    def close(self) -> None:
        """End the connection in order (``loseConnection``)."""
        if self.transport is not None and not self.closed:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now (``abortConnection``)."""
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    # -- IProtocol -------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.type == "tcp":
            _set_tcp_options(self.transport)
        elif self._clock is not None and hasattr(self.transport, "last_received"):
            self._idle_at(self.transport.last_received + UTP_IDLE_TIMEOUT)
        if self._on_made is not None:
            try:
                self._on_made(self)
            except Exception:
                self.log.failure("handling the new connection {conn!r} failed", conn=self)
                self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)
            return
        self._events.append((_DATA, data))
        self._buffered += len(data)
        if self._buffered > self._buffer_pause and not self._paused and not self._attaching:
            self._paused = True
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        self._read_ended = True
        self._stop_idle()
        if self.protocol is not None:
            self._forward((_READ_LOST,))
        else:
            self._events.append((_READ_LOST,))

    def writeConnectionLost(self) -> None:
        if self.protocol is not None:
            self._forward((_WRITE_LOST,))
        else:
            self._events.append((_WRITE_LOST,))

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_idle()
        if not isinstance(reason, Failure):
            reason = Failure(reason())
        self._reason = reason
        if not reason.check(error.ConnectionDone, error.ConnectionAborted):
            # a peer that vanished (keepalive or retransmission timeout) or
            # reset; an inbound uTP one that never sent anything after its SYN
            # (spoofed SYNs: timed out or evicted half-open) only at debug
            silent = (not self.client and self.type == "utp" and not self._read_ended
                      and getattr(self.transport, "bytes_received", None) == 0)
            (self.log.debug if silent else self.log.info)(
                "{type} connection {dir} {host}:{port} lost: {err}", type=self.type,
                dir="to" if self.client else "from", host=self.remote[0], port=self.remote[1],
                err=reason.getErrorMessage(),
            )
        if self.protocol is not None:
            self._tell_lost()
        self._lost_obs.fire(reason.value)

    # -- internals ----------------------------------------------------------------

    def _forward(self, event: tuple) -> None:
        kind = event[0]
        proto = self.protocol
        if kind == _DATA:
            proto.dataReceived(event[1])
        elif kind == _READ_LOST:
            if IHalfCloseableProtocol.providedBy(proto):
                proto.readConnectionLost()
            elif not self.closed:
                self.transport.loseConnection()
        elif kind == _WRITE_LOST:
            if IHalfCloseableProtocol.providedBy(proto):
                proto.writeConnectionLost()

    def _tell_lost(self) -> None:
        proto = self.protocol
        try:
            proto.connectionLost(self._reason)
        except Exception:
            self.log.failure("connectionLost of {proto!r} failed", proto=proto)

    def _idle_at(self, when: float) -> None:
        self._idle_call = self._clock.callLater(max(0.0, when - self._mono()), self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        if self.closed or self._read_ended:
            return
        heard = self.transport.last_received
        if self._mono() - heard >= UTP_IDLE_TIMEOUT - 1e-6:
            self.log.info(
                "uTP connection {conn!r} heard nothing for {t:g} s: aborting it", conn=self, t=UTP_IDLE_TIMEOUT
            )
            self.abort()
            return
        self._idle_at(heard + UTP_IDLE_TIMEOUT)

    def _stop_idle(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()
