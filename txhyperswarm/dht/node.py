"""
:class:`DHTNode`: a dht-rpc 4.9.6 node (Node's ``dht-rpc/index.js``) as a
Twisted service.

It answers ``_ping``, ``_find_node`` and ``_holepunch``, runs the commands
registered with :meth:`DHTNode.add_command`, keeps a k-bucket routing table
fresh, and walks the DHT toward targets (:meth:`DHTNode.query`,
:meth:`DHTNode.update`, ...), speaking the exact UDP wire of Node's
dht-rpc so Python and Node nodes form one network.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txhyperswarm._parsing import parse_host_port
from txhyperswarm._reactor import default_reactor
from txhyperswarm.dht.messages import (
    Holepunch,
    Message,
    encode_peer,
    is_ipv4_literal,
)
from txhyperswarm.dht.query import QueryError, Reply, Walk, decode_to
from txhyperswarm.dht.routing import K, Peer, RoutingTable
from txhyperswarm.dht.rpc import RPC, RequestCancelled, RequestTimeout

__all__ = [
    "DHTNode",
    "Request",
    "Reply",
    "CommandError",
    "IgnoreRequest",
    "RemoteError",
    "QueryError",
    "RequestTimeout",
    "RequestCancelled",
    "DEFAULT_BOOTSTRAP",
    "TICK_INTERVAL",
]

Address = Tuple[str, int]
Handler = Callable[["Request"], Union[bytes, None, defer.Deferred]]

#: The public hyperswarm 2 bootstrap nodes (@hyperswarm/dht 4.0.1).
DEFAULT_BOOTSTRAP: Tuple[Address, ...] = (
    ("bootstrap1.hyperdht.org", 49737),
    ("bootstrap2.hyperdht.org", 49737),
    ("bootstrap3.hyperdht.org", 49737),
)

#: Seconds between DHT ticks (ping sweep every 8th, rebootstrap every 64th).
TICK_INTERVAL = 5.0

_PING = b"_ping"
_FIND_NODE = b"_find_node"
_HOLEPUNCH = b"_holepunch"
_UNSUPPORTED = b"Unsupported command"
_UPDATE_NOT_SUPPORTED = b"Update not supported"
_OTHER = b"(other)"


class CommandError(Exception):
    """
    Raise from a command handler (or errback its Deferred with it) to answer
    with an error response: ``error`` = the text, optional ``value`` bytes
    (e.g. a proof), no roundtrip token.
    """

    def __init__(self, text: str, value: Optional[bytes] = None) -> None:
        super().__init__(text)
        self.text = text
        self.value = value


class IgnoreRequest(Exception):
    """
    Raise from a command handler to send no reply at all (as dht-rpc does
    when a value fails the command's input decoder). Counted in
    ``DHTNode.dropped["value"]``.
    """


class RemoteError(Exception):
    """A peer answered a request with an error response (``error`` field)."""


class Request:
    """
    An incoming QUERY or UPDATE, as a command handler sees it.

    :ivar node: ``(host, port)`` of the sender (UDP source).
    :ivar id: the sender's 32-byte id, ``None`` when it sent none (ephemeral).
    :ivar target: the 32-byte(ish) target, as sent.
    :ivar value: the value bytes, ``None`` when absent (``b""`` when present
        but empty).
    :ivar command: the command name (``str``).
    :ivar is_update: True for an UPDATE (the roundtrip token was valid).
    """

    __slots__ = ("node", "id", "target", "value", "command", "is_update", "_to")

    def __init__(self, node, node_id, target, value, command, is_update, to) -> None:
        self.node = node
        self.id = node_id
        self.target = target
        self.value = value
        self.command = command
        self.is_update = is_update
        self._to = to

    @property
    def to(self) -> Optional[Address]:
        """Our address as the sender targeted it, ``None`` if not sent."""
        return decode_to(self._to) if self._to is not None else None

    def __repr__(self) -> str:
        kind = "UPDATE" if self.is_update else "QUERY"
        return f"<Request {kind} {self.command} from {self.node[0]}:{self.node[1]}>"


class _Command:
    __slots__ = ("name", "query", "update")

    def __init__(self, name: str, query: Optional[Handler], update: Optional[Handler]) -> None:
        self.name = name
        self.query = query
        self.update = update


def _parse_bootstrap(entry) -> Address:
    if isinstance(entry, str):
        if entry.startswith(":"):
            entry = "127.0.0.1" + entry
        return parse_host_port(entry)
    host, port = entry
    return str(host), int(port)


def _first_peer(raw: bytes) -> Optional[Address]:
    """ipv4-peers' first peer of ``raw`` (dht-rpc ``decodePeer``), ``None`` if none."""
    return decode_to(raw[:6])


def _norm_target(target: bytes) -> bytes:
    if len(target) == 32:
        return target
    return target[:32].ljust(32, b"\0")


class DHTNode(service.Service):
    """
    A DHT node (dht-rpc 4.9.6). An ``IService``: :meth:`startService` binds
    (or attaches to the given socket) and starts bootstrapping;
    :meth:`stopService` stops it.

    :param reactor: ``IReactorUDP`` + ``IReactorTime``; ``None`` = global.
    :param bootstrap: bootstrap nodes, ``(host, port)`` pairs or
        ``"HOST:PORT"`` strings; ``None`` = the public hyperswarm 2 list;
        ``[]`` = none (this node starts a network).
    :param ephemeral: send no id, so others keep us out of their routing
        tables (we still walk and answer).
    :param host: interface for the UDP socket it makes.
    :param port: port for the UDP socket it makes (0 = any).
    :param udp: a shared ``UDPSocket``; the node attaches with
        ``set_dht_receiver`` and does not close it.
    :param id: our 32-byte id (default random).
    :param random_bytes: randomness for ids and token secrets.
    """

    log = Logger()

    def __init__(
        self,
        reactor=None,
        *,
        bootstrap: Optional[Iterable[Union[str, Address]]] = None,
        ephemeral: bool = False,
        host: str = "0.0.0.0",
        port: int = 0,
        udp=None,
        id: Optional[bytes] = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._reactor = default_reactor(reactor)
        if id is not None and len(id) != 32:
            raise ValueError("a node id is 32 bytes")
        self._id = id if id is not None else random_bytes(32)
        self._ephemeral = bool(ephemeral)
        self._host = host
        self._port = port
        self._own_udp = udp is None
        self._udp = udp
        if bootstrap is None:
            self.bootstrap_nodes: List[Address] = list(DEFAULT_BOOTSTRAP)
        else:
            self.bootstrap_nodes = [_parse_bootstrap(b) for b in bootstrap]
        #: Resolved bootstrap addresses (IPv4 literals) used by walks.
        self._bootstrap_peers: List[Address] = [
            a for a in self.bootstrap_nodes if is_ipv4_literal(a[0])
        ]
        self._needs_resolve = len(self._bootstrap_peers) != len(self.bootstrap_nodes)
        #: The resolution of bootstrap host names in progress, if any.
        self._resolving: Optional[defer.Deferred] = None

        self.concurrency = 16
        self.concurrency_rps = 50
        self.inflight_queries = 0
        self.is_bootstrapped = False
        self.destroyed = False

        #: Dropped datagrams and requests by reason ("protobuf", "id",
        #: "port0", "bad_token", "no_target", "unknown_rid", "value", ...).
        self.dropped: Counter = Counter()
        self._received: Counter = Counter()
        self._rpc = RPC(
            self._reactor,
            self._send,
            self,
            None if self._ephemeral else self._id,
            self.dropped,
            random_bytes,
        )
        self._table = RoutingTable(
            self._id,
            ping=self._reping_node,
            check=self._check_node,
            is_bootstrapped=lambda: self.is_bootstrapped,
        )
        self._commands: Dict[bytes, _Command] = {}
        self._walks: Set[Walk] = set()
        #: Called with no arguments when the service stops, for what keeps
        #: timers on our clock beyond walks (a peers Announcement).
        self._stop_hooks: Dict[Callable[[], None], None] = {}
        self._ready_waiters: List[defer.Deferred] = []
        self._tick_loop = LoopingCall(self._on_tick)
        self._tick_loop.clock = self._reactor
        self._start_call = None

    # -- properties -------------------------------------------------------

    @property
    def id(self) -> bytes:
        """Our 32-byte node id (also when ephemeral, for our own table)."""
        return self._id

    @property
    def ephemeral(self) -> bool:
        return self._ephemeral

    @property
    def reactor(self):
        """The reactor (``IReactorTime``) this node runs on; layers above use its clock."""
        return self._reactor

    @property
    def routing_table_size(self) -> int:
        return len(self._table)

    @property
    def routing_table(self) -> RoutingTable:
        return self._table

    @property
    def udp(self):
        """The ``UDPSocket`` in use (``None`` before :meth:`startService`)."""
        return self._udp

    def address(self) -> Address:
        """The bound ``(host, port)`` of the UDP socket."""
        if self._udp is None:
            raise RuntimeError("DHTNode is not started")
        return self._udp.address()

    @property
    def rpc_requests(self) -> Counter:
        """
        RPC requests by ``(command, direction)``; direction ``"in"`` for
        requests received, ``"out"`` for requests sent (each transmission
        of a retry is not counted again). Unknown incoming commands are
        counted as ``"(other)"``.
        """
        out: Counter = Counter()
        for cmd, n in self._received.items():
            out[(cmd.decode("utf-8", "replace"), "in")] += n
        for cmd, n in self._rpc.sent.items():
            out[(cmd.decode("utf-8", "replace"), "out")] += n
        return out

    # -- lifecycle --------------------------------------------------------

    def startService(self) -> None:
        """Bind (if we own the socket), start timers, bootstrap soon."""
        super().startService()
        self.destroyed = False
        if self._udp is None:
            from txhyperswarm.udp import UDPSocket

            self._udp = UDPSocket(self._reactor, host=self._host, port=self._port)
        if not self._udp.listening:
            self._udp.listen()
        self._udp.set_dht_receiver(self._rpc.datagram_received)
        self._rpc.start()
        if not self._tick_loop.running:
            self._tick_loop.start(TICK_INTERVAL, now=False)
        self._start_call = self._reactor.callLater(0, self._initial_bootstrap)
        self.log.info(
            "DHT node {id} on {host}:{port} (ephemeral={ephemeral})",
            id=self._id.hex(),
            host=self.address()[0],
            port=self.address()[1],
            ephemeral=self._ephemeral,
        )

    def stopService(self) -> defer.Deferred:
        """
        Stop: cancel timers, fail in-flight requests (RequestCancelled) and
        walks (QueryError), close the socket if we made it.

        :returns: Deferred firing with ``None`` once closed.
        """
        super().stopService()
        self.destroyed = True
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        self._start_call = None
        if self._tick_loop.running:
            self._tick_loop.stop()
        hooks, self._stop_hooks = self._stop_hooks, {}
        for hook in hooks:
            hook()
        self._rpc.destroy()
        for walk in list(self._walks):
            walk.abort(QueryError("DHT node stopped"))
        self._walks.clear()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(QueryError("DHT node stopped before bootstrapping"))
        udp = self._udp
        if udp is None:
            return defer.succeed(None)
        udp.set_dht_receiver(None)
        if self._own_udp:
            return udp.close()
        return defer.succeed(None)

    def _send(self, data: bytes, addr: Address) -> None:
        udp = self._udp
        if udp is not None:
            udp.send(data, addr)

    # -- bootstrap --------------------------------------------------------

    def _initial_bootstrap(self) -> None:
        self._start_call = None
        self.bootstrap().addErrback(
            lambda f: self.log.warn("DHT bootstrap failed: {err}", err=f.getErrorMessage())
        )

    def bootstrapped(self) -> defer.Deferred:
        """
        :returns: Deferred firing with ``None`` once the first bootstrap walk
            has ended (also when it failed, as dht-rpc's ``ready``);
            errbacks with :class:`QueryError` if the node stops first.
        """
        if self.is_bootstrapped:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _set_bootstrapped(self) -> None:
        if self.is_bootstrapped:
            return
        self.is_bootstrapped = True
        self.log.info(
            "DHT node bootstrapped with {n} nodes in its table", n=len(self._table)
        )
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def _resolve_bootstrap(self) -> defer.Deferred:
        """
        Resolve the bootstrap nodes given by name (dht-rpc's socket resolves
        them on each send; Twisted's UDP write takes IP addresses only).

        :returns: Deferred firing with the ``(ip, port)`` list (names that
            did not resolve are left out and tried again next time); never
            errbacks. Concurrent callers share one resolution.
        """
        if not self._needs_resolve:
            return defer.succeed(self._bootstrap_peers)
        if self._resolving is None:

            def one(entry: Address) -> defer.Deferred:
                host, port = entry
                if is_ipv4_literal(host):
                    return defer.succeed([(host, port)])
                d = self._reactor.resolve(host)
                d.addCallbacks(
                    lambda ip: [(ip, port)],
                    lambda f: self.log.warn(
                        "cannot resolve bootstrap node {host}: {err}", host=host, err=f.getErrorMessage()
                    )
                    or [],
                )
                return d

            def done(results):
                self._resolving = None
                peers = [a for r in results for a in r]
                self._bootstrap_peers = peers
                self._needs_resolve = len(peers) != len(self.bootstrap_nodes)
                return peers

            self._resolving = defer.gatherResults([one(e) for e in self.bootstrap_nodes]).addCallback(done)
        shared, mine = self._resolving, defer.Deferred()

        def fire(peers):
            if not mine.called:
                mine.callback(peers)
            return peers

        shared.addCallback(fire)
        return mine

    def _bootstrap_pending(self) -> bool:
        """Whether a walk starting now must wait for bootstrap names to resolve:
        they are not resolved and the walk would send to them (dht-rpc does when
        the routing table has fewer nodes than there are bootstrap nodes)."""
        return self._needs_resolve and len(self._table) < len(self.bootstrap_nodes)

    def bootstrap(self) -> defer.Deferred:
        """
        Walk toward our own id from the bootstrap nodes (dht-rpc
        ``bootstrap``). Marks the node bootstrapped when the walk ends.

        :returns: Deferred firing with ``None``, or errbacking with
            :class:`QueryError` when no node responded.
        """
        if not self.bootstrap_nodes:
            # the first node of a network: nothing to walk
            self._set_bootstrapped()
            return defer.succeed(None)

        if self.destroyed:
            return defer.fail(QueryError("DHT node stopped"))

        def ended(result):
            if not self.destroyed:
                self._set_bootstrapped()
            return result

        walk = Walk(self, _FIND_NODE, self._id, None, query=True, background=True)
        return walk.start().addBoth(ended)

    def persistent(self) -> defer.Deferred:
        """
        Start sending our id (leave ephemeral mode) and re-bootstrap so
        others add us (dht-rpc ``persistent()``).

        :returns: Deferred firing with ``None`` after the bootstrap walk.
        """
        self._rpc.id = self._id

        def ok(_):
            self._ephemeral = False

        return self.bootstrap().addCallback(ok)

    # -- timers -----------------------------------------------------------

    def _on_tick(self) -> None:
        if self._table.on_tick(self.inflight_queries) == "bootstrap":
            self.bootstrap().addErrback(
                lambda f: self.log.debug("re-bootstrap failed: {err}", err=f.getErrorMessage())
            )

    # A ping cancelled because we stop says nothing about the peer: unlike
    # dht-rpc, which evicts on ECANCELLED too, give no verdict (the table
    # survives a stop/start as it was, as walks already treat cancels).

    def _reping_node(self, peer: Peer, callback: Callable[[bool], None]) -> None:
        # dht-rpc _reping: queryImmediately, only a transport error counts
        def cb(err, msg, addr, req):
            if not isinstance(err, RequestCancelled):
                callback(err is None)

        self._rpc.query(_PING, None, peer.id, peer, cb, immediately=True)

    def _check_node(self, peer: Peer, callback: Callable[[bool], None]) -> None:
        # dht-rpc _check -> ping(): an error response or a bad pong fails too
        def cb(err, msg, addr, req):
            if not isinstance(err, RequestCancelled):
                callback(err is None and not msg.error and self._pong(msg) is not None)

        self._rpc.query(_PING, None, peer.id, peer, cb)

    @staticmethod
    def _pong(msg: Message) -> Optional[Address]:
        return _first_peer(msg.to if msg.HasField("to") else (msg.value if msg.HasField("value") else b""))

    # -- incoming ---------------------------------------------------------

    def _on_response(self, msg: Message, host: str, port: int) -> None:
        if msg.HasField("id"):
            self._table.add_node(
                msg.id,
                host,
                port,
                msg.roundtripToken if msg.HasField("roundtripToken") else None,
                msg.to if msg.HasField("to") else None,
            )

    def _on_bad_id(self, peer: Peer) -> None:
        self._table.remove_node(peer)

    def _on_request(self, is_update: bool, msg: Message, host: str, port: int) -> None:
        if msg.HasField("id"):
            self._table.add_node(msg.id, host, port, None, msg.to if msg.HasField("to") else None)
        cmd = msg.command
        if cmd == _PING:
            self._received[_PING] += 1
            if msg.HasField("value") and msg.value != self._id:
                self.dropped["ping_id"] += 1
                return
            to = self._rpc.peer_bytes(host, port)
            self._rpc.response(msg.rid, host, port, to, None, to)
        elif cmd == _FIND_NODE:
            self._received[_FIND_NODE] += 1
            target = msg.target
            if len(target) != 32:
                self.dropped["no_target"] += 1
                return
            self._rpc.response(msg.rid, host, port, None, self._table.closest_compact(target))
        elif cmd == _HOLEPUNCH:
            self._received[_HOLEPUNCH] += 1
            self._on_holepunch(msg, host, port)
        else:
            self._on_command(is_update, msg, host, port)

    def _on_holepunch(self, msg: Message, host: str, port: int) -> None:
        if not msg.HasField("value"):
            self.dropped["value"] += 1
            return
        try:
            punch = Holepunch.FromString(msg.value)
        except Exception:
            self.dropped["value"] += 1
            return
        if punch.HasField("to"):
            to = _first_peer(punch.to)
            if to is None or to == (host, port):
                self.dropped["value"] += 1
                return
            fwd = Message()
            fwd.CopyFrom(msg)
            fwd.version = 1
            if self._rpc.id is not None:
                fwd.id = self._rpc.id
            else:
                fwd.ClearField("id")
            fwd.to = encode_peer(*to)
            relay = Holepunch()
            setattr(relay, "from", encode_peer(host, port))
            fwd.value = relay.SerializeToString()
            if not fwd.HasField("error"):
                fwd.error = b""  # as Node's re-encode of a decoded message
            self.log.debug("relaying holepunch {a} -> {b}", a=(host, port), b=to)
            self._rpc.forward(fwd, to)
            return
        if punch.HasField("from"):
            frm = _first_peer(getattr(punch, "from"))
            if frm is not None:
                host, port = frm
        self._rpc.response(msg.rid, host, port)

    def _on_command(self, is_update: bool, msg: Message, host: str, port: int) -> None:
        if not msg.HasField("target"):
            self.dropped["no_target"] += 1
            return
        command = self._commands.get(msg.command)
        rid = msg.rid
        target = msg.target
        if command is None:
            self._received[_OTHER] += 1
            self._rpc.error(rid, host, port, _UNSUPPORTED, self._closer(target))
            return
        self._received[msg.command] += 1
        handler = command.update if is_update else command.query
        if handler is None:
            if is_update:
                self._rpc.error(rid, host, port, _UPDATE_NOT_SUPPORTED, self._closer(target))
            else:
                self._rpc.response(rid, host, port, None, self._closer(target))
            return
        request = Request(
            (host, port),
            msg.id if msg.HasField("id") else None,
            target,
            msg.value if msg.HasField("value") else None,
            command.name,
            is_update,
            msg.to if msg.HasField("to") else None,
        )
        try:
            result = handler(request)
        except Exception:
            self._answer(Failure(), rid, host, port, target, command.name)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                self._answer,
                self._answer,
                callbackArgs=(rid, host, port, target, command.name),
                errbackArgs=(rid, host, port, target, command.name),
            )
        else:
            self._answer(result, rid, host, port, target, command.name)

    def _answer(self, result, rid: int, host: str, port: int, target: bytes, name: str) -> None:
        if isinstance(result, Failure):
            exc = result.value
            if isinstance(exc, IgnoreRequest):
                self.dropped["value"] += 1
                return
            if isinstance(exc, CommandError):
                self._rpc.error(
                    rid, host, port, exc.text.encode("utf-8"), self._closer(target), exc.value
                )
                return
            self.dropped["handler_error"] += 1
            self.log.failure(
                "{command} handler failed on a request from {host}:{port}",
                result,
                command=name,
                host=host,
                port=port,
            )
            return
        if result is not None and not isinstance(result, (bytes, bytearray, memoryview)):
            self.dropped["handler_error"] += 1
            self.log.error(
                "{command} handler returned {type}, not bytes or None", command=name, type=type(result)
            )
            return
        self._rpc.response(
            rid, host, port, bytes(result) if result is not None else None, self._closer(target)
        )

    def _closer(self, target: bytes) -> bytes:
        return self._table.closest_compact(_norm_target(target))

    # -- commands ---------------------------------------------------------

    def add_command(
        self, name: str, query: Optional[Handler] = None, update: Optional[Handler] = None
    ) -> None:
        """
        Register a command (dht-rpc ``command(name, {query, update})``).

        ``handler(request: Request)`` returns the response value (``bytes``,
        ``b""`` for present-but-empty), ``None`` (no value), or a Deferred of
        either. Raise (or errback with) :class:`CommandError` to answer with
        an error, :class:`IgnoreRequest` to send no reply. Without a
        ``query`` handler queries are answered with no value; without an
        ``update`` handler updates get the error "Update not supported".
        Requests without a target are never passed to handlers.
        """
        key = name.encode("utf-8")
        if key in (_PING, _FIND_NODE, _HOLEPUNCH):
            raise ValueError(f"{name} is a built-in command")
        self._commands[key] = _Command(name, query, update)

    def remove_command(self, name: str) -> None:
        self._commands.pop(name.encode("utf-8"), None)

    # -- outgoing ---------------------------------------------------------

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
            to = self._pong(msg)
            if to is None:
                raise RemoteError(f"Invalid pong from {addr[0]}:{addr[1]}")
            return dataclasses.replace(Reply.of(msg, addr), to=to)

        def go(ip: str) -> defer.Deferred:
            return self._request(_PING, id, Peer(id, ip, int(port)), pong)

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
        peer = Peer(None, host, port)
        peer.referrer = referrer
        return self._request(_HOLEPUNCH, None, peer, Reply.of)

    def _request(
        self, command: bytes, value: Optional[bytes], peer: Peer, convert: Callable[[Message, Address], Reply]
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
            state["req"] = self._rpc.query(command, None, value, peer, cb)
        except ValueError as e:  # not an IPv4 address and port we can encode
            return defer.fail(e)
        return d

    def _walk(
        self,
        command: str,
        target: bytes,
        value: Optional[bytes],
        query: bool,
        update: bool,
        on_reply: Optional[Callable[[Reply], None]],
    ) -> defer.Deferred:
        if self.destroyed or not self.running:
            return defer.fail(QueryError("DHT node is not running"))
        if not isinstance(target, (bytes, bytearray)):
            raise TypeError("target must be bytes")
        walk = Walk(
            self,
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

    # -- routing table access --------------------------------------------

    def nodes(self) -> List[Tuple[bytes, str, int]]:
        """Routing-table nodes, oldest seen first, as ``(id, host, port)``."""
        return [(p.id, p.host, p.port) for p in self._table.nodes.values()]

    def add_nodes(self, nodes: Iterable[Tuple[bytes, str, int]]) -> None:
        """
        Add ``(id, host, port)`` nodes, e.g. from a saved snapshot; entries
        that are not a 32-byte id, an IPv4 address and a port in 1-65535 are
        skipped (a port of 0 in our closerNodes makes Node drop the list).
        """
        for node_id, host, port in nodes:
            port = int(port)
            if len(node_id) == 32 and is_ipv4_literal(host) and 0 < port < 65536:
                self._table.add_node(node_id, host, port)

    def closest_nodes(self, target: bytes, n: int = K) -> List[Tuple[bytes, str, int]]:
        """The ``n`` routing-table nodes closest to ``target``."""
        return [(p.id, p.host, p.port) for p in self._table.closest(_norm_target(target), n)]

    def _tally(self, only_ip: bool) -> Optional[bytes]:
        counts: Dict[bytes, int] = {}
        result = None
        good = 0
        cnt = 0
        for node in self._table.latest():
            if cnt >= 10:
                break
            to = node.to
            if not to or len(to) != 6:
                continue
            key = to[:4] + b"\0\0" if only_ip else to
            hits = counts.get(key, 0) + 1
            if hits > good:
                good = hits
                result = to
            counts[key] = hits
            cnt += 1
        return result if cnt - good < 3 and good >= 3 else None

    def remote_address(self) -> Optional[Address]:
        """
        Our public address as the nodes we talk to see it (>= 3 of the last
        10 agree), or ``None`` (dht-rpc ``remoteAddress()``).
        """
        both = self._tally(False) or self._tally(True)
        return decode_to(both) if both else None

    def holepunchable(self) -> bool:
        """Whether :meth:`remote_address` is consistent in ip and port."""
        return self._tally(False) is not None
