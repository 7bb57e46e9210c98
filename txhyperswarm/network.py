"""
The swarm's network: a TCP listener, uTP and the DHT on one port number,
as ``@hyperswarm/network`` 2.1.0 (swarm.md 3).

:class:`Network` binds a TCP listener and a
:class:`~txhyperswarm.udp.UDPSocket` on the same port number (3.2), runs a
:class:`~txhyperswarm.dht.node.DHTNode` and a
:class:`~txhyperswarm.utp.socket.UTPSocket` on that one UDP socket (3.6),
multicast DNS beside it, and a :class:`~txhyperswarm.discovery.Discovery`
over both for the topics joined (3.4, 3.5). It accepts TCP and uTP
connections and dials peers (3.3, :mod:`txhyperswarm.dial`); every
connection, in or out, is a :class:`~txhyperswarm.connection.Connection`
the swarm attaches its protocol to::

    net = Network(reactor, bootstrap=["127.0.0.1:49737"], on_connection=accepted)
    host, port = yield net.bind()
    topic = net.join(key, announce=True, lookup=True, on_peer=found, on_update=cycle)
    conn = yield net.connect(peer_record)     # a Connection, "tcp" or "utp"
    conn.attach(protocol)
    yield topic.stop()
    yield net.close()

Port candidates (3.2): ``port`` -> that port only; ``preferred_port`` P ->
P, P+1, P+2, then 4 random ports; else 7 random ports. Each candidate binds
TCP first, then UDP on the port TCP got; a UDP failure closes that TCP
listener and the next candidate is tried; after the last, :class:`BindError`
(the last error chained).

Ephemerality (3.7): ``ephemeral=None`` (the default) is adaptive: the DHT
node starts ephemeral and, 20-30 min after its first bootstrap, becomes
persistent if its external address is consistent
(:class:`AdaptiveEphemerality`); ``True`` stays ephemeral; ``False`` is
persistent from the start.

Close (3.8): inbound connections are refused and dials in progress fail
(:class:`NetworkClosed`) at once; mDNS stops (no goodbye); every topic
stops (DHT unannounces); then the DHT node stops; then every connection is
aborted and the TCP listener, the uTP socket and the UDP socket close.
"""

from __future__ import annotations

import random as _random
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm import netif
from txhyperswarm._observer import OneShotObserver
from txhyperswarm._reactor import default_reactor
from txhyperswarm.connection import BUFFER_PAUSE, Connection
from txhyperswarm.dht import peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.dial import CONNECTION_TIMEOUT, Dial, DialFailed, DialTimeout, FirewallRefused
from txhyperswarm.discovery import Discovery, DiscoveryTopic
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.mdns import MulticastDiscovery
from txhyperswarm.udp import UDPSocket
from txhyperswarm.mdns.service import MAX_ANSWERS_PER_SECOND
from txhyperswarm.utp.connection import SYN_RECV_TIMEOUT
from txhyperswarm.utp.socket import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_HALF_OPEN,
    MAX_HALF_OPEN_PER_ADDRESS,
    UTPSocket,
    default_monotonic,
)

__all__ = [
    "Network",
    "Connection",
    "AdaptiveEphemerality",
    "BindError",
    "NetworkClosed",
    "DialTimeout",
    "DialFailed",
    "FirewallRefused",
    "CONNECTION_TIMEOUT",
    "port_candidates",
    "local_address",
    "MAX_TCP_PER_ADDRESS",
]

log = Logger(namespace="txhyperswarm.network")

Address = Tuple[str, int]

#: Random tries after the preferred ones (and without a preferred port: 7).
RANDOM_TRIES = 4
#: Seconds closing waits for connections to end in order before aborting them.
CLOSE_GRACE = 2.0
ADAPTIVE_MIN = 20 * 60.0
ADAPTIVE_SPREAD = 10 * 60.0
#: A timer that fires later than this (a suspended host) is re-armed.
ADAPTIVE_LATE = 60.0
#: Default limit of inbound TCP connections from one IP address (as uTP's;
#: at least the daemon's default --max-peers: one peer may tunnel that many).
MAX_TCP_PER_ADDRESS = 256


class BindError(Exception):
    """No port candidate could be bound (the last error is the ``__cause__``)."""


class NetworkClosed(Exception):
    """The network is closed (``bind``, ``join`` or ``connect`` after ``close``)."""


def port_candidates(port: Optional[int], preferred_port: int = 0) -> List[int]:
    """
    The ports :meth:`Network.bind` tries, in order (0: a random one), as Node:
    ``[port]``; ``[P, P+1, P+2, 0, 0, 0, 0]``; ``[0] * 7``.
    """
    if port:
        return [int(port)]
    if preferred_port:
        p = int(preferred_port)
        return [p, p + 1, p + 2] + [0] * RANDOM_TRIES
    return [0] * (3 + RANDOM_TRIES)


def local_address(interfaces: Callable[[], List[Tuple[str, bool]]], port: int) -> Optional[Address]:
    """
    ``(first non-internal IPv4 address, port)`` from an interface listing
    (:func:`txhyperswarm.netif.interfaces`' shape), or ``None`` (swarm.md 3.5).
    """
    for address, internal in interfaces():
        if not internal and "." in address:
            return (address, port)
    return None


class AdaptiveEphemerality:
    """
    Turns an ephemeral DHT node persistent once it is holepunchable and
    long-lived (swarm.md 3.7, Node's discovery ``adaptive``).

    :meth:`start` (call it once the node's first bootstrap ended) waits
    ``round(20 min + random() * 10 min)``; then, if the node is
    :meth:`~txhyperswarm.dht.node.DHTNode.holepunchable`, it calls
    ``node.persistent()`` (a failure is logged as a warning and ends the
    tries), else it waits another 20-30 min. A timer that fires more than
    60 s late (the host slept) is armed again with the same duration.

    :param clock: ``IReactorTime``.
    :param node: has ``holepunchable()`` and ``persistent()`` -> Deferred.
    :param random: a ``random.Random``-like object.

    :ivar state: ``"idle"``, ``"waiting"``, ``"persisting"``,
        ``"persistent"``, ``"failed"`` or ``"stopped"``.
    """

    def __init__(self, clock, node, random=None) -> None:
        self.clock = clock
        self.node = node
        self.random = random if random is not None else _random.Random()
        self.state = "idle"
        self._call = None
        self._persisting: Optional[defer.Deferred] = None

    def start(self) -> None:
        """Start waiting (nothing if already started or stopped)."""
        if self.state == "idle":
            self._arm(round(ADAPTIVE_MIN + self.random.random() * ADAPTIVE_SPREAD))

    def stop(self) -> None:
        """Cancel the timer (and a re-bootstrap in progress)."""
        self.state = "stopped"
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        d, self._persisting = self._persisting, None
        if d is not None and not d.called:
            d.cancel()

    @property
    def pending(self) -> bool:
        """Whether a timer is armed."""
        return self._call is not None and self._call.active()

    def _arm(self, delay: float) -> None:
        self.state = "waiting"
        due = self.clock.seconds() + delay
        self._call = self.clock.callLater(delay, self._fired, delay, due)

    def _fired(self, delay: float, due: float) -> None:
        self._call = None
        if self.clock.seconds() - due > ADAPTIVE_LATE:
            self._arm(delay)
            return
        if not self.node.holepunchable():
            self.start_again()
            return
        self.state = "persisting"
        log.info("the DHT node is holepunchable: becoming persistent")
        self._persisting = d = self.node.persistent()
        d.addCallbacks(self._persisted, self._not_persisted)

    def start_again(self) -> None:
        """Wait another 20-30 min (not holepunchable yet)."""
        self._arm(round(ADAPTIVE_MIN + self.random.random() * ADAPTIVE_SPREAD))

    def _persisted(self, _) -> None:
        self._persisting = None
        self.state = "persistent"
        log.info("the DHT node is persistent")

    def _not_persisted(self, f: Failure) -> None:
        self._persisting = None
        if self.state == "stopped":
            return
        self.state = "failed"
        log.warn("the DHT node could not become persistent: {err}", err=f.getErrorMessage())


class _InboundFactory(Factory):
    """Accepts a TCP or uTP connection for the network (``None`` refuses it)."""

    noisy = False

    def __init__(self, build: Callable[[object], Optional[Connection]]) -> None:
        self.build = build

    def buildProtocol(self, addr):
        return self.build(addr)


@implementer(IStatsSource)
class Network:
    """
    TCP + uTP + DHT on one port, multicast DNS, and the dials of a swarm.

    :param reactor: ``IReactorTCP``, ``IReactorUDP``, ``IReactorMulticast``
        and ``IReactorTime``; ``None`` for the global reactor.
    :param bootstrap: DHT bootstrap nodes (``None``: the public list).
    :param ephemeral: ``None``: adaptive; ``True``/``False`` as DHTNode.
    :param id: the DHT node id (32 bytes).
    :param port: bind that port only (:class:`BindError` if it cannot).
    :param preferred_port: try it, the next two, then random ports.
    :param announce_port: the port announced (DHT and mDNS) instead of the
        bound one.
    :param announce_local_address: send our LAN address in DHT announces
        and lookups (3.5).
    :param host: the interface the sockets bind.
    :param multicast: run multicast DNS.
    :param firewall: ``firewall(host, port, client) -> bool``; true refuses
        the connection (inbound, before anyone sees it: TCP closed at
        accept, a uTP SYN dropped unanswered, as libutp) or the dial
        (:class:`FirewallRefused`).
    :param interfaces: ``() -> [(address, internal)]`` as
        :func:`txhyperswarm.netif.interfaces` (mDNS memberships and the
        local address); ``None``: the reactor's ``interfaces`` if it has
        one (:class:`txhyperswarm.testing.MemoryHostReactor`), else netif's.
    :param on_connection: ``on_connection(connection)`` for every accepted
        inbound :class:`Connection` (attach a protocol to it).
    :param monotonic: the clock for uTP (``None``: as UTPSocket).
    :param random: a ``random.Random``-like object (adaptive ephemerality,
        the mDNS query schedule).

    Limits against abuse (inbound; per remote IP address or in all; what
    they refuse is counted: ``stats()["refused"]`` for TCP, the uTP
    socket's and the mDNS service's ``stats()["dropped"]``):

    :param max_tcp_per_address: inbound TCP connections from one IP
        address beyond this are closed at accept, before anyone sees them
        (``refused["tcp_per_address"]``).
    :param max_utp_connections: as ``UTPSocket(max_connections=)``.
    :param max_utp_per_address: as ``UTPSocket(max_connections_per_address=)``.
    :param max_half_open: as ``UTPSocket(max_half_open=)``.
    :param max_half_open_per_address: as ``UTPSocket(max_half_open_per_address=)``.
    :param half_open_timeout: as ``UTPSocket(half_open_timeout=)``.
    :param connection_buffer: bytes a connection holds before the swarm
        attaches a protocol; beyond it its transport is paused
        (``Connection(buffer_pause=)``).
    :param mdns_answers_per_second: as
        ``MulticastDiscovery(max_answers_per_second=)``.
    :param dht_options: more keyword arguments for the
        :class:`~txhyperswarm.dht.node.DHTNode`, e.g. its limits
        (``rate_limit_per_ip``, ``max_pending_per_ip``, ...).

    :ivar dht: the :class:`~txhyperswarm.dht.node.DHTNode` (after bind).
    :ivar records: the :class:`~txhyperswarm.dht.records.RecordStore` of the
        peer records announced to it (after bind).
    :ivar utp: the :class:`~txhyperswarm.utp.socket.UTPSocket` (after bind).
    :ivar udp: the shared :class:`~txhyperswarm.udp.UDPSocket` (after bind).
    :ivar mdns: the :class:`~txhyperswarm.mdns.MulticastDiscovery`, or ``None``.
    :ivar discovery: the :class:`~txhyperswarm.discovery.Discovery` (after bind).
    :ivar adaptive: the :class:`AdaptiveEphemerality`, or ``None``.
    :ivar connections: the live :class:`Connection` s, in and out.
    """

    def __init__(
        self,
        reactor=None,
        *,
        bootstrap=None,
        ephemeral: Optional[bool] = None,
        id: Optional[bytes] = None,
        port: Optional[int] = None,
        preferred_port: int = 0,
        announce_port: Optional[int] = None,
        announce_local_address: bool = False,
        host: str = "0.0.0.0",
        multicast: bool = True,
        firewall: Optional[Callable[[str, int, bool], bool]] = None,
        interfaces: Optional[Callable[[], List[Tuple[str, bool]]]] = None,
        on_connection: Optional[Callable[[Connection], object]] = None,
        monotonic: Optional[Callable[[], float]] = None,
        random=None,
        max_tcp_per_address: int = MAX_TCP_PER_ADDRESS,
        max_utp_connections: int = MAX_CONNECTIONS,
        max_utp_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        max_half_open: int = MAX_HALF_OPEN,
        max_half_open_per_address: int = MAX_HALF_OPEN_PER_ADDRESS,
        half_open_timeout: float = SYN_RECV_TIMEOUT,
        mdns_answers_per_second: float = MAX_ANSWERS_PER_SECOND,
        connection_buffer: int = BUFFER_PAUSE,
        dht_options: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.reactor = default_reactor(reactor)
        self.bootstrap = bootstrap
        self.ephemeral = ephemeral
        self.id = id
        self.port = port
        self.preferred_port = preferred_port or 0
        self.announce_port = announce_port or 0
        self.announce_local_address = bool(announce_local_address)
        self.host = host
        self.multicast = bool(multicast)
        self.firewall = firewall
        if interfaces is None:
            interfaces = getattr(self.reactor, "interfaces", None) or netif.interfaces
        self.interfaces = interfaces
        self.on_connection = on_connection
        self.monotonic = monotonic or default_monotonic(self.reactor)
        self.random = random if random is not None else _random.Random()
        self.max_tcp_per_address = max_tcp_per_address
        self.utp_limits: Dict[str, Any] = dict(
            max_connections=max_utp_connections,
            max_connections_per_address=max_utp_per_address,
            max_half_open=max_half_open,
            max_half_open_per_address=max_half_open_per_address,
            half_open_timeout=half_open_timeout,
        )
        self.mdns_answers_per_second = mdns_answers_per_second
        self.connection_buffer = connection_buffer
        self.dht_options: Dict[str, Any] = dict(dht_options or {})
        self._tcp_inbound: Counter = Counter()
        #: ``None``, or ``make_room(type, host, port) -> bool``, asked when
        #: the ``firewall`` refused an inbound ``"tcp"`` or ``"utp"``
        #: connection: ``True`` admits it after all (the swarm closed a
        #: half-open connection to make room at its connection limit).
        self.make_room: Optional[Callable[[str, str, int], bool]] = None

        self.dht: Any = None  # a DHTNode once bound
        self.records: Any = None  # its RecordStore once bound
        self.utp: Any = None  # a UTPSocket once bound
        self.udp: Any = None  # a UDPSocket once bound
        self.mdns: Any = None  # a MulticastDiscovery once bound (multicast on)
        self.discovery: Any = None  # a Discovery once bound
        self.adaptive: Optional[AdaptiveEphemerality] = None
        self.connections: Dict[Connection, None] = {}
        self._tcp_port = None
        self._mdns_stopped: Optional[defer.Deferred] = None
        self._address: Optional[Address] = None
        self._opening: Optional[OneShotObserver] = None
        self._closing: Optional[OneShotObserver] = None
        self._dials: Dict[Dial, None] = {}
        self._refused: Counter = Counter()
        self._dialled: Counter = Counter()

    # -- state -----------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` succeeded (and :meth:`close` has not started)."""
        return self._address is not None and self._closing is None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing is not None

    @property
    def tcp_port(self):
        """The TCP listener (an ``IListeningPort``), or ``None`` before bind."""
        return self._tcp_port

    def address(self) -> Address:
        """The bound ``(host, port)`` (TCP and UDP share the port)."""
        if self._address is None:
            raise RuntimeError("the network is not bound")
        return self._address

    # -- bind --------------------------------------------------------------------

    def bind(self) -> defer.Deferred:
        """
        Bind TCP and UDP on one port, start the DHT node, uTP and mDNS
        (once; every caller gets the same outcome).

        :returns: a new Deferred firing with the bound ``(host, port)``;
            errbacks with :class:`BindError`, or :class:`NetworkClosed`
            after :meth:`close`.
        """
        if self._closing is not None:
            return defer.fail(NetworkClosed("Resource is closed"))
        if self._opening is None:
            self._opening = OneShotObserver()
            defer.ensureDeferred(self._bind()).addBoth(self._opening.fire)
        return self._opening.when_fired()

    async def _bind(self) -> Address:
        last: Optional[BaseException] = None
        for candidate in port_candidates(self.port, self.preferred_port):
            try:
                tcp = self.reactor.listenTCP(candidate, _InboundFactory(self._accept_tcp), interface=self.host)
            except error.CannotListenError as e:
                last = e
                log.debug("cannot listen on TCP {port}: {e}", port=candidate, e=e)
                continue
            number = tcp.getHost().port
            udp = UDPSocket(self.reactor, host=self.host, port=number)
            try:
                udp.listen()
            except error.CannotListenError as e:
                last = e
                log.debug("cannot bind UDP {port}: {e}", port=number, e=e)
                await defer.maybeDeferred(tcp.stopListening)
                continue
            self._tcp_port, self.udp = tcp, udp
            break
        else:
            failure = BindError(f"cannot bind TCP and UDP on one port: {last}")
            failure.__cause__ = last
            raise failure
        if self._closing is not None:  # close() came while a TCP listener closed
            await self._close_sockets()
            raise NetworkClosed("Resource is closed")
        self._start_services()
        self._address = (self.host, number)
        log.info("network bound on {host}:{port} (TCP, uTP, DHT)", host=self.host, port=number)
        return self._address

    def _start_services(self) -> None:
        self.utp = UTPSocket(
            self.reactor, self.udp, close_udp=False, monotonic=self.monotonic, **self.utp_limits
        )
        self.utp.listen(_InboundFactory(self._accept_utp))
        self.utp.firewall = self._utp_firewall
        self.dht = DHTNode(
            self.reactor, bootstrap=self.bootstrap, ephemeral=self.ephemeral is not False, udp=self.udp, id=self.id,
            **self.dht_options,
        )
        # every hyperswarm DHT node stores peer records
        self.records = peers.register(self.dht).store
        self.dht.startService()
        if self.ephemeral is None:
            self.adaptive = AdaptiveEphemerality(self.reactor, self.dht, self.random)
            self.dht.bootstrapped().addCallbacks(lambda _: self.adaptive.start(), lambda f: None)
        if self.multicast:
            mdns = MulticastDiscovery(
                self.reactor, interfaces=self.interfaces, random=self.random,
                max_answers_per_second=self.mdns_answers_per_second,
            )
            try:
                mdns.startService()
            except error.CannotListenError as e:
                log.warn("multicast DNS is off: cannot bind its socket: {e}", e=e)
            else:
                self.mdns = mdns
        self.discovery = Discovery(self.reactor, dht=self.dht, mdns=self.mdns)

    # -- inbound -----------------------------------------------------------------

    def _accept_tcp(self, addr) -> Optional[Connection]:
        host = addr.host
        if self._tcp_inbound[host] >= self.max_tcp_per_address:
            self._refused["tcp_per_address"] += 1
            return None  # closed at once, as a firewalled one
        conn = self._accept("tcp", addr)
        if conn is not None:
            self._tcp_inbound[host] += 1
            conn.when_closed().addCallback(self._tcp_closed, host)
        return conn

    def _tcp_closed(self, _, host: str) -> None:
        n = self._tcp_inbound[host] - 1
        if n > 0:
            self._tcp_inbound[host] = n
        else:
            self._tcp_inbound.pop(host, None)

    def _accept_utp(self, addr) -> Optional[Connection]:
        return self._connection("utp", False, (addr.host, addr.port), None, self._accepted)

    def _utp_firewall(self, host: str, port: int) -> bool:
        # uTP refuses as libutp's firewall callback: the SYN gets no answer
        return self._refuse("utp", host, port)

    def _accept(self, type: str, addr) -> Optional[Connection]:
        if self._refuse(type, addr.host, addr.port):
            return None  # TCP: accepted, then closed at once (Node: accept-then-close)
        return self._connection(type, False, (addr.host, addr.port), None, self._accepted)

    def _refuse(self, type: str, host: str, port: int) -> bool:
        if self._closing is not None:
            self._refused["closing"] += 1
            return True
        if self.firewall is not None and self.firewall(host, port, False):
            if self.make_room is not None and self.make_room(type, host, port):
                return False
            self._refused["firewall"] += 1
            return True
        return False

    def _accepted(self, conn: Connection) -> None:
        self._track(conn)
        if self.on_connection is not None:
            self.on_connection(conn)

    def _connection(self, type: str, client: bool, remote: Address, peer, on_made) -> Connection:
        return Connection(
            type, client, remote, peer, on_made=on_made, clock=self.reactor,
            monotonic=self.monotonic, buffer_pause=self.connection_buffer,
        )

    def _track(self, conn: Connection) -> None:
        self.connections[conn] = None
        conn.when_closed().addCallback(lambda _: self.connections.pop(conn, None))

    # -- topics ------------------------------------------------------------------

    def join(
        self,
        topic: bytes,
        *,
        announce: bool = False,
        lookup: bool = True,
        on_peer=None,
        on_update=None,
    ) -> DiscoveryTopic:
        """
        Join ``topic`` on the DHT and mDNS (swarm.md 3.4): announcing
        ``announce_port`` (DHT: 0 means our UDP source port; mDNS: the bound
        port), with our LAN address when ``announce_local_address`` (taken
        now, 3.5).

        :raises NetworkClosed: after :meth:`close`.
        :raises RuntimeError: before :meth:`bind` fired.
        """
        if self._closing is not None:
            raise NetworkClosed("Resource is closed")
        if self._address is None:
            raise RuntimeError("Bind before announcing" if announce else "Bind before doing a lookup")
        local = None
        if self.announce_local_address:
            local = local_address(self.interfaces, self._address[1])
        return self.discovery.join(
            topic,
            announce_port=self.announce_port if announce else None,
            local_address=local,
            lookup=lookup,
            on_peer=on_peer,
            on_update=on_update,
        )

    # -- dialling ----------------------------------------------------------------

    def connect(self, peer) -> defer.Deferred:
        """
        Dial ``peer`` (a :class:`~txhyperswarm.peer_record.PeerRecord`) as
        swarm.md 3.3: TCP at once and, with a referrer, holepunch then uTP.

        :returns: a Deferred firing with the outbound :class:`Connection`
            (``peer`` set); errbacks with :class:`FirewallRefused`,
            :class:`DialFailed`, :class:`DialTimeout` or
            :class:`NetworkClosed`. Cancelling it stops every attempt.
        """
        if self._closing is not None:
            return defer.fail(NetworkClosed("Resource is closed"))
        if self.firewall is not None and self.firewall(peer.host, peer.port, True):
            self._dialled["firewall"] += 1
            return defer.fail(FirewallRefused(f"the firewall refused {peer.host}:{peer.port}"))

        def connection(type, remote, on_made):
            return self._connection(type, True, remote, peer, on_made)

        dial = Dial(
            self.reactor, peer, connection=connection, opened=self.bind,
            holepunch=self._holepunch, utp_connect=self._utp_connect,
        )
        self._dials[dial] = None

        def settled(result):
            self._dials.pop(dial, None)
            self._dialled[dial.outcome] += 1
            if isinstance(result, Connection):
                self._track(result)
            return result

        return dial.start().addBoth(settled)

    def _holepunch(self, peer) -> defer.Deferred:
        return self.dht.holepunch(peer.host, peer.port, peer.referrer)

    def _utp_connect(self, host: str, port: int, factory) -> defer.Deferred:
        return self.utp.connect(host, port, factory)

    # -- close ---------------------------------------------------------------------

    def close(self) -> defer.Deferred:
        """
        Close in the order of swarm.md 3.8 (see the module docstring).
        Idempotent.

        :returns: a new Deferred firing with ``None`` once every socket is
            closed; it never errbacks.
        """
        if self._closing is None:
            self._closing = OneShotObserver()
            defer.ensureDeferred(self._close()).addBoth(self._closing.fire)
        return self._closing.when_fired()

    async def _close(self) -> None:
        for dial in list(self._dials):
            dial.abort(NetworkClosed("Resource is closed"))
        if self._opening is None:
            return
        try:
            await self._opening.when_fired()
        except Exception:
            return  # nothing was bound
        if self.adaptive is not None:
            self.adaptive.stop()
        self.utp.stop_listening()
        if self.mdns is not None:
            self._mdns_stopped = self.mdns.stopService()  # no goodbye: its socket closes now
        await self.discovery.close()  # DHT unannounces
        await self.dht.stopService()
        await self._close_sockets()
        log.info("network closed")

    async def _close_sockets(self) -> None:
        await self._end_connections()
        waits = []
        if self._tcp_port is not None:
            waits.append(defer.maybeDeferred(self._tcp_port.stopListening))
        if self.utp is not None:
            waits.append(self.utp.close())
        if self._mdns_stopped is not None:
            waits.append(self._mdns_stopped)
        await defer.DeferredList(waits, consumeErrors=True)
        if self.udp is not None:
            await self.udp.close()

    async def _end_connections(self) -> None:
        """
        End every connection in order, as Node's destroy does (a FIN, not a
        reset: the peer sees an orderly end); those still open after
        :data:`CLOSE_GRACE` seconds (a peer that does not answer) are aborted.
        """
        conns = list(self.connections)
        self.connections.clear()
        if not conns:
            return
        ended = defer.DeferredList([c.when_closed() for c in conns], consumeErrors=True)

        def overdue() -> None:
            left = [c for c in conns if not c.closed]
            log.info("{n} connection(s) did not end within {s} s of closing: aborted", n=len(left), s=CLOSE_GRACE)
            for conn in left:
                conn.abort()

        timer = self.reactor.callLater(CLOSE_GRACE, overdue)
        for conn in conns:
            conn.close()
        try:
            await ended  # when_closed never errbacks; abort() ends the overdue ones
        finally:
            if timer.active():
                timer.cancel()

    # -- stats -----------------------------------------------------------------------

    def stats(self) -> dict:
        """
        Live figures (:class:`~txhyperswarm.interfaces.IStatsSource`):
        ``host``/``port`` (``None`` before bind), ``connections`` by type
        (``Counter`` of ``"tcp"``/``"utp"``) and by direction
        (``inbound``, ``outbound``), ``dials`` in progress, ``dialled``
        (``Counter`` of outcomes: ``tcp``, ``utp``, ``failed``,
        ``timeout``, ``cancelled``, ``aborted``, ``firewall``) and
        ``refused`` inbound connections by reason (``firewall``,
        ``closing``, ``tcp_per_address``).
        """
        host, port = self._address if self._address is not None else (None, None)
        by_type = Counter(c.type for c in self.connections)
        return {
            "host": host,
            "port": port,
            "connections": by_type,
            "inbound": sum(1 for c in self.connections if not c.client),
            "outbound": sum(1 for c in self.connections if c.client),
            "dials": len(self._dials),
            "dialled": Counter(self._dialled),
            "refused": Counter(self._refused),
        }
