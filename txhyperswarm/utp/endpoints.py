"""
Twisted endpoints for uTP: ``utp:port=N:interface=H`` and ``utp:host=H:port=N``.

The string parsers live in ``twisted/plugins/hyperswarm_endpoints.py``, so
``serverFromString(reactor, "utp:port=8000:interface=127.0.0.1")`` and
``clientFromString(reactor, "utp:host=127.0.0.1:port=8000")`` work anywhere.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer, error, interfaces
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._reactor import default_reactor
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp.connection import UTPTimeoutError
from txhyperswarm.utp.socket import UTPSocket

__all__ = ["UTPServerEndpoint", "UTPClientEndpoint", "UTPListeningPort"]


@implementer(interfaces.IListeningPort)
class UTPListeningPort:
    """
    What :meth:`UTPServerEndpoint.listen` fires with.

    :ivar utp: the :class:`~txhyperswarm.utp.socket.UTPSocket` (its ``udp``
        can be shared with a DHT node).
    """

    def __init__(self, utp: UTPSocket, udp: UDPSocket, factory) -> None:
        self.utp = utp
        self.udp = udp
        self.factory = factory
        self._stopped: Optional[defer.Deferred] = None

    def startListening(self) -> None:
        self.udp.listen()
        self.utp.listen(self.factory)

    def stopListening(self) -> defer.Deferred:
        """
        Stop accepting. The UDP port closes now if no connection is open,
        else when the last one ends; established connections carry on.

        :returns: Deferred firing with ``None`` once accepting has stopped.
        """
        self.utp.stop_listening()
        if self._stopped is None:
            if not self.utp.connections:
                self._stopped = self.utp.close()
            else:
                self.utp._on_idle = lambda: self.utp.close()
                self._stopped = defer.succeed(None)
        return self._stopped

    def getHost(self) -> IPv4Address:
        host, port = self.udp.address()
        return IPv4Address("UDP", host, port)


@implementer(interfaces.IStreamServerEndpoint)
class UTPServerEndpoint:
    """
    Listen for uTP connections on a new UDP port.

    :param reactor: ``IReactorUDP`` + ``IReactorTime``; ``None`` for the global one.
    :param port: UDP port (0 = any).
    :param interface: address to bind.
    """

    def __init__(self, reactor=None, port: int = 0, interface: str = "0.0.0.0") -> None:
        self._reactor = default_reactor(reactor)
        self._port = int(port)
        self._interface = interface

    def listen(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with a :class:`UTPListeningPort`;
            errbacks with ``CannotListenError`` when the port is taken.
        """

        def bind():
            udp = UDPSocket(self._reactor, host=self._interface, port=self._port)
            utp = UTPSocket(self._reactor, udp, close_udp=True)
            lp = UTPListeningPort(utp, udp, protocolFactory)
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
        limit, 3 SYNs ≈ 21 s).
    """

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        bind_address=("0.0.0.0", 0),
        timeout: Optional[float] = None,
    ) -> None:
        self._reactor = default_reactor(reactor)
        self._host = host
        self._port = int(port)
        self._bind = bind_address
        self._timeout = timeout

    def connect(self, protocolFactory) -> defer.Deferred:
        """
        :returns: Deferred firing with the connected protocol; errbacks with
            ``UTPTimeoutError`` (also when ``timeout`` passed), ``UTPConnectionRefusedError``,
            ``CannotListenError``, or ``ConnectingCancelledError`` when cancelled.
        """
        try:
            udp = UDPSocket(self._reactor, host=self._bind[0], port=int(self._bind[1]))
            utp = UTPSocket(self._reactor, udp, close_udp=True)
            udp.listen()
        except Exception:
            return defer.fail()
        d = utp.connect(self._host, self._port, protocolFactory)
        utp._on_idle = lambda: utp.close()

        def failed(f):
            utp.close()
            return f

        if self._timeout is not None:
            timed_out = []

            def expire():
                timed_out.append(True)
                d.cancel()

            call = self._reactor.callLater(self._timeout, expire)

            def done(result):
                if call.active():
                    call.cancel()
                if timed_out and isinstance(result, Failure) and result.check(error.ConnectingCancelledError):
                    return Failure(
                        UTPTimeoutError(
                            f"uTP connect to {self._host}:{self._port} timed out after {self._timeout}s"
                        )
                    )
                return result

            d.addBoth(done)
        d.addErrback(failed)
        return d
