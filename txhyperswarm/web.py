"""
``--status-http``: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus
text) for a running node, as interfaces.md describes them.

Every figure is read at request time from the ``stats()`` of the live
objects (:class:`txhyperswarm.interfaces.IStatsSource`): the DHT node, its
UDP socket, and, where the daemon runs them, the uTP socket on that port and
multicast DNS. With a swarm (``twist hyperswarm --topic``), the node, its
sockets and mDNS are the swarm network's, read at each request (they exist
once the swarm is bound); the topics come from the swarm's ``stats()`` and
the peer counts, connections and tunnelled bytes from the daemon's
:class:`~txhyperswarm.tunnel.Tunnels` ``stats()``. A bootstrap node has no
swarm: it reports empty lists and zero counts.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, List, Optional

from txhyperswarm.interfaces import IStatsSource

__all__ = ["status_json", "status_site", "NodeMetrics", "SwarmParts", "swarm_topics"]


def _stats(source) -> dict:
    return IStatsSource(source).stats() if source is not None else {}


class SwarmParts:
    """
    The live parts of a swarm's network, looked up at each request (they
    exist once the swarm is bound): ``node`` (the DHT node), ``udp``,
    ``utp`` and ``mdns``; ``None`` while unbound.
    """

    def __init__(self, swarm) -> None:
        self.swarm = swarm

    def _network_part(self, name: str):
        network = getattr(self.swarm, "network", None)
        return getattr(network, name, None) if network is not None else None

    @property
    def network(self):
        """The swarm's network, when it reports figures (``IStatsSource``)."""
        network = getattr(self.swarm, "network", None)
        return network if IStatsSource.providedBy(network) else None

    @property
    def node(self):
        return self._network_part("dht")

    @property
    def udp(self):
        return self._network_part("udp")

    @property
    def utp(self):
        return self._network_part("utp")

    @property
    def mdns(self):
        return self._network_part("mdns")

    @property
    def records(self):
        return self._network_part("records")


def swarm_topics(swarm, tunnels=None) -> List[dict]:
    """``/status`` topic entries: the swarm's topics with the distinct peers found for each."""
    found = _stats(tunnels).get("peers", {}) if tunnels is not None else {}
    out = []
    for t in _stats(swarm).get("topics", []):
        out.append({"topic": t["topic"], "announce": bool(t.get("announce")), "lookup": bool(t.get("lookup")),
                    "peers": int(found.get(t["topic"], 0))})
    return out


def status_json(node, *, topics: Iterable[dict] = (), connections: Iterable[dict] = ()) -> dict:
    """
    ``GET /status`` (interfaces.md) from ``node.stats()``.

    :param topics: the swarm's topic entries (none on a bootstrap node).
    :param connections: the swarm's connection entries.
    """
    s = _stats(node)
    return {
        "node": {
            "id": s.get("id"),
            "host": s.get("host"),
            "port": s.get("port"),
            "ephemeral": s.get("ephemeral"),
            "routing_table_size": s.get("routing_table_size", 0),
        },
        "topics": list(topics),
        "connections": list(connections),
    }


class NodeMetrics:
    """
    A prometheus-client collector: at each scrape it reads ``stats()`` of
    the DHT node, its UDP socket and (when given) the uTP socket and mDNS.
    """

    def __init__(self, node=None, *, utp=None, mdns=None, swarm=None, tunnels=None, records=None) -> None:
        self._node = node
        self._records = records
        self._utp = utp
        self._mdns = mdns
        self._swarm = swarm
        self._parts = SwarmParts(swarm) if swarm is not None else None
        self._tunnels = tunnels

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        parts = self._parts
        node_obj = parts.node if parts is not None else self._node
        node = _stats(node_obj)
        udp_obj = parts.udp if parts is not None else (node_obj.udp if node_obj is not None else None)
        udp = _stats(udp_obj)
        utp = _stats(parts.utp if parts is not None else self._utp)
        mdns = _stats(parts.mdns if parts is not None else self._mdns)
        swarm = _stats(self._swarm)
        tunnels = _stats(self._tunnels)
        network = _stats(parts.network) if parts is not None else {}
        records = _stats(parts.records if parts is not None else self._records)
        yield GaugeMetricFamily("hyperswarm_connections", "Open swarm connections.",
                                value=swarm.get("connections", 0))
        yield CounterMetricFamily("hyperswarm_peers_discovered", "Distinct peers discovered per topic (DHT and mDNS).",
                                  value=tunnels.get("peers_discovered", 0))
        if self._tunnels is not None:
            yield GaugeMetricFamily("hyperswarm_tunnels", "Open tunnels.", value=tunnels.get("tunnels", 0))
            yield CounterMetricFamily("hyperswarm_tunnels_opened", "Tunnels opened.", value=tunnels.get("opened", 0))
        rpc = CounterMetricFamily(
            "hyperswarm_dht_rpc_requests", "DHT RPC requests by command and direction.",
            labels=["command", "direction"],
        )
        for (command, direction), n in sorted(node.get("rpc_requests", {}).items()):
            rpc.add_metric([command, direction], n)
        yield rpc
        yield GaugeMetricFamily(
            "hyperswarm_dht_routing_table_size", "Nodes in the DHT routing table.",
            value=node.get("routing_table_size", 0)
        )
        transferred = CounterMetricFamily(
            "hyperswarm_bytes", "Bytes sent and received by transport (udp: every datagram's payload, "
            "DHT and uTP; utp: the application bytes of uTP streams; tcp: the bytes tunnelled over "
            "swarm TCP connections).", labels=["transport", "direction"]
        )
        for transport, figures in (("udp", udp), ("utp", utp)):
            if figures:
                transferred.add_metric([transport, "in"], figures["bytes_received"])
                transferred.add_metric([transport, "out"], figures["bytes_sent"])
        tunnelled = tunnels.get("bytes", {})
        if self._tunnels is not None:
            for direction in ("in", "out"):
                transferred.add_metric(["tcp", direction], tunnelled.get(("tcp", direction), 0))
                if not utp:
                    transferred.add_metric(["utp", direction], tunnelled.get(("utp", direction), 0))
        yield transferred
        if utp:
            yield GaugeMetricFamily("hyperswarm_utp_connections", "uTP connections in the table.",
                                    value=utp["connections"])
            yield GaugeMetricFamily("hyperswarm_utp_half_open", "Inbound uTP connections still in their handshake.",
                                    value=utp.get("half_open", 0))
        if records:
            yield GaugeMetricFamily("hyperswarm_dht_records", "Peer records this DHT node holds.",
                                    value=records["records"])
            yield GaugeMetricFamily("hyperswarm_dht_records_largest_topic",
                                    "Peer records held for the topic that has the most.",
                                    value=records["largest_topic"])
            yield GaugeMetricFamily("hyperswarm_dht_records_largest_address",
                                    "Peer records held that the announcing IP with the most announced.",
                                    value=records["largest_address"])
            kept_out = CounterMetricFamily(
                "hyperswarm_dht_records_refused", "Announced peer records refused or evicted, by reason "
                "(ip-cap, topic-cap: a cap refused a new record; evicted: the oldest made room).",
                labels=["reason"])
            for reason, n in sorted(records["refused"].items()):
                kept_out.add_metric([reason], n)
            yield kept_out
        if network:
            refused = CounterMetricFamily(
                "hyperswarm_refused_connections", "Inbound connections refused before the application saw them, "
                "by reason (firewall, closing, tcp_per_address).", labels=["reason"]
            )
            for reason, n in sorted(network.get("refused", {}).items()):
                refused.add_metric([reason], n)
            yield refused
        if self._swarm is not None:
            at_limit = CounterMetricFamily(
                "hyperswarm_inbound_at_limit", "Inbound connections that came at the swarm's connection limit "
                "(--max-peers), by outcome (evicted_half_open: the oldest half-open uTP connection, one whose "
                "initiator never spoke, was closed to make room; refused: none to close, or the uTP eviction "
                "budget was spent).", labels=["outcome"]
            )
            for outcome in ("evicted_half_open", "refused"):
                at_limit.add_metric([outcome], swarm.get("inbound_at_limit", {}).get(outcome, 0))
            yield at_limit
        routing = CounterMetricFamily(
            "hyperswarm_dht_routing_refused", "What the DHT routing table's bounds refused, by reason "
            "(ping_budget: a liveness ping over the ping budget; newcomer: a node offered to a full bucket "
            "already evicting; unverified: a quiet node that never answered us, forgotten).",
            labels=["reason"],
        )
        for reason, n in sorted(node.get("routing_refused", {}).items()):
            routing.add_metric([reason], n)
        yield routing
        dropped = CounterMetricFamily(
            "hyperswarm_dropped_datagrams", "Datagrams and requests dropped, by reason (the DHT's limits: "
            "rate_ip, pending_ip, pending_total, holepunch_ip, holepunch_total; uTP's: syn_too_many, "
            "syn_per_address, syn_half_open_per_address, half_open_evicted; mDNS: answer_rate_limited).",
            labels=["reason"],
        )
        reasons: Counter = Counter()
        for figures in (node, udp, utp, mdns):
            reasons.update(figures.get("dropped", {}))
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], n)
        yield dropped


def status_site(node=None, *, utp: Optional[object] = None, mdns: Optional[object] = None,
                swarm: Optional[object] = None, tunnels: Optional[object] = None,
                records: Optional[object] = None):
    """
    A ``twisted.web`` site serving ``GET /status`` and ``GET /metrics``.

    :param node: the DHT node of a bootstrap node (no swarm).
    :param swarm: a :class:`~txhyperswarm.swarm.Hyperswarm`: its network's
        node, sockets and mDNS are read instead of ``node``/``utp``/``mdns``.
    :param tunnels: the daemon's :class:`~txhyperswarm.tunnel.Tunnels`.
    :param records: the :class:`~txhyperswarm.dht.records.RecordStore` of a
        bootstrap node (a swarm's is read from its network).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from twisted.web import resource, server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(node, utp=utp, mdns=mdns, swarm=swarm, tunnels=tunnels, records=records))
    parts = SwarmParts(swarm) if swarm is not None else None

    def status() -> dict:
        if parts is None:
            return status_json(node)
        connections = _stats(tunnels).get("connections", []) if tunnels is not None else []
        return status_json(parts.node, topics=swarm_topics(swarm, tunnels), connections=connections)

    class Status(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(status()).encode() + b"\n"

    class Metrics(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(registry)

    root = resource.Resource()
    root.putChild(b"status", Status())
    root.putChild(b"metrics", Metrics())
    return server.Site(root)
