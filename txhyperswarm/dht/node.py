"""
:class:`DHTNode`: a dht-rpc 4.9.6 node (Node's ``dht-rpc/index.js``) as a
Twisted service, speaking the exact UDP wire of Node's dht-rpc so Python and
Node nodes form one network.

The node is the service and the owner of the pieces, each in a module of its
own:

* :mod:`~txhyperswarm.dht.rpc`: requests, responses, retries, tokens; it
  calls the node back through :class:`~txhyperswarm.dht.rpc.IRPCController`;
* :mod:`~txhyperswarm.dht.handlers`: what the node answers (``_ping``,
  ``_find_node``, ``_holepunch`` and its relay, registered commands);
* :mod:`~txhyperswarm.dht.commands`: the registry of :meth:`add_command`;
* :mod:`~txhyperswarm.dht.client`: what it sends (:meth:`ping`,
  :meth:`query`, :meth:`update`, ...);
* :mod:`~txhyperswarm.dht.query` and :mod:`~txhyperswarm.dht.routing`:
  walks and the k-bucket routing table;
* :mod:`~txhyperswarm.dht.bootstrap`: the bootstrap nodes, resolved;
* :mod:`~txhyperswarm.dht.nat`: our address as the network sees it;
* :mod:`~txhyperswarm.dht.errors`: every exception of the layer.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._reactor import default_reactor
from txhyperswarm.dht import nat
from txhyperswarm.dht.bootstrap import DEFAULT_BOOTSTRAP, BootstrapNodes
from txhyperswarm.dht.client import DHTClient
from txhyperswarm.dht.commands import CommandRegistry, Handler, Request
from txhyperswarm.dht.errors import (
    CommandError,
    IgnoreRequest,
    QueryError,
    RemoteError,
    RequestCancelled,
    RequestTimeout,
)
from txhyperswarm.dht.handlers import (
    FIND_NODE,
    HOLEPUNCH_RELAY_PER_IP,
    HOLEPUNCH_RELAY_TOTAL,
    MAX_PENDING,
    MAX_PENDING_PER_IP,
    Responder,
    norm_target,
)
from txhyperswarm.dht.messages import Message, is_ipv4_literal
from txhyperswarm.dht.query import Reply, Walk, WalkContext
from txhyperswarm.dht.routing import PING_BURST, PING_RATE, K, Contact, RoutingTable
from txhyperswarm.dht.rpc import (
    OVERLOAD_LIMIT_PER_IP,
    OVERLOAD_RATE,
    RATE_LIMIT_EXEMPT,
    RATE_LIMIT_PER_IP,
    RPC,
    IRPCController,
)
from txhyperswarm.interfaces import IStatsSource

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

#: Seconds between DHT ticks (ping sweep every 8th, rebootstrap every 64th).
TICK_INTERVAL = 5.0


@implementer(IRPCController, IStatsSource)
class DHTNode(DHTClient, service.Service):
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
    :param ping_rate: liveness pings (full-bucket evictions and the 40 s
        sweep) the node may start per second on average
        (:data:`~txhyperswarm.dht.routing.PING_RATE`, 20); ``0``: no limit.
    :param ping_burst: ... and at once after a quiet spell
        (:data:`~txhyperswarm.dht.routing.PING_BURST`, 100).

    :param rate_limit_per_ip: datagrams a source IP may send per second;
        the rest of that second is dropped before decoding
        (``dropped["rate_ip"]``; :data:`~txhyperswarm.dht.rpc.RATE_LIMIT_PER_IP`,
        2000); ``0``: no limit.
    :param rate_limit_exempt: source IPs not limited (default
        ``{"127.0.0.1"}``: the machine itself).
    :param max_pending_per_ip: requests from one IP whose handler has not
        answered yet; more are dropped (``dropped["pending_ip"]``; 64).
    :param max_pending: the same for all sources (``dropped["pending_total"]``;
        4096).
    :param holepunch_relay_per_ip: ``_holepunch`` requests from one source
        IP the node relays to the address they name, per second; more are
        dropped (``dropped["holepunch_ip"]``;
        :data:`~txhyperswarm.dht.handlers.HOLEPUNCH_RELAY_PER_IP`, 256);
        ``0``: no limit.
    :param holepunch_relay_total: the same for all sources
        (``dropped["holepunch_total"]``;
        :data:`~txhyperswarm.dht.handlers.HOLEPUNCH_RELAY_TOTAL`, 2048).
        Sources in ``rate_limit_exempt`` count in neither.
    :param overload_rate: datagrams a second from all rate-limited sources
        together beyond which the node is overloaded: for the rest of that
        second a source that already sent ``overload_limit_per_ip`` is
        dropped before decoding (``dropped["overload"]``;
        :data:`~txhyperswarm.dht.rpc.OVERLOAD_RATE`, 10,000); ``0``: never.
    :param overload_limit_per_ip: ... (:data:`~txhyperswarm.dht.rpc.OVERLOAD_LIMIT_PER_IP`, 20).

    Limits against abuse (see ``docs/reliability.rst``): besides the ping
    budget, a full bucket runs at most one eviction ping at a time
    (newcomers meanwhile are dropped), and nodes known only from their own
    requests are never pinged by the sweep and are forgotten after 5 minutes
    of silence.
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
        ping_rate: Optional[float] = PING_RATE,
        ping_burst: int = PING_BURST,
        rate_limit_per_ip: Optional[int] = RATE_LIMIT_PER_IP,
        rate_limit_exempt: Iterable[str] = RATE_LIMIT_EXEMPT,
        max_pending_per_ip: int = MAX_PENDING_PER_IP,
        max_pending: int = MAX_PENDING,
        holepunch_relay_per_ip: Optional[int] = HOLEPUNCH_RELAY_PER_IP,
        holepunch_relay_total: Optional[int] = HOLEPUNCH_RELAY_TOTAL,
        overload_rate: Optional[int] = OVERLOAD_RATE,
        overload_limit_per_ip: int = OVERLOAD_LIMIT_PER_IP,
    ) -> None:
        reactor = default_reactor(reactor)
        if id is not None and len(id) != 32:
            raise ValueError("a node id is 32 bytes")
        self._id = id if id is not None else random_bytes(32)
        self._ephemeral = bool(ephemeral)
        self._host = host
        self._port = port
        self._own_udp = udp is None
        self._udp = udp
        self._bootstrap = BootstrapNodes(reactor, bootstrap)
        #: The bootstrap nodes as given (names unresolved), ``(host, port)``.
        self.bootstrap_nodes: List[Address] = self._bootstrap.nodes

        self.is_bootstrapped = False
        self.destroyed = False

        #: Dropped datagrams and requests by reason ("protobuf", "id",
        #: "port0", "bad_token", "no_target", "unknown_rid", "value", ...).
        self.dropped: Counter = Counter()
        rpc = RPC(
            reactor,
            self._send,
            self,  # type: ignore[arg-type]  # DHTNode implements IRPCController (zope)
            None if self._ephemeral else self._id,
            self.dropped,
            random_bytes,
            rate_limit_per_ip,
            rate_limit_exempt,
        )
        rpc.overload_rate = overload_rate or 0
        rpc.overload_limit_per_ip = overload_limit_per_ip
        self._table = RoutingTable(
            self._id,
            ping=self._reping,
            check=self._check,
            is_bootstrapped=lambda: self.is_bootstrapped,
            seconds=reactor.seconds,
            ping_rate=ping_rate,
            ping_burst=ping_burst,
        )
        self._commands = CommandRegistry()
        self._responder = Responder(
            rpc,
            self._table,
            self._id,
            self._commands,
            self.dropped,
            max_pending_per_ip,
            max_pending,
            seconds=reactor.seconds,
            holepunch_relay_per_ip=holepunch_relay_per_ip,
            holepunch_relay_total=holepunch_relay_total,
        )
        DHTClient.__init__(self, reactor, WalkContext(self._id, rpc, self._table, self._bootstrap))
        self._stop_hooks: Dict[Callable[[], None], None] = {}
        self._ready: OneShotObserver = OneShotObserver()
        self._tick_loop = LoopingCall(self._on_tick)
        self._tick_loop.clock = reactor
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
    def rpc(self) -> RPC:
        """The request/response layer (:class:`~txhyperswarm.dht.rpc.RPC`)."""
        return self._rpc

    @property
    def walk_context(self) -> WalkContext:
        """What this node's walks use (:class:`~txhyperswarm.dht.query.WalkContext`)."""
        return self._walks

    @property
    def concurrency(self) -> int:
        """Requests a walk keeps in flight; with ``concurrency_rps``, the
        in-flight count that means "saturated" (dht-rpc ``concurrency``)."""
        return self._rpc.concurrency

    @concurrency.setter
    def concurrency(self, n: int) -> None:
        self._rpc.concurrency = n

    @property
    def concurrency_rps(self) -> int:
        """Requests per second that, with :attr:`concurrency`, mean "saturated"."""
        return self._rpc.concurrency_rps

    @concurrency_rps.setter
    def concurrency_rps(self, n: int) -> None:
        self._rpc.concurrency_rps = n

    @property
    def inflight_queries(self) -> int:
        """Walks running now."""
        return self._walks.inflight_queries

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
        for cmd, n in self._responder.received.items():
            out[(cmd.decode("utf-8", "replace"), "in")] += n
        for cmd, n in self._rpc.sent.items():
            out[(cmd.decode("utf-8", "replace"), "out")] += n
        return out

    def stats(self) -> dict:
        """
        The node's live figures (``IStatsSource``), a fresh dict:

        * ``id`` (hex ``str``), ``host`` and ``port`` of the UDP socket
          (``None`` before :meth:`startService`), ``ephemeral`` (``bool``);
        * ``routing_table_size`` (``int``);
        * ``rpc_requests``: ``Counter`` by ``(command, direction)``
          (:attr:`rpc_requests`);
        * ``dropped``: ``Counter`` of dropped datagrams and requests by
          reason (:attr:`dropped`);
        * ``routing_refused``: ``Counter`` of what the routing table's
          bounds refused by reason (``ping_budget``, ``newcomer``,
          ``unverified``; :attr:`RoutingTable.refused
          <txhyperswarm.dht.routing.RoutingTable.refused>`).
        """
        host = port = None
        if self._udp is not None and self._udp.listening:
            host, port = self._udp.address()
        return {
            "id": self._id.hex(),
            "host": host,
            "port": port,
            "ephemeral": self._ephemeral,
            "routing_table_size": len(self._table),
            "rpc_requests": self.rpc_requests,
            "dropped": Counter(self.dropped),
            "routing_refused": Counter(self._table.refused),
        }

    def limits(self) -> dict:
        """
        The node's limits against abuse in effect (the constructor's
        options of the same names; ``docs/reliability.rst``), a fresh dict:
        ``rate_limit_per_ip``, ``rate_limit_exempt``, ``max_pending_per_ip``,
        ``max_pending``, ``ping_rate``, ``ping_burst``,
        ``holepunch_relay_per_ip``, ``holepunch_relay_total``,
        ``overload_rate``, ``overload_limit_per_ip``.
        """
        responder = self._responder
        return {
            "rate_limit_per_ip": self._rpc.rate_limit_per_ip,
            "rate_limit_exempt": self._rpc.rate_limit_exempt,
            "max_pending_per_ip": responder.max_pending_per_ip,
            "max_pending": responder.max_pending,
            "ping_rate": self._table.ping_rate,
            "ping_burst": self._table.ping_burst,
            "holepunch_relay_per_ip": responder.holepunch_relay_per_ip,
            "holepunch_relay_total": responder.holepunch_relay_total,
            "overload_rate": self._rpc.overload_rate,
            "overload_limit_per_ip": self._rpc.overload_limit_per_ip,
        }

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

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """
        Call ``hook()`` once when the node stops (first thing in
        :meth:`stopService`), for what keeps timers on the node's clock
        beyond its own walks (a :class:`~txhyperswarm.dht.peers.DHTTopic`).
        Adding the same hook again has no effect.
        """
        self._stop_hooks[hook] = None

    def remove_stop_hook(self, hook: Callable[[], None]) -> None:
        """Forget a hook added with :meth:`add_stop_hook` (nothing if unknown)."""
        self._stop_hooks.pop(hook, None)

    def stopService(self) -> defer.Deferred:
        """
        Stop: run the stop hooks, cancel timers, fail in-flight requests
        (RequestCancelled) and walks (QueryError), close the socket if we
        made it.

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
            try:
                hook()
            except Exception:
                self.log.failure("a DHT node stop hook failed")
        self._rpc.destroy()
        self._walks.abort_all(QueryError("DHT node stopped"))
        if not self._ready.fired:
            ready, self._ready = self._ready, OneShotObserver()
            ready.fire(Failure(QueryError("DHT node stopped before bootstrapping")))
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
        :returns: a new Deferred firing with ``None`` once the first
            bootstrap walk has ended (also when it failed, as dht-rpc's
            ``ready``); errbacks with :class:`QueryError` if the node stops
            first.
        """
        return self._ready.when_fired()

    def _set_bootstrapped(self) -> None:
        if self.is_bootstrapped:
            return
        self.is_bootstrapped = True
        self.log.info("DHT node bootstrapped with {n} nodes in its table", n=len(self._table))
        self._ready.fire(None)

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

        walk = Walk(self._walks, FIND_NODE, self._id, None, query=True, background=True)
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
        if self._table.on_tick(self._walks.inflight_queries) == "bootstrap":
            self.bootstrap().addCallbacks(
                self._rebootstrapped,
                lambda f: self.log.debug("re-bootstrap failed: {err}", err=f.getErrorMessage()),
            )

    def _rebootstrapped(self, _) -> None:
        if self.bootstrap_nodes:
            self.log.info("DHT node re-bootstrapped with {n} nodes in its table", n=len(self._table))

    # -- IRPCController ---------------------------------------------------

    def request_received(self, msg: Message, host: str, port: int, is_update: bool) -> None:
        """A request came (``IRPCController``): note the sender, answer it."""
        if msg.HasField("id"):
            self._table.add_node(msg.id, host, port, None, msg.to if msg.HasField("to") else None, False)
        self._responder.request_received(msg, host, port, is_update)

    def response_received(self, msg: Message, host: str, port: int) -> None:
        """A response came (``IRPCController``): note the sender."""
        if msg.HasField("id"):
            self._table.add_node(
                msg.id,
                host,
                port,
                msg.roundtripToken if msg.HasField("roundtripToken") else None,
                msg.to if msg.HasField("to") else None,
            )

    def wrong_id(self, contact: Contact) -> None:
        """A contact answered with another id (``IRPCController``): forget it."""
        self._table.remove_node(contact)

    # -- commands ---------------------------------------------------------

    def add_command(self, name: str, query: Optional[Handler] = None, update: Optional[Handler] = None) -> None:
        """
        Register a command (dht-rpc ``command(name, {query, update})``).

        ``handler(request: Request)`` returns the response value (``bytes``,
        ``b""`` for present-but-empty), ``None`` (no value), or a Deferred of
        either. Raise (or errback with) :class:`CommandError` to answer with
        an error, :class:`IgnoreRequest` to send no reply. Without a
        ``query`` handler queries are answered with no value; without an
        ``update`` handler updates get the error "Update not supported".
        Requests without a target are never passed to handlers. Any other
        exception is logged and counted in ``dropped["handler_error"]`` (no
        reply).
        """
        self._commands.add(name, query, update)

    def remove_command(self, name: str) -> None:
        self._commands.remove(name)

    # -- routing table access --------------------------------------------

    def nodes(self) -> List[Tuple[bytes, str, int]]:
        """Routing-table nodes, oldest seen first, as ``(id, host, port)``."""
        return [(p.id, p.host, p.port) for p in self._table.nodes.values()]  # type: ignore[misc]  # table contacts have ids

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
        return [(p.id, p.host, p.port) for p in self._table.closest(norm_target(target), n)]  # type: ignore[misc]

    # -- our address ------------------------------------------------------

    def remote_address(self) -> Optional[Address]:
        """
        Our public address as the nodes we talk to see it (>= 3 of the last
        10 agree), or ``None`` (dht-rpc ``remoteAddress()``).
        """
        return nat.remote_address(self._table)

    def holepunchable(self) -> bool:
        """Whether :meth:`remote_address` is consistent in ip and port."""
        return nat.holepunchable(self._table)
