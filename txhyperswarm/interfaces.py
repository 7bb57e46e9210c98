"""
The named seams between the layers (``docs/design.rst``).

A lower layer defines what it calls up through, and an upper layer
implements it; nothing reaches into another object's private attributes.
The discovery contract below is shared by the DHT (``txhyperswarm.dht.peers``)
and multicast DNS (``txhyperswarm.mdns``), and ``txhyperswarm.discovery``
runs both for a topic.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IDiscoveryTopic", "IStatsSource"]


class IDiscoveryTopic(Interface):
    """
    One join of a topic on a discovery mechanism (Node's discovery ``Topic``).

    Made by ``join(topic, *, announce_port=None, local_address=None,
    lookup=True, on_peer=None, on_update=None)`` on the DHT
    (``txhyperswarm.dht.peers.join(node, topic, ...)``), on mDNS
    (``MulticastDiscovery.join``) or on both (``txhyperswarm.discovery``):

    - ``announce_port``: ``None`` does not announce; ``0`` announces the
      port of our DHT socket (which is also the TCP port, as Node); any
      other value announces that port.
    - ``lookup``: report the peers found (``on_peer``); mDNS sends queries
      only when looking up, as Node.
    - ``on_peer(record)``: every :class:`~txhyperswarm.peer_record.PeerRecord`
      reported, repeats included (Node emits ``'peer'`` per DHT response and
      per mDNS answer; the swarm's queue relies on rediscovery).
    - ``on_update(error_or_None)``: at the end of every DHT cycle (the first
      and each refresh, 5-10 min after the previous cycle ended); mDNS has
      no cycles and never calls it.
    """

    topic = Attribute("The 32-byte topic.")
    announcing = Attribute("Whether this join announces.")
    lookup = Attribute("Whether this join reports peers (``on_peer``).")

    def when_ready():
        """
        A new Deferred for the first round, firing ``ok: bool`` as Node's
        onjoin: after the first DHT cycle, or earlier once 6 full responses
        came; ``False`` when no DHT node answered. mDNS never holds it up.
        It never errbacks; it fires ``False`` when the join stops first.
        """

    def refresh():
        """Start the next cycle now (Node's ``topic.update()``)."""

    def stop():
        """
        Stop the join. The Deferred fires with ``None`` once the DHT
        unannounce is done (failed or not: it never errbacks), and at once
        for mDNS, which sends no goodbye. Idempotent.
        """


class IStatsSource(Interface):
    """Something ``/status`` and ``/metrics`` read figures from."""

    def stats():
        """
        A ``dict`` of the object's live figures: numbers, strings and
        :class:`collections.Counter` s keyed by reason or label. Each
        implementer documents its keys; the dict is a fresh copy.
        """
