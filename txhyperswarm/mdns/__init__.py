"""
Multicast DNS peer discovery, compatible with ``@hyperswarm/discovery`` 2.0.1.

- :mod:`txhyperswarm.mdns.wire`: the datagrams (pure codec, no I/O);
- :mod:`txhyperswarm.mdns.topic`: :class:`MDNSTopic`, one join of a topic,
  and :class:`~txhyperswarm.mdns.topic.IMDNSTopicOwner`, what it calls up through;
- :mod:`txhyperswarm.mdns.service`: :class:`MulticastDiscovery`, the
  service that owns the socket and the topics.

The interface listing (which interfaces join the group) is
:mod:`txhyperswarm.netif`.
"""

from txhyperswarm.mdns.service import MulticastDiscovery
from txhyperswarm.mdns.topic import MDNSTopic
from txhyperswarm.mdns.wire import MalformedPacket

__all__ = ["MDNSTopic", "MalformedPacket", "MulticastDiscovery"]
