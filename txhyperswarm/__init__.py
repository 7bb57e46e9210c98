"""
txhyperswarm: hyperswarm 2 for Python on Twisted.

Join a 32-byte topic, find the other peers on it through the DHT and
multicast DNS, and get TCP or uTP connections to them, wire-compatible with
Node's hyperswarm 2.15.3.

The public API is what this module exports; everything else is private.
"""

from txhyperswarm._version import __version__

__all__ = ["__version__", "UDPSocket"]


def __getattr__(name):
    # Lazy re-exports keep `import txhyperswarm` (and the twist plugin) light.
    if name == "UDPSocket":
        from txhyperswarm.udp import UDPSocket

        return UDPSocket
    raise AttributeError(f"module 'txhyperswarm' has no attribute {name!r}")
