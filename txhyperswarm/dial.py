"""
:class:`Dial`: one ``connect(peer)`` of the network, as
``@hyperswarm/network`` 2.1.0 dials (swarm.md 3.3, gotchas 28-29).

1. A TCP connect to ``peer.host:peer.port`` starts at once, with one
   :data:`CONNECTION_TIMEOUT` timer for the whole dial.
2. When the peer came with a ``referrer`` (a DHT node), in parallel: make
   sure the network is bound, holepunch through the referrer, and when that
   succeeded and nothing connected or timed out yet, a uTP connect from the
   shared UDP socket to the same address.
3. The first attempt to connect wins; every other one is closed (a connect
   in progress is stopped, one that connects later is aborted at once).
4. Each branch (TCP; holepunch then uTP) ends when its attempt fails (the
   holepunch branch also when the holepunch fails). When all ended without a
   winner: :class:`DialFailed` with the holepunch error's text if the
   holepunch failing was the last thing to end, else ``"All sockets
   failed"`` (attempt errors are not passed through, as Node).
5. :data:`CONNECTION_TIMEOUT` seconds after the start: every attempt is
   stopped, :class:`DialTimeout`.

Cancelling the Deferred stops every attempt (``CancelledError``).
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Dial", "DialFailed", "DialTimeout", "FirewallRefused", "CONNECTION_TIMEOUT"]

#: Seconds a dial may take, all attempts together (Node's 10 000 ms).
CONNECTION_TIMEOUT = 10.0


class DialFailed(Exception):
    """Every attempt of a dial failed ("All sockets failed", or the holepunch error)."""


class DialTimeout(Exception):
    """No attempt of a dial connected within :data:`CONNECTION_TIMEOUT` ("Timeout")."""


class FirewallRefused(DialFailed):
    """The firewall refused to dial that address (``firewall(host, port, True)``)."""


class _AttemptFactory(ClientFactory):
    """Builds an attempt's protocol; tells the dial when a TCP connect failed."""

    noisy = False

    def __init__(self, build: Callable[[object], object], failed: Callable[[Failure], None]) -> None:
        self.build = build
        self.failed = failed

    def buildProtocol(self, addr):
        return self.build(addr)

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.failed(reason)


class Dial:
    """
    One dial (see the module docstring). The network wires it with callables:

    :param reactor: ``IReactorTCP`` + ``IReactorTime``.
    :param peer: has ``host``, ``port`` and ``referrer`` (``None`` or a
        ``(host, port)``).
    :param connection: ``connection(type, remote, on_made)`` -> a new
        outbound :class:`~txhyperswarm.connection.Connection`.
    :param opened: ``opened()`` -> Deferred firing once the network is bound.
    :param holepunch: ``holepunch(peer)`` -> Deferred (the DHT's holepunch).
    :param utp_connect: ``utp_connect(host, port, factory)`` -> Deferred.
    :param timeout: the whole dial's limit in seconds.

    :ivar outcome: ``None`` while running, then ``"tcp"``, ``"utp"``,
        ``"timeout"``, ``"failed"``, ``"cancelled"`` or ``"aborted"``.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        peer,
        *,
        connection: Callable,
        opened: Callable[[], defer.Deferred],
        holepunch: Callable[[object], defer.Deferred],
        utp_connect: Callable,
        timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.peer = peer
        self.outcome: Optional[str] = None
        self._connection = connection
        self._opened = opened
        self._holepunch = holepunch
        self._utp_connect = utp_connect
        self._timeout = timeout
        self._result: Optional[defer.Deferred] = None
        self._timer = None
        self._connector = None
        self._step: Optional[defer.Deferred] = None  # bind wait, holepunch or uTP connect
        self._attempts = []  # Connections made by attempts
        self._branches = set()

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def start(self) -> defer.Deferred:
        """Start; the Deferred fires with the winning Connection (once only)."""
        if self._result is not None:
            raise RuntimeError("a Dial starts once")
        self._result = d = defer.Deferred(self._cancelled)
        peer = self.peer
        self._timer = self.reactor.callLater(self._timeout, self._timed_out)
        self._branches = {"tcp"}
        if peer.referrer is not None:
            self._branches.add("holepunch")
        factory = _AttemptFactory(lambda addr: self._attempt("tcp"), self._tcp_failed)
        try:
            # the kernel's own limit a little later than ours, so the dial's timer decides
            self._connector = self.reactor.connectTCP(peer.host, peer.port, factory, timeout=self._timeout + 1)
        except Exception as e:
            self._branch_ended("tcp")
            if self.done:
                return d
            self.log.info("TCP connect to {host}:{port} failed: {e}", host=peer.host, port=peer.port, e=e)
        if peer.referrer is not None and not self.done:
            self._step = self._opened()
            self._step.addCallbacks(self._bound, self._holepunch_failed)
        return d

    def abort(self, reason: Exception) -> None:
        """Stop every attempt and fail the dial with ``reason`` (the network closing)."""
        if self.done:
            return
        self._finish("aborted")
        self._result.errback(Failure(reason))

    # -- branches -----------------------------------------------------------------

    def _attempt(self, type: str):
        peer = self.peer
        conn = self._connection(type, (peer.host, peer.port), self._made)
        self._attempts.append(conn)
        return conn

    def _made(self, conn) -> None:
        if self.done:  # a late winner: closed at once
            conn.abort()
            return
        if conn.type == "utp":
            self._step = None  # the uTP connect fires with this very connection next
        self._finish(conn.type, winner=conn)
        self._result.callback(conn)

    def _tcp_failed(self, reason: Failure) -> None:
        self._branch_ended("tcp")

    def _bound(self, _) -> None:
        if self.done:
            return
        self._step = self._holepunch(self.peer)
        self._step.addCallbacks(self._punched, self._holepunch_failed)

    def _punched(self, _) -> None:
        if self.done:
            return
        peer = self.peer
        factory = _AttemptFactory(lambda addr: self._attempt("utp"), lambda reason: None)
        self._step = self._utp_connect(peer.host, peer.port, factory)
        self._step.addErrback(self._utp_failed)

    def _holepunch_failed(self, reason: Failure) -> None:
        if self.done:
            return
        self._branch_ended("holepunch", reason.value)

    def _utp_failed(self, reason: Failure) -> None:
        if self.done:
            return
        self._branch_ended("holepunch")

    def _branch_ended(self, name: str, error: Optional[BaseException] = None) -> None:
        self._branches.discard(name)
        if self._branches or self.done:
            return
        if error is not None:
            failure = DialFailed(str(error) or type(error).__name__)
            failure.__cause__ = error
        else:
            failure = DialFailed("All sockets failed")
        self._finish("failed")
        self._result.errback(Failure(failure))

    def _timed_out(self) -> None:
        self._timer = None
        if self.done:
            return
        self._finish("timeout")
        self._result.errback(Failure(DialTimeout("Timeout")))

    def _cancelled(self, d: defer.Deferred) -> None:
        if not self.done:
            self._finish("cancelled")

    def _finish(self, outcome: str, winner=None) -> None:
        """Settle the outcome and stop every attempt but ``winner``."""
        self.outcome = outcome
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        connector, self._connector = self._connector, None
        if connector is not None and getattr(connector, "state", "connecting") == "connecting":
            connector.stopConnecting()
        step, self._step = self._step, None
        if step is not None and not step.called:
            step.cancel()
        attempts, self._attempts = self._attempts, []
        for conn in attempts:
            if conn is not winner:
                conn.abort()
