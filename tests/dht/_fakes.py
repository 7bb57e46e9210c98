"""An in-memory UDP network on a ``Clock`` for DHT unit tests."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock

from txhyperswarm.dht import messages as m
from txhyperswarm.dht.node import DHTNode

Address = Tuple[str, int]


class FakeUDP:
    """Quacks like ``txhyperswarm.udp.UDPSocket`` for the DHT."""

    def __init__(self, net: "FakeNetwork", addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.listening = False
        self.receiver: Optional[Callable[[bytes, Address], None]] = None
        self.dropped: Counter = Counter()

    def listen(self) -> Address:
        self.listening = True
        return self.addr

    def address(self) -> Address:
        return self.addr

    @property
    def port(self) -> int:
        return self.addr[1]

    def set_dht_receiver(self, fn) -> None:
        self.receiver = fn

    def set_utp_receiver(self, fn) -> None:
        pass

    def send(self, data: bytes, addr: Address) -> bool:
        self.net.deliver(self.addr, addr, data)
        return True

    def close(self) -> defer.Deferred:
        self.listening = False
        self.net.sockets.pop(self.addr, None)
        return defer.succeed(None)


class FakeNetwork:
    """
    Datagrams are delivered after ``latency`` seconds of the clock; ``down``
    addresses swallow everything sent to them; ``log`` records every
    datagram as ``(src, dst, decoded message)``.
    """

    def __init__(self, clock: Optional[Clock] = None, latency: float = 0.01) -> None:
        self.clock = clock or Clock()
        self.latency = latency
        self.sockets: Dict[Address, FakeUDP] = {}
        self.down: Set[Address] = set()
        self.log: List[Tuple[Address, Address, m.Message]] = []
        self._next_port = 20000

    def socket(self, host: str = "127.0.0.1", port: int = 0) -> FakeUDP:
        if not port:
            self._next_port += 1
            port = self._next_port
        s = FakeUDP(self, (host, port))
        self.sockets[(host, port)] = s
        return s

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        try:
            self.log.append((src, dst, m.decode_message(data)))
        except m.DecodeError:
            pass
        if dst in self.down:
            return
        self.clock.callLater(self.latency, self._arrive, src, dst, data)

    def _arrive(self, src: Address, dst: Address, data: bytes) -> None:
        s = self.sockets.get(dst)
        if s is None or s.receiver is None or dst in self.down:
            return
        s.receiver(data, src)

    def node(self, bootstrap=(), **kw) -> DHTNode:
        udp = self.socket()
        n = DHTNode(self.clock, bootstrap=list(bootstrap), udp=udp, **kw)
        n.startService()
        return n

    def sent(self, src: Optional[Address] = None, dst: Optional[Address] = None, command=None):
        return [
            msg
            for s, d, msg in self.log
            if (src is None or s == src)
            and (dst is None or d == dst)
            and (command is None or msg.command == command)
        ]

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance the clock in small steps."""
        steps = int(round(seconds / step))
        for _ in range(steps):
            self.clock.advance(step)
