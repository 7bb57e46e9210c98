"""
uTP (BEP 29, as libutp / utp-native speak it) on Twisted.

* :class:`~txhyperswarm.utp.socket.UTPSocket` — connections over a
  (shared) :class:`txhyperswarm.udp.UDPSocket`: ``connect()``, ``listen()``.
* :class:`~txhyperswarm.utp.connection.UTPConnection` — the transport a
  protocol runs on.
* :mod:`~txhyperswarm.utp.endpoints` — ``utp:`` endpoint strings.
* :mod:`~txhyperswarm.utp.packet` — the pure wire codec.
"""

from txhyperswarm.utp.connection import (
    UTPConnection,
    UTPConnectionRefusedError,
    UTPConnectionResetError,
    UTPError,
    UTPTimeoutError,
)
from txhyperswarm.utp.socket import UTPSocket

__all__ = [
    "UTPSocket",
    "UTPConnection",
    "UTPError",
    "UTPTimeoutError",
    "UTPConnectionRefusedError",
    "UTPConnectionResetError",
]
