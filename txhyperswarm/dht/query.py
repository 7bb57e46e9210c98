"""
Iterative walks toward a target: dht-rpc's ``QueryStream`` and
``QueryTable`` (dht.md 1.8).

A walk seeds its table with the 20 routing-table nodes closest to the target
(and, when the table has fewer nodes than there are bootstrap nodes, also
sends to every bootstrap node), then keeps querying the closest not yet
queried candidates, learning new ones from each response's closerNodes,
until nothing is left to send and nothing is in flight. With ``update``, it
then sends UPDATE (with each node's roundtrip token) to the <= 20 closest
nodes that answered with an id and a token.

Replies are handed to ``on_reply`` as :class:`Reply` values. The walk's
Deferred fires with ``None`` when it ends, or errbacks with
:class:`QueryError` ("No nodes responded" / "No close nodes responded").

What a walk needs from its node (the RPC, the routing table, the bootstrap
nodes and the bookkeeping of running walks) is one :class:`WalkContext`,
which the node builds once and hands to every :class:`Walk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from txhyperswarm.dht.errors import QueryError, RequestTimeout
from txhyperswarm.dht.messages import decode_nodes, decode_peer, DecodeError
from txhyperswarm.dht.routing import K, Contact

__all__ = ["Reply", "QueryTable", "Walk", "WalkContext", "WalkState", "WalkTrace", "decode_to"]

Address = Tuple[str, int]

_FIND_NODE = b"_find_node"


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One response of a walk (or of a ping).

    :ivar node: ``(host, port)`` the response came from.
    :ivar id: the responder's 32-byte id, ``None`` for an ephemeral node.
    :ivar value: the response's value bytes, ``None`` when absent.
    :ivar to: our own address as the responder saw it, ``None`` if absent.
    """

    node: Address
    id: Optional[bytes]
    value: Optional[bytes]
    to: Optional[Address]

    @classmethod
    def of(cls, msg, node: Address) -> "Reply":
        """The reply a response ``msg`` from ``node`` is."""
        return cls(
            node,
            msg.id if msg.HasField("id") else None,
            msg.value if msg.HasField("value") else None,
            decode_to(msg.to) if msg.HasField("to") else None,
        )


def decode_to(raw: bytes) -> Optional[Address]:
    """A 6-byte ``to`` field, or ``None`` when it is not one."""
    if len(raw) != 6:
        return None
    try:
        return decode_peer(raw)
    except DecodeError:
        return None


class QueryTable:
    """``unverified`` candidates and ``closest`` responders, k = 20 each."""

    def __init__(self, own_id: bytes, target: bytes, k: int = K) -> None:
        self.k = k
        self.id = own_id
        self.target = target
        self._t = int.from_bytes(target, "big")
        self.closest: List[Contact] = []
        self.unverified: List[Contact] = []

    def add_unverified(self, node: Contact, referrer: Optional[Address]) -> None:
        if node.id == self.id:
            return
        node.distance = node.int_id ^ self._t
        node.referrer = referrer
        self._insert(node, self.unverified)

    def add_verified(self, node_id: Optional[bytes], token: Optional[bytes], host: str, port: int) -> None:
        if not node_id or not token or node_id == self.id:
            return
        prev = None
        for n in self.unverified:
            if n.id == node_id:
                prev = n
                break
        if prev is None:
            prev = Contact(node_id, host, port)
            prev.distance = prev.int_id ^ self._t
        prev.token = token
        self._insert(prev, self.closest)

    def _insert(self, node: Contact, lst: List[Contact]) -> None:
        k = self.k
        if len(lst) == k and not node.distance < lst[k - 1].distance:
            return
        nid = node.id
        for n in lst:
            if n.id == nid:
                return
        if len(lst) < k:
            lst.append(node)
        else:
            lst[k - 1] = node
        pos = len(lst) - 1
        d = node.distance
        while pos and lst[pos - 1].distance > d:
            lst[pos] = lst[pos - 1]
            lst[pos - 1] = node
            pos -= 1


class WalkState(IntEnum):
    """Where a walk is (dht-rpc ``QueryStream``'s ``_status``)."""

    #: Waiting for bootstrap names to resolve before the first sends.
    BOOTSTRAPPING = 0
    #: Querying ever closer nodes.
    MOVING_CLOSER = 1
    #: Sending UPDATEs to the closest nodes that answered.
    UPDATING = 2
    #: Ended: the Deferred has fired (late responses are only counted down).
    FINALIZED = 3


class WalkTrace:
    """
    What one walk did, for measurements (``bench/dht_scale.py``,
    ``tests/test_dht_scale.py``); the DHT itself never reads it. A walk
    keeps one only when its :class:`WalkContext` has a
    :attr:`~WalkContext.tracer`.

    Depth: the nodes a walk starts from (its routing-table seeds and the
    bootstrap nodes) are depth 1; a node named in the ``closerNodes`` of a
    reply from a depth-``d`` node is depth ``d + 1`` (the smallest, when
    several replies name it). The "hops" of a lookup are the depth of the
    reply that first carried what it looked for.

    :ivar sent: requests the walk sent (QUERY or ``_find_node``; a retry
        or a holepunch of the same request is not counted again).
    :ivar updates_sent: UPDATEs it sent.
    :ivar replies: responses it got (error replies included; a timeout is
        not a reply).
    :ivar depth: ``{(host, port): depth}`` of the nodes learned from replies.
    :ivar reply_depth: the depth of the node whose reply is being handled:
        read it in ``on_reply``.
    :ivar max_depth: the deepest reply so far.
    """

    __slots__ = ("sent", "updates_sent", "replies", "depth", "reply_depth", "max_depth")

    def __init__(self) -> None:
        self.sent = 0
        self.updates_sent = 0
        self.replies = 0
        self.depth: Dict[Address, int] = {}
        self.reply_depth = 0
        self.max_depth = 0

    def replied(self, addr: Address) -> int:
        """A reply came from ``addr``; returns its depth."""
        d = self.depth.get(addr, 1)
        self.replies += 1
        self.reply_depth = d
        if d > self.max_depth:
            self.max_depth = d
        return d

    def learned(self, addr: Address, depth: int) -> None:
        """A reply named ``addr``, at ``depth``."""
        old = self.depth.get(addr)
        if old is None or depth < old:
            self.depth[addr] = depth


class WalkContext:
    """
    What a :class:`Walk` needs from the node it walks for; the node builds
    one and hands it to every walk.

    :ivar id: our 32-byte node id (a walk never queries it).
    :ivar rpc: the :class:`~txhyperswarm.dht.rpc.RPC` walks send through
        (``query``, ``update``, ``cancel``, ``inflight_count``,
        ``concurrency``, ``destroyed``).
    :ivar table: the :class:`~txhyperswarm.dht.routing.RoutingTable`: a walk
        is seeded with its closest contacts and forgets the ones that time out.
    :ivar bootstrap: the :class:`~txhyperswarm.dht.bootstrap.BootstrapNodes`:
        ``addresses`` (resolved), ``pending(table_size)`` and ``resolve()``.
    :ivar inflight_queries: walks started and not ended (a background walk
        slows down when it is not alone).
    :ivar walks: walks with something outstanding (aborted by :meth:`abort_all`).
    :ivar tracer: ``None`` (the default), or ``tracer(walk)`` called as each
        walk is made, returning a :class:`WalkTrace` for it to keep (or
        ``None``): for measurements only.
    """

    def __init__(self, own_id: bytes, rpc, table, bootstrap) -> None:
        self.id = own_id
        self.rpc = rpc
        self.table = table
        self.bootstrap = bootstrap
        self.inflight_queries = 0
        self.walks: Set["Walk"] = set()
        self.tracer: Optional[Callable[["Walk"], Optional[WalkTrace]]] = None

    def started(self, walk: "Walk") -> None:
        """``walk`` starts (counted in :attr:`inflight_queries`)."""
        self.inflight_queries += 1
        self.walks.add(walk)

    def ended(self, walk: "Walk") -> None:
        """``walk`` has fired its Deferred (it may still await responses)."""
        self.inflight_queries -= 1

    def idle(self, walk: "Walk") -> None:
        """``walk`` has ended and has no request in flight any more."""
        self.walks.discard(walk)

    def abort_all(self, error: Exception) -> None:
        """End every walk with ``error`` (the node stops)."""
        for walk in list(self.walks):
            walk.abort(error)
        self.walks.clear()


class Walk:
    """
    One iterative query/update (a ``QueryStream``).

    :param context: the :class:`WalkContext` of the node walking.
    :param command: command name (bytes).
    :param query: send the command in the walk (else ``_find_node``).
    :param update: finish with an UPDATE phase.
    :param on_reply: called with each :class:`Reply` (query responses when
        ``query``, update responses when ``update``).
    :param background: use dht-rpc's bootstrap concurrency (16 if alone,
        else 2).
    """

    log = Logger()

    def __init__(
        self,
        context: WalkContext,
        command: bytes,
        target: bytes,
        value: Optional[bytes],
        *,
        query: bool = True,
        update: bool = False,
        on_reply: Optional[Callable[[Reply], None]] = None,
        background: bool = False,
    ) -> None:
        self._context = context
        self.command = command
        self.target = target
        self.value = value
        self.update = update
        self.query = query or not update
        self.on_reply = on_reply
        self.background = background
        self.table = QueryTable(context.id, target)
        self.inflight = 0
        self.responses = 0
        self.errors = 0
        self.updates = 0
        self._status = WalkState.BOOTSTRAPPING
        self._requests: Set[object] = set()
        self.deferred: defer.Deferred = defer.Deferred(self._cancelled)
        self._error: Optional[Exception] = None
        tracer = context.tracer
        #: The :class:`WalkTrace` of this walk, when the context traces.
        self.trace: Optional[WalkTrace] = tracer(self) if tracer is not None else None

    # -- driving ----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Start sending (once bootstrap names are resolved, if the walk needs
        them); returns :attr:`deferred`."""
        context = self._context
        context.started(self)
        if context.bootstrap.pending(len(context.table)):
            context.bootstrap.resolve().addCallback(self._resolved)
        else:
            self._bootstrap()
        return self.deferred

    def _resolved(self, _) -> None:
        if self._status == WalkState.BOOTSTRAPPING:  # not cancelled or aborted meanwhile
            self._bootstrap()

    def _concurrency(self) -> int:
        context = self._context
        concurrency = context.rpc.concurrency
        if self.background and context.inflight_queries != 1:
            return min(concurrency, max(2, concurrency // 8))
        return concurrency

    def _bootstrap(self) -> None:
        context = self._context
        table = self.table
        seeds = context.table.closest(self.target, table.k)
        for b in seeds:
            table.add_unverified(Contact(b.id, b.host, b.port), None)
        addresses = context.bootstrap.addresses
        if len(seeds) < len(addresses):
            for host, port in addresses:
                self._send(Contact(None, host, port), True, False)
        self._status = WalkState.MOVING_CLOSER
        self._move_closer()

    def _send_all(self, nodes: List[Contact], force: bool, is_update: bool) -> int:
        free = self._concurrency() - self._context.rpc.inflight_count
        if free <= 0:
            free = 0 if self.inflight else 1
        if not free:
            return 0
        sent = 0
        for n in list(nodes):
            if self._send(n, force, is_update):
                sent += 1
                if sent == free:
                    break
        return sent

    def _send(self, peer: Contact, force: bool, is_update: bool) -> bool:
        if not force:
            if peer.queried:
                return False
            peer.queried = True
        self.inflight += 1
        trace = self.trace
        if trace is not None:
            if is_update:
                trace.updates_sent += 1
            else:
                trace.sent += 1
        rpc = self._context.rpc
        cb = self._on_response
        if is_update:
            if not peer.token:
                cb(QueryError("Roundtrip token is required"), None, None, None)
                return True
            req = rpc.update(self.command, self.target, self.value, peer, cb)
        elif self.query:
            req = rpc.query(self.command, self.target, self.value, peer, cb)
        else:
            req = rpc.query(_FIND_NODE, self.target, None, peer, cb)
        if req is not None and not req.done:
            self._requests.add(req)
        return True

    def _on_response(self, err, msg, addr, req) -> None:
        self.inflight -= 1
        context = self._context
        if req is not None:
            self._requests.discard(req)
            if isinstance(err, RequestTimeout) and req.peer.id is not None:
                # the request and its retries failed: forget the node
                context.table.remove_id(req.peer.id)
        if self._status == WalkState.FINALIZED:
            if not self.inflight:
                context.idle(self)
            return
        if err is not None:
            self.errors += 1
            self.log.debug("walk request failed: {err}", err=err)
            self._read()
            return
        self.responses += 1
        host, port = addr
        has_id = msg.HasField("id")
        has_token = msg.HasField("roundtripToken")
        self.table.add_verified(
            msg.id if has_id else None, msg.roundtripToken if has_token else None, host, port
        )
        status = self._status
        trace = self.trace
        depth = trace.replied(addr) + 1 if trace is not None else 0
        if status == WalkState.MOVING_CLOSER:
            if msg.HasField("closerNodes"):
                referrer = addr
                table = self.table
                for nid, nhost, nport in decode_nodes(msg.closerNodes):
                    table.add_unverified(Contact(nid, nhost, nport), referrer)
                    if trace is not None:
                        trace.learned((nhost, nport), depth)
        elif status == WalkState.UPDATING:
            self.updates += 1
        if msg.error:
            self.log.debug(
                "{host}:{port} answered {command} with an error: {error}",
                host=host,
                port=port,
                command=self.command,
                error=msg.error,
            )
            self._read()
            return
        if not self.query and status == WalkState.MOVING_CLOSER:
            self._read()
            return
        if self.on_reply is not None:
            try:
                self.on_reply(Reply.of(msg, addr))
            except Exception:
                self.log.failure("on_reply failed for a {command} reply", command=self.command)
        self._read()

    def _read(self) -> None:
        if self._context.rpc.destroyed:
            self._finalize(QueryError("DHT node stopped"))
            return
        status = self._status
        if status == WalkState.MOVING_CLOSER:
            self._move_closer()
        elif status == WalkState.UPDATING:
            self._send_update()

    def _move_closer(self) -> None:
        table = self.table
        sent = self._send_all(table.unverified, False, False)
        if sent or self.inflight:
            return
        if self.update:
            for n in table.closest:
                n.queried = False
            self._status = WalkState.UPDATING
            self._send_update()
        else:
            self._finalize()

    def _send_update(self) -> None:
        sent = self._send_all(self.table.closest, False, True)
        if sent or self.inflight:
            return
        self._finalize()

    def _finalize(self, error: Optional[Exception] = None) -> None:
        status = self._status
        if status == WalkState.FINALIZED:
            return
        self._status = WalkState.FINALIZED
        context = self._context
        context.ended(self)
        if not self.inflight:
            context.idle(self)
        cmd = self.command.decode("utf-8", "replace")
        if error is None and not self.responses:
            error = QueryError(f"No nodes responded ({cmd} walk)")
        if error is None and status == WalkState.UPDATING and not self.updates:
            error = QueryError(f"No close nodes responded ({cmd} update)")
        d = self.deferred
        if d.called:
            return
        if error is not None:
            d.errback(error)
        else:
            d.callback(None)

    def abort(self, error: Exception) -> None:
        """End the walk now with ``error`` (the node is stopping)."""
        self._finalize(error)

    def _cancelled(self, d: defer.Deferred) -> None:
        # Deferred.cancel: stop sending and forget the requests in flight.
        context = self._context
        if self._status != WalkState.FINALIZED:
            self._status = WalkState.FINALIZED
            context.ended(self)
        rpc = context.rpc
        for req in list(self._requests):
            rpc.cancel(req)
        self._requests.clear()
        if not self.inflight:
            context.idle(self)
