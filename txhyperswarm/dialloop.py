"""
The swarm's dial loop and connection counting, as hyperswarm 2.15.3's
``swarm.js`` ``drain`` and ``peers`` / ``clientSockets`` / ``serverSockets``
bookkeeping (swarm.md 1.6 and 2.6): pure logic over a
:class:`~txhyperswarm.queue.PeerQueue`, an injected ``dial`` function and an
``IReactorTime``; no sockets.

What the swarm calls, and when:

- :meth:`DialLoop.drain` runs on the queue's ``readable()`` (the loop makes
  itself the listener of a queue that has none);
- :meth:`DialLoop.accepted` for every inbound connection the network
  accepted (before anything else), :meth:`DialLoop.server_closed` when it
  closes;
- :meth:`DialLoop.client_closed` when a connection the loop dialled closes;
- :meth:`DialLoop.flush_dials` once discovery's first rounds are done
  (Node's ``flush`` after ``discovery.flush``);
- :meth:`DialLoop.stop` on shutdown.

What the loop calls:

- ``dial(info) -> Deferred[(connection, tcp: bool)]`` to start a dial (a
  failure, a refusal by the ``firewall`` included, counts as a failed
  attempt: the peer is requeued on the backoff schedule);
- its :class:`IDialLoopListener`: ``connection(connection, info)`` and
  ``disconnection(connection, info)`` (the swarm's events, in Node's order),
  ``inbound_limit(limit)`` when inbound must be refused (``-1``) or allowed
  again (``max_server_sockets``): Node's ``maxConnections`` on the TCP
  server and the uTP socket;
- ``topic_joined(topic) -> bool`` before dialling a shifted peer (Node: is a
  topic with the same first 20 bytes still joined).
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.peerinfo import PeerInfo
from txhyperswarm.queue import IQueueListener, PeerQueue

__all__ = ["DialLoop", "IDialLoopListener"]


class IDialLoopListener(Interface):
    """What the dial loop tells the swarm."""

    def connection(connection, info):
        """A connection is up: inbound (``info.client`` False) or dialled."""

    def disconnection(connection, info):
        """A connection that got :meth:`connection` closed."""

    def inbound_limit(limit):
        """Set the inbound limit of both transports (``-1``: refuse all)."""


@implementer(IQueueListener, IStatsSource)
class DialLoop:
    """
    :param clock: an ``IReactorTime``.
    :param queue: the :class:`~txhyperswarm.queue.PeerQueue` to drain.
    :param dial: ``dial(info) -> Deferred`` firing ``(connection, tcp)``.
    :param listener: an :class:`IDialLoopListener`.
    :param topic_joined: ``topic_joined(topic) -> bool``.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        queue: PeerQueue,
        dial: Callable[[PeerInfo], "defer.Deferred"],
        listener: Any,
        *,
        max_peers: float = 24,
        max_client_sockets: float = math.inf,
        max_server_sockets: float = math.inf,
        topic_joined: Callable[[bytes], bool] = lambda topic: True,
    ) -> None:
        self._clock = clock
        self.queue = queue
        self._dial = dial
        self.listener = listener
        self.max_peers = max_peers
        self.max_client_sockets = max_client_sockets
        self.max_server_sockets = max_server_sockets
        self._topic_joined = topic_joined
        self.peers = 0
        self.client_sockets = 0
        self.server_sockets = 0
        self.prioritised_inflight = 0
        self.open = self.peers < self.max_peers
        self.stopped = False
        self._flushes: List[List[Any]] = []
        self._kicks: List[Any] = []
        if queue.listener is None:
            queue.listener = self

    # -- IQueueListener ---------------------------------------------------

    def readable(self) -> None:
        self.drain()

    # -- the loop ---------------------------------------------------------

    def drain(self) -> None:
        """Start at most one dial (Node's ``drain``, gotcha 7)."""
        if self.stopped or not self.open:
            return
        if self.client_sockets >= self.max_client_sockets:
            return
        while True:
            info = self.queue.shift()
            if info is None:
                return
            topic = info.peer.topic if info.peer is not None else None
            if topic and not self._topic_joined(topic):
                self.queue.skip(info)
                self._attempt()
                continue
            prioritised = info.prioritised
            if prioritised:
                self.prioritised_inflight += 1
            self.client_sockets += 1
            self._incr()
            try:
                d = self._dial(info)
            except Exception:
                d = defer.fail()
            d.addCallbacks(
                self._dialled, self._dial_failed,
                callbackArgs=(info, prioritised), errbackArgs=(info, prioritised),
            )
            d.addErrback(self._bug, "dial outcome")
            return

    def _dialled(self, result: Any, info: PeerInfo, prioritised: bool) -> None:
        connection, tcp = result
        if prioritised:
            self.prioritised_inflight -= 1
        if self.stopped:
            connection.abortConnection()
            return
        info.connected(connection, tcp)
        self.listener.connection(connection, info)
        self.drain()
        self._attempt()

    def _dial_failed(self, failure: Any, info: PeerInfo, prioritised: bool) -> None:
        if prioritised:
            self.prioritised_inflight -= 1
        if self.stopped:
            return
        self.log.debug("dial {info!r} failed: {why}", info=info, why=failure.value)
        self.client_sockets -= 1
        self._decr()
        self.queue.requeue(info)
        self.drain()
        self._attempt()

    def client_closed(self, connection: Any, info: PeerInfo) -> None:
        """A dialled connection closed (Node's socket ``'close'`` handler)."""
        info.disconnected()
        self.client_sockets -= 1
        self.listener.disconnection(connection, info)
        self._decr()
        if self.stopped:
            return
        self.queue.requeue(info)
        self._kicks.append(self._clock.callLater(0, self._kick))

    def _kick(self) -> None:
        self._kicks = [c for c in self._kicks if c.active()]
        self.drain()

    def accepted(
        self, connection: Any, remote: Any, *, tcp: bool, local: bool = False
    ) -> PeerInfo:
        """An inbound connection: ``"connection"`` first, then counted (gotcha 9)."""
        info = self.queue.accepted(connection, remote, tcp=tcp, local=local)
        self.listener.connection(connection, info)
        self.server_sockets += 1
        self._incr()
        return info

    def server_closed(self, connection: Any, info: PeerInfo) -> None:
        """An inbound connection closed; the loop is not kicked (gotcha 10)."""
        info.disconnected()
        self.server_sockets -= 1
        self.listener.disconnection(connection, info)
        self._decr()

    # -- counting ---------------------------------------------------------

    def _incr(self) -> None:
        self.peers += 1
        self.open = self.peers < self.max_peers
        if not self.open:
            self.listener.inbound_limit(-1)

    def _decr(self) -> None:
        self.peers -= 1
        if self.open:
            return
        self.open = self.peers < self.max_peers
        if self.open:
            self.listener.inbound_limit(self.max_server_sockets)

    # -- flush ------------------------------------------------------------

    def flush_dials(self) -> "defer.Deferred[None]":
        """
        Fires once as many dial attempts ended as peers were prioritised
        (queued with priority >= 2, or being dialled) now, or at once if
        none, or when the client sockets are saturated (Node's ``flush``
        after the discovery flush, swarm.md 1.2). Cancellable.
        """
        if self.stopped:
            return defer.fail(RuntimeError("the dial loop is stopped"))
        prio = self.queue.prioritised + self.prioritised_inflight
        if prio == 0 or self.client_sockets >= self.max_client_sockets:
            return defer.succeed(None)

        def cancel(d: defer.Deferred) -> None:
            self._flushes[:] = [e for e in self._flushes if e[1] is not d]

        d: defer.Deferred = defer.Deferred(cancel)
        self._flushes.append([prio, d])
        return d

    def _attempt(self) -> None:
        keep = []
        done = []
        for entry in self._flushes:
            entry[0] -= 1
            if self.client_sockets >= self.max_client_sockets or entry[0] <= 0:
                done.append(entry[1])
            else:
                keep.append(entry)
        self._flushes = keep
        for d in done:
            d.callback(None)

    # -- shutdown ---------------------------------------------------------

    def stop(self, reason: Optional[BaseException] = None) -> None:
        """Stop dialling; pending :meth:`flush_dials` fail with ``reason``."""
        if self.stopped:
            return
        self.stopped = True
        for call in self._kicks:
            if call.active():
                call.cancel()
        self._kicks = []
        flushes, self._flushes = self._flushes, []
        for _, d in flushes:
            d.errback(reason if reason is not None else RuntimeError("the dial loop is stopped"))

    def stats(self) -> dict:
        """``peers``, ``client_sockets``, ``server_sockets``, ``queued``, ``open``."""
        return {
            "peers": self.peers,
            "client_sockets": self.client_sockets,
            "server_sockets": self.server_sockets,
            "queued": len(self.queue),
            "open": self.open,
        }

    def _bug(self, failure: Any, where: str) -> None:
        self.log.failure("dial loop: {where} raised", failure, where=where)
