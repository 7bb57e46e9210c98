"""
One uTP connection: the state machine, reliability, flow control, and the
Twisted transport a :class:`~twisted.internet.protocol.Protocol` runs on.

Behaviour follows libutp as built into utp-native 2.5.3 (``shared/spec/utp.md``):

* ids (1.3): the initiator picks ``seed``; ``recv_id = seed``,
  ``send_id = seed + 1``; the SYN carries ``seed``. The acceptor's
  ``recv_id = id + 1``, ``send_id = id``.
* handshake numbering (1.7): the SYN-reply STATE carries the acceptor's
  first number R unconsumed; the initiator sets ``ack_nr = R - 1``; the
  acceptor sends nothing until the initiator's first DATA/FIN arrives (2.2).
* acks (2.3, 3.6): incoming ``ack_nr`` range check, cumulative acks,
  selective acks with fast resend once three later packets are acked (at
  most 4 per ACK), and (beyond libutp) a fast resend after 3 duplicate ACKs.
* RTT/RTO (3.2–3.4): integer milliseconds, ``rto = max(rtt + 4 rtt_var,
  1000)``, SYN timeout 3000 ms, doubling per expiry, death after 4 timed-out
  retransmissions (SYN: 2), i.e. ≈31·RTO (connect ≈21 s).
* keep-alive (3.5): a STATE with ``ack_nr - 1`` after 29 s without sending.
* windows (4.1): bytes in flight ≤ min(LEDBAT window, peer window, 1 MiB),
  ≤ 1023 packets; the window we advertise is our receive buffer minus what
  the paused application has not read; a zero peer window is probed after
  15 s.
* delayed acks (4.5): in-order data schedules one ACK per reactor turn
  (batched by the socket), or one per 16 packets; any outgoing DATA carries
  the ack instead. Beyond libutp: out-of-order data and hole fills are
  ACKed at once, and on a path that showed loss every 2 packets (see
  ``ACK_EVERY``).
* beyond libutp, loss recovery: every hole a selective ack reveals is
  resent (up to 32 per ACK), and a loss probe after 3 RTTs (≥ 30 ms)
  without an ack resends what is outstanding before the 1 s RTO (see
  ``MIN_PROBE``); a probed or timed-out oldest packet goes out three
  times, 10 ms apart (see ``RESEND_ECHOES``); the advertised window is
  capped by what the socket's kernel receive queue holds (``window_cap``,
  set by the socket).
* FIN/EOF (2.5, 5.4): FIN consumes a number; EOF when ``ack_nr`` reaches it.
  Unlike libutp, our FIN is not held back until earlier data is acked, and
  a closed connection stays in the table as a zombie: after
  ``loseConnection`` it acks (and drops) the peer's data and FIN for up to
  ``LINGER_TIME`` seconds, and after both FINs it re-acks duplicates for
  ``TIME_WAIT`` seconds, instead of answering them with RESETs.
* beyond libutp: an accepted connection that gets no DATA/FIN within
  ``SYN_RECV_TIMEOUT`` ends with :class:`UTPTimeoutError`; duplicate SYNs are
  answered again; a RESET after the peer's FIN ended an orderly close counts
  as ``ConnectionDone``.

The state is three small enums rather than an automat machine (the packet
handler runs tens of thousands of times a second and its transitions depend
on packet fields): :class:`State`, the connection's life (handshake, open,
linger, closed), and the close progress of each direction,
:class:`Sending` (our FIN) and :class:`Receiving` (the peer's FIN). A
half-close is ``Sending`` past ``OPEN`` (or ``Receiving``) while ``State``
is ``CONNECTED``; a full close is the transport's ``disconnecting`` plus our
FIN; the end is ``LINGER`` (orderly: still acking the peer) or ``CLOSED``.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Callable, Optional

from twisted.internet import defer, error, interfaces
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from txhyperswarm.utp.congestion import LEDBAT
from txhyperswarm.utp.packet import (
    EXT_SACK,
    HEADER,
    ST_DATA,
    ST_FIN,
    ST_RESET,
    ST_STATE,
    ST_SYN,
)

__all__ = [
    "UTPConnection",
    "UTPError",
    "UTPTimeoutError",
    "UTPConnectionRefusedError",
    "UTPConnectionResetError",
    "IConnectionOwner",
    "State",
    "Sending",
    "Receiving",
    "CONNECT_TIMEOUT",
    "PACKET_SIZE",
    "SYN_SENT",
    "SYN_RECV",
    "CONNECTED",
    "DRAINING",
    "LINGER",
    "CLOSED",
]



class State(IntEnum):
    """
    A connection's life (``UTPConnection.state``); it only moves forward.

    ==========  ================================================================
    SYN_SENT    initiator: SYN sent, no answer yet
    SYN_RECV    acceptor: SYN answered; libutp sends nothing before the
                initiator's first DATA/FIN
    CONNECTED   open; either direction may be closed already (:class:`Sending`,
                :class:`Receiving`)
    DRAINING    the peer, done sending, reset the connection while our reader
                was paused: it is out of the socket's table, and the buffered
                data is delivered before ``connectionLost(ConnectionDone)``
    LINGER      ``connectionLost`` told after an orderly close; still in the
                table, acking (and dropping) the peer's data until its FIN,
                then a short TIME_WAIT that re-acks duplicates
    CLOSED      done: ``connectionLost`` told (or never a protocol), forgotten
    ==========  ================================================================
    """

    SYN_SENT = 0
    SYN_RECV = 1
    CONNECTED = 2
    DRAINING = 3
    LINGER = 4
    CLOSED = 5


class Sending(IntEnum):
    """Our direction's close progress (``UTPConnection.sending``)."""

    #: writes accepted
    OPEN = 0
    #: ``loseWriteConnection`` or ``loseConnection``: what is buffered goes,
    #: then our FIN
    FIN_QUEUED = 1
    #: our FIN has its sequence number
    FIN_SENT = 2
    #: everything up to our FIN is acked (seen while handling a packet)
    FIN_ACKED = 3
    #: and, once that packet is handled, a half-closeable protocol was told
    #: ``writeConnectionLost`` (unless it had asked ``loseConnection``)
    DONE = 4


class Receiving(IntEnum):
    """The peer's direction's close progress (``UTPConnection.receiving``)."""

    OPEN = 0
    #: its FIN reached in order: all its data arrived
    EOF = 1
    #: the protocol heard (``readConnectionLost``, or we closed it: a
    #: protocol that cannot half-close)
    EOF_TOLD = 2


# plain names for the per-packet path (an enum class attribute costs ~50 ns)
SYN_SENT, SYN_RECV, CONNECTED, DRAINING, LINGER, CLOSED = State
FIN_QUEUED, FIN_SENT, FIN_ACKED, WRITE_DONE = Sending.FIN_QUEUED, Sending.FIN_SENT, Sending.FIN_ACKED, Sending.DONE
EOF, EOF_TOLD = Receiving.EOF, Receiving.EOF_TOLD

M16 = 0xFFFF
M32 = 0xFFFFFFFF

#: Max payload of one DATA packet (IPv4, libutp's 1402-byte datagrams).
PACKET_SIZE = 1382
#: libutp's PACKET_SIZE constant, the zero-window probe cap.
PROBE_WINDOW = 1435
#: Cap on bytes in flight, whatever the peer advertises (libutp opt_sndbuf).
SEND_CAP = 1048576
#: Default receive buffer: the window advertised while nothing is unread.
RECV_BUFFER = 1048576
MAX_OUTSTANDING = 1023
REORDER_LIMIT = 1024
KEEPALIVE = 29.0
ZERO_WINDOW_PROBE = 15.0
SYN_TIMEOUT_MS = 3000
#: How long a connect waits by default: libutp gives up when the third SYN
#: (sent at 0, 3 and 9 s, the timeout doubling) goes unanswered for 12 s.
CONNECT_TIMEOUT = 21.0
MIN_RTO_MS = 1000
#: Not in libutp (no upper bound there): a cap on the RTO estimate.
MAX_RTO_MS = 60000
MAX_RETRANSMITS = 4
MAX_SYN_RETRANSMITS = 2
MAX_FAST_RESENDS = 4
#: Beyond libutp: selective-ack holes we resend per ACK (libutp: 4). A
#: kernel-buffer overflow loses runs of packets; resending only 4 per ACK
#: leaves the rest for a 1 s timeout.
MAX_SACK_RESENDS = 32
#: Beyond libutp: the loss probe. When nothing was acked for
#: ``PROBE_RTTS`` smoothed RTTs (at least ``MIN_PROBE``, at most half the
#: RTO), every un-acked packet is presumed lost and resent as the window
#: allows, the window halved (not collapsed), up to ``MAX_PROBES`` times in a
#: row; then the ordinary RTO takes over. On loopback a 1 s RTO floor (libutp's)
#: otherwise turns each tail loss after a kernel-buffer overflow into a 1 s stall.
MIN_PROBE = 0.03
#: Acks: deferred to the end of the reactor turn (one per connection), but
#: sent at once for every out-of-order packet and for the packet that fills
#: a hole, and after every ``ACK_EVERY`` in-order packets (every
#: ``ACK_EVERY_LOSSY`` for ``LOSSY_MEMORY`` s after an out-of-order or
#: duplicate arrival, signs of a lossy path). A single
#: ACK for a whole burst, when lost, left a libutp sender (whose window is
#: small under loss) waiting for its 1 s RTO; libutp itself ACKs nearly every
#: packet. Through a 5%-loss relay, utp-native -> Python took 31 s for 2 MiB
#: with one ACK per burst, 7 s this way; on a clean path the ACKs stay few.
ACK_EVERY = 16
ACK_EVERY_LOSSY = 2
LOSSY_MEMORY = 30.0
PROBE_RTTS = 3
MAX_PROBES = 3
#: Beyond libutp: a timed-out or probed oldest packet goes out ``1 +
#: RESEND_ECHOES`` times, ``ECHO_GAP`` seconds apart. libutp ACKs once per
#: read batch, so copies sent together draw one ACK, and a run of lost ACKs
#: (6 in a row through a 20 %-loss relay) cost 3 probes and 3 RTO expiries,
#: a 15 s stall; copies apart draw an ACK each. The gap stays under
#: ``MIN_PROBE``.
RESEND_ECHOES = 2
ECHO_GAP = 0.01
#: After our side is closed, keep acking the peer's data/FIN this long.
LINGER_TIME = 10.0
#: After both FINs, keep the connection this long to absorb duplicates
#: (and re-ack a retransmitted FIN) rather than RESET them.
TIME_WAIT = 3.0
#: How long an accepted connection waits for the initiator's first DATA/FIN
#: (libutp waits forever; this bounds what spoofed SYNs can hold), and how
#: long once the application closed it.
SYN_RECV_TIMEOUT = 60.0
SYN_RECV_CLOSE_WAIT = 30.0
#: Send-buffer marks for pausing/resuming a registered producer (bytes not
#: yet packetised; up to SEND_CAP more may be in flight).
HIGH_WATER = 256 * 1024
LOW_WATER = 128 * 1024

_PACK_HEADER = HEADER.pack
_EMPTY = b""


class UTPError(Exception):
    """Base class of the errors a uTP connection fails with."""


class UTPTimeoutError(UTPError, error.TimeoutError):
    """No answer after the retry limit (libutp's ``UTP_ETIMEDOUT``)."""


class UTPConnectionRefusedError(UTPError, error.ConnectionRefusedError):
    """A RESET answered our SYN (``UTP_ECONNREFUSED``)."""


class UTPConnectionResetError(UTPError, error.ConnectionLost):
    """The peer sent a RESET on an established connection (``UTP_ECONNRESET``)."""


class IConnectionOwner(Interface):
    """
    What a :class:`UTPConnection` calls up through: the
    :class:`~txhyperswarm.utp.socket.UTPSocket` that made it and keeps its
    table entry.
    """

    dropped = Attribute(":class:`collections.Counter` of packets dropped, by reason.")

    def send_datagram(data, addr):
        """Send one datagram to ``addr`` (a checked ``(IPv4 literal, port)``); lossy."""

    def schedule_ack(conn):
        """Call ``conn.send_deferred_ack()`` at the end of this reactor turn."""

    def forget(conn):
        """``conn`` is done: drop it from the connection table."""

    def established(conn):
        """``conn``, accepted, left ``SYN_RECV``: the initiator's first DATA/FIN came."""

    def reset_sent(conn):
        """``conn`` sent a RESET: do not answer its peer's late packets with another."""

    def address():
        """The local ``(host, port)``."""


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates towards zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q


class _Out:
    """An outgoing packet that has a sequence number and awaits its ack."""

    __slots__ = ("seq", "type", "payload", "transmissions", "sent_us", "lost")

    def __init__(self, seq: int, type: int, payload: bytes) -> None:
        self.seq = seq
        self.type = type
        self.payload = payload
        self.transmissions = 0
        self.sent_us = 0
        self.lost = False


@implementer(
    interfaces.ITransport,
    interfaces.IPushProducer,
    interfaces.IConsumer,
)
class UTPConnection:
    """
    A uTP connection and the transport its protocol writes to.

    Made by :class:`txhyperswarm.utp.socket.UTPSocket`; users get it as
    ``protocol.transport``.

    Transport: :meth:`write`, :meth:`writeSequence`, :meth:`loseConnection`
    (flush, FIN, ``connectionLost(ConnectionDone)`` once the FIN is acked),
    :meth:`loseWriteConnection` (half-close), :meth:`abortConnection`
    (RESET now, ``connectionLost(ConnectionAborted)``), :meth:`getPeer` /
    :meth:`getHost` (``IPv4Address("UDP", host, port)``).

    Producer (reading): :meth:`pauseProducing` stops ``dataReceived`` calls;
    unread data shrinks the advertised window so the peer stops sending.

    Consumer (writing): :meth:`registerProducer`; a streaming producer is
    paused when more than ``HIGH_WATER`` bytes wait to be sent and resumed
    below ``LOW_WATER``.

    A protocol providing ``IHalfCloseableProtocol`` gets
    ``readConnectionLost()`` at the peer's FIN; any other protocol's
    connection is closed from our side then (like ``@hyperswarm/network``
    does with ``socket.on('end', () => socket.end())``).

    ``connectionLost`` reasons: ``ConnectionDone`` (orderly),
    ``ConnectionAborted`` (:meth:`abortConnection`),
    :class:`UTPConnectionResetError`, :class:`UTPTimeoutError`.

    Close state: :attr:`state` (:class:`State`), :attr:`sending`
    (:class:`Sending`), :attr:`receiving` (:class:`Receiving`) and
    ``disconnecting``.

    Socket side (what the owning socket calls; it provides
    :class:`IConnectionOwner`): :meth:`start_connect`, :meth:`accept`,
    :meth:`attach`, :meth:`refuse`, :meth:`packet_received`,
    :meth:`send_deferred_ack`, :meth:`rearm_timer`, :meth:`shutdown`;
    :attr:`remote` and :attr:`recv_id` key its table entry.
    """

    log = Logger()

    def __init__(
        self,
        owner,
        clock,
        addr,
        recv_id: int,
        send_id: int,
        seq_nr: int,
        *,
        initiator: bool,
        recv_buffer: int = RECV_BUFFER,
        monotonic: Optional[Callable[[], float]] = None,
    ) -> None:
        self._owner = owner
        self._send_datagram = owner.send_datagram
        self._clock = clock
        self._mono = monotonic or clock.seconds
        self._addr = addr
        #: the peer's ``(host, port)``
        self.remote = addr
        self._peer = IPv4Address("UDP", addr[0], addr[1])
        self.recv_id = recv_id
        self.send_id = send_id
        self.initiator = initiator
        #: :class:`State`; with :attr:`sending`, :attr:`receiving` and
        #: ``disconnecting`` (``loseConnection`` asked) the whole close state
        self.state = SYN_SENT if initiator else SYN_RECV
        self.sending = Sending.OPEN
        self.receiving = Receiving.OPEN
        self.protocol = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        # send side
        self._seq_nr = seq_nr & M16  # next number to allocate
        self._oldest = self._seq_nr  # oldest un-acked
        self._inflight = {}
        self._cur_window = 0
        self._sendbuf = bytearray()
        self._resend = deque()
        self._peer_wnd = 255 * PROBE_WINDOW
        self._zero_window_at: Optional[float] = None
        self._fast_resend_seq = self._seq_nr
        self._dup_acks = 0
        self._flush_call = None
        # receive side
        self._ack_nr = 0
        self._reorder = {}
        self._reorder_bytes = 0
        self._eof_seq: Optional[int] = None  # the peer's FIN, once seen
        self._reading_paused = False
        self._readbuf = deque()
        self._readbuf_bytes = 0
        self._recv_buffer = recv_buffer
        self._reply_micro = 0
        self._ack_pending = False
        self._unacked = 0
        self._ooo_at = -1e9  # last out-of-order arrival
        self._ack_clean = True
        self._syn_seq = 0
        self._half_open_timeout = SYN_RECV_TIMEOUT
        # timers (seconds / milliseconds as libutp)
        self._rtt = 0
        self._rtt_var = 800
        self.rto = 3000
        self._retransmit_timeout = SYN_TIMEOUT_MS
        self._retransmit_count = 0
        self._rto_at: Optional[float] = None
        self._last_send = self._mono()
        #: When (``monotonic`` seconds) the last packet from the peer was
        #: taken (any but a stray SYN or RESET; creation time before the
        #: first): what an idle check compares with the keepalive period.
        self.last_received = self._last_send
        self._timer = None
        self._timer_at = 0.0
        self._linger_at: Optional[float] = None
        self._close_wait_at: Optional[float] = None
        self.cc = LEDBAT(PACKET_SIZE, SEND_CAP)
        # write side flow control
        self._producer = None
        self._streaming = False
        self._producer_paused = False
        self._pulling = False
        # initiator: how to finish connecting
        self._factory = None
        self._connect_d: Optional[defer.Deferred] = None
        self._connect_by: Optional[float] = None  # give up connecting then
        self._connect_timeout: Optional[float] = None
        # counters
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_resent = 0
        #: packets resent because selective or duplicate acks showed them lost
        self.fast_resends = 0
        #: loss probes that fired (see ``MIN_PROBE``)
        self.probes = 0
        self._srtt_us = 0
        self._probe_at: Optional[float] = None
        self._probe_count = 0
        #: the next copy of a resent oldest packet (see ``RESEND_ECHOES``)
        self._echo_at: Optional[float] = None
        self._echo_seq = 0
        self._echoes_left = 0
        #: cap on the advertised window (the kernel buffer's capacity, set by the socket)
        self.window_cap = recv_buffer
        #: retransmission timeouts that expired (each one stalls for the RTO)
        self.timeouts = 0

    # ------------------------------------------------------------------ time

    def _now_us(self, now: float) -> int:
        return int(now * 1_000_000) & M32

    def _arm(self, at: float) -> None:
        """Make sure the timer fires no later than ``at``."""
        t = self._timer
        if t is not None:
            if self._timer_at <= at:
                return
            if t.active():
                t.cancel()
        self._timer_at = at
        self._timer = self._clock.callLater(max(0.0, at - self._mono()), self._on_timer)

    def _stop_timer(self) -> None:
        t, self._timer = self._timer, None
        if t is not None and t.active():
            t.cancel()

    def rearm_timer(self) -> None:
        """
        (Socket side) The reactor's clock jumped: schedule the timer again
        from the deadlines, which are on the monotonic clock.
        """
        at = self._next_deadline()
        self._stop_timer()
        if at is not None and (self.state <= CONNECTED or self._linger_at is not None):
            self._arm(at)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush_call = self._clock.callLater(0, self._scheduled_flush)

    def _next_deadline(self) -> Optional[float]:
        cands = []
        if self._rto_at is not None:
            cands.append(self._rto_at)
        if self._probe_at is not None:
            cands.append(self._probe_at)
        if self._echo_at is not None:
            cands.append(self._echo_at)
        if self.state == CONNECTED:
            cands.append(self._last_send + KEEPALIVE)
        if self._zero_window_at is not None:
            cands.append(self._zero_window_at)
        if self._linger_at is not None:
            cands.append(self._linger_at)
        if self._close_wait_at is not None:
            cands.append(self._close_wait_at)
        if self._connect_by is not None:
            cands.append(self._connect_by)
        return min(cands) if cands else None

    def _on_timer(self) -> None:
        self._timer = None
        now = self._mono()
        eps = 1e-6
        if self._linger_at is not None and now + eps >= self._linger_at:
            self._linger_at = None
            self._forget()
            return
        if self._connect_by is not None and now + eps >= self._connect_by:
            self._fail(
                UTPTimeoutError(
                    f"uTP connect to {self._addr[0]}:{self._addr[1]} timed out after"
                    f" {self._connect_timeout:g}s"
                )
            )
            return
        if self._close_wait_at is not None and now + eps >= self._close_wait_at:
            self._close_wait_at = None
            if self.disconnecting:
                self._finish(Failure(error.ConnectionDone()))
            else:
                self._finish(
                    Failure(
                        UTPTimeoutError(
                            f"uTP connection from {self._addr[0]}:{self._addr[1]} sent no data"
                            f" within {self._half_open_timeout:g}s of its SYN"
                        )
                    )
                )
            return
        if self._rto_at is not None and now + eps >= self._rto_at:
            self._probe_at = None
            self._on_rto(now)
            if self.state > CONNECTED:
                return
        elif self._probe_at is not None and now + eps >= self._probe_at:
            self._on_probe(now)
        if self._echo_at is not None and now + eps >= self._echo_at:
            self._send_echo(now)
        if self._zero_window_at is not None and now + eps >= self._zero_window_at:
            self._zero_window_at = None
            if self._peer_wnd == 0:
                self._peer_wnd = PROBE_WINDOW
                self._flush()
        if self.state == CONNECTED and now + eps >= self._last_send + KEEPALIVE:
            # unlike libutp, also after our FIN: a half-closed connection
            # whose peer vanished learns it from the RESET this draws
            self._send_state(keepalive=True)
        if self.state > CONNECTED and self._linger_at is None:
            return
        at = self._next_deadline()
        if at is not None:
            self._arm(at)

    def _on_rto(self, now: float) -> None:
        outstanding = (self._seq_nr - self._oldest) & M16
        if not outstanding:
            self._rto_at = None
            return
        if self._retransmit_count >= MAX_RETRANSMITS or (
            self.state == SYN_SENT and self._retransmit_count >= MAX_SYN_RETRANSMITS
        ):
            what = "connect" if self.state == SYN_SENT else "connection"
            self._fail(
                UTPTimeoutError(
                    f"uTP {what} to {self._addr[0]}:{self._addr[1]} timed out after "
                    f"{self._retransmit_count + 1} transmissions"
                )
            )
            return
        self.timeouts += 1
        self._retransmit_timeout *= 2
        self._rto_at = now + self._retransmit_timeout / 1000.0
        self.cc.on_timeout(self._cur_window)
        self._dup_acks = 0
        # every un-acked packet is presumed lost; resend the oldest now
        self._presume_lost(outstanding, sent_only=False)
        self._retransmit_count += 1
        self._resend_oldest()

    def _presume_lost(self, outstanding: int, sent_only: bool) -> None:
        """Mark the outstanding packets lost (``sent_only``: those sent at
        least once) and queue them for resending, oldest first."""
        inflight = self._inflight
        resend = deque()
        seq = self._oldest
        for _ in range(outstanding):
            e = inflight.get(seq)
            if e is not None and (e.transmissions or not sent_only):
                if not e.lost:
                    e.lost = True
                    self._cur_window -= len(e.payload)
                resend.append(seq)
            seq = (seq + 1) & M16
        self._resend = resend
        self._fast_resend_seq = self._seq_nr

    def _resend_oldest(self) -> None:
        """Resend the first queued packet now, whatever the window says."""
        resend, inflight = self._resend, self._inflight
        while resend:
            e = inflight.get(resend.popleft())
            if e is not None:
                e.lost = False
                self._cur_window += len(e.payload)
                self.packets_resent += 1
                self._transmit(e)
                if e.type != ST_SYN and RESEND_ECHOES:
                    # again, apart: when every copy or its ack is lost the
                    # connection waits a doubled timeout (and dies after 4)
                    self._echo_seq = e.seq
                    self._echoes_left = RESEND_ECHOES
                    self._echo_at = at = self._mono() + ECHO_GAP
                    self._arm(at)
                break

    def _send_echo(self, now: float) -> None:
        """The next copy of the resent oldest packet, unless it was acked."""
        self._echo_at = None
        if self.state != CONNECTED:
            return
        e = self._inflight.get(self._echo_seq)
        if e is None or e.lost:
            return
        self._transmit(e)
        self._echoes_left -= 1
        if self._echoes_left > 0:
            self._echo_at = now + ECHO_GAP

    def _probe_interval(self) -> float:
        t = PROBE_RTTS * self._srtt_us / 1e6
        if t < MIN_PROBE:
            t = MIN_PROBE
        t *= 1 << self._probe_count
        half_rto = self._retransmit_timeout / 2000.0
        return t if t < half_rto else half_rto

    def _on_probe(self, now: float) -> None:
        """Nothing acked for a few RTTs: resend what is outstanding (see ``MIN_PROBE``)."""
        self._probe_at = None
        if self.state != CONNECTED or self._probe_count >= MAX_PROBES:
            return
        outstanding = (self._seq_nr - self._oldest) & M16
        if not outstanding:
            return
        self.probes += 1
        self._probe_count += 1
        self.cc.on_loss(now)
        self._presume_lost(outstanding, sent_only=True)
        self._dup_acks = 0
        self._resend_oldest()
        self._flush(tail=self._flush_call is None)
        self._probe_at = now + self._probe_interval()

    # ------------------------------------------------------------------ sending

    def _send_raw(self, data: bytes) -> None:
        self._last_send = self._mono()
        self._send_datagram(data, self._addr)

    def _adv_window(self) -> int:
        w = self._recv_buffer - self._readbuf_bytes
        if w > self.window_cap:
            return self.window_cap
        return w if w > 0 else 0

    def _transmit(self, e: _Out) -> None:
        now = self._mono()
        now_us = int(now * 1_000_000) & M32
        e.transmissions += 1
        e.sent_us = now_us
        t = e.type
        if t == ST_SYN:
            data = _PACK_HEADER(0x41, 0, self.recv_id, now_us, 0, self._adv_window(), e.seq, 0)
        else:
            data = _PACK_HEADER(
                (t << 4) | 1,
                0,
                self.send_id,
                now_us,
                self._reply_micro,
                self._adv_window(),
                e.seq,
                self._ack_nr,
            )
            self._ack_pending = False
            if e.payload:
                data += e.payload
        self._last_send = now
        self._send_datagram(data, self._addr)
        if self._rto_at is None:
            self._rto_at = now + self._retransmit_timeout / 1000.0
            self._arm(self._rto_at)
        if self._probe_at is None and t != ST_SYN:
            self._probe_at = at = now + self._probe_interval()
            if at < self._timer_at or self._timer is None:
                self._arm(at)

    def _send_state(self, keepalive: bool = False, syn_reply: bool = False) -> None:
        now_us = self._now_us(self._mono())
        self._ack_pending = False
        self._unacked = 0
        ack = self._ack_nr
        if keepalive:
            ack = (ack - 1) & M16
        if syn_reply:
            self._send_raw(
                _PACK_HEADER(0x21, 0, self.send_id, now_us, 0, self._adv_window(), self._seq_nr, ack)
            )
            return
        head = _PACK_HEADER
        if self._reorder and not self.receiving and not keepalive:
            mask = bytearray(4)
            base = ack + 2
            reorder = self._reorder
            for i in range(32):
                if ((base + i) & M16) in reorder:
                    mask[i >> 3] |= 1 << (i & 7)
            data = (
                head(0x21, EXT_SACK, self.send_id, now_us, self._reply_micro,
                     self._adv_window(), self._seq_nr, ack)
                + b"\x00\x04"
                + bytes(mask)
            )
        else:
            data = head(0x21, 0, self.send_id, now_us, self._reply_micro,
                        self._adv_window(), self._seq_nr, ack)
        self._send_raw(data)

    def send_deferred_ack(self) -> None:
        """(Socket side) Flush a deferred ACK (once per reactor turn, see ``schedule_ack``)."""
        if self._ack_pending and (self.state == CONNECTED or self.state == LINGER):
            self._send_state()

    def _schedule_ack(self) -> None:
        if not self._ack_pending:
            self._ack_pending = True
            self._owner.schedule_ack(self)

    def _send_syn(self) -> None:
        e = _Out(self._seq_nr, ST_SYN, _EMPTY)
        self._syn_seq = self._seq_nr
        self._inflight[self._seq_nr] = e
        self._seq_nr = (self._seq_nr + 1) & M16
        self._transmit(e)

    def _send_reset(self) -> None:
        self._send_raw(_PACK_HEADER(0x31, 0, self.send_id, 0, 0, 0, self._seq_nr, self._ack_nr))
        self._owner.reset_sent(self)

    def _flush(self, tail: bool = True) -> None:
        """Send what the windows allow: resends first, then new data, then FIN."""
        if self.state != CONNECTED:
            return
        inflight = self._inflight
        limit = self.cc.max_window
        if self._peer_wnd < limit:
            limit = self._peer_wnd
        if SEND_CAP < limit:
            limit = SEND_CAP
        resend = self._resend
        while resend:
            e = inflight.get(resend[0])
            if e is None or not e.lost:
                resend.popleft()
                continue
            n = len(e.payload)
            if self._cur_window and self._cur_window + n > limit:
                self.cc.last_window_limited = self._mono()
                return
            resend.popleft()
            e.lost = False
            self._cur_window += n
            self.packets_resent += 1
            self._transmit(e)
        buf = self._sendbuf
        sent = False
        while buf:
            n = len(buf)
            if n > PACKET_SIZE:
                n = PACKET_SIZE
            elif not tail and n < PACKET_SIZE:
                break
            if ((self._seq_nr - self._oldest) & M16) >= MAX_OUTSTANDING:
                self.cc.last_window_limited = self._mono()
                break
            cw = self._cur_window
            if cw + n > limit and (cw or limit == 0):
                self.cc.last_window_limited = self._mono()
                if self._peer_wnd == 0 and not cw and self._zero_window_at is None:
                    self._zero_window_at = self._mono() + ZERO_WINDOW_PROBE
                    self._arm(self._zero_window_at)
                break
            seq = self._seq_nr
            if n == len(buf):
                payload = bytes(buf)
                buf.clear()
            else:
                payload = bytes(buf[:n])
                del buf[:n]
            e = _Out(seq, ST_DATA, payload)
            inflight[seq] = e
            self._seq_nr = (seq + 1) & M16
            self._cur_window = cw + n
            self.bytes_sent += n
            self._transmit(e)
            sent = True
        if (
            not buf
            and self.sending == FIN_QUEUED
            and ((self._seq_nr - self._oldest) & M16) < MAX_OUTSTANDING
        ):
            seq = self._seq_nr
            e = _Out(seq, ST_FIN, _EMPTY)
            inflight[seq] = e
            self.sending = FIN_SENT
            self._seq_nr = (seq + 1) & M16
            self._transmit(e)
        if sent or self._producer is not None:
            self._check_producer()

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._flush()

    # ------------------------------------------------------------------ receiving

    def packet_received(self, p, now: Optional[float] = None) -> None:
        """
        (Socket side) Handle one decoded packet addressed to this connection;
        ``now`` is the monotonic clock's reading when the socket already took
        one for this datagram.
        """
        t = p.type
        state = self.state
        if t == ST_RESET:
            self._on_reset()
            return
        if t == ST_SYN:
            if state == SYN_RECV and p.seq_nr == self._ack_nr:
                # the initiator did not get our reply: say it again (libutp
                # stays silent; answering only helps)
                self._send_state(syn_reply=True)
            return
        seq_nr = self._seq_nr
        outstanding = (seq_nr - self._oldest) & M16
        ack = p.ack_nr
        if ((seq_nr - 1 - ack) & M16) > outstanding + 3:
            self._owner.dropped["bad_ack"] += 1
            return
        if now is None:
            now = self._mono()
        self.last_received = now
        now_us = int(now * 1_000_000) & M32
        if p.timestamp:
            rm = (now_us - p.timestamp) & M32
            self._reply_micro = rm if rm else 1
        if state == SYN_SENT:
            self._ack_nr = (p.seq_nr - 1) & M16
        d = (p.seq_nr - self._ack_nr - 1) & M16
        if d >= REORDER_LIMIT:
            if d >= 65536 - REORDER_LIMIT and t != ST_STATE:
                self._ooo_at = now  # a resend of what we had: our ack was lost
                self._schedule_ack()  # an old duplicate: re-ack it
            return
        if state > CONNECTED:
            self._zombie_packet(p, d)
            return
        # the peer's window
        wnd = p.wnd_size
        same_window = wnd == self._peer_wnd
        self._peer_wnd = wnd
        if wnd and self._zero_window_at is not None:
            self._zero_window_at = None
        # cumulative ack
        acked_bytes = 0
        min_rtt = None
        self._ack_clean = True
        acks = (ack - self._oldest + 1) & M16
        if acks > outstanding:
            acks = 0
        if acks:
            acked_bytes, min_rtt = self._ack_through(acks, now_us)
            self._retransmit_timeout = self.rto
            self._retransmit_count = 0
            self._dup_acks = 0
            if self._oldest != self._seq_nr:
                self._rto_at = at = now + self.rto / 1000.0
                if at < self._timer_at or self._timer is None:
                    self._arm(at)
            else:
                self._rto_at = None
            if self.sending == FIN_SENT and self._oldest == self._seq_nr:
                # every packet up to and including our FIN is acked
                # (libutp's fin_sent_acked); a selective ack of the FIN alone
                # does not count
                self.sending = FIN_ACKED
        exts = p.extensions
        if exts:
            for et, data in exts:
                if et == EXT_SACK:
                    b, r = self._selective_ack(ack, data, now, now_us)
                    acked_bytes += b
                    if r is not None and (min_rtt is None or r < min_rtt):
                        min_rtt = r
                    break
        elif (
            t == ST_STATE
            and not acks
            and outstanding
            and same_window  # a window update is not a duplicate ack
            and ack == ((self._oldest - 1) & M16)
        ):
            self._dup_acks += 1
            if self._dup_acks >= 3:
                self._fast_resend_oldest(now)
        if acked_bytes:
            self._probe_count = 0
            self._probe_at = now + self._probe_interval() if self._oldest != self._seq_nr else None
            tsd = p.timestamp_diff
            if tsd and tsd != 0x7FFFFFFF:
                self.cc.on_ack(acked_bytes, tsd, min_rtt, now)
        # state changes
        if state == SYN_SENT:
            if t != ST_STATE:
                return  # libutp discards data before the connect completes
            self._on_connected()
            if self.state > CONNECTED:
                return
        elif state == SYN_RECV:
            if t == ST_STATE:
                return
            self.state = CONNECTED
            self._close_wait_at = None
            self._arm(now + KEEPALIVE)
            self._owner.established(self)
            acks = acks or -1  # flush what the application parked
        # data
        if t == ST_DATA or t == ST_FIN:
            if t == ST_FIN and self._eof_seq is None:
                self._eof_seq = p.seq_nr
            if d == 0:
                if p.payload and self._readbuf_bytes >= 2 * self._recv_buffer:
                    # the peer ignores our advertised window while the reader
                    # is paused: refuse (no ack), so memory stays bounded
                    self._owner.dropped["window_overrun"] += 1
                    return
                self._ack_nr = p.seq_nr
                if p.payload:
                    self._deliver(p.payload)
                reorder = self._reorder
                filled = bool(reorder)
                if reorder:
                    nxt = (self._ack_nr + 1) & M16
                    while nxt in reorder:
                        payload = reorder.pop(nxt)
                        self._reorder_bytes -= len(payload)
                        self._ack_nr = nxt
                        if payload:
                            self._deliver(payload)
                        nxt = (nxt + 1) & M16
                if self.state > CONNECTED:
                    return  # the protocol aborted while reading
                if self._ack_nr == self._eof_seq and not self.receiving:
                    self._reached_eof()
                else:
                    self._unacked += 1
                    if filled or self._unacked >= (
                        ACK_EVERY_LOSSY if now - self._ooo_at < LOSSY_MEMORY else ACK_EVERY
                    ):
                        self._send_state()
                    else:
                        self._schedule_ack()
            else:
                if p.seq_nr not in self._reorder and not (
                    self._eof_seq is not None and ((p.seq_nr - self._eof_seq) & M16) < 0x8000
                    and p.seq_nr != self._eof_seq
                ):
                    if self._reorder_bytes < 2 * self._recv_buffer:
                        self._reorder[p.seq_nr] = p.payload
                        self._reorder_bytes += len(p.payload)
                self._ooo_at = now
                self._send_state()  # at once: the sender's loss recovery runs on these
        if self.state > CONNECTED:
            return
        if acks or acked_bytes or self._resend or (wnd and self._sendbuf):
            self._flush(tail=self._flush_call is None)
        if self.sending >= FIN_ACKED:
            self._maybe_finish()

    def _ack_through(self, acks: int, now_us: int):
        """
        Pop ``acks`` packets from the oldest; returns (payload bytes, min rtt µs).

        RTT samples come from packets sent once (Karn), and — unlike libutp —
        none at all when this ack also covers a retransmitted packet: then
        the later packets sat in the peer's reorder buffer waiting for the
        hole to be filled, and their "RTT" would be the whole stall (seen as
        80 s RTOs under heavy loss).
        """
        inflight = self._inflight
        seq = self._oldest
        acked = 0
        samples = None
        clean = True
        pop = inflight.pop
        for _ in range(acks):
            e = pop(seq, None)
            if e is not None:
                n = len(e.payload)
                if not e.lost:
                    self._cur_window -= n
                acked += n
                if e.transmissions == 1:
                    if clean:
                        r = (now_us - e.sent_us) & M32
                        if samples is None:
                            samples = [r]
                        else:
                            samples.append(r)
                else:
                    clean = False
            seq = (seq + 1) & M16
        self._oldest = seq
        self._ack_clean = clean
        if not clean or samples is None:
            return acked, None
        for r in samples:
            self._rtt_sample(r)
        return acked, min(samples)

    def _rtt_sample(self, us: int) -> None:
        if us > 0x7FFFFFFF:
            return  # clock went backwards
        self._srtt_us = us if not self._srtt_us else self._srtt_us + ((us - self._srtt_us) >> 3)
        ms = us // 1000
        if self._rtt == 0:
            self._rtt = ms
            self._rtt_var = ms // 2
        else:
            delta = self._rtt - ms
            self._rtt_var += _cdiv(abs(delta) - self._rtt_var, 4)
            self._rtt = self._rtt - self._rtt // 8 + ms // 8
        rto = self._rtt + 4 * self._rtt_var
        self.rto = MIN_RTO_MS if rto < MIN_RTO_MS else MAX_RTO_MS if rto > MAX_RTO_MS else rto

    def _selective_ack(self, ack: int, mask: bytes, now: float, now_us: int):
        outstanding = (self._seq_nr - self._oldest) & M16
        if not outstanding:
            return 0, None
        inflight = self._inflight
        base = ack + 2
        seq_nr = self._seq_nr
        count = 0
        acked = 0
        min_rtt = None
        resends = []
        fast = self._fast_resend_seq
        bits = len(mask) * 8 - 1
        if bits > 1023:
            bits = 1023
        while bits >= -1:
            v = (base + bits) & M16
            i = bits
            bits -= 1
            if ((seq_nr - v - 1) & M16) >= outstanding - 1:
                continue  # not sent yet, or at/below the cumulative ack
            bit_set = i >= 0 and (mask[i >> 3] >> (i & 7)) & 1
            if bit_set:
                count += 1
            e = inflight.get(v)
            if e is None or not e.transmissions:
                continue
            if bit_set:
                del inflight[v]
                n = len(e.payload)
                if not e.lost:
                    self._cur_window -= n
                acked += n
                if e.transmissions == 1 and self._ack_clean:
                    # (not after a hole was filled by a retransmission: the
                    # packets entering the mask may have waited for it)
                    r = (now_us - e.sent_us) & M32
                    self._rtt_sample(r)
                    if min_rtt is None or r < min_rtt:
                        min_rtt = r
                continue
            if count >= 3 and ((v - fast) & M16) <= MAX_OUTSTANDING + 1:
                resends.append(v)
        if count >= 3 and ((base - 1 - fast) & M16) <= MAX_OUTSTANDING + 1:
            resends.append((base - 1) & M16)
        if resends:
            done = 0
            for v in reversed(resends):
                e = inflight.get(v)
                if e is None:
                    continue
                self._fast_resend(e)
                done += 1
                if done >= MAX_SACK_RESENDS:
                    break
            if done:
                self.cc.on_loss(now)
        return acked, min_rtt

    def _fast_resend_oldest(self, now: float) -> None:
        oldest = self._oldest
        if ((oldest - self._fast_resend_seq) & M16) > MAX_OUTSTANDING + 1:
            return  # already fast-resent in this window
        e = self._inflight.get(oldest)
        if e is None:
            return
        self._fast_resend(e)
        self._dup_acks = 0
        self.cc.on_loss(now)

    def _fast_resend(self, e: _Out) -> None:
        """Resend ``e`` now: selective acks or duplicate acks showed it lost."""
        if e.lost:
            e.lost = False
            self._cur_window += len(e.payload)
        self.packets_resent += 1
        self.fast_resends += 1
        self._transmit(e)
        self._fast_resend_seq = (e.seq + 1) & M16

    def _deliver(self, payload: bytes) -> None:
        self.bytes_received += len(payload)
        if self._reading_paused or self._readbuf:
            self._readbuf.append(payload)
            self._readbuf_bytes += len(payload)
            return
        if self.state >= LINGER or self.protocol is None:
            return
        try:
            self.protocol.dataReceived(payload)
        except Exception:
            self._protocol_failed()

    def _protocol_failed(self) -> None:
        """The protocol raised: like Twisted's TCP, drop the connection with that error."""
        f = Failure()
        self.log.failure("uTP protocol {proto!r} failed", f, proto=self.protocol)
        if self.state < LINGER:
            if self.state == CONNECTED or self.state == SYN_RECV:
                self._send_reset()
            self._finish(f)

    def _reached_eof(self) -> None:
        self.receiving = EOF
        # the reorder buffer beyond the FIN is garbage now
        if self._reorder:
            self._reorder.clear()
            self._reorder_bytes = 0
        self._send_state()  # ack the FIN at once
        if not self._readbuf:
            self._tell_eof()

    def _tell_eof(self) -> None:
        if self.receiving != EOF or self.state >= LINGER:
            return
        self.receiving = EOF_TOLD
        proto = self.protocol
        if proto is not None and interfaces.IHalfCloseableProtocol.providedBy(proto):
            try:
                proto.readConnectionLost()
            except Exception:
                self.log.failure("readConnectionLost failed")
                self.loseConnection()
            self._maybe_finish()
        else:
            self.loseConnection()

    def _on_reset(self) -> None:
        if self.state > CONNECTED:
            self._forget()
            return
        if self.receiving and not self._sendbuf and not any(e.payload for e in self._inflight.values()):
            # The peer sent everything (its FIN is consumed) and nothing of
            # ours is lost: utp-native frees its socket once its FIN is acked
            # and our late packets draw a RESET (utp.md 5.4). An orderly end,
            # once a paused reader has had what is buffered.
            if self._readbuf:
                self.state = DRAINING
                self._rto_at = None
                self._probe_at = None
                self._echo_at = None
                self._zero_window_at = None
                self._inflight.clear()
                self._resend.clear()
                self._forget()
                return
            self._finish(Failure(error.ConnectionDone()))
            return
        if self.state == SYN_SENT:
            self._fail(
                UTPConnectionRefusedError(
                    f"uTP connect to {self._addr[0]}:{self._addr[1]} refused (RESET)"
                )
            )
        else:
            self._fail(
                UTPConnectionResetError(
                    f"uTP connection to {self._addr[0]}:{self._addr[1]} reset by peer"
                )
            )

    def _zombie_packet(self, p, d: int) -> None:
        """After we are done: ack the peer's data (discarding it) until its FIN."""
        t = p.type
        if t != ST_DATA and t != ST_FIN:
            return
        if t == ST_FIN and self._eof_seq is None:
            self._eof_seq = p.seq_nr
        if d == 0:
            self._ack_nr = p.seq_nr
            nxt = (self._ack_nr + 1) & M16
            while nxt in self._reorder:
                del self._reorder[nxt]
                self._ack_nr = nxt
                nxt = (nxt + 1) & M16
        elif len(self._reorder) < REORDER_LIMIT:
            self._reorder[p.seq_nr] = _EMPTY
        if self._ack_nr == self._eof_seq and not self.receiving:
            self.receiving = EOF
            self._reorder.clear()
            self._send_state()
            # the peer is done too: only absorb duplicates a little longer
            self._linger_at = min(self._linger_at or 1e300, self._mono() + TIME_WAIT)
            self._stop_timer()
            self._arm(self._linger_at)
        else:
            self._schedule_ack()

    # ------------------------------------------------------------------ lifecycle

    def start_connect(self, factory, timeout: Optional[float] = None) -> defer.Deferred:
        """
        (Socket side) Send the SYN.

        :param timeout: seconds to give up after; ``None`` for libutp's own
            limit (3 SYNs, ``CONNECT_TIMEOUT``).
        :returns: Deferred firing with the protocol ``factory`` builds once
            the peer answered; errbacks with :class:`UTPTimeoutError`,
            :class:`UTPConnectionRefusedError` (RESET) or
            ``ConnectingCancelledError`` (cancelled, or the socket closed).
        """
        self._factory = factory
        d = self._connect_d = defer.Deferred(self._cancel_connect)
        if timeout is not None:
            self._connect_by = self._mono() + timeout
            self._connect_timeout = timeout
        self._send_syn()
        if self._connect_by is not None:
            self._arm(self._connect_by)
        return d

    def _take_connect_d(self) -> Optional[defer.Deferred]:
        """The pending connect Deferred, now settled by the caller (``None`` if none)."""
        d, self._connect_d = self._connect_d, None
        self._connect_by = None
        return d

    def _on_connected(self) -> None:
        self.state = CONNECTED
        self._retransmit_count = 0
        d = self._take_connect_d()
        self._arm(self._mono() + KEEPALIVE)
        factory, self._factory = self._factory, None
        try:
            proto = factory.buildProtocol(self._peer)
        except Exception as e:
            self._abort_silently()
            if d is not None:
                d.errback(e)
            return
        if proto is None:
            self._abort_silently(reset=True)
            if d is not None:
                d.errback(error.ConnectError("factory refused the connection"))
            return
        self.attach(proto)
        if d is not None:
            d.callback(proto)

    def accept(self, syn, timeout: float = SYN_RECV_TIMEOUT) -> None:
        """
        (Socket side) Set up from the initiator's SYN and answer it (acceptor
        side); without the initiator's first DATA/FIN within ``timeout``
        seconds the connection ends with :class:`UTPTimeoutError`.
        """
        self._ack_nr = syn.seq_nr
        self._syn_seq = syn.seq_nr
        self._peer_wnd = syn.wnd_size
        self._half_open_timeout = timeout
        self._send_state(syn_reply=True)
        self._close_wait_at = self._mono() + timeout
        self._arm(self._close_wait_at)

    def evict(self) -> None:
        """
        (Socket side) End a half-open (``SYN_RECV``) connection now, sending
        nothing (the socket makes room for newer handshakes): its protocol
        gets ``connectionLost`` with :class:`UTPTimeoutError`. Does nothing
        in any other state.
        """
        if self.state != SYN_RECV:
            return
        self._finish(
            Failure(
                UTPTimeoutError(
                    f"uTP connection from {self._addr[0]}:{self._addr[1]} evicted: too many"
                    " half-open connections"
                )
            )
        )

    def attach(self, proto) -> None:
        """(Socket side) Run ``proto`` on this connection (``makeConnection``)."""
        self.protocol = proto
        self.connected = True
        proto.makeConnection(self)

    def refuse(self) -> None:
        """(Socket side) The factory built no protocol: RESET and forget."""
        self._abort_silently(reset=True)

    def shutdown(self) -> None:
        """
        (Socket side) The socket is closing: a connect in progress fails with
        ``ConnectingCancelledError``, an open connection is aborted (RESET,
        ``connectionLost(ConnectionAborted)``), a finished one is forgotten.
        """
        if self.state >= LINGER:
            self._forget()
        elif self.protocol is None and self.initiator:
            d = self._take_connect_d()
            self._abort_silently()
            if d is not None:
                d.errback(error.ConnectingCancelledError(self._peer))
        elif self.state == DRAINING:
            self._finish(Failure(error.ConnectionAborted()))
        else:
            self.abortConnection()

    def _cancel_connect(self, d) -> None:
        """Canceller of the connect Deferred: drop the half-open connection."""
        self._take_connect_d()
        self._abort_silently()
        d.errback(error.ConnectingCancelledError(self._peer))

    def _abort_silently(self, reset: bool = False) -> None:
        if reset:
            self._send_reset()
        self.state = CLOSED
        self._stop_timer()
        self._owner.forget(self)

    def _fail(self, exc: Exception) -> None:
        """Die with ``exc`` (timeout, reset)."""
        if self.state == SYN_SENT:
            d = self._take_connect_d()
            self._abort_silently()
            if d is not None:
                d.errback(exc)
            return
        self._finish(Failure(exc))

    def _maybe_finish(self) -> None:
        """
        Once our FIN is acked: tell a half-closeable protocol
        ``writeConnectionLost`` (``FIN_ACKED`` -> ``DONE``), and end in
        order when the peer's EOF was told or ``loseConnection`` asked.
        """
        if self.state >= LINGER or self.sending < FIN_ACKED:
            return
        if self.sending == FIN_ACKED:
            self.sending = WRITE_DONE
            proto = self.protocol
            if not self.disconnecting and proto is not None and interfaces.IHalfCloseableProtocol.providedBy(proto):
                try:
                    proto.writeConnectionLost()
                except Exception:
                    self.log.failure("writeConnectionLost failed")
        if self.state == CONNECTED and (self.receiving == EOF_TOLD or self.disconnecting):
            self._finish(Failure(error.ConnectionDone()), linger=True)

    def _finish(self, reason: Failure, linger: bool = False) -> None:
        """
        Tell the protocol ``connectionLost(reason)`` once; then ``LINGER``
        (``linger``: an orderly close) or ``CLOSED`` (forgotten now).
        """
        if self.state >= LINGER:
            return
        self.connected = False
        self.disconnected = True
        self.state = LINGER if linger else CLOSED
        self._rto_at = None
        self._probe_at = None
        self._echo_at = None
        self._zero_window_at = None
        self._close_wait_at = None
        self._sendbuf.clear()
        self._readbuf.clear()
        self._readbuf_bytes = 0
        self._resend.clear()
        self._inflight.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if linger:
            # Stay in the table as a zombie: ack the peer's data and FIN
            # (discarding data) until its FIN, then a short TIME_WAIT for
            # duplicates, instead of answering them with RESETs.
            self._stop_timer()
            self._linger_at = self._mono() + (TIME_WAIT if self.receiving else LINGER_TIME)
            self._arm(self._linger_at)
        else:
            self._forget()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure("stopProducing failed")
        proto = self.protocol
        if proto is not None:
            try:
                proto.connectionLost(reason)
            except Exception:
                self.log.failure("connectionLost failed")

    def _forget(self) -> None:
        self._stop_timer()
        self._linger_at = None
        if self.state == LINGER:
            self.state = CLOSED
        self._owner.forget(self)

    # ------------------------------------------------------------------ ITransport

    def write(self, data) -> None:
        """Queue bytes for sending (ignored once the write side is closed)."""
        if self.sending or self.state > CONNECTED or not data:
            return
        buf = self._sendbuf
        buf += data
        if self.state == CONNECTED:
            if len(buf) >= PACKET_SIZE:
                self._flush(tail=False)
            if buf and self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self._scheduled_flush)
        if self._producer is not None and len(buf) > HIGH_WATER:
            self._check_producer()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Send what is buffered, then a FIN; ``connectionLost(ConnectionDone)``
        once the FIN is acked (the peer's later data is acked and dropped).
        """
        if self.state > CONNECTED or self.disconnecting:
            return
        self.disconnecting = True
        if self.state == SYN_RECV:
            # libutp acceptors cannot send before the initiator's first packet
            if not self.sending:
                self.sending = FIN_QUEUED
            at = self._mono() + SYN_RECV_CLOSE_WAIT
            if self._close_wait_at is None or at < self._close_wait_at:
                self._close_wait_at = at
                self._arm(at)
            return
        self._close_write()

    def loseWriteConnection(self) -> None:
        """Half-close: send buffered data and a FIN, keep reading."""
        if self.state > CONNECTED or self.sending:
            return
        self._close_write()

    def _close_write(self) -> None:
        if not self.sending:
            self.sending = FIN_QUEUED
        if self.sending >= FIN_ACKED:
            self._maybe_finish()
            return
        if self.state == CONNECTED:
            self._flush()

    def abortConnection(self) -> None:
        """Send a RESET and drop everything: ``connectionLost(ConnectionAborted)``."""
        if self.state >= LINGER:
            return
        if self.state == CONNECTED or self.state == SYN_RECV:
            self._send_reset()
        self._finish(Failure(error.ConnectionAborted()))

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        host, port = self._owner.address()
        return IPv4Address("UDP", host, port)

    # ------------------------------------------------------------------ IPushProducer (reading)

    def pauseProducing(self) -> None:
        """Stop delivering data; the advertised window shrinks as data waits."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """Deliver what waited, then tell the peer the window opened."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._drain_readbuf()

    def stopProducing(self) -> None:
        """As for TCP: close the connection (orderly)."""
        self.loseConnection()

    def _drain_readbuf(self) -> None:
        rb = self._readbuf
        was_small = self._readbuf_bytes > self._recv_buffer // 2
        while rb and not self._reading_paused and self.state < LINGER:
            data = rb.popleft()
            self._readbuf_bytes -= len(data)
            if self.protocol is not None:
                try:
                    self.protocol.dataReceived(data)
                except Exception:
                    self._protocol_failed()
        if self.state >= LINGER:
            return
        if not rb and self.receiving == EOF:
            self._tell_eof()
            if self.state == DRAINING:
                self._finish(Failure(error.ConnectionDone()))
        elif was_small and self._readbuf_bytes <= self._recv_buffer // 2 and self.state == CONNECTED:
            self._send_state()  # window update

    # ------------------------------------------------------------------ IConsumer (writing)

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}: {self._producer!r} is registered")
        if self.state >= LINGER:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        if not streaming:
            self._pull()
        else:
            self._check_producer()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False
        if self.sending and self.state == CONNECTED:
            self._flush()

    def _check_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        n = len(self._sendbuf)
        if self._streaming:
            if not self._producer_paused and n > HIGH_WATER:
                self._producer_paused = True
                producer.pauseProducing()
            elif self._producer_paused and n <= LOW_WATER:
                self._producer_paused = False
                producer.resumeProducing()
        elif n <= LOW_WATER:
            self._pull()

    def _pull(self) -> None:
        if self._pulling:
            return
        self._pulling = True
        try:
            for _ in range(1024):
                producer = self._producer
                if producer is None or self._streaming or self.state >= LINGER:
                    break
                if len(self._sendbuf) > LOW_WATER:
                    break
                before = len(self._sendbuf)
                producer.resumeProducing()
                if len(self._sendbuf) == before:
                    break
        finally:
            self._pulling = False

    # ------------------------------------------------------------------ introspection

    @property
    def rtt(self) -> int:
        """Smoothed RTT in ms (libutp's integer estimate)."""
        return self._rtt

    @property
    def retransmit_timeout(self) -> int:
        """The current retransmission timeout in ms (doubles on each expiry)."""
        return self._retransmit_timeout

    @property
    def send_buffer_size(self) -> int:
        """Bytes written and not yet packetised."""
        return len(self._sendbuf)

    @property
    def oldest_unacked(self) -> int:
        """Sequence number of our oldest packet not cumulatively acked yet
        (moves on as the peer acks in order)."""
        return self._oldest

    @property
    def bytes_in_flight(self) -> int:
        return self._cur_window

    @property
    def read_buffered(self) -> int:
        """Payload bytes received in order and not delivered yet (a paused
        reader): at most twice the receive buffer plus what the out-of-order
        buffer releases."""
        return self._readbuf_bytes

    @property
    def reorder_buffered(self) -> int:
        """Payload bytes held out of order: at most twice the receive buffer
        (plus one packet), and never for a number ``REORDER_LIMIT`` or more
        beyond the next expected one."""
        return self._reorder_bytes

    def __repr__(self) -> str:
        return (
            f"<UTPConnection {self.state.name} {self._addr[0]}:{self._addr[1]}"
            f" recv_id={self.recv_id} send_id={self.send_id}>"
        )
