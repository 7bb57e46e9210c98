"""
A lossy UDP relay for uTP tests on real sockets: two Twisted
``DatagramProtocol``s between a client and a target that drop, reorder and
duplicate datagrams in both directions, from a seeded RNG.

The client sends to :attr:`LossyRelay.port`; the relay forwards from its
back socket to ``target``, and the target's answers go back to the client.
"""

from __future__ import annotations

import random
import socket
from typing import Optional, Tuple

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
    :param target: where the client's datagrams go.
    :param loss: drop probability per datagram, each direction.
    :param reorder: probability a datagram is held back behind the next one.
    :param duplicate: probability a datagram is sent twice.
    :param seed: seeds the two directions' RNGs.
    :param spare_first: datagrams passed untouched at the start of each
        direction (the handshake: a libutp acceptor never answers a
        retransmitted SYN, so a lost SYN-reply is a 21 s connect failure by
        design, not what a loss test is after).
    """

    def __init__(
        self,
        reactor,
        target: Address,
        *,
        loss: float,
        reorder: float = 0.02,
        duplicate: float = 0.01,
        seed: int = 0,
        spare_first: int = 1,
        reorder_delay: float = 0.003,
        host: str = "127.0.0.1",
        buffer_size: int = 4 * 1024 * 1024,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.loss = loss
        self.reorder = reorder
        self.duplicate = duplicate
        self.spare_first = spare_first
        self.reorder_delay = reorder_delay
        self.client: Optional[Address] = None
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

    def _from_client(self, data: bytes, addr: Address) -> None:
        self.client = addr
        self.up.forward(data, self._send_up)

    def _from_target(self, data: bytes, addr: Address) -> None:
        if addr == tuple(self.target) and self.client is not None:
            self.down.forward(data, self._send_down)

    def _send_up(self, data: bytes) -> None:
        t = self._back.transport
        if t is not None:
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
        return " ".join(
            f"{name}: {d.passed} passed, {d.dropped} dropped, {d.reordered} reordered,"
            f" {d.duplicated} duplicated;"
            for name, d in (("up", self.up), ("down", self.down))
        )

    def close(self):
        from twisted.internet import defer

        for d in (self.up, self.down):
            if d.held is not None and d.held[2].active():
                d.held[2].cancel()
            d.held = None
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self._ports])
