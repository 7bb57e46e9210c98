"""
Twisted endpoints for uTP.

Two kinds:

* on a socket of their own, for ``utp:`` endpoint strings:
  :class:`UTPServerEndpoint` (``utp:port=N:interface=H``) and
  :class:`UTPClientEndpoint` (``utp:host=H:port=N``). The string parsers
  live in ``twisted/plugins/hyperswarm_endpoints.py``, so
  ``serverFromString(reactor, "utp:port=8000:interface=127.0.0.1")`` and
  ``clientFromString(reactor, "utp:host=127.0.0.1:port=8000")`` work anywhere.
* bound to an existing :class:`~txhyperswarm.utp.socket.UTPSocket` (as
  txtorcon's ``Tor.stream_via``), so that one UDP port dials, accepts and
  runs the DHT: :meth:`UTPSocket.client_endpoint
  <txhyperswarm.utp.socket.UTPSocket.client_endpoint>` and
  :meth:`UTPSocket.server_endpoint
  <txhyperswarm.utp.socket.UTPSocket.server_endpoint>` (classes
  :class:`UTPSocketClientEndpoint`, :class:`UTPSocketServerEndpoint`).
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.internet import defer, interfaces
from zope.interface import implementer

from txhyperswarm._reactor import default_reactor
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp.socket import (
    UTPListeningPort,
    UTPSocket,
    UTPSocketClientEndpoint,
    UTPSocketServerEndpoint,
)

__all__ = [
    "UTPServerEndpoint",
    "UTPClientEndpoint",
    "UTPListeningPort",
    "UTPSocketClientEndpoint",
    "UTPSocketServerEndpoint",
]


@implementer(interfaces.IStreamServerEndpoint)
class UTPServerEndpoint:
    """
    Listen for uTP connections on a new UDP port.

    :param reactor: ``IReactorUDP`` + ``IReactorTime``; ``None`` for the global one.
    :param port: UDP port (0 = any).
    :param interface: address to bind.
    """

    def __init__(self, reactor=None, port: int = 0, interface: str = "0.0.0.0") -> None:
        self.reactor = default_reactor(reactor)
        self.port = int(port)
        self.interface = interface

    def listen(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with a :class:`UTPListeningPort` whose
            ``stopListening`` closes the UDP port once its connections have
            ended; errbacks with ``CannotListenError`` when the port is taken.
        """

        def bind():
            udp = UDPSocket(self.reactor, host=self.interface, port=self.port)
            udp.listen()
            utp = UTPSocket(self.reactor, udp, close_udp=True)
            lp = UTPListeningPort(utp, protocolFactory, close_socket=True)
            lp.startListening()
            return lp

        return defer.execute(bind)


@implementer(interfaces.IStreamClientEndpoint)
class UTPClientEndpoint:
    """
    Connect over uTP from a new UDP port (closed when the connection ends),
    as utp-native's ``UTP.connect`` does.

    :param reactor: ``IReactorUDP`` + ``IReactorTime``; ``None`` for the global one.
    :param host: dotted IPv4 address of the peer.
    :param port: the peer's UDP port.
    :param bind_address: local ``(host, port)`` to bind.
    :param timeout: give up after this many seconds (default: libutp's own
        limit, 3 SYNs, ``CONNECT_TIMEOUT`` = 21 s).
    """

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        bind_address: Tuple[str, int] = ("0.0.0.0", 0),
        timeout: Optional[float] = None,
    ) -> None:
        self.reactor = default_reactor(reactor)
        self.host = host
        self.port = int(port)
        self.bind_address = bind_address
        self.timeout = timeout

    def connect(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with the connected protocol; errbacks with
            ``UTPTimeoutError`` (also when ``timeout`` passed),
            ``UTPConnectionRefusedError``, ``CannotListenError``, or
            ``ConnectingCancelledError`` when cancelled.
        """
        try:
            udp = UDPSocket(self.reactor, host=self.bind_address[0], port=int(self.bind_address[1]))
            udp.listen()
        except Exception:
            return defer.fail()
        utp = UTPSocket(self.reactor, udp, close_udp=True)
        d = utp.connect(self.host, self.port, protocolFactory, timeout=self.timeout)
        # the socket goes when its one connection does (failed ones included)
        utp.close_when_idle()
        return d
