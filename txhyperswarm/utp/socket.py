"""
uTP over a shared UDP port: connection table, accept, connect, RESET.

:class:`UTPSocket` attaches to a :class:`txhyperswarm.udp.UDPSocket` with
``set_utp_receiver`` (the DHT keeps ``set_dht_receiver`` on the same port, as
utp-native and dht-rpc share one socket in Node's hyperswarm).

Demultiplexing as libutp (``shared/spec/utp.md`` 1.3, 2.2, 2.7): a packet
belongs to the connection keyed by ``(host, port, connection_id)`` where the
id is that connection's ``recv_id``; a SYN for no connection is accepted when
listening (silently dropped otherwise); a RESET for no connection is ignored;
anything else for no connection is answered with a RESET (``ack_nr`` = its
``seq_nr``, timestamps 0, random ``seq_nr``), at most once per
(address, id, seq) per 10 s and 1000 remembered.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Callable, Dict, Optional, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from txhyperswarm._reactor import default_reactor
from txhyperswarm.utp.connection import (
    CLOSED,
    RECV_BUFFER,
    UTPConnection,
)
from txhyperswarm.utp.packet import (
    HEADER,
    ST_RESET,
    ST_SYN,
    DecodeError,
    decode,
)

__all__ = ["UTPSocket"]

Address = Tuple[str, int]

#: libutp refuses SYNs beyond this many sockets per context.
MAX_CONNECTIONS = 3000
RESET_MEMORY = 10.0
RESET_MEMORY_SIZE = 1000
#: Kernel memory one full uTP datagram takes in a UDP receive queue on Linux
#: (skb truesize; measured: a 212 992-byte SO_RCVBUF holds 92 datagrams of
#: 1402 bytes).
DATAGRAM_TRUESIZE = 2304
PAYLOAD = 1382


def kernel_window(udp) -> Optional[int]:
    """
    Payload bytes the UDP socket's kernel receive queue holds, with a
    quarter kept free for ACKs and other traffic; ``None`` when unknown
    (not bound, not a real socket).

    Advertising more than this invites a peer to overflow the queue: at the
    kernel's default (~208 KiB) that is ~92 datagrams, while libutp (and we)
    would otherwise put up to 1 MiB in flight (utp.md 7.2).
    """
    size = getattr(udp, "receive_buffer_size", None)
    rcvbuf = size() if size is not None else None
    if rcvbuf is None:
        return None
    return max(16, rcvbuf // DATAGRAM_TRUESIZE * 3 // 4) * PAYLOAD


class UTPSocket:
    """
    uTP connections over one UDP port.

    :param reactor: ``IReactorTime`` (and ``IReactorUDP`` when ``udp`` is
        not given); ``None`` for the global reactor.
    :param udp: a :class:`txhyperswarm.udp.UDPSocket` (or anything with
        ``listen()``, ``address()``, ``send(data, addr)``,
        ``set_utp_receiver(fn)``) to share; ``None`` makes and owns one bound
        to ``host``/``port``.
    :param recv_buffer: bytes each connection advertises as its window when
        nothing is unread.
    :param close_udp: whether :meth:`close` closes the UDP socket (default:
        only when this object made it).
    """

    log = Logger()

    def __init__(
        self,
        reactor=None,
        udp=None,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        recv_buffer: int = RECV_BUFFER,
        close_udp: Optional[bool] = None,
    ) -> None:
        self._reactor = default_reactor(reactor)
        self._owns_udp = udp is None if close_udp is None else close_udp
        if udp is None:
            from txhyperswarm.udp import UDPSocket

            udp = UDPSocket(self._reactor, host=host, port=port)
        self.udp = udp
        self._recv_buffer = recv_buffer
        self.connections: Dict[Tuple[str, int, int], UTPConnection] = {}
        self._factory: Optional[IProtocolFactory] = None
        self._ack_queue = []
        self._ack_call = None
        self._resets: Dict[tuple, float] = {}
        self._quiet: Dict[tuple, float] = {}
        self._on_idle: Optional[Callable[[], None]] = None
        self._closed = False
        self._window_cap: Optional[int] = None
        self._send_fast = getattr(udp, "send_to_address", None) or udp.send
        #: packets dropped, by reason
        self.dropped: Counter = Counter()
        udp.set_utp_receiver(self._datagram_received)

    # ------------------------------------------------------------------ API

    def address(self) -> Address:
        """The bound ``(host, port)`` of the UDP socket (binding it if needed)."""
        return self.udp.listen()

    def listen(self, factory: IProtocolFactory) -> None:
        """
        Accept incoming connections: each runs ``factory.buildProtocol(addr)``
        (``addr`` an ``IPv4Address("UDP", …)``) on a new
        :class:`~txhyperswarm.utp.connection.UTPConnection`.
        """
        self.udp.listen()
        self._factory = factory

    def stop_listening(self) -> None:
        """Stop accepting; established connections carry on."""
        self._factory = None

    @property
    def listening(self) -> bool:
        return self._factory is not None

    def connect(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        *,
        connection_id: Optional[int] = None,
        seq_nr: Optional[int] = None,
    ) -> defer.Deferred:
        """
        Open a uTP connection to ``(host, port)``.

        :param host: dotted IPv4 address.
        :param connection_id: the SYN's id (test hook; default random, never
            0xFFFF).
        :param seq_nr: initial sequence number (test hook; default random).
        :returns: Deferred firing with the protocol built by ``factory`` once
            the peer answered the SYN; errbacks with
            :class:`~txhyperswarm.utp.connection.UTPTimeoutError` (no answer to
            3 SYNs, ≈21 s), :class:`~txhyperswarm.utp.connection.UTPConnectionRefusedError`
            (RESET), ``ConnectingCancelledError`` (cancelled).
        """
        self.udp.listen()
        addr = (host, port)
        conns = self.connections
        if connection_id is None:
            for _ in range(100):
                cid = secrets.randbelow(0xFFFF)  # never 0xFFFF (utp.md 1.3)
                if (host, port, cid) not in conns and (host, port, (cid + 1) & 0xFFFF) not in conns:
                    break
            else:
                return defer.fail(RuntimeError(f"no free uTP connection id towards {host}:{port}"))
        else:
            cid = connection_id & 0xFFFF
            if (host, port, cid) in conns:
                return defer.fail(RuntimeError(f"uTP connection id {cid} to {host}:{port} is in use"))
        if seq_nr is None:
            seq_nr = self._initial_seq()
        conn = self._new_connection(addr, cid, (cid + 1) & 0xFFFF, seq_nr, initiator=True)
        conns[(host, port, cid)] = conn
        d = defer.Deferred(lambda d: conn._cancel_connect(d))
        conn._start_connect(factory, d)
        return d

    def close(self) -> defer.Deferred:
        """
        Abort every connection (RESET to each peer), detach from the UDP
        port, and close it if this socket made it.

        :returns: Deferred firing with ``None`` when done.
        """
        self._closed = True
        self._factory = None
        for conn in list(self.connections.values()):
            if conn.state == CLOSED:
                conn._forget()
            elif conn.protocol is None and conn.initiator:
                d = conn._connect_d
                conn._connect_d = None
                conn._abort_silently()
                if d is not None:
                    from twisted.internet.error import ConnectingCancelledError

                    d.errback(ConnectingCancelledError(conn.getPeer()))
            else:
                conn.abortConnection()
        self.connections.clear()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        self.udp.set_utp_receiver(None)
        if self._owns_udp:
            return self.udp.close()
        return defer.succeed(None)

    # ------------------------------------------------------------------ used by connections

    def _new_connection(self, *args, **kw) -> UTPConnection:
        conn = UTPConnection(self, self._reactor, *args, recv_buffer=self._recv_buffer, **kw)
        if self._window_cap is None:
            self._window_cap = kernel_window(self.udp) or 0
        if self._window_cap:
            conn.window_cap = min(self._window_cap, self._recv_buffer)
        return conn

    def _initial_seq(self) -> int:
        """A random initial sequence number (tests override it)."""
        return secrets.randbelow(0x10000)

    def _send(self, data: bytes, addr: Address) -> None:
        # The per-packet path: addresses here come from received datagrams
        # or a checked connect, so they skip Twisted's re-validation.
        if self._send_fast(data, addr) is False:
            self.dropped["send_error"] += 1

    def _schedule_ack(self, conn: UTPConnection) -> None:
        self._ack_queue.append(conn)
        if self._ack_call is None:
            self._ack_call = self._reactor.callLater(0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_call = None
        queue, self._ack_queue = self._ack_queue, []
        for conn in queue:
            conn._send_ack()

    def _forget(self, conn: UTPConnection) -> None:
        key = (conn._addr[0], conn._addr[1], conn.recv_id)
        if self.connections.get(key) is conn:
            del self.connections[key]
        if not self.connections and self._on_idle is not None and not self._closed:
            self._on_idle()

    # ------------------------------------------------------------------ receiving

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            p = decode(data)
        except DecodeError as e:
            self.dropped[e.reason] += 1
            return
        conn = self.connections.get((addr[0], addr[1], p.connection_id))
        if conn is not None:
            try:
                conn._packet_received(p)
            except Exception:
                self.dropped["connection_error"] += 1
                self.log.failure("uTP connection {conn!r} failed on a packet", conn=conn)
            return
        t = p.type
        if t == ST_SYN:
            self._syn_received(p, addr)
        elif t == ST_RESET:
            self._reset_received(p, addr)
        else:
            self._answer_unknown(p, addr)

    def _syn_received(self, p, addr: Address) -> None:
        host, port = addr
        recv_id = (p.connection_id + 1) & 0xFFFF
        conn = self.connections.get((host, port, recv_id))
        if conn is not None:
            conn._packet_received(p)  # a duplicate SYN
            return
        if self._quiet:
            until = self._quiet.get((host, port, recv_id))
            if until is not None and until > self._reactor.seconds():
                self.dropped["syn_after_reset"] += 1  # a late duplicate of an aborted one
                return
        factory = self._factory
        if factory is None or self._closed:
            self.dropped["syn_not_listening"] += 1
            return
        if len(self.connections) >= MAX_CONNECTIONS:
            self.dropped["syn_too_many"] += 1
            return
        conn = self._new_connection(addr, recv_id, p.connection_id, self._initial_seq(), initiator=False)
        self.connections[(host, port, recv_id)] = conn
        conn._accepted(p)
        try:
            proto = factory.buildProtocol(IPv4Address("UDP", host, port))
        except Exception:
            self.log.failure("buildProtocol failed for a uTP connection from {host}:{port}", host=host, port=port)
            proto = None
        if proto is None:
            conn._abort_silently(reset=True)
            return
        conn._attach(proto)

    def _reset_received(self, p, addr: Address) -> None:
        host, port = addr
        cid = p.connection_id
        for rid in ((cid + 1) & 0xFFFF, (cid - 1) & 0xFFFF):
            conn = self.connections.get((host, port, rid))
            if conn is not None and conn.send_id == cid:
                conn._packet_received(p)
                return
        self.dropped["reset_unknown"] += 1

    def _aborted(self, conn: UTPConnection) -> None:
        """
        ``conn`` sent a RESET: its peer's late packets (a deferred ACK) get no
        second RESET — utp-native never reports the first one if a second
        follows before its socket is freed (observed with utp-native 2.5.3).
        """
        now = self._reactor.seconds()
        quiet = self._quiet
        if len(quiet) >= RESET_MEMORY_SIZE:
            for k in [k for k, t in quiet.items() if t <= now]:
                del quiet[k]
        if len(quiet) < RESET_MEMORY_SIZE:
            quiet[(conn._addr[0], conn._addr[1], conn.recv_id)] = now + RESET_MEMORY

    def _answer_unknown(self, p, addr: Address) -> None:
        self.dropped["unknown_connection"] += 1
        now = self._reactor.seconds()
        if self._quiet:
            until = self._quiet.get((addr[0], addr[1], p.connection_id))
            if until is not None and until > now:
                return
        key = (addr[0], addr[1], p.connection_id, p.seq_nr)
        resets = self._resets
        if key in resets and resets[key] > now:
            return
        if len(resets) >= RESET_MEMORY_SIZE:
            for k in [k for k, t in resets.items() if t <= now]:
                del resets[k]
            if len(resets) >= RESET_MEMORY_SIZE:
                return
        resets[key] = now + RESET_MEMORY
        self._send(
            HEADER.pack(0x31, 0, p.connection_id, 0, 0, 0, secrets.randbelow(0x10000), p.seq_nr),
            addr,
        )
