"""In-memory UDP for uTP unit tests: datagrams travel on a ``Clock``."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from txhyperswarm.utp.packet import decode

Address = Tuple[str, int]


class FakeNetwork:
    """
    Delivers datagrams after ``latency`` seconds of ``clock`` time.

    ``drop(data, src, dst) -> bool`` decides losses; every datagram is kept in
    ``log`` as ``(time, src, dst, data)``.
    """

    def __init__(self, clock: Clock, latency: float = 0.001) -> None:
        self.clock = clock
        self.latency = latency
        self.hosts = {}
        self.log: List[tuple] = []
        self.drop: Optional[Callable[[bytes, Address, Address], bool]] = None

    def udp(self, addr: Address) -> "FakeUDP":
        u = FakeUDP(self, addr)
        self.hosts[addr] = u
        return u

    def _send(self, data: bytes, src: Address, dst: Address) -> None:
        self.log.append((self.clock.seconds(), src, dst, bytes(data)))
        if self.drop is not None and self.drop(data, src, dst):
            return
        target = self.hosts.get(dst)
        if target is not None:
            self.clock.callLater(self.latency, target.receive, bytes(data), src)

    def packets(self, src: Optional[Address] = None, dst: Optional[Address] = None):
        """Decoded packets sent (optionally filtered), as (time, packet)."""
        return [
            (t, decode(d))
            for t, s, r, d in self.log
            if (src is None or s == src) and (dst is None or r == dst)
        ]


class FakeUDP:
    def __init__(self, net: FakeNetwork, addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.receiver = None
        self.dropped = {}

    def listen(self) -> Address:
        return self.addr

    def address(self) -> Address:
        return self.addr

    def send(self, data: bytes, addr: Address) -> bool:
        self.net._send(data, self.addr, addr)
        return True

    def set_utp_receiver(self, fn) -> None:
        self.receiver = fn

    def close(self):
        return defer.succeed(None)

    def receive(self, data: bytes, src: Address) -> None:
        if self.receiver is not None:
            self.receiver(data, src)


def run(clock: Clock, seconds: float, step: float = 0.001) -> None:
    """Advance ``clock`` by ``seconds`` in ``step`` increments."""
    n = int(round(seconds / step))
    for _ in range(n):
        clock.advance(step)


def run_until(clock: Clock, predicate: Callable[[], bool], limit: float, step: float = 0.001) -> bool:
    """Advance until ``predicate()`` or ``limit`` seconds passed; returns the predicate."""
    n = int(round(limit / step))
    for _ in range(n):
        if predicate():
            return True
        clock.advance(step)
    return predicate()


class Recorder(Protocol):
    """Records what happens to it; optional echo and scripted writes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = None
        self.made = False
        self.eof = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class RecorderFactory(Factory):
    def __init__(self, protocol=Recorder) -> None:
        self.protocol = protocol
        self.built = []

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        p.addr = addr
        self.built.append(p)
        return p


def run_events(clock: Clock, seconds: float) -> None:
    """Advance ``clock`` by ``seconds``, stopping exactly at each scheduled call."""
    end = clock.seconds() + seconds
    for _ in range(1_000_000):
        calls = [c.getTime() for c in clock.getDelayedCalls()]
        nxt = min(calls) if calls else end
        if nxt > end:
            clock.advance(end - clock.seconds())
            return
        clock.advance(max(0.0, nxt - clock.seconds()))
