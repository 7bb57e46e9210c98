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
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, error, interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python import runtime
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._reactor import default_reactor
from txhyperswarm.interfaces import IStatsSource
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp.connection import (
    CONNECT_TIMEOUT,
    PACKET_SIZE,
    RECV_BUFFER,
    SYN_RECV_TIMEOUT,
    IConnectionOwner,
    UTPConnection,
)
from txhyperswarm.utp.packet import (
    HEADER,
    ST_RESET,
    ST_SYN,
    DecodeError,
    decode,
)

__all__ = [
    "UTPSocket",
    "UTPSocketClientEndpoint",
    "UTPSocketServerEndpoint",
    "UTPListeningPort",
    "CONNECT_TIMEOUT",
    "default_monotonic",
]

Address = Tuple[str, int]

#: libutp refuses SYNs beyond this many sockets per context (every
#: connection in the table counts, outbound and lingering ones too).
MAX_CONNECTIONS = 3000
#: Default limit of inbound connections (any state) from one IP address (at
#: least the daemon's default --max-peers: one peer may tunnel that many).
MAX_CONNECTIONS_PER_ADDRESS = 256
#: Default limit of half-open inbound connections (``SYN_RECV``: SYN
#: answered, no DATA/FIN yet) in all; beyond it the oldest is evicted.
MAX_HALF_OPEN = 512
#: Default limit of half-open inbound connections from one IP address;
#: beyond it that address's SYNs are dropped.
MAX_HALF_OPEN_PER_ADDRESS = 64
RESET_MEMORY = 10.0
RESET_MEMORY_SIZE = 1000
#: Kernel memory one full uTP datagram takes in a UDP receive queue on Linux
#: (skb truesize; measured: a 212 992-byte SO_RCVBUF holds 92 datagrams of
#: 1402 bytes).
DATAGRAM_TRUESIZE = 2304
#: A move of the reactor's clock against the monotonic one beyond this
#: (seconds) is a jump: the connections' timers are scheduled again.
CLOCK_JUMP = 1.0


def default_monotonic(reactor) -> Callable[[], float]:
    """
    The monotonic clock to pair with ``reactor``: :func:`time.monotonic`
    when its ``seconds`` is Twisted's own (wall time), else the reactor's
    ``seconds`` (a :class:`~twisted.internet.task.Clock` or another fake
    time, which only moves when told to).
    """
    seconds = reactor.seconds
    if seconds is runtime.seconds or seconds is time.time:
        return time.monotonic
    return seconds


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
    return max(16, rcvbuf // DATAGRAM_TRUESIZE * 3 // 4) * PACKET_SIZE


@implementer(IConnectionOwner, IStatsSource)
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
    :param max_connections: SYNs for new connections are dropped while the
        table holds this many connections (``dropped["syn_too_many"]``);
        libutp's 3000 by default.
    :param max_connections_per_address: SYNs from an IP address that has
        this many inbound connections (any state) are dropped
        (``dropped["syn_per_address"]``).
    :param max_half_open: at most this many inbound connections in
        ``SYN_RECV`` (SYN answered, the initiator's first DATA/FIN not come
        yet: a SYN flood from spoofed or silent sources); a SYN beyond it
        evicts the oldest one (``dropped["half_open_evicted"]``), so a
        flood cannot lock out real peers, whose handshake completes within
        one round trip.
    :param max_half_open_per_address: SYNs from an IP address with this
        many half-open connections are dropped
        (``dropped["syn_half_open_per_address"]``).
    :param half_open_timeout: seconds a half-open connection waits for the
        initiator's first DATA/FIN before it ends (``UTPTimeoutError``).
    :param monotonic: the clock for packet timestamps, RTT samples and
        timer deadlines, a callable returning seconds that never jumps;
        ``None`` for :func:`time.monotonic` on a real reactor, and for the
        reactor's own ``seconds`` on anything else (a
        :class:`~twisted.internet.task.Clock` in tests). The reactor's clock
        (wall time in Twisted) only schedules the timers; when it jumps,
        the connections reschedule them at the next datagram.

    Connections call up through :class:`~txhyperswarm.utp.connection.IConnectionOwner`,
    which this class provides.
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
        monotonic: Optional[Callable[[], float]] = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        max_half_open: int = MAX_HALF_OPEN,
        max_half_open_per_address: int = MAX_HALF_OPEN_PER_ADDRESS,
        half_open_timeout: float = SYN_RECV_TIMEOUT,
    ) -> None:
        self._reactor = default_reactor(reactor)
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.max_half_open = max_half_open
        self.max_half_open_per_address = max_half_open_per_address
        self.half_open_timeout = half_open_timeout
        # inbound connections by remote host; half-open ones, oldest first
        self._inbound: Counter = Counter()
        self._half_open: Dict[UTPConnection, None] = {}
        self._half_open_by_host: Counter = Counter()
        self._owns_udp = udp is None if close_udp is None else close_udp
        if udp is None:
            udp = UDPSocket(self._reactor, host=host, port=port)
        self.udp = udp
        self._mono = monotonic or default_monotonic(self._reactor)
        self._wall = self._reactor.seconds
        self._wall_offset = self._wall() - self._mono()
        self._recv_buffer = recv_buffer
        self.connections: Dict[Tuple[str, int, int], UTPConnection] = {}
        self._factory: Optional[Any] = None  # an IProtocolFactory
        self._ack_queue: List[Any] = []
        self._ack_call = None
        self._resets: Dict[tuple, float] = {}
        self._quiet: Dict[tuple, float] = {}
        self._idle_close = False
        self._closing = False
        self._when_closed: OneShotObserver[None] = OneShotObserver()
        self._window_cap: Optional[int] = None
        self._send_fast = getattr(udp, "send_to_address", None) or udp.send
        # payload bytes of connections already forgotten
        self._retired_sent = 0
        self._retired_received = 0
        #: packets dropped, by reason
        self.dropped: Counter = Counter()
        #: ``None``, or ``firewall(host, port) -> bool``: a true answer drops
        #: a SYN for a new connection unanswered (``dropped["syn_firewalled"]``),
        #: as libutp's ``UTP_ON_FIREWALL`` callback (utp-native's
        #: ``maxConnections``). Asked again for every retransmitted SYN.
        self.firewall: Optional[Callable[[str, int], bool]] = None
        udp.set_utp_receiver(self.datagram_received)

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
        """Whether incoming connections are accepted."""
        return self._factory is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (or started)."""
        return self._closing

    def connect(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        *,
        timeout: Optional[float] = None,
        connection_id: Optional[int] = None,
        seq_nr: Optional[int] = None,
    ) -> defer.Deferred:
        """
        Open a uTP connection to ``(host, port)`` from this socket's port.

        :param host: dotted IPv4 address.
        :param timeout: give up after this many seconds; ``None`` (the
            default) for libutp's own limit: no answer to 3 SYNs,
            ``CONNECT_TIMEOUT`` (21 s).
        :param connection_id: the SYN's id (test hook; default random, never
            0xFFFF).
        :param seq_nr: initial sequence number (test hook; default random).
        :returns: Deferred firing with the protocol built by ``factory`` once
            the peer answered the SYN; errbacks with
            :class:`~txhyperswarm.utp.connection.UTPTimeoutError` (no answer
            in time), :class:`~txhyperswarm.utp.connection.UTPConnectionRefusedError`
            (RESET), ``ConnectingCancelledError`` (cancelled, or this socket
            closed first).
        """
        if self._closing:
            return defer.fail(error.ConnectingCancelledError(IPv4Address("UDP", host, port)))
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
        return conn.start_connect(factory, timeout)

    def client_endpoint(self, host: str, port: int, timeout: Optional[float] = None) -> "UTPSocketClientEndpoint":
        """
        An ``IStreamClientEndpoint`` that dials ``(host, port)`` from this
        socket's port (as txtorcon's ``Tor.stream_via``): the swarm dials
        uTP from the DHT's own port, which holepunching needs.

        :param timeout: as for :meth:`connect`.
        """
        return UTPSocketClientEndpoint(self, host, port, timeout)

    def server_endpoint(self) -> "UTPSocketServerEndpoint":
        """
        An ``IStreamServerEndpoint`` that accepts on this socket's port; its
        listening port's ``stopListening`` stops accepting and leaves the
        socket open.
        """
        return UTPSocketServerEndpoint(self)

    def close_when_idle(self) -> defer.Deferred:
        """
        Close this socket (as :meth:`close`) once no connection is left in
        its table: now when there is none, else when the last one ends.
        New connections are not refused meanwhile.

        :returns: Deferred firing with ``None`` once closed (never errbacks).
        """
        self._idle_close = True
        if not self.connections and not self._closing:
            self.close()
        return self._when_closed.when_fired()

    def close(self) -> defer.Deferred:
        """
        Abort every connection (RESET to each peer), fail the connects in
        progress with ``ConnectingCancelledError``, detach from the UDP port,
        and close it if this socket made it. Idempotent.

        :returns: Deferred firing with ``None`` when done (it never errbacks:
            a failure to close the UDP socket is logged).
        """
        if not self._closing:
            self._closing = True
            self._factory = None
            for conn in list(self.connections.values()):
                conn.shutdown()
            self.connections.clear()
            self._inbound.clear()
            self._half_open.clear()
            self._half_open_by_host.clear()
            if self._ack_call is not None and self._ack_call.active():
                self._ack_call.cancel()
            self._ack_call = None
            self.udp.set_utp_receiver(None)
            d = self.udp.close() if self._owns_udp else defer.succeed(None)
            d.addErrback(lambda f: self.log.failure("closing the UDP socket failed", f))
            d.addBoth(self._when_closed.fire)
        return self._when_closed.when_fired()

    def stats(self) -> dict:
        """
        The live figures (:class:`txhyperswarm.interfaces.IStatsSource`):

        - ``connections``: connections in the table (connecting, open, or
          lingering to ack the peer's last packets);
        - ``half_open``: inbound connections in ``SYN_RECV``;
        - ``bytes_sent``, ``bytes_received``: application payload bytes,
          over every connection this socket has had (retransmissions and
          headers not counted);
        - ``dropped``: :class:`~collections.Counter` of uTP packets dropped,
          by reason (``bad_ack``, ``unknown_connection``, a decode error's
          reason, ``syn_not_listening``, ``connection_error``, the limits'
          ``syn_too_many``, ``syn_per_address``,
          ``syn_half_open_per_address``, ``half_open_evicted``,
          ``window_overrun``, ...).
        """
        sent, received = self._retired_sent, self._retired_received
        for conn in self.connections.values():
            sent += conn.bytes_sent
            received += conn.bytes_received
        return {
            "connections": len(self.connections),
            "half_open": len(self._half_open),
            "bytes_sent": sent,
            "bytes_received": received,
            "dropped": Counter(self.dropped),
        }

    # ------------------------------------------------------------------ IConnectionOwner

    def _new_connection(self, *args, **kw) -> UTPConnection:
        conn = UTPConnection(
            self, self._reactor, *args, recv_buffer=self._recv_buffer, monotonic=self._mono, **kw
        )
        if self._window_cap is None:
            self._window_cap = kernel_window(self.udp) or 0
        if self._window_cap:
            conn.window_cap = min(self._window_cap, self._recv_buffer)
        return conn

    def _initial_seq(self) -> int:
        """A random initial sequence number (tests override it)."""
        return secrets.randbelow(0x10000)

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """(Connection side) Send one datagram; a refused one is counted."""
        # The per-packet path: addresses here come from received datagrams
        # or a checked connect, so they skip Twisted's re-validation.
        if self._send_fast(data, addr) is False:
            self.dropped["send_error"] += 1

    def schedule_ack(self, conn: UTPConnection) -> None:
        """(Connection side) ``conn.send_deferred_ack()`` at the end of this reactor turn."""
        self._ack_queue.append(conn)
        if self._ack_call is None:
            self._ack_call = self._reactor.callLater(0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_call = None
        queue, self._ack_queue = self._ack_queue, []
        for conn in queue:
            conn.send_deferred_ack()

    def forget(self, conn: UTPConnection) -> None:
        """(Connection side) ``conn`` is done: drop it from the table."""
        host, port = conn.remote
        key = (host, port, conn.recv_id)
        if self.connections.get(key) is conn:
            del self.connections[key]
            self._retired_sent += conn.bytes_sent
            self._retired_received += conn.bytes_received
            if not conn.initiator:
                self._uncount(self._inbound, host)
                self.established(conn)
        if not self.connections and self._idle_close and not self._closing:
            self.close()

    def established(self, conn: UTPConnection) -> None:
        """(Connection side) ``conn`` is no longer half-open."""
        if conn in self._half_open:
            del self._half_open[conn]
            self._uncount(self._half_open_by_host, conn.remote[0])

    @staticmethod
    def _uncount(counter: Counter, host: str) -> None:
        n = counter[host] - 1
        if n > 0:
            counter[host] = n
        else:
            del counter[host]

    # ------------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """The uTP receiver for ``UDPSocket.set_utp_receiver``. Never raises."""
        now = self._mono()
        off = self._wall() - now
        if off - self._wall_offset > CLOCK_JUMP or self._wall_offset - off > CLOCK_JUMP:
            self._clock_jumped(off)
        try:
            p = decode(data)
        except DecodeError as e:
            self.dropped[e.reason] += 1
            return
        conn = self.connections.get((addr[0], addr[1], p.connection_id))
        if conn is not None:
            try:  # (inline: the per-packet path)
                conn.packet_received(p, now)
            except Exception:
                self._connection_failed(conn)
            return
        t = p.type
        if t == ST_SYN:
            self._syn_received(p, addr)
        elif t == ST_RESET:
            self._reset_received(p, addr)
        else:
            self._answer_unknown(p, addr)

    def _deliver(self, conn: UTPConnection, p) -> None:
        try:
            conn.packet_received(p)
        except Exception:
            self._connection_failed(conn)

    def _connection_failed(self, conn: UTPConnection) -> None:
        """A connection raised on a packet: a bug, counted and logged."""
        self.dropped["connection_error"] += 1
        self.log.failure("uTP connection {conn!r} failed on a packet", conn=conn)

    def _clock_jumped(self, offset: float) -> None:
        """The reactor's (wall) clock moved against the monotonic one: its
        timers are due at the wrong time, so every connection sets its own
        again."""
        self.log.info(
            "the reactor's clock jumped {jump:+.1f} s; rescheduling uTP timers",
            jump=offset - self._wall_offset,
        )
        self._wall_offset = offset
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
            self._ack_call = self._reactor.callLater(0, self._flush_acks)
        for conn in list(self.connections.values()):
            conn.rearm_timer()

    def _syn_received(self, p, addr: Address) -> None:
        host, port = addr
        recv_id = (p.connection_id + 1) & 0xFFFF
        conn = self.connections.get((host, port, recv_id))
        if conn is not None:
            self._deliver(conn, p)  # a duplicate SYN
            return
        if self._quiet:
            until = self._quiet.get((host, port, recv_id))
            if until is not None and until > self._mono():
                self.dropped["syn_after_reset"] += 1  # a late duplicate of an aborted one
                return
        factory = self._factory
        if factory is None or self._closing:
            self.dropped["syn_not_listening"] += 1
            return
        if self._inbound[host] >= self.max_connections_per_address:
            self.dropped["syn_per_address"] += 1
            return
        if self._half_open_by_host[host] >= self.max_half_open_per_address:
            self.dropped["syn_half_open_per_address"] += 1
            return
        if len(self.connections) >= self.max_connections:
            self.dropped["syn_too_many"] += 1
            return
        if self.firewall is not None and self.firewall(host, port):
            self.dropped["syn_firewalled"] += 1
            return
        if self.max_half_open <= 0:
            self.dropped["syn_half_open"] += 1
            return
        while len(self._half_open) >= self.max_half_open:
            # the oldest half-open one makes room: a flood of SYNs that never
            # complete cannot keep out a real peer, which completes in one
            # round trip
            oldest = next(iter(self._half_open))
            self.established(oldest)
            self.dropped["half_open_evicted"] += 1
            oldest.evict()
        conn = self._new_connection(addr, recv_id, p.connection_id, self._initial_seq(), initiator=False)
        self.connections[(host, port, recv_id)] = conn
        self._inbound[host] += 1
        self._half_open[conn] = None
        self._half_open_by_host[host] += 1
        conn.accept(p, self.half_open_timeout)
        try:
            proto = factory.buildProtocol(IPv4Address("UDP", host, port))
        except Exception:
            self.log.failure("buildProtocol failed for a uTP connection from {host}:{port}", host=host, port=port)
            proto = None
        if proto is None:
            conn.refuse()
            return
        conn.attach(proto)

    def _reset_received(self, p, addr: Address) -> None:
        host, port = addr
        cid = p.connection_id
        for rid in ((cid + 1) & 0xFFFF, (cid - 1) & 0xFFFF):
            conn = self.connections.get((host, port, rid))
            if conn is not None and conn.send_id == cid:
                self._deliver(conn, p)
                return
        self.dropped["reset_unknown"] += 1

    def reset_sent(self, conn: UTPConnection) -> None:
        """
        (Connection side) ``conn`` sent a RESET: its peer's late packets (a deferred ACK) get no
        second RESET — utp-native never reports the first one if a second
        follows before its socket is freed (observed with utp-native 2.5.3).
        """
        now = self._mono()
        quiet = self._quiet
        if len(quiet) >= RESET_MEMORY_SIZE:
            for k in [k for k, t in quiet.items() if t <= now]:
                del quiet[k]
        if len(quiet) < RESET_MEMORY_SIZE:
            host, port = conn.remote
            quiet[(host, port, conn.recv_id)] = now + RESET_MEMORY

    def _answer_unknown(self, p, addr: Address) -> None:
        self.dropped["unknown_connection"] += 1
        now = self._mono()
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
        self.send_datagram(
            HEADER.pack(0x31, 0, p.connection_id, 0, 0, 0, secrets.randbelow(0x10000), p.seq_nr),
            addr,
        )


@implementer(interfaces.IListeningPort)
class UTPListeningPort:
    """
    What a uTP server endpoint's ``listen`` fires with.

    :ivar utp: the :class:`UTPSocket` accepting (its ``udp`` can be shared
        with a DHT node).
    :ivar udp: its :class:`~txhyperswarm.udp.UDPSocket`.
    :param close_socket: whether :meth:`stopListening` also closes the
        socket once its connections have ended (for an endpoint that made
        the socket; not for one bound to a shared socket).
    """

    def __init__(self, utp: UTPSocket, factory, close_socket: bool = False) -> None:
        self.utp = utp
        self.udp = utp.udp
        self.factory = factory
        self._close_socket = close_socket
        self._stopped: Optional[defer.Deferred] = None

    def startListening(self) -> None:
        self.utp.listen(self.factory)

    def stopListening(self) -> defer.Deferred:
        """
        Stop accepting; established connections carry on. With
        ``close_socket``, the UDP port closes now if no connection is open,
        else when the last one ends.

        :returns: Deferred firing with ``None`` once accepting has stopped.
        """
        self.utp.stop_listening()
        if self._stopped is None:
            if self._close_socket:
                closed = self.utp.close_when_idle()
                self._stopped = closed if closed.called else defer.succeed(None)
            else:
                self._stopped = defer.succeed(None)
        return self._stopped

    def getHost(self) -> IPv4Address:
        host, port = self.udp.address()
        return IPv4Address("UDP", host, port)


@implementer(interfaces.IStreamServerEndpoint)
class UTPSocketServerEndpoint:
    """
    Accept uTP connections on an existing :class:`UTPSocket`
    (:meth:`UTPSocket.server_endpoint`). One listener per socket.
    """

    def __init__(self, utp: UTPSocket) -> None:
        self.utp = utp

    def listen(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with a :class:`UTPListeningPort` whose
            ``stopListening`` leaves the socket open; errbacks with
            ``CannotListenError`` when the socket already listens or is closed
            (or its UDP port cannot be bound).
        """

        def bind():
            utp = self.utp
            if utp.listening or utp.closed:
                try:
                    host, port = utp.udp.address()
                except RuntimeError:  # not bound
                    host, port = "", 0
                raise error.CannotListenError(host, port, "this UTPSocket already listens or is closed")
            lp = UTPListeningPort(utp, protocolFactory)
            lp.startListening()
            return lp

        return defer.execute(bind)


@implementer(interfaces.IStreamClientEndpoint)
class UTPSocketClientEndpoint:
    """
    Dial uTP from an existing :class:`UTPSocket`'s port
    (:meth:`UTPSocket.client_endpoint`).

    :param timeout: as for :meth:`UTPSocket.connect`.
    """

    def __init__(self, utp: UTPSocket, host: str, port: int, timeout: Optional[float] = None) -> None:
        self.utp = utp
        self.host = host
        self.port = int(port)
        self.timeout = timeout

    def connect(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with the connected protocol; errbacks as
            :meth:`UTPSocket.connect`.
        """
        return self.utp.connect(self.host, self.port, protocolFactory, timeout=self.timeout)
