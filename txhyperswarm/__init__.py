"""
txhyperswarm: hyperswarm 2 for Python on Twisted.

Join a 32-byte topic, find the other peers on it through the DHT and
multicast DNS, and get TCP or uTP connections to them, wire-compatible with
Node's hyperswarm 2.15.3.

The public API is what this module exports (``__all__``); everything else is
private.
"""

from txhyperswarm._version import __version__

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
