"""
A lossy UDP relay for uTP tests on real sockets: two Twisted
``DatagramProtocol``s between a client and a target that drop, reorder and
duplicate datagrams in both directions, from a seeded RNG.

The client sends to :attr:`LossyRelay.port`; the relay forwards from its
back socket to ``target``, and the target's answers go back to the client.

For a swarm behind the relay (tests/test_swarm_lossy.py, bench/swarm_lossy.py):
``client`` pins the one address served lossily: what another address sends
to the front (a DHT node relaying a holepunch) goes to the target untouched
from a back socket of that address's own, and the target's answers to that
socket go back to it (a NAT mapping per source), counted in
:attr:`LossyRelay.strangers`; ``target`` may be set once the target is
bound, and ``refuse_tcp`` holds the relay's port number on TCP without
listening, so a TCP connect to the relay's address is refused and a dialler
falls back to uTP.
"""

from __future__ import annotations

import random
import socket
from typing import Dict, Optional, Tuple

from twisted.internet.protocol import DatagramProtocol

Address = Tuple[str, int]


class _Direction:
    """Forwarding in one direction: drop / hold back / duplicate."""

    def __init__(self, relay: "LossyRelay", rng: random.Random) -> None:
        self.relay = relay
        self.rng = rng
        self.held = None  # (data, call)
        self.passed = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0

    def forward(self, data: bytes, send) -> None:
        r = self.relay
        self.passed += 1
        if self.passed <= r.spare_first:
            send(data)
            return
        rng = self.rng
        if rng.random() < r.loss:
            self.dropped += 1
            return
        if self.held is None and rng.random() < r.reorder:
            # hold it back until the next datagram (or a few ms)
            self.reordered += 1
            call = r.reactor.callLater(r.reorder_delay, self._release)
            self.held = (data, send, call)
            return
        send(data)
        if rng.random() < r.duplicate:
            self.duplicated += 1
            send(data)
        if self.held is not None:
            held, hsend, call = self.held
            self.held = None
            call.cancel()
            hsend(held)

    def _release(self) -> None:
        if self.held is not None:
            data, send, _ = self.held
            self.held = None
            send(data)


class _Side(DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)


class LossyRelay:
    """
    :param reactor: the running reactor.
    :param target: where the client's datagrams go (``None``: nowhere
        until the attribute is set).
    :param loss: drop probability per datagram, each direction.
    :param reorder: probability a datagram is held back behind the next one.
    :param duplicate: probability a datagram is sent twice.
    :param seed: seeds the two directions' RNGs.
    :param spare_first: datagrams passed untouched at the start of each
        direction (the handshake: a libutp acceptor never answers a
        retransmitted SYN, so a lost SYN-reply is a 21 s connect failure by
        design, not what a loss test is after).
    :param client: the only address served at the front, lossily, and the
        only one answers go to (``None``: whoever sent last); or later with
        :meth:`pin`. Datagrams from other addresses are passed to the
        target untouched, each source from a back socket of its own.
    :param refuse_tcp: bind (not listen) a TCP socket on ``host:port`` so a
        TCP connect to the relay's address is refused.

    :ivar strangers: datagrams passed untouched at the front because they
        did not come from ``client``.
    """

    def __init__(
        self,
        reactor,
        target: Optional[Address],
        *,
        loss: float,
        reorder: float = 0.02,
        duplicate: float = 0.01,
        seed: int = 0,
        spare_first: int = 1,
        reorder_delay: float = 0.003,
        host: str = "127.0.0.1",
        buffer_size: int = 4 * 1024 * 1024,
        client: Optional[Address] = None,
        refuse_tcp: bool = False,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.loss = loss
        self.reorder = reorder
        self.duplicate = duplicate
        self.spare_first = spare_first
        self.reorder_delay = reorder_delay
        self.client: Optional[Address] = tuple(client) if client is not None else None  # type: ignore[assignment]
        self.pinned = client is not None
        self.strangers = 0
        self._host = host
        self._mapped: Dict[Address, _Side] = {}
        self.up = _Direction(self, random.Random(f"{seed}-up"))
        self.down = _Direction(self, random.Random(f"{seed}-down"))
        self._front = _Side(self._from_client)
        self._back = _Side(self._from_target)
        self._ports = [
            reactor.listenUDP(0, self._front, interface=host, maxPacketSize=65535),
            reactor.listenUDP(0, self._back, interface=host, maxPacketSize=65535),
        ]
        for p in self._ports:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                p.getHandle().setsockopt(socket.SOL_SOCKET, opt, buffer_size)
        self.port = self._ports[0].getHost().port
        self._tcp: Optional[socket.socket] = None
        if refuse_tcp:
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.bind((host, self.port))  # never listens: a connect gets RST

    def pin(self, client: Address) -> None:
        """Serve only ``client`` at the front from now on."""
        self.client = (client[0], int(client[1]))
        self.pinned = True

    def _from_client(self, data: bytes, addr: Address) -> None:
        if self.pinned:
            if tuple(addr) != self.client:
                self._from_stranger(data, tuple(addr))
                return
        else:
            self.client = addr
        self.up.forward(data, self._send_up)

    def _from_stranger(self, data: bytes, addr: Address) -> None:
        self.strangers += 1
        side = self._mapped.get(addr)
        if side is None:
            side = self._mapped[addr] = _Side(lambda d, a: self._to_stranger(d, a, addr))
            self._ports.append(self.reactor.listenUDP(0, side, interface=self._host, maxPacketSize=65535))
        if side.transport is not None and self.target is not None:
            try:
                side.transport.write(data, self.target)
            except OSError:
                pass

    def _to_stranger(self, data: bytes, addr: Address, stranger: Address) -> None:
        t = self._front.transport
        if t is not None and self.target is not None and addr == tuple(self.target):
            try:
                t.write(data, stranger)
            except OSError:
                pass

    def _from_target(self, data: bytes, addr: Address) -> None:
        if self.target is not None and addr == tuple(self.target) and self.client is not None:
            self.down.forward(data, self._send_down)

    def _send_up(self, data: bytes) -> None:
        t = self._back.transport
        if t is not None and self.target is not None:
            try:
                t.write(data, self.target)
            except OSError:
                pass

    def _send_down(self, data: bytes) -> None:
        t = self._front.transport
        if t is not None and self.client is not None:
            try:
                t.write(data, self.client)
            except OSError:
                pass

    def stats(self) -> str:
        text = " ".join(
            f"{name}: {d.passed} passed, {d.dropped} dropped, {d.reordered} reordered,"
            f" {d.duplicated} duplicated;"
            for name, d in (("up", self.up), ("down", self.down))
        )
        if self.pinned:
            text += f" {self.strangers} from others passed;"
        return text

    def close(self):
        from twisted.internet import defer

        for d in (self.up, self.down):
            if d.held is not None and d.held[2].active():
                d.held[2].cancel()
            d.held = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self._ports])
