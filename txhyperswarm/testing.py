"""
Test doubles for code built on txhyperswarm, as ``treq.testing`` is for treq.

:class:`UDPNetwork` is an in-memory UDP network on one
:class:`~twisted.internet.task.Clock`. Each simulated host gets a reactor of
its own (:meth:`UDPNetwork.reactor`) that provides ``IReactorTime`` (the
network's clock) and ``IReactorUDP``, so the library's real classes run on
it unchanged: :class:`~txhyperswarm.udp.UDPSocket`,
:class:`~txhyperswarm.dht.node.DHTNode`, the uTP socket and whatever is
built on them. Datagrams take ``latency`` seconds of clock time; knobs make
the network lose, duplicate and reorder them, from a seeded random source,
so a lossy run is the same run every time::

    from txhyperswarm.testing import UDPNetwork
    from txhyperswarm.dht.node import DHTNode

    net = UDPNetwork(latency=0.005, loss=0.05, seed=1)
    boot = DHTNode(net.reactor("127.0.0.1"), bootstrap=[], port=49737)
    peer = DHTNode(net.reactor("127.0.0.2"), bootstrap=[("127.0.0.1", 49737)])
    boot.startService(); peer.startService()
    net.run(5)                      # five seconds of simulated time
    assert peer.routing_table_size == 1

The same host reactors provide ``IReactorTCP`` (in-memory TCP connections
with flow control, half-close and keepalive) and ``IReactorMulticast``
(group datagrams), so endpoints and multicast code run on them too.

Nothing here opens a socket or touches the global reactor.
"""

from __future__ import annotations

import errno
import functools
import heapq
import ipaddress
import math
import random as _random
import socket
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress
from twisted.internet.address import IPv4Address
from twisted.internet.base import BaseConnector, DelayedCall
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    ILoggingContext,
    IMulticastTransport,
    IPushProducer,
    IReactorMulticast,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    ISystemHandle,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["UDPNetwork", "MemoryHostReactor", "Datagram", "HeapClock"]

Address = Tuple[str, int]
#: ``(time, source, destination, payload)`` of one datagram sent.
Datagram = Tuple[float, Address, Address, bytes]

#: The largest UDP payload over IPv4 (what the kernel takes in one datagram).
MAX_DATAGRAM = 65507
_EPHEMERAL_FIRST = 32768


class HeapClock(Clock):
    """
    A :class:`~twisted.internet.task.Clock` for simulations with many
    timers (thousands of DHT nodes, each with its ticks and request
    timeouts): its pending calls are kept in a heap, so ``callLater``,
    ``cancel`` and each call run by :meth:`advance` cost O(log n) instead of
    the plain ``Clock``'s sort of every pending call (O(n) each).

    It behaves as ``Clock``: calls due at the same time run in the order
    they were scheduled; ``reset`` and ``delay`` of a pending call are
    honoured; :meth:`advance` runs what is due, including calls scheduled
    meanwhile for no later than the new time. Cancelled calls leave the
    heap lazily (when their time comes), and :meth:`getDelayedCalls` builds
    its list (sorted by time) on each call, so prefer :meth:`next_time` in a
    loop. Use it as ``UDPNetwork(HeapClock())``.
    """

    def __init__(self) -> None:  # no super().__init__: ``calls`` is a property here
        self._heap: List[Tuple[float, int, DelayedCall]] = []
        self._seq = 0

    @property
    def calls(self) -> List[DelayedCall]:  # type: ignore[override]
        """The pending calls, sorted by time (a fresh list)."""
        seen: Set[int] = set()
        out = []
        for when, _, dc in sorted(self._heap, key=lambda e: (e[0], e[1])):
            if dc.cancelled or dc.called or when != dc.time or id(dc) in seen:
                continue
            seen.add(id(dc))
            out.append(dc)
        out.sort(key=lambda dc: dc.getTime())
        return out

    def getDelayedCalls(self) -> List[DelayedCall]:  # type: ignore[override]
        return self.calls

    def _push(self, dc: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (dc.time, self._seq, dc))

    def _cancelled(self, dc: DelayedCall) -> None:
        """A call was cancelled: it stays in the heap until its time."""

    def callLater(self, delay, callable, *args, **kw) -> DelayedCall:  # type: ignore[override]
        dc = DelayedCall(self.rightNow + delay, callable, args, kw, self._cancelled, self._push, self.seconds)
        self._push(dc)
        return dc

    def next_time(self) -> Optional[float]:
        """The time of the next pending call, ``None`` when there is none."""
        heap = self._heap
        while heap:
            when, _, dc = heap[0]
            if dc.cancelled or dc.called or when != dc.time:
                heapq.heappop(heap)  # stale: cancelled, run, or rescheduled earlier
                continue
            if dc.delayed_time:
                heapq.heappop(heap)
                dc.activate_delay()
                self._push(dc)
                continue
            return when
        return None

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= self.rightNow:
            when, _, dc = pop(heap)
            if dc.cancelled or dc.called or when != dc.time:
                continue
            if dc.delayed_time:
                dc.activate_delay()  # delay()ed or reset() later: run at its new time
                self._push(dc)
                continue
            dc.called = 1
            dc.func(*dc.args, **dc.kw)


class UDPNetwork:
    """
    An in-memory UDP network on a :class:`~twisted.internet.task.Clock`.

    :param clock: the clock every host shares (a new one by default).
    :param latency: one-way delay of every datagram, in seconds.
    :param loss: probability that a datagram is lost.
    :param duplicate: probability that a datagram arrives twice (the copy
        ``latency`` later again).
    :param reorder: probability that a datagram is held back by an extra
        ``reorder_delay`` seconds, so later ones overtake it.
    :param reorder_delay: the extra delay of a reordered datagram
        (default: 3 × ``latency``).
    :param seed: seeds the random source of the knobs.
    :param record: keep every datagram sent in :attr:`log`.
    :param tcp_window: how many bytes a TCP connection keeps in flight
        unacknowledged (sent, not yet handed to the receiving protocol)
        before writes wait in its send buffer.
    :param tcp_keepalive: ``(idle, interval, count)`` of TCP keepalive, in
        seconds and probes (Linux's defaults); a connection overrides them
        with ``getHandle().setsockopt``.

    :ivar drop: ``None`` or a callable ``(data, src, dst) -> bool``; a
        datagram for which it returns true is lost (on top of ``loss``).
    :ivar down: addresses ``(host, port)`` (or hosts, as ``(host, None)``)
        that swallow whatever datagram is sent to them, answer no TCP
        connection request, and take TCP segments only once they are up
        again (retransmitted).
    :ivar counts: a :class:`~collections.Counter` of ``sent``,
        ``delivered``, ``lost``, ``duplicated``, ``reordered`` and
        ``unreachable`` (no socket bound at the destination) datagrams,
        ``multicast`` (datagrams sent to a group; each copy is counted as
        delivered, lost, ... on its own), and for TCP ``tcp_connected``,
        ``tcp_refused``, ``tcp_bytes`` and ``tcp_keepalive_timeouts``.
    """

    def __init__(
        self,
        clock: Optional[Clock] = None,
        *,
        latency: float = 0.001,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_delay: Optional[float] = None,
        seed: Optional[int] = 0,
        record: bool = False,
        tcp_window: int = 256 * 1024,
        tcp_keepalive: Tuple[float, float, int] = (7200.0, 75.0, 9),
    ) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability: {p!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0: {latency!r}")
        if tcp_window < 1:
            raise ValueError(f"tcp_window must be >= 1: {tcp_window!r}")
        self.clock = clock if clock is not None else Clock()
        self.latency = latency
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.reorder_delay = 3 * latency if reorder_delay is None else reorder_delay
        self.random = _random.Random(seed)
        self.record = record
        self.log: List[Datagram] = []
        self.drop: Optional[Callable[[bytes, Address, Address], bool]] = None
        self.down: Set[Tuple[str, Optional[int]]] = set()
        self.counts: Counter = Counter()
        self._hosts: Dict[str, "MemoryHostReactor"] = {}
        self._ports: Dict[Address, List["_MemoryUDPPort"]] = {}
        self._names: Dict[str, str] = {}
        self._next_host = 1
        self.tcp_window = tcp_window
        self.tcp_keepalive = tcp_keepalive
        self._tcp_listeners: Dict[Address, "_MemoryTCPPort"] = {}
        self._tcp_used: Dict[Address, "_MemoryTCPTransport"] = {}
        self._tcp_open: Dict["_MemoryTCPTransport", None] = {}
        self._tcp_next_port = _EPHEMERAL_FIRST

    # -- hosts ----------------------------------------------------------------

    def reactor(self, host: Optional[str] = None) -> "MemoryHostReactor":
        """
        The reactor of the host with IPv4 address ``host`` (made on first
        use); ``None`` picks the next free ``127.0.0.N``.
        """
        if host is None:
            while f"127.0.0.{self._next_host}" in self._hosts:
                self._next_host += 1
            host = f"127.0.0.{self._next_host}"
        if not isIPAddress(host):
            raise ValueError(f"a host is an IPv4 address: {host!r}")
        if host not in self._hosts:
            self._hosts[host] = MemoryHostReactor(self, host)
        return self._hosts[host]

    def add_name(self, name: str, host: str) -> None:
        """Make ``reactor.resolve(name)`` answer ``host`` on every host."""
        self._names[name] = host

    def udp_socket(self, host: Optional[str] = None, port: int = 0, **kwargs):
        """A :class:`~txhyperswarm.udp.UDPSocket` on ``host``'s reactor, not yet bound."""
        from txhyperswarm.udp import UDPSocket

        r = self.reactor(host)
        return UDPSocket(r, host=r.host, port=port, **kwargs)

    def bound(self) -> List[Address]:
        """Every ``(host, port)`` with a UDP socket bound now."""
        return sorted(self._ports)

    def listening(self) -> List[Address]:
        """Every ``(host, port)`` with a TCP port listening now."""
        return sorted(self._tcp_listeners)

    def tcp_connections(self) -> List[Tuple[Address, Address]]:
        """``(local, remote)`` of every TCP connection end open now (each connection twice)."""
        return [(t.local, t.remote) for t in self._tcp_open]

    # -- time -------------------------------------------------------------------

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance the clock by ``seconds`` in steps of ``step``."""
        steps = max(1, int(round(seconds / step)))
        for _ in range(steps):
            self.clock.advance(step)

    def run_until(self, predicate: Callable[[], bool], limit: float, step: float = 0.01) -> bool:
        """
        Advance the clock in steps of ``step`` until ``predicate()`` holds,
        or at most ``limit`` seconds; returns the predicate's last value.
        """
        for _ in range(max(1, int(round(limit / step)))):
            if predicate():
                return True
            self.clock.advance(step)
        return bool(predicate())

    def run_events(self, seconds: float) -> None:
        """
        Advance the clock by ``seconds``, stopping exactly at each scheduled
        call (no rounding of timers to a step).
        """
        end = self.clock.seconds() + seconds
        next_time = getattr(self.clock, "next_time", None)  # a HeapClock's: no list of calls
        for _ in range(10_000_000):
            if next_time is not None:
                nxt = next_time()
                nxt = end if nxt is None else nxt
            else:
                calls: Any = self.clock.getDelayedCalls()
                nxt = min((c.getTime() for c in calls), default=end)
            if nxt >= end:
                break
            self._advance_to(nxt)
        self._advance_to(end)

    def _advance_to(self, when: float) -> None:
        # now + (when - now) can fall short of when by a rounding error:
        # step up to the next float until it does not.
        now = self.clock.seconds()
        amount = max(0.0, when - now)
        while now + amount < when:
            amount = math.nextafter(amount, math.inf)
        self.clock.advance(amount)

    # -- datagrams ----------------------------------------------------------------

    def sent(self, src: Optional[Address] = None, dst: Optional[Address] = None) -> List[Datagram]:
        """The datagrams in :attr:`log` (``record=True``), filtered by ends."""
        return [d for d in self.log if (src is None or d[1] == src) and (dst is None or d[2] == dst)]

    # -- what the host reactors call ---------------------------------------------

    def lookup_name(self, name: str) -> Optional[str]:
        """The host added for ``name`` by :meth:`add_name`, or ``None``."""
        return self._names.get(name)

    def bind(self, port: "_MemoryUDPPort", host: str, number: int, shared: bool = False) -> int:
        """
        Bind ``port`` at ``(host, number)`` (0: a free one); returns the
        number. ``shared`` ports (``listenMultiple``, ``SO_REUSEADDR``) may
        share an address with other shared ports.
        """
        if number == 0:
            number = _EPHEMERAL_FIRST
            while (host, number) in self._ports:
                number += 1
                if number > 65535:
                    raise error.CannotListenError(host, 0, socket.error(errno.EADDRINUSE, "no free port"))
        else:
            holders = self._ports.get((host, number), [])
            if holders and not (shared and all(h.shared for h in holders)):
                raise error.CannotListenError(host, number, socket.error(errno.EADDRINUSE, "Address already in use"))
        self._ports.setdefault((host, number), []).append(port)
        return number

    def unbind(self, addr: Address, port: Optional["_MemoryUDPPort"] = None) -> None:
        """Free ``addr`` (only ``port``'s share of it, if given)."""
        holders = self._ports.get(addr, [])
        if port is None:
            holders = []
        else:
            holders = [h for h in holders if h is not port]
        if holders:
            self._ports[addr] = holders
        else:
            self._ports.pop(addr, None)

    def tcp_listen(self, port: "_MemoryTCPPort", host: str, number: int) -> int:
        """Listen with ``port`` at ``(host, number)`` (0: a free one); returns the number."""
        if number == 0:
            number = _EPHEMERAL_FIRST
            while (host, number) in self._tcp_listeners or (host, number) in self._tcp_used:
                number += 1
                if number > 65535:
                    raise error.CannotListenError(host, 0, socket.error(errno.EADDRINUSE, "no free port"))
        elif (host, number) in self._tcp_listeners:
            raise error.CannotListenError(host, number, socket.error(errno.EADDRINUSE, "Address already in use"))
        self._tcp_listeners[(host, number)] = port
        return number

    def tcp_unlisten(self, addr: Address) -> None:
        """Stop listening at ``addr``."""
        self._tcp_listeners.pop(addr, None)

    def tcp_claim(self, host: str, number: int, transport: "_MemoryTCPTransport") -> int:
        """The local port of a connecting ``transport`` (0: an ephemeral one)."""
        if number == 0:
            for _ in range(65536 - _EPHEMERAL_FIRST):
                number = self._tcp_next_port
                self._tcp_next_port = _EPHEMERAL_FIRST + (number + 1 - _EPHEMERAL_FIRST) % (65536 - _EPHEMERAL_FIRST)
                if (host, number) not in self._tcp_used and (host, number) not in self._tcp_listeners:
                    break
            else:
                raise error.ConnectBindError(errno.EADDRNOTAVAIL, "no free ephemeral port")
        elif (host, number) in self._tcp_used or (host, number) in self._tcp_listeners:
            raise error.ConnectBindError(errno.EADDRINUSE, "Address already in use")
        self._tcp_used[(host, number)] = transport
        return number

    def tcp_release(self, addr: Address, transport: "_MemoryTCPTransport") -> None:
        """``transport`` ended: free its local port (if it claimed one), forget it."""
        if self._tcp_used.get(addr) is transport:
            del self._tcp_used[addr]
        self._tcp_open.pop(transport, None)

    def tcp_opened(self, transport: "_MemoryTCPTransport") -> None:
        """``transport`` is established."""
        self._tcp_open[transport] = None
        if transport.client:
            self.counts["tcp_connected"] += 1

    def tcp_syn(self, client: "_MemoryTCPTransport") -> None:
        """A connection request from ``client`` reaches its destination."""
        if client.disconnected:
            return  # the client gave up before: its SYN is void
        dst = client.remote
        if self.is_down(dst) or dst[0] not in self._hosts:
            return  # no answer: the client times out
        listener = self._tcp_listeners.get(dst)
        if listener is None:
            client.wire.push("refused", None)
            return
        listener.accept(client)

    def is_down(self, addr: Address) -> bool:
        """Whether ``addr`` (or its whole host) is in :attr:`down`."""
        return addr in self.down or (addr[0], None) in self.down

    def transmit(self, data: bytes, src: Address, dst: Address, *, loopback: bool = True, ttl: int = 1) -> None:
        """
        Carry one datagram from ``src`` to ``dst``, through the knobs. A
        datagram to a multicast group goes, as one copy per host, to every
        host with a port bound at ``dst``'s port that joined the group: the
        sender's host only with ``loopback``, no other host with ``ttl`` 0.
        """
        now = self.clock.seconds()
        self.counts["sent"] += 1
        if self.record:
            self.log.append((now, src, dst, data))
        if _is_multicast(dst[0]):
            self.counts["multicast"] += 1
            hosts = sorted({a[0] for a, ports in self._ports.items() if a[1] == dst[1] and any(p.member(dst[0]) for p in ports)})
            for host in hosts:
                if host == src[0] and not loopback:
                    continue
                if host != src[0] and ttl < 1:
                    continue
                self._carry(data, src, dst, (host, dst[1]))
            return
        self._carry(data, src, dst, dst)

    def _carry(self, data: bytes, src: Address, dst: Address, to: Address) -> None:
        rnd = self.random
        if (self.loss and rnd.random() < self.loss) or (self.drop is not None and self.drop(data, src, dst)):
            self.counts["lost"] += 1
            return
        delay = self.latency
        if self.reorder and rnd.random() < self.reorder:
            self.counts["reordered"] += 1
            delay += self.reorder_delay
        self.clock.callLater(delay, self._arrive, data, src, dst, to)
        if self.duplicate and rnd.random() < self.duplicate:
            self.counts["duplicated"] += 1
            self.clock.callLater(delay + self.latency, self._arrive, data, src, dst, to)

    def _arrive(self, data: bytes, src: Address, dst: Address, to: Address) -> None:
        if self.is_down(to):
            self.counts["lost"] += 1
            return
        holders = self._ports.get(to, [])
        if dst != to:
            # A multicast copy: every port there that joined the group.
            holders = [p for p in holders if p.member(dst[0])]
        elif holders:
            holders = holders[-1:]  # unicast to a shared address: the last bound, as Linux
        if not holders:
            self.counts["unreachable"] += 1
            return
        for port in holders:
            self.counts["delivered"] += 1
            port.deliver(data, src)


@implementer(IHostResolution)
class _Resolution:
    """One name resolution (already complete: cancelling does nothing)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _MemoryNameResolver:
    """``reactor.nameResolver``: what ``resolve()`` answers, for ``HostnameEndpoint``."""

    def __init__(self, reactor: "MemoryHostReactor") -> None:
        self._reactor = reactor

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        host = hostName if isIPAddress(hostName) else self._reactor.network.lookup_name(hostName)
        if host is not None and (addressTypes is None or IPv4Address in addressTypes):
            resolutionReceiver.addressResolved(IPv4Address(transportSemantics, host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver


@implementer(IReactorTime, IReactorUDP, IReactorMulticast, IReactorTCP, IReactorPluggableNameResolver)
class MemoryHostReactor:
    """
    One simulated host's reactor on a :class:`UDPNetwork`: the network's
    clock for time, and UDP ports, multicast ports, TCP listeners and TCP
    connections on this host's address.

    :ivar host: this host's IPv4 address.
    """

    def __init__(self, network: UDPNetwork, host: str) -> None:
        self.network = network
        self.host = host
        self.nameResolver = _MemoryNameResolver(self)

    def installNameResolver(self, resolver):
        """Replace :attr:`nameResolver`; returns the old one."""
        old, self.nameResolver = self.nameResolver, resolver
        return old

    # IReactorTime
    def seconds(self) -> float:
        return self.network.clock.seconds()

    def callLater(self, delay, f, *args, **kwargs):
        return self.network.clock.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self):
        return self.network.clock.getDelayedCalls()

    def callWhenRunning(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def resolve(self, name: str, timeout: Iterable[int] = (1, 3, 11, 45)) -> defer.Deferred:
        """Addresses resolve to themselves, names added by :meth:`UDPNetwork.add_name` to theirs."""
        if isIPAddress(name):
            return defer.succeed(name)
        host = self.network.lookup_name(name)
        if host is None:
            return defer.fail(error.DNSLookupError(name))
        return defer.succeed(host)

    # IReactorUDP
    def listenUDP(self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192) -> "_MemoryUDPPort":
        self._check_interface(interface, port)
        p = _MemoryUDPPort(self, protocol, port, maxPacketSize)
        p.startListening()
        return p

    def _check_interface(self, interface: str, port: int) -> None:
        if interface not in ("", "0.0.0.0", "::", self.host):
            raise error.CannotListenError(
                interface, port, socket.error(errno.EADDRNOTAVAIL, f"{interface} is not an address of {self.host}")
            )

    # IReactorMulticast
    def listenMulticast(
        self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192, listenMultiple: bool = False
    ) -> "_MemoryMulticastPort":
        """
        A UDP port that can join multicast groups; with ``listenMultiple``
        several such ports share one address (each gets every group datagram,
        a unicast one goes to the last bound).
        """
        self._check_interface(interface, port)
        p = _MemoryMulticastPort(self, protocol, port, maxPacketSize, bool(listenMultiple))
        p.startListening()
        return p

    # IReactorTCP
    def listenTCP(self, port: int, factory, backlog: int = 50, interface: str = "") -> "_MemoryTCPPort":
        self._check_interface(interface, port)
        p = _MemoryTCPPort(self, port, factory, backlog)
        p.startListening()
        return p

    def connectTCP(self, host: str, port: int, factory, timeout: float = 30, bindAddress=None) -> "_MemoryConnector":
        """
        Connect to ``(host, port)``: connected after a round trip; refused
        (``ConnectionRefusedError``) if nothing listens there; timed out if
        the host is :attr:`UDPNetwork.down` or not on the network.
        """
        c = _MemoryConnector(self, host, port, factory, timeout, bindAddress)
        c.connect()
        return c

    def interfaces(self) -> List[Tuple[str, bool]]:
        """
        ``(first IPv4 address, internal)`` of each network interface of this
        host: its one address, not internal (the shape of
        :mod:`txhyperswarm.mdns`'s interface listing).
        """
        return [(self.host, False)]

    def __repr__(self) -> str:
        return f"<MemoryHostReactor {self.host}>"


@implementer(IListeningPort, IUDPTransport)
class _MemoryUDPPort:
    """A bound UDP port on a :class:`MemoryHostReactor`; the protocol's transport."""

    log = Logger()
    #: Whether other ``shared`` ports may bind the same address.
    shared = False

    def __init__(self, reactor: MemoryHostReactor, protocol, port: int, max_size: int) -> None:
        self._reactor = reactor
        self._network = reactor.network
        self.protocol = protocol
        self._want = port
        self._max_size = max_size
        self._addr: Optional[Address] = None
        self.connected = False

    def startListening(self) -> None:
        number = self._network.bind(self, self._reactor.host, self._want, shared=self.shared)
        self._addr = (self._reactor.host, number)
        self.protocol.makeConnection(self)

    def stopListening(self) -> defer.Deferred:
        if self._addr is not None:
            self._network.unbind(self._addr, self)
            self._addr = None
            self._stopped()
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def _stopped(self) -> None:
        """Hook: the port was just unbound."""

    def getHost(self) -> IPv4Address:
        if self._addr is None:
            raise error.NotListeningError()
        return IPv4Address("UDP", *self._addr)

    def write(self, data: bytes, addr: Optional[Address] = None) -> None:
        if self._addr is None:
            raise error.NotListeningError()
        if addr is None or not isIPAddress(addr[0]):
            raise error.InvalidAddressError(addr, "a UDP destination is an IPv4 (host, port)")
        if len(data) > MAX_DATAGRAM:
            raise error.MessageLengthError("message too long")
        self._network.transmit(
            bytes(data), self._addr, (addr[0], int(addr[1])), loopback=self.getLoopbackMode(), ttl=self.getTTL()
        )

    def writeSequence(self, seq, addr) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP sockets are not simulated")

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    # What a datagram to a group needs to know (Linux's defaults for a
    # socket that never set them).
    def getLoopbackMode(self) -> bool:
        return True

    def getTTL(self) -> int:
        return 1

    def member(self, group: str) -> bool:
        """Whether this port joined ``group`` (a plain UDP port cannot)."""
        return False

    def deliver(self, data: bytes, src: Address) -> None:
        if len(data) > self._max_size:
            data = data[: self._max_size]
        try:
            self.protocol.datagramReceived(data, src)
        except Exception:
            # As a real reactor does: the error is logged, the port lives on.
            self.log.failure("{protocol!r} failed on a datagram from {src}", protocol=self.protocol, src=src)


@functools.lru_cache(maxsize=65536)
def _is_multicast(host: str) -> bool:
    """Whether ``host`` is an IPv4 multicast (class D, 224.0.0.0/4) address."""
    try:
        return ipaddress.IPv4Address(host).is_multicast
    except ValueError:
        return False


@implementer(IMulticastTransport)
class _MemoryMulticastPort(_MemoryUDPPort):
    """
    A UDP port from ``listenMulticast``: group memberships, loopback mode
    (on by default, as Linux), TTL (1 by default) and outgoing interface.
    """

    def __init__(self, reactor: MemoryHostReactor, protocol, port: int, max_size: int, shared: bool) -> None:
        super().__init__(reactor, protocol, port, max_size)
        self.shared = shared
        self._groups: Set[str] = set()
        self._loopback = True
        self._ttl = 1
        self._outgoing = "0.0.0.0"

    def _stopped(self) -> None:
        self._groups.clear()  # memberships go with the socket

    def member(self, group: str) -> bool:
        return group in self._groups

    def getLoopbackMode(self) -> bool:
        return self._loopback

    def setLoopbackMode(self, mode) -> None:
        self._loopback = bool(mode)

    def getTTL(self) -> int:
        return self._ttl

    def setTTL(self, ttl: int) -> None:
        if not 0 <= int(ttl) <= 255:
            raise ValueError(f"a multicast TTL is 0..255: {ttl!r}")
        self._ttl = int(ttl)

    def getOutgoingInterface(self) -> str:
        return self._outgoing

    def setOutgoingInterface(self, addr: str) -> defer.Deferred:
        """Fires with 1, as Twisted's; fails unless ``addr`` is this host's (or ``0.0.0.0``)."""

        def chosen(address: str) -> int:
            if address not in ("0.0.0.0", self._reactor.host):
                raise OSError(errno.EADDRNOTAVAIL, f"{address} is not an address of {self._reactor.host}")
            self._outgoing = address
            return 1

        return self._reactor.resolve(addr).addCallback(chosen)

    def joinGroup(self, addr: str, interface: str = "") -> defer.Deferred:
        return self._join_leave(addr, interface, True)

    def leaveGroup(self, addr: str, interface: str = "") -> defer.Deferred:
        return self._join_leave(addr, interface, False)

    def _join_leave(self, addr: str, interface: str, join: bool) -> defer.Deferred:
        interface = interface or "0.0.0.0"

        def change(group: str) -> None:
            if not _is_multicast(group):
                raise error.MulticastJoinError(addr, interface, errno.EINVAL, "not a multicast address")
            if interface not in ("0.0.0.0", self._reactor.host):
                raise error.MulticastJoinError(addr, interface, errno.ENODEV, "No such device")
            if self._addr is None:
                raise error.MulticastJoinError(addr, interface, errno.EBADF, "Bad file descriptor")
            if join:
                if group in self._groups:
                    raise error.MulticastJoinError(addr, interface, errno.EADDRINUSE, "Address already in use")
                self._groups.add(group)
            else:
                if group not in self._groups:
                    raise error.MulticastJoinError(addr, interface, errno.EADDRNOTAVAIL, "Cannot assign requested address")
                self._groups.discard(group)

        return self._reactor.resolve(addr).addCallback(change)


# -- TCP ------------------------------------------------------------------------

#: What one ``dataReceived`` gets at most (Twisted reads 64 KiB a time).
_READ_SIZE = 65536
#: Twisted's ``FileDescriptor.bufferSize``: a streaming producer is paused
#: when more than this waits in the transport's send buffer.
_SEND_BUFFER = 65536


@implementer(IListeningPort)
class _MemoryTCPPort:
    """A listening TCP port on a :class:`MemoryHostReactor`."""

    log = Logger()

    def __init__(self, reactor: MemoryHostReactor, port: int, factory, backlog: int) -> None:
        self._reactor = reactor
        self._network = reactor.network
        self.factory = factory
        self.backlog = backlog
        self._want = port
        self._addr: Optional[Address] = None

    def startListening(self) -> None:
        number = self._network.tcp_listen(self, self._reactor.host, self._want)
        self._addr = (self._reactor.host, number)
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred:
        if self._addr is not None:
            self._network.tcp_unlisten(self._addr)
            self._addr = None
            self.factory.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def getHost(self) -> IPv4Address:
        if self._addr is None:
            raise error.NotListeningError()
        return IPv4Address("TCP", *self._addr)

    def accept(self, client: "_MemoryTCPTransport") -> None:
        """A SYN from ``client`` arrived: build the protocol and answer."""
        server = _MemoryTCPTransport(self._reactor, self._addr, client.local)  # type: ignore[arg-type]  # listening
        try:
            protocol = self.factory.buildProtocol(server.getPeer())
        except Exception:
            self.log.failure("{factory!r} failed in buildProtocol", factory=self.factory)
            protocol = None
        if protocol is None:
            # Twisted closes the accepted socket at once: the client sees
            # its connection made, then ended.
            client.wire.push("synack", server)
            server.attach(client)
            server.start(Protocol())
            server.loseConnection()
            return
        client.wire.push("synack", server)
        server.attach(client)
        server.start(protocol)

    def __repr__(self) -> str:
        return f"<MemoryTCPPort {self._addr}>"


class _Wire:
    """
    One direction of a connection as seen by its receiving end: segments
    in flight, in order, each arriving ``latency`` after it was sent (never
    earlier than the one before it). A segment for an address that is
    :attr:`UDPNetwork.down` waits and is retried (TCP retransmits).
    """

    log = Logger()

    def __init__(self, network: UDPNetwork, receiver: "_MemoryTCPTransport") -> None:
        self._network = network
        self._receiver = receiver
        self._queue: Deque[List] = deque()
        self._timer: Any = None
        self._retry = 0.0

    def drop(self) -> None:
        """Forget the segments in flight (both ends are closed: none can matter)."""
        self._queue.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def push(self, kind: str, data) -> None:
        clock = self._network.clock
        when = clock.seconds() + self._network.latency
        q = self._queue
        if q:
            tail = q[-1]
            when = max(when, tail[0])
            if kind == "data" and tail[1] == "data" and tail[0] == when and len(tail[2]) < _READ_SIZE:
                tail[2] += data
                return
        q.append([when, kind, bytearray(data) if kind == "data" else data])
        self._schedule()

    def _schedule(self, at: Optional[float] = None) -> None:
        if self._timer is not None or not self._queue:
            return
        now = self._network.clock.seconds()
        at = self._queue[0][0] if at is None else at
        self._timer = self._network.clock.callLater(max(0.0, at - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._network.clock.seconds()
        q = self._queue
        while q and q[0][0] <= now + 1e-9:
            if self._network.is_down(self._receiver.local):
                self._retry = min(60.0, max(0.2, 2 * self._network.latency, 2 * self._retry))
                self._schedule(now + self._retry)
                return
            self._retry = 0.0
            _, kind, data = q.popleft()
            try:
                self._receiver.arrive(kind, bytes(data) if kind == "data" else data)
            except Exception:
                # What a real reactor does with an error out of a callback.
                self.log.failure("{receiver!r} failed on a TCP {kind}", receiver=self._receiver, kind=kind)
        self._schedule()



class _SocketOptions:
    """
    What ``transport.getHandle()`` gives: ``setsockopt``/``getsockopt`` of
    the options a TCP connection here honours (keepalive, its timers, no-delay);
    others are stored and read back.
    """

    def __init__(self, transport: "_MemoryTCPTransport") -> None:
        self._transport = transport
        self._options: Dict[Tuple[int, int], Any] = {}

    def setsockopt(self, level: int, option: int, value) -> None:
        self._options[(level, option)] = value
        self._transport.options_changed()

    def getsockopt(self, level: int, option: int, buflen: Optional[int] = None):
        return self._options.get((level, option), 0)

    def fileno(self) -> int:
        return -1

    def get(self, level: int, option: int, default):
        """An option's value, or ``default`` if never set."""
        value = self._options.get((level, option))
        return default if value is None else int(value)


@implementer(ITCPTransport, ISystemHandle, IConsumer, IPushProducer, ILoggingContext)
class _MemoryTCPTransport:
    """
    One end of an in-memory TCP connection, the protocol's transport.

    Bytes go out at once while less than :attr:`UDPNetwork.tcp_window`
    bytes are unacknowledged (sent but not yet handed to the other
    protocol), else wait in a send buffer; a streaming producer is paused
    while that buffer holds more than 64 KiB, as Twisted's.
    """

    log = Logger()

    def __init__(self, reactor: MemoryHostReactor, local: Address, remote: Address, connector=None) -> None:
        self._reactor = reactor
        self._network = reactor.network
        self.local = local
        self.remote = remote
        self._connector = connector
        #: Whether this end dialled (``connectTCP``) rather than accepted.
        self.client = connector is not None
        self._peer: Optional["_MemoryTCPTransport"] = None
        self.wire = _Wire(self._network, self)
        self.protocol: Any = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self._failed = False
        # sending
        self._out: Deque[bytes] = deque()
        self._out_len = 0
        self._unacked = 0
        self._pumping = False
        self._write_closing = False
        self._write_closed = False
        # receiving
        self._inbox: Deque[Tuple[str, bytes]] = deque()
        self._delivering = False
        self._reading_paused = False
        self._read_closed = False
        self._resume_call: Any = None
        # producer
        self.producer = None
        self.streamingProducer = False
        self._producer_paused = False
        # options
        self._handle = _SocketOptions(self)
        self._keepalive_call: Any = None
        self._last_heard = self._network.clock.seconds()
        self._probes = 0

    # -- set-up (what the port and the connector call) ------------------------

    def attach(self, peer: "_MemoryTCPTransport") -> None:
        """Pair with the other end."""
        self._peer = peer

    def start(self, protocol) -> None:
        """The connection is established on this side: run ``protocol`` on it."""
        self.protocol = protocol
        self.connected = True
        self._last_heard = self._network.clock.seconds()
        self._network.tcp_opened(self)
        try:
            protocol.makeConnection(self)
        except Exception:
            self.log.failure("{protocol!r} failed in connectionMade", protocol=protocol)
            self._close(Failure())

    def failIfNotConnected(self, err: Exception) -> None:
        """The connector gives up (timeout, ``stopConnecting``), or connecting failed."""
        if self.connected or self._failed or self.disconnected:
            return
        self._failed = True
        self.disconnected = True
        self._network.tcp_release(self.local, self)
        try:
            self._connector.connectionFailed(Failure(err))
        except Exception:
            self.log.failure("{factory!r} failed in clientConnectionFailed", factory=self._connector.factory)

    def arrive(self, kind: str, data) -> None:
        """A segment from the other end (or the network) arrived."""
        if kind == "synack":
            if self._failed or self.disconnected:
                data.wire.push("rst", None)  # the client gave up: reset
                return
            self.attach(data)
            try:
                protocol = self._connector.buildProtocol(self.getPeer())
            except Exception:
                self.log.failure("{factory!r} failed in buildProtocol", factory=self._connector.factory)
                protocol = None
            if protocol is None:
                self.start(Protocol())
                self.loseConnection()
            else:
                self.start(protocol)
            return
        if kind == "refused":
            if not self.disconnected:
                self._network.counts["tcp_refused"] += 1
                self.failIfNotConnected(error.ConnectionRefusedError("Connection refused"))
            return
        self._last_heard = self._network.clock.seconds()
        self._probes = 0
        if kind == "rst":
            if self.connected:
                self._inbox.clear()
                self._lost(error.ConnectionLost("Connection reset by peer."))
            return
        if kind == "ack":
            self._unacked -= data
            self._pump()
            return
        if not self.connected:
            # closed already: the kernel answers data with a reset
            if kind == "data" and self._peer is not None:
                self._send("rst", None)
            return
        self._inbox.append((kind, data))
        self._deliver()

    # -- ITransport / ITCPTransport --------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if not self.connected or self._write_closed or not data:
            return
        self._out.append(data)
        self._out_len += len(data)
        self._pump()
        if (
            self.producer is not None
            and self.streamingProducer
            and not self._producer_paused
            and self._out_len > _SEND_BUFFER
        ):
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data) -> None:
        for chunk in data:
            if not isinstance(chunk, bytes):
                raise TypeError(f"Data must be bytes, not {type(chunk).__name__}")
        self.write(b"".join(data))

    def loseConnection(self, _reason=None) -> None:
        if not self.connected or self.disconnecting:
            return
        if self._write_closed:
            self._lost(error.ConnectionDone())
            return
        self.disconnecting = True
        self._pump()

    def loseWriteConnection(self) -> None:
        if not self.connected or self._write_closing or self.disconnecting:
            return
        self._write_closing = True
        self._pump()

    def abortConnection(self) -> None:
        if not self.connected:
            return
        self._out.clear()
        self._out_len = 0
        self._send("rst", None)
        self._lost(error.ConnectionAborted())

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", *self.remote)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", *self.local)

    def getTcpNoDelay(self) -> bool:
        return bool(self._handle.get(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0))

    def setTcpNoDelay(self, enabled) -> None:
        self._handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(bool(enabled)))

    def getTcpKeepAlive(self) -> bool:
        return bool(self._handle.get(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0))

    def setTcpKeepAlive(self, enabled) -> None:
        self._handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(bool(enabled)))

    def getHandle(self) -> _SocketOptions:
        """A stand-in socket: ``setsockopt``/``getsockopt`` (keepalive timers are honoured)."""
        return self._handle

    def logPrefix(self) -> str:
        return "MemoryTCP"

    # -- IConsumer ---------------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because {self.producer!r} is already registered.")
        if not self.connected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = bool(streaming)
        self._producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False
        if self.connected and (self.disconnecting or self._write_closing):
            self._pump()

    # -- IPushProducer (reading) ---------------------------------------------------

    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._inbox and self._resume_call is None:
            self._resume_call = self._network.clock.callLater(0, self._resumed)

    def _resumed(self) -> None:
        self._resume_call = None
        self._deliver()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- keepalive ---------------------------------------------------------------

    def options_changed(self) -> None:
        """Hook of :meth:`getHandle`: (re)arm keepalive as its options say."""
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = None
        if self.connected and self.getTcpKeepAlive():
            self._keepalive_at(self._last_heard + self._keepalive()[0])

    def _keepalive(self) -> Tuple[float, float, int]:
        idle, interval, count = self._network.tcp_keepalive
        h = self._handle
        return (
            h.get(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 4), idle),
            h.get(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 5), interval),
            h.get(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 6), count),
        )

    def _keepalive_at(self, when: float) -> None:
        now = self._network.clock.seconds()
        self._keepalive_call = self._network.clock.callLater(max(0.0, when - now), self._keepalive_check)

    def _keepalive_check(self) -> None:
        self._keepalive_call = None
        if not self.connected:
            return
        idle, interval, count = self._keepalive()
        now = self._network.clock.seconds()
        if self._probes == 0 and now < self._last_heard + idle:
            self._keepalive_at(self._last_heard + idle)
            return
        # A probe: answered at once if the other end's host is reachable,
        # with a reset if that end is gone.
        reachable = self._peer is not None and not self._network.is_down(self.remote)
        if reachable and not self._peer.connected:  # type: ignore[union-attr]  # reachable: not None
            self._lost(error.ConnectionLost("Connection reset by peer."))
            return
        if reachable:
            self._last_heard = now
            self._probes = 0
            self._keepalive_at(now + idle)
            return
        self._probes += 1
        if self._probes > count:
            self._network.counts["tcp_keepalive_timeouts"] += 1
            self._lost(error.ConnectionLost("Connection timed out (keepalive)"))
            return
        self._keepalive_at(now + interval)

    # -- internals ----------------------------------------------------------------

    def _send(self, kind: str, data) -> None:
        if self._peer is not None:
            self._peer.wire.push(kind, data)

    def _move(self) -> None:
        """Move what the window allows from the send buffer onto the wire."""
        window = self._network.tcp_window
        while self._out and self._unacked < window:
            room = min(window - self._unacked, _READ_SIZE)
            head = self._out[0]
            if len(head) <= room:
                self._out.popleft()
                chunk = head
            else:
                chunk, self._out[0] = head[:room], head[room:]
            self._out_len -= len(chunk)
            self._unacked += len(chunk)
            self._network.counts["tcp_bytes"] += len(chunk)
            self._send("data", chunk)

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.connected:
                had = self._out_len > 0
                self._move()
                if self._out_len:
                    return  # the window is full: an ack pumps again
                p = self.producer
                if p is not None and (not self.streamingProducer or self._producer_paused):
                    if self.streamingProducer or had:
                        self._producer_paused = False
                        p.resumeProducing()
                        continue
                    return
                if self.disconnecting:
                    self._close(None)
                elif self._write_closing and not self._write_closed:
                    self._write_closed = True
                    self._send("fin", None)
                    half: Any = IHalfCloseableProtocol(self.protocol, None)
                    if half is not None:
                        try:
                            half.writeConnectionLost()
                        except Exception:
                            self.log.failure("{protocol!r} failed in writeConnectionLost", protocol=self.protocol)
                            self._close(Failure())
                return
        finally:
            self._pumping = False

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbox and not self._reading_paused and self.connected:
                kind, data = self._inbox.popleft()
                if kind == "fin":
                    self._read_closed = True
                    self._read_ended()
                    continue
                if len(data) > _READ_SIZE:
                    self._inbox.appendleft((kind, data[_READ_SIZE:]))
                    data = data[:_READ_SIZE]
                else:
                    while self._inbox and self._inbox[0][0] == "data" and len(data) + len(self._inbox[0][1]) <= _READ_SIZE:
                        data += self._inbox.popleft()[1]
                self._send("ack", len(data))
                if self.disconnecting:
                    continue  # Twisted stopped reading: dropped
                try:
                    self.protocol.dataReceived(data)
                except Exception:
                    self.log.failure("{protocol!r} failed in dataReceived", protocol=self.protocol)
                    self._close(Failure())
        finally:
            self._delivering = False

    def _read_ended(self) -> None:
        half: Any = IHalfCloseableProtocol(self.protocol, None)
        if half is None:
            self._close(None)
            return
        try:
            half.readConnectionLost()
        except Exception:
            self.log.failure("{protocol!r} failed in readConnectionLost", protocol=self.protocol)
            self._close(Failure())

    def _close(self, reason: Optional[Failure]) -> None:
        """Close now: what is buffered goes out, then a FIN; ``connectionLost``."""
        if not self.connected:
            return
        while self._out:
            chunk = self._out.popleft()
            self._unacked += len(chunk)
            self._send("data", chunk)
        self._out_len = 0
        if not self._write_closed:
            self._write_closed = True
            self._send("fin", None)
        self._lost(reason if reason is not None else error.ConnectionDone())

    def _lost(self, reason) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnected = True
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._keepalive_call = self._resume_call = None
        self._inbox.clear()
        peer = self._peer
        if peer is None or peer.disconnected:
            # both ends closed: what is still in flight (retried towards a
            # host that is down, say) would only meet a closed socket
            self.wire.drop()
            if peer is not None:
                peer.wire.drop()
        self._network.tcp_release(self.local, self)
        if not isinstance(reason, Failure):
            reason = Failure(reason)
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure("{producer!r} failed in stopProducing", producer=producer)
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            self.log.failure("{protocol!r} failed in connectionLost", protocol=self.protocol)
        if self._connector is not None:
            self._connector.connectionLost(reason)

    def __repr__(self) -> str:
        return f"<MemoryTCPTransport {self.local} -> {self.remote}>"


class _MemoryConnector(BaseConnector):
    """What ``connectTCP`` returns: Twisted's connector on a memory transport."""

    def __init__(self, reactor: MemoryHostReactor, host: str, port: int, factory, timeout, bind) -> None:
        super().__init__(factory, timeout, reactor)  # type: ignore[arg-type]  # a host reactor
        self.host = host
        self.port = port
        self.bindAddress = bind
        self.host_reactor = reactor

    def _makeTransport(self) -> _MemoryTCPTransport:  # type: ignore[override]
        r = self.host_reactor
        net = r.network
        clock = net.clock
        problem: Optional[Exception] = None
        dest = self.host if isIPAddress(self.host) else net.lookup_name(self.host)
        if dest is None:
            problem = error.DNSLookupError(self.host)
        local_port = 0
        if self.bindAddress is not None:
            bhost, local_port = self.bindAddress[0], int(self.bindAddress[1])
            if bhost not in ("", "0.0.0.0", r.host):
                problem = problem or error.ConnectBindError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        t = _MemoryTCPTransport(r, (r.host, 0), (dest or self.host, self.port), connector=self)
        if problem is None:
            try:
                t.local = (r.host, net.tcp_claim(r.host, local_port, t))
            except error.ConnectBindError as e:
                problem = e
        if problem is not None:
            clock.callLater(0, t.failIfNotConnected, problem)
        else:
            clock.callLater(net.latency, net.tcp_syn, t)
        return t

    def getDestination(self) -> IPv4Address:  # type: ignore[override]
        return IPv4Address("TCP", self.host, self.port)
