"""
The client API of a DHT node: single requests (``ping``, ``holepunch``) and
walks (``query``, ``update``, ``query_and_update``, ``query_stream``).

:class:`DHTClient` is the half of :class:`~txhyperswarm.dht.node.DHTNode`
that sends; the node is the service around it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

from twisted.internet import defer

from txhyperswarm.dht.errors import QueryError, RemoteError, RequestCancelled
from txhyperswarm.dht.handlers import HOLEPUNCH, PING, first_peer
from txhyperswarm.dht.messages import Message, is_ipv4_literal
from txhyperswarm.dht.query import Reply, Walk, WalkContext
from txhyperswarm.dht.routing import Contact

__all__ = ["DHTClient", "pong_address"]

Address = Tuple[str, int]


def pong_address(msg: Message) -> Optional[Address]:
    """Our address in a ``_ping`` response (its ``to``, else its value), or ``None``."""
    return first_peer(msg.to if msg.HasField("to") else (msg.value if msg.HasField("value") else b""))


class DHTClient:
    """
    Requests and walks over an RPC.

    :param reactor: resolves host names (``resolve``).
    :param walks: the :class:`~txhyperswarm.dht.query.WalkContext` (its
        ``rpc`` carries the requests).
    """

    def __init__(self, reactor, walks: WalkContext) -> None:
        self._reactor = reactor
        self._walks = walks
        self._rpc = walks.rpc

    # -- single requests --------------------------------------------------

    def _with_ip(self, host: str, then: Callable[[str], defer.Deferred]) -> defer.Deferred:
        if is_ipv4_literal(host):
            return then(host)
        return self._reactor.resolve(host).addCallback(then)

    def ping(self, host: str, port: int, id: Optional[bytes] = None) -> defer.Deferred:
        """
        Send ``_ping`` to ``host:port`` (with ``id``, the peer only answers
        if that is its id).

        :returns: Deferred firing with a :class:`Reply`: ``node`` = the
            address that answered, ``id`` = its id (``None`` if ephemeral),
            ``to`` = our address as it saw us, ``value`` = the raw pong.
            Errbacks with :class:`RequestTimeout` (no answer after 3 tries,
            about 7 s), :class:`RemoteError` (error response or a bad pong),
            :class:`RequestCancelled` (the node is not running). Cancelling it
            (e.g. ``addTimeout``) forgets the request.
        """

        def pong(msg: Message, addr: Address) -> Reply:
            to = pong_address(msg)
            if to is None:
                raise RemoteError(f"Invalid pong from {addr[0]}:{addr[1]}")
            return dataclasses.replace(Reply.of(msg, addr), to=to)

        def go(ip: str) -> defer.Deferred:
            return self._request(PING, id, Contact(id, ip, int(port)), pong)

        return self._with_ip(host, go)

    def holepunch(self, host: str, port: int, referrer: Address) -> defer.Deferred:
        """
        Send ``_holepunch`` to ``host:port`` and, through ``referrer`` (the
        node that told us about it), ask it to answer us (dht.md 1.9).

        :returns: Deferred firing with a :class:`Reply`, errbacks like
            :meth:`ping`. Both ``host`` and the referrer's host may be names.
        """
        rhost, rport = referrer
        return self._with_ip(
            host,
            lambda ip: self._with_ip(rhost, lambda rip: self._holepunch(ip, int(port), (rip, int(rport)))),
        )

    def _holepunch(self, host: str, port: int, referrer: Address) -> defer.Deferred:
        contact = Contact(None, host, port)
        contact.referrer = referrer
        return self._request(HOLEPUNCH, None, contact, Reply.of)

    def _request(
        self,
        command: bytes,
        value: Optional[bytes],
        contact: Contact,
        convert: Callable[[Message, Address], Reply],
    ) -> defer.Deferred:
        """One QUERY as a cancellable Deferred; error responses errback RemoteError."""
        state = {"req": None, "cancelled": False}

        def cancel(d: defer.Deferred) -> None:
            state["cancelled"] = True
            if state["req"] is not None:
                self._rpc.cancel(state["req"])

        d: defer.Deferred = defer.Deferred(cancel)

        def cb(err, msg, addr, req) -> None:
            if d.called or state["cancelled"]:
                return
            if err is not None:
                d.errback(err)
            elif msg.error:
                d.errback(RemoteError(msg.error.decode("utf-8", "replace")))
            else:
                try:
                    result = convert(msg, addr)
                except RemoteError as e:
                    d.errback(e)
                else:
                    d.callback(result)

        try:
            state["req"] = self._rpc.query(command, None, value, contact, cb)
        except ValueError as e:  # not an IPv4 address and port we can encode
            return defer.fail(e)
        return d

    # -- walks ------------------------------------------------------------

    def _walk(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes],
        query: bool,
        update: bool,
        on_reply: Optional[Callable[[Reply], None]],
    ) -> defer.Deferred:
        if self._rpc.destroyed:
            return defer.fail(QueryError("DHT node is not running"))
        if not isinstance(target, (bytes, bytearray)):
            raise TypeError("target must be bytes")
        walk = Walk(
            self._walks,
            command.encode("utf-8"),
            bytes(target),
            None if value is None else bytes(value),
            query=query,
            update=update,
            on_reply=on_reply,
        )
        return walk.start()

    def _collect(self, command, target, value, query, update, on_reply) -> defer.Deferred:
        replies: List[Reply] = []
        if on_reply is None:
            collect = replies.append
        else:

            def collect(reply: Reply) -> None:
                replies.append(reply)
                on_reply(reply)

        d = self._walk(command, target, value, query, update, collect)
        return d.addCallback(lambda _: replies)

    def query_stream(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes] = None,
        on_reply: Optional[Callable[[Reply], None]] = None,
    ) -> defer.Deferred:
        """
        Walk toward ``target`` sending QUERY ``command`` (with ``value``) to
        ever closer nodes; call ``on_reply(Reply)`` for each non-error
        response as it arrives.

        :returns: Deferred firing with ``None`` when the walk ends;
            errbacks with :class:`QueryError` ("No nodes responded").
            Cancelling it stops the walk.
        """
        return self._walk(command, target, value, True, False, on_reply)

    def query(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes] = None,
        on_reply: Optional[Callable[[Reply], None]] = None,
    ) -> defer.Deferred:
        """
        :meth:`query_stream`, collected (``on_reply`` is also called as
        replies arrive, if given).

        :returns: Deferred firing with ``list[Reply]``; errbacks with
            :class:`QueryError`.
        """
        return self._collect(command, target, value, True, False, on_reply)

    def update(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes] = None,
        on_reply: Optional[Callable[[Reply], None]] = None,
    ) -> defer.Deferred:
        """
        Walk toward ``target`` with ``_find_node``, then send UPDATE
        ``command`` (with ``value`` and each node's roundtrip token) to the
        <= 20 closest nodes that answered.

        :returns: Deferred firing with the update responses,
            ``list[Reply]``; errbacks with :class:`QueryError` ("No nodes
            responded" / "No close nodes responded").
        """
        return self._collect(command, target, value, False, True, on_reply)

    def query_and_update(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes] = None,
        on_reply: Optional[Callable[[Reply], None]] = None,
    ) -> defer.Deferred:
        """
        The QUERY walk of :meth:`query`, then the UPDATE phase of
        :meth:`update` (how ``peers`` announces).

        :returns: Deferred firing with the query and update responses,
            ``list[Reply]``; errbacks with :class:`QueryError`.
        """
        return self._collect(command, target, value, True, True, on_reply)

    # -- liveness pings for the routing table -----------------------------

    # A ping cancelled because we stop says nothing about the peer: unlike
    # dht-rpc, which evicts on ECANCELLED too, the verdict is None (the table
    # survives a stop/start as it was, as walks already treat cancels).

    def _reping(self, contact: Contact, callback: Callable[[bool], None]) -> None:
        """The routing table's ``ping``: dht-rpc ``_reping`` (queryImmediately;
        only a transport error counts)."""

        def cb(err, msg, addr, req):
            callback(None if isinstance(err, RequestCancelled) else err is None)

        self._rpc.query(PING, None, contact.id, contact, cb, immediately=True)

    def _check(self, contact: Contact, callback: Callable[[bool], None]) -> None:
        """The routing table's ``check``: dht-rpc ``_check`` -> ``ping()`` (an
        error response or a bad pong fails too)."""

        def cb(err, msg, addr, req):
            if isinstance(err, RequestCancelled):
                callback(None)
            else:
                callback(err is None and not msg.error and pong_address(msg) is not None)

        self._rpc.query(PING, None, contact.id, contact, cb)
