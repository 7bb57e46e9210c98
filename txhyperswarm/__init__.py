"""
txhyperswarm: hyperswarm 2 for Python on Twisted.

Join a 32-byte topic, find the other peers on it through the DHT and
multicast DNS, and get TCP or uTP connections to them, wire-compatible with
Node's hyperswarm 2.15.3.

The public API is what this module exports (``__all__``); everything else is
private.
"""

from typing import TYPE_CHECKING

from txhyperswarm._version import __version__

if TYPE_CHECKING:  # what type checkers see; at run time these load lazily (__getattr__)
    from txhyperswarm.dht.node import DHTNode
    from txhyperswarm.discovery import Discovery
    from txhyperswarm.mdns import MulticastDiscovery
    from txhyperswarm.network import BindError, DialFailed, DialTimeout, FirewallRefused
    from txhyperswarm.peer_record import PeerRecord
    from txhyperswarm.peerinfo import PeerInfo
    from txhyperswarm.queue import QueueOptions
    from txhyperswarm.stream import Stream
    from txhyperswarm.swarm import Hyperswarm, SwarmClosed
    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp.socket import UTPSocket

__all__ = [
    "__version__", "BindError", "DHTNode", "DialFailed", "DialTimeout", "Discovery", "FirewallRefused",
    "Hyperswarm", "MulticastDiscovery", "PeerInfo", "PeerRecord", "QueueOptions", "Stream", "SwarmClosed",
    "UDPSocket", "UTPSocket",
]

_LAZY = {
    "BindError": "txhyperswarm.network",
    "DialFailed": "txhyperswarm.network",
    "DialTimeout": "txhyperswarm.network",
    "FirewallRefused": "txhyperswarm.network",
    "Hyperswarm": "txhyperswarm.swarm",
    "Stream": "txhyperswarm.stream",
    "SwarmClosed": "txhyperswarm.swarm",
    "DHTNode": "txhyperswarm.dht.node",
    "Discovery": "txhyperswarm.discovery",
    "MulticastDiscovery": "txhyperswarm.mdns",
    "PeerInfo": "txhyperswarm.peerinfo",
    "PeerRecord": "txhyperswarm.peer_record",
    "QueueOptions": "txhyperswarm.queue",
    "UDPSocket": "txhyperswarm.udp",
    "UTPSocket": "txhyperswarm.utp.socket",
}


def __getattr__(name):
    # Lazy re-exports keep `import txhyperswarm` (and the twist plugin) light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txhyperswarm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(__all__)
