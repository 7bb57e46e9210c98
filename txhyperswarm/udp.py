"""
One UDP socket per port, shared by the DHT and uTP.

Node's hyperswarm runs dht-rpc on utp-native's socket: libutp sees every
datagram first and keeps the ones that look like uTP; the rest go to the DHT.
:class:`UDPSocket` applies exactly libutp's rule (``shared/spec/dht.md`` 1.11)::

    uTP  iff  len >= 20 and buf[0] & 0x0f == 1 and buf[0] >> 4 < 5 and buf[1] < 3
    DHT  otherwise (the DHT drops what fails to decode)
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from typing import Any, Callable, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from txhyperswarm._reactor import default_reactor
from txhyperswarm.interfaces import IStatsSource

__all__ = ["UDPSocket", "is_utp_datagram"]

Address = Tuple[str, int]
Receiver = Callable[[bytes, Address], None]

#: Socket buffer asked of the kernel. At Linux's default (~208 KiB) a burst of
#: uTP data overflows it and the kernel drops datagrams (utp.md 7.2).
DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024
#: Seconds between two log lines of the same send error (each is counted).
SEND_ERROR_LOG_INTERVAL = 60.0


def is_utp_datagram(data: bytes) -> bool:
    """libutp's test for "this datagram is mine" (``utp_process_udp``)."""
    return len(data) >= 20 and (data[0] & 0x0F) == 1 and (data[0] >> 4) < 5 and data[1] < 3


@implementer(IStatsSource)
class UDPSocket(DatagramProtocol):
    """
    A UDP port that hands each datagram to its uTP side or its DHT side.

    :param reactor: an ``IReactorUDP`` (and ``IReactorTime``); ``None`` for
        the global reactor.
    :param host: interface to bind.
    :param port: port to bind; 0 for any.
    :param buffer_size: ``SO_RCVBUF``/``SO_SNDBUF`` to ask for; 0 keeps the
        kernel default.

    Attach receivers with :meth:`set_dht_receiver` and
    :meth:`set_utp_receiver`; each gets ``(data, (host, port))``.
    """

    log = Logger()

    def __init__(
        self,
        reactor=None,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        self._reactor = default_reactor(reactor)
        self._host = host
        self._want_port = port
        self._buffer_size = buffer_size
        self._port: Any = None
        self._sendto = None
        self._dht: Receiver = self._no_dht
        self._utp: Receiver = self._no_utp
        #: Datagrams that could not be sent or delivered, by reason (see :meth:`stats`).
        self.dropped: Counter = Counter()
        #: Bytes of UDP payload received and sent (uTP and DHT together).
        self.bytes_received = 0
        self.bytes_sent = 0
        self._send_error_logged: Any = None  # (errno, time) of the last send error logged

    # -- wiring ---------------------------------------------------------------

    def set_dht_receiver(self, receiver: Optional[Receiver]) -> None:
        """Send every non-uTP datagram to ``receiver`` (``None`` to detach:
        they are then counted in ``dropped["no_dht"]``)."""
        self._dht = receiver or self._no_dht

    def set_utp_receiver(self, receiver: Optional[Receiver]) -> None:
        """Send every uTP datagram to ``receiver`` (``None`` to detach: they
        are then counted in ``dropped["no_utp"]``)."""
        self._utp = receiver or self._no_utp

    def _no_dht(self, data: bytes, addr: Address) -> None:
        self.dropped["no_dht"] += 1

    def _no_utp(self, data: bytes, addr: Address) -> None:
        self.dropped["no_utp"] += 1

    def stats(self) -> dict:
        """
        The live figures (:class:`txhyperswarm.interfaces.IStatsSource`):

        - ``bytes_received``, ``bytes_sent``: UDP payload bytes, uTP and DHT
          together;
        - ``dropped``: :class:`~collections.Counter` of datagrams dropped
          here, by reason: ``send_closed`` (sent while not bound),
          ``send_error`` (the kernel refused it), ``no_utp`` / ``no_dht``
          (arrived for a side nobody attached), ``receiver_error`` (a
          receiver raised: a bug, also logged).
        """
        return {
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "dropped": Counter(self.dropped),
        }

    # -- lifecycle ------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._port is not None

    def listen(self) -> Address:
        """
        Bind the socket (idempotent).

        :returns: the bound ``(host, port)``.
        :raises twisted.internet.error.CannotListenError: the port is taken.
        """
        if self._port is None:
            self._port = self._reactor.listenUDP(
                self._want_port, self, interface=self._host, maxPacketSize=65535
            )
            self._set_buffers()
            handle = self._port.getHandle() if hasattr(self._port, "getHandle") else None
            self._sendto = getattr(handle, "sendto", None)
            self.log.info("UDP socket bound on {host}:{port}", host=self._host, port=self.port)
        return self.address()

    def close(self) -> defer.Deferred:
        """Unbind; the Deferred fires once the socket is closed."""
        port, self._port = self._port, None
        self._sendto = None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def address(self) -> Address:
        """The bound ``(host, port)``."""
        if self._port is None:
            raise RuntimeError("UDPSocket is not listening")
        return self._host, self._port.getHost().port

    @property
    def port(self) -> int:
        return self.address()[1]

    def receive_buffer_size(self) -> Optional[int]:
        """The kernel's ``SO_RCVBUF`` for this socket; ``None`` when not bound
        to a real socket."""
        get = getattr(self._port, "getHandle", None)
        if get is None:
            return None
        try:
            return get().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except (OSError, AttributeError):
            return None

    def _set_buffers(self) -> None:
        if not self._buffer_size:
            return
        handle = self._port.getHandle() if hasattr(self._port, "getHandle") else None
        if handle is None:  # a fake reactor's port
            return
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                handle.setsockopt(socket.SOL_SOCKET, opt, self._buffer_size)
            except OSError as e:  # pragma: no cover - kernel-dependent
                self.log.warn("cannot set UDP buffer size: {err}", err=e)

    # -- I/O ------------------------------------------------------------------

    def send(self, data: bytes, addr: Address) -> bool:
        """
        Send one datagram; a full kernel buffer, an unreachable host, an
        oversized datagram or a host name that is not an address drops it
        (counted in :attr:`dropped` and logged, see :meth:`_send_failed`;
        UDP is lossy: both upper layers retransmit).

        :returns: whether the kernel took it.
        """
        transport: Any = self.transport
        if transport is None:
            self.dropped["send_closed"] += 1
            return False
        try:
            transport.write(data, addr)
        except (OSError, error.MessageLengthError, error.InvalidAddressError):
            # a full kernel buffer, an unreachable host, a datagram over
            # 64 KiB, or a host name instead of an address
            self._send_failed(addr)
            return False
        self.bytes_sent += len(data)
        return True

    def send_to_address(self, data: bytes, addr: Address) -> bool:
        """
        :meth:`send` for a per-packet path: ``addr`` must already be an
        ``(IPv4 literal, port)`` pair (from a received datagram or a checked
        connect), because it goes straight to the socket's ``sendto``
        without Twisted's address checks (three per datagram, a fifth of a
        uTP sender's CPU in profiles).

        :returns: whether the kernel took it.
        """
        sendto = self._sendto
        if sendto is None:
            return self.send(data, addr)
        try:
            sendto(data, addr)
        except OSError:
            # EAGAIN/ENOBUFS (a full kernel queue), ECONNREFUSED (ICMP from
            # an earlier datagram): UDP is lossy
            self._send_failed(addr)
            return False
        self.bytes_sent += len(data)
        return True

    def _send_failed(self, addr: Address) -> None:
        """
        Count a datagram the socket refused (``dropped["send_error"]``) and
        log it: the first of a kind, then at most one line a minute (a full
        kernel queue refuses thousands a second).
        """
        err = sys.exc_info()[1]
        self.dropped["send_error"] += 1
        kind = getattr(err, "errno", None) or type(err).__name__
        seconds = getattr(self._reactor, "seconds", None)
        now = seconds() if seconds is not None else 0.0
        last = self._send_error_logged
        if last is None or last[0] != kind or now - last[1] >= SEND_ERROR_LOG_INTERVAL:
            self._send_error_logged = (kind, now)
            self.log.warn(
                "cannot send a UDP datagram to {addr}: {err} ({n} send errors so far)",
                addr=addr, err=err, n=self.dropped["send_error"],
            )

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.bytes_received += len(data)
        # is_utp_datagram inline: a call per datagram is ~4 % of a uTP receiver's CPU.
        receiver = (
            self._utp if len(data) >= 20 and (data[0] & 0x0F) == 1 and (data[0] >> 4) < 5 and data[1] < 3
            else self._dht
        )
        try:
            receiver(data, addr)
        except Exception:
            # Receivers count and drop bad input themselves; reaching here is a bug.
            self.dropped["receiver_error"] += 1
            self.log.failure("UDP receiver failed on a datagram from {addr}", addr=addr)
