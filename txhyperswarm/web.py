"""
``--status-http``: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus
text) for a running node, as interfaces.md describes them.
"""

from __future__ import annotations

import json

__all__ = ["status_json", "status_site", "NodeMetrics"]


def status_json(node) -> dict:
    """``GET /status`` (interfaces.md); a bootstrap node has no topics or connections."""
    host, port = node.address()
    return {
        "node": {
            "id": node.id.hex(),
            "host": host,
            "port": port,
            "ephemeral": node.ephemeral,
            "routing_table_size": node.routing_table_size,
        },
        "topics": [],
        "connections": [],
    }


class NodeMetrics:
    """A prometheus-client collector reading the node's counters at each scrape."""

    def __init__(self, node) -> None:
        self._node = node

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self._node
        yield GaugeMetricFamily("hyperswarm_connections", "Open swarm connections.", value=0)
        yield CounterMetricFamily("hyperswarm_peers_discovered", "Peers discovered (DHT and mDNS).", value=0)
        rpc = CounterMetricFamily(
            "hyperswarm_dht_rpc_requests", "DHT RPC requests by command and direction.",
            labels=["command", "direction"],
        )
        for (command, direction), n in sorted(node.rpc_requests.items()):
            rpc.add_metric([command, direction], n)
        yield rpc
        yield GaugeMetricFamily(
            "hyperswarm_dht_routing_table_size", "Nodes in the DHT routing table.", value=node.routing_table_size
        )
        transferred = CounterMetricFamily(
            "hyperswarm_bytes", "Bytes sent and received by transport.", labels=["transport", "direction"]
        )
        udp = node.udp
        if udp is not None:
            transferred.add_metric(["udp", "in"], udp.bytes_received)
            transferred.add_metric(["udp", "out"], udp.bytes_sent)
        yield transferred
        dropped = CounterMetricFamily(
            "hyperswarm_dropped_datagrams", "Datagrams and requests dropped, by reason.", labels=["reason"]
        )
        reasons: dict = {}
        for counter in (node.dropped, getattr(node.udp, "dropped", None) or {}):
            for reason, n in counter.items():
                reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], n)
        yield dropped


def status_site(node):
    """A ``twisted.web`` site serving ``GET /status`` and ``GET /metrics``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from twisted.web import resource, server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(node))

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
