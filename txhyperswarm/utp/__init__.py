"""
uTP (BEP 29, as libutp / utp-native speak it) on Twisted.

* :class:`~txhyperswarm.utp.socket.UTPSocket` — connections over a
  (shared) :class:`txhyperswarm.udp.UDPSocket`: ``connect()``, ``listen()``,
  endpoints bound to it (``client_endpoint()``, ``server_endpoint()``),
  ``close_when_idle()``, ``stats()``.
* :class:`~txhyperswarm.utp.connection.UTPConnection` — the transport a
  protocol runs on; its close state is :class:`~txhyperswarm.utp.connection.State`,
  :class:`~txhyperswarm.utp.connection.Sending` and
  :class:`~txhyperswarm.utp.connection.Receiving`.
* :mod:`~txhyperswarm.utp.endpoints` — ``utp:`` endpoint strings.
* :mod:`~txhyperswarm.utp.packet` — the pure wire codec.
"""

from txhyperswarm.utp.connection import (
    CONNECT_TIMEOUT,
    IConnectionOwner,
    Receiving,
    Sending,
    State,
    UTPConnection,
    UTPConnectionRefusedError,
    UTPConnectionResetError,
    UTPError,
    UTPTimeoutError,
)
from txhyperswarm.utp.socket import (
    UTPListeningPort,
    UTPSocket,
    UTPSocketClientEndpoint,
    UTPSocketServerEndpoint,
)

__all__ = [
    "UTPSocket",
    "UTPSocketClientEndpoint",
    "UTPSocketServerEndpoint",
    "UTPListeningPort",
    "UTPConnection",
    "IConnectionOwner",
    "State",
    "Sending",
    "Receiving",
    "CONNECT_TIMEOUT",
    "UTPError",
    "UTPTimeoutError",
    "UTPConnectionRefusedError",
    "UTPConnectionResetError",
]
