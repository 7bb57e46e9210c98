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

Nothing here opens a socket or touches the global reactor.
"""

from __future__ import annotations

import errno
import random as _random
import socket
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["UDPNetwork", "MemoryHostReactor", "Datagram"]

Address = Tuple[str, int]
#: ``(time, source, destination, payload)`` of one datagram sent.
Datagram = Tuple[float, Address, Address, bytes]

#: The largest UDP payload over IPv4 (what the kernel takes in one datagram).
MAX_DATAGRAM = 65507
_EPHEMERAL_FIRST = 32768


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

    :ivar drop: ``None`` or a callable ``(data, src, dst) -> bool``; a
        datagram for which it returns true is lost (on top of ``loss``).
    :ivar down: addresses ``(host, port)`` (or hosts, as ``(host, None)``)
        that swallow whatever is sent to them.
    :ivar counts: a :class:`~collections.Counter` of ``sent``,
        ``delivered``, ``lost``, ``duplicated``, ``reordered`` and
        ``unreachable`` (no socket bound at the destination).
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
    ) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability: {p!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0: {latency!r}")
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
        self._ports: Dict[Address, "_MemoryUDPPort"] = {}
        self._names: Dict[str, str] = {}
        self._next_host = 1

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
        """Every ``(host, port)`` with a socket bound now."""
        return sorted(self._ports)

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
        for _ in range(10_000_000):
            calls = self.clock.getDelayedCalls()
            nxt = min((c.getTime() for c in calls), default=end)
            if nxt > end:
                break
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))

    # -- datagrams ----------------------------------------------------------------

    def sent(self, src: Optional[Address] = None, dst: Optional[Address] = None) -> List[Datagram]:
        """The datagrams in :attr:`log` (``record=True``), filtered by ends."""
        return [d for d in self.log if (src is None or d[1] == src) and (dst is None or d[2] == dst)]

    # -- what the host reactors call ---------------------------------------------

    def lookup_name(self, name: str) -> Optional[str]:
        """The host added for ``name`` by :meth:`add_name`, or ``None``."""
        return self._names.get(name)

    def bind(self, port: "_MemoryUDPPort", host: str, number: int) -> int:
        """Bind ``port`` at ``(host, number)`` (0: a free one); returns the number."""
        if number == 0:
            number = _EPHEMERAL_FIRST
            while (host, number) in self._ports:
                number += 1
                if number > 65535:
                    raise error.CannotListenError(host, 0, socket.error(errno.EADDRINUSE, "no free port"))
        elif (host, number) in self._ports:
            raise error.CannotListenError(host, number, socket.error(errno.EADDRINUSE, "Address already in use"))
        self._ports[(host, number)] = port
        return number

    def unbind(self, addr: Address) -> None:
        """Free ``addr``."""
        self._ports.pop(addr, None)

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        """Carry one datagram from ``src`` to ``dst``, through the knobs."""
        now = self.clock.seconds()
        self.counts["sent"] += 1
        if self.record:
            self.log.append((now, src, dst, data))
        rnd = self.random
        if (self.loss and rnd.random() < self.loss) or (self.drop is not None and self.drop(data, src, dst)):
            self.counts["lost"] += 1
            return
        delay = self.latency
        if self.reorder and rnd.random() < self.reorder:
            self.counts["reordered"] += 1
            delay += self.reorder_delay
        self.clock.callLater(delay, self._arrive, data, src, dst)
        if self.duplicate and rnd.random() < self.duplicate:
            self.counts["duplicated"] += 1
            self.clock.callLater(delay + self.latency, self._arrive, data, src, dst)

    def _arrive(self, data: bytes, src: Address, dst: Address) -> None:
        if dst in self.down or (dst[0], None) in self.down:
            self.counts["lost"] += 1
            return
        port = self._ports.get(dst)
        if port is None:
            self.counts["unreachable"] += 1
            return
        self.counts["delivered"] += 1
        port.deliver(data, src)


@implementer(IReactorTime, IReactorUDP)
class MemoryHostReactor:
    """
    One simulated host's reactor on a :class:`UDPNetwork`: the network's
    clock for time, and UDP ports bound on this host's address.

    :ivar host: this host's IPv4 address.
    """

    def __init__(self, network: UDPNetwork, host: str) -> None:
        self.network = network
        self.host = host

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
        if interface not in ("", "0.0.0.0", self.host):
            raise error.CannotListenError(
                interface, port, socket.error(errno.EADDRNOTAVAIL, f"{interface} is not an address of {self.host}")
            )
        p = _MemoryUDPPort(self, protocol, port, maxPacketSize)
        p.startListening()
        return p

    def __repr__(self) -> str:
        return f"<MemoryHostReactor {self.host}>"


@implementer(IListeningPort, IUDPTransport)
class _MemoryUDPPort:
    """A bound UDP port on a :class:`MemoryHostReactor`; the protocol's transport."""

    log = Logger()

    def __init__(self, reactor: MemoryHostReactor, protocol, port: int, max_size: int) -> None:
        self._reactor = reactor
        self._network = reactor.network
        self.protocol = protocol
        self._want = port
        self._max_size = max_size
        self._addr: Optional[Address] = None
        self.connected = False

    def startListening(self) -> None:
        number = self._network.bind(self, self._reactor.host, self._want)
        self._addr = (self._reactor.host, number)
        self.protocol.makeConnection(self)

    def stopListening(self) -> defer.Deferred:
        if self._addr is not None:
            self._network.unbind(self._addr)
            self._addr = None
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

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
        self._network.transmit(bytes(data), self._addr, (addr[0], int(addr[1])))

    def writeSequence(self, seq, addr) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP sockets are not simulated")

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    def deliver(self, data: bytes, src: Address) -> None:
        if len(data) > self._max_size:
            data = data[: self._max_size]
        try:
            self.protocol.datagramReceived(data, src)
        except Exception:
            # As a real reactor does: the error is logged, the port lives on.
            self.log.failure("{protocol!r} failed on a datagram from {src}", protocol=self.protocol, src=src)
