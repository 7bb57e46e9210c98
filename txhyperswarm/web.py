"""
``--status-http``: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus
text) for a running node, as interfaces.md describes them.

Every figure is read at request time from the ``stats()`` of the live
objects (:class:`txhyperswarm.interfaces.IStatsSource`): the DHT node, its
UDP socket, and, where the daemon runs them, the uTP socket on that port and
multicast DNS. Topics and swarm connections come with the swarm; a
bootstrap node has none, so it reports empty lists and zero counts.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Optional

from txhyperswarm.interfaces import IStatsSource

__all__ = ["status_json", "status_site", "NodeMetrics"]


def _stats(source) -> dict:
    return IStatsSource(source).stats() if source is not None else {}


def status_json(node, *, topics: Iterable[dict] = (), connections: Iterable[dict] = ()) -> dict:
    """
    ``GET /status`` (interfaces.md) from ``node.stats()``.

    :param topics: the swarm's topic entries (none on a bootstrap node).
    :param connections: the swarm's connection entries.
    """
    s = _stats(node)
    return {
        "node": {
            "id": s["id"],
            "host": s["host"],
            "port": s["port"],
            "ephemeral": s["ephemeral"],
            "routing_table_size": s["routing_table_size"],
        },
        "topics": list(topics),
        "connections": list(connections),
    }


class NodeMetrics:
    """
    A prometheus-client collector: at each scrape it reads ``stats()`` of
    the DHT node, its UDP socket and (when given) the uTP socket and mDNS.
    """

    def __init__(self, node, *, utp=None, mdns=None) -> None:
        self._node = node
        self._utp = utp
        self._mdns = mdns

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = _stats(self._node)
        udp = _stats(self._node.udp) if self._node.udp is not None else {}
        utp = _stats(self._utp)
        mdns = _stats(self._mdns)
        yield GaugeMetricFamily("hyperswarm_connections", "Open swarm connections.", value=0)
        yield CounterMetricFamily("hyperswarm_peers_discovered", "Peers discovered (DHT and mDNS).", value=0)
        rpc = CounterMetricFamily(
            "hyperswarm_dht_rpc_requests", "DHT RPC requests by command and direction.",
            labels=["command", "direction"],
        )
        for (command, direction), n in sorted(node["rpc_requests"].items()):
            rpc.add_metric([command, direction], n)
        yield rpc
        yield GaugeMetricFamily(
            "hyperswarm_dht_routing_table_size", "Nodes in the DHT routing table.", value=node["routing_table_size"]
        )
        transferred = CounterMetricFamily(
            "hyperswarm_bytes", "Bytes sent and received by transport (udp: every datagram's payload, "
            "DHT and uTP; utp: the application bytes of uTP streams).", labels=["transport", "direction"]
        )
        for transport, figures in (("udp", udp), ("utp", utp)):
            if figures:
                transferred.add_metric([transport, "in"], figures["bytes_received"])
                transferred.add_metric([transport, "out"], figures["bytes_sent"])
        yield transferred
        if utp:
            yield GaugeMetricFamily("hyperswarm_utp_connections", "uTP connections in the table.",
                                    value=utp["connections"])
        dropped = CounterMetricFamily(
            "hyperswarm_dropped_datagrams", "Datagrams and requests dropped, by reason.", labels=["reason"]
        )
        reasons: Counter = Counter()
        for figures in (node, udp, utp, mdns):
            reasons.update(figures.get("dropped", {}))
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], n)
        yield dropped


def status_site(node, *, utp: Optional[object] = None, mdns: Optional[object] = None):
    """A ``twisted.web`` site serving ``GET /status`` and ``GET /metrics``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from twisted.web import resource, server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(node, utp=utp, mdns=mdns))

    class Status(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(status_json(node)).encode() + b"\n"

    class Metrics(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(registry)

    root = resource.Resource()
    root.putChild(b"status", Status())
    root.putChild(b"metrics", Metrics())
    return server.Site(root)
