"""/status and /metrics read the live figures of the node, its UDP socket and uTP (treq's StubTreq)."""

from __future__ import annotations

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.protocol import Factory, Protocol

from tests.harness import metric_samples
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp.socket import UTPSocket
from txhyperswarm.web import status_site


class Sink(Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


@pytest_twisted.inlineCallbacks
def test_status_and_metrics_follow_live_traffic():
    net = UDPNetwork(latency=0.002)
    boot = DHTNode(net.reactor("127.0.0.1"), bootstrap=[], port=49737, host="127.0.0.1")
    boot.startService()
    client = DHTNode(net.reactor("127.0.0.2"), bootstrap=[("127.0.0.1", 49737)], ephemeral=True, host="127.0.0.2")
    client.startService()
    utp = UTPSocket(net.reactor("127.0.0.1"), boot.udp)
    utp.listen(Factory.forProtocol(Sink))
    sender = UTPSocket(net.reactor("127.0.0.2"), client.udp)
    stub = StubTreq(status_site(boot, utp=utp).resource)

    def metrics():
        d = stub.get("http://node/metrics")
        d.addCallback(lambda r: r.text())
        return d.addCallback(metric_samples)

    before = yield metrics()
    net.run(3)
    conns = []
    sender.connect("127.0.0.1", 49737, Factory.forProtocol(Sink)).addCallback(conns.append)
    assert net.run_until(lambda: conns, 5)
    payload = b"x" * 300_000
    conns[0].transport.write(payload)
    assert net.run_until(lambda: utp.stats()["bytes_received"] >= len(payload), 30)
    client.udp.send(b"\x00" * 5, ("127.0.0.1", 49737))  # not a DHT message: dropped by reason
    net.run(1)

    response = yield stub.get("http://node/status")
    status = yield response.json()
    assert status["node"] == {
        "id": boot.id.hex(), "host": "127.0.0.1", "port": 49737, "ephemeral": False,
        "routing_table_size": boot.routing_table_size,
    }
    assert status["node"]["routing_table_size"] == 0  # the client is ephemeral: not added
    assert status["topics"] == [] and status["connections"] == []

    after = yield metrics()
    udp_in = after[("hyperswarm_bytes_total", (("direction", "in"), ("transport", "udp")))]
    assert udp_in >= len(payload) > before.get(("hyperswarm_bytes_total", (("direction", "in"), ("transport", "udp"))), 0)
    assert after[("hyperswarm_bytes_total", (("direction", "in"), ("transport", "utp")))] == len(payload)
    assert after[("hyperswarm_bytes_total", (("direction", "out"), ("transport", "utp")))] == 0
    assert after[("hyperswarm_utp_connections", ())] == 1
    assert after[("hyperswarm_utp_half_open", ())] == 0  # the connection completed its handshake
    assert after[("hyperswarm_dht_rpc_requests_total", (("command", "_find_node"), ("direction", "in")))] >= 1
    assert sum(v for (name, _), v in after.items() if name == "hyperswarm_dropped_datagrams_total") >= 1
    assert after[("hyperswarm_connections", ())] == 0

    yield sender.close()
    yield utp.close()
    yield client.stopService()
    yield boot.stopService()


class _FakeNetwork:
    def __init__(self, dht):
        self.dht = dht
        self.udp = dht.udp
        self.utp = None
        self.mdns = None

    def stats(self):
        from collections import Counter

        return {"refused": Counter({"tcp_per_address": 4, "firewall": 1})}


class _FakeSwarm:
    """What status_site reads of a swarm: ``network`` and ``stats()``."""

    def __init__(self, network, topics, connections):
        self.network = network
        self._figures = {"topics": topics, "connections": connections}

    def stats(self):
        return dict(self._figures)


@pytest_twisted.inlineCallbacks
def test_status_and_metrics_of_a_swarm_with_tunnels():
    from zope.interface import directlyProvides

    from txhyperswarm.interfaces import IStatsSource
    from txhyperswarm.peer_record import PeerRecord
    from txhyperswarm.tunnel import Tunnels

    net = UDPNetwork()
    node = DHTNode(net.reactor("127.0.0.1"), bootstrap=[], port=4000, host="127.0.0.1")
    node.startService()
    topic = b"\x07" * 32
    unbound = _FakeSwarm(None, [], 0)
    directlyProvides(unbound, IStatsSource)
    stub = StubTreq(status_site(swarm=unbound, tunnels=Tunnels(net.reactor("127.0.0.1"))).resource)
    early = yield (yield stub.get("http://node/status")).json()
    assert early["node"]["id"] is None and early["topics"] == [] and early["connections"] == []

    network = _FakeNetwork(node)
    directlyProvides(network, IStatsSource)
    swarm = _FakeSwarm(network, [{"topic": topic.hex(), "lookup": True, "announce": False}], 3)
    directlyProvides(swarm, IStatsSource)
    tunnels = Tunnels(net.reactor("127.0.0.1"))
    for port in (1, 2, 2):  # a repeat is one distinct peer
        tunnels.peer_found(PeerRecord(topic, "10.0.0.5", port, False, None, None, "dht"))
    tunnels.count("tcp", "out", 1234)
    tunnels.count("utp", "in", 99)
    stub = StubTreq(status_site(swarm=swarm, tunnels=tunnels).resource)
    status = yield (yield stub.get("http://node/status")).json()
    assert status["node"]["id"] == node.id.hex() and status["node"]["port"] == 4000
    assert status["topics"] == [{"topic": topic.hex(), "announce": False, "lookup": True, "peers": 2}]
    text = yield (yield stub.get("http://node/metrics")).text()
    samples = metric_samples(text)
    assert samples[("hyperswarm_connections", ())] == 3
    assert samples[("hyperswarm_peers_discovered_total", ())] == 2
    assert samples[("hyperswarm_bytes_total", (("direction", "out"), ("transport", "tcp")))] == 1234
    assert samples[("hyperswarm_bytes_total", (("direction", "in"), ("transport", "utp")))] == 99
    assert samples[("hyperswarm_refused_connections_total", (("reason", "tcp_per_address"),))] == 4
    assert samples[("hyperswarm_refused_connections_total", (("reason", "firewall"),))] == 1
    yield node.stopService()
    net.run(1)


#: every reason a limit against abuse refuses with, by the object counting it
#: (docs/reliability.rst "Limits of the daemon")
LIMIT_REASONS = {
    "dht": ("rate_ip", "pending_ip", "pending_total", "holepunch_ip", "holepunch_total"),
    "routing": ("ping_budget", "newcomer", "unverified"),
    "utp": ("syn_too_many", "syn_per_address", "syn_half_open_per_address", "half_open_evicted"),
    "mdns": ("answer_rate_limited",),
}


@pytest_twisted.inlineCallbacks
def test_every_refusal_of_the_limits_appears_in_metrics():
    from txhyperswarm.dht import messages as m
    from txhyperswarm.mdns.service import MulticastDiscovery

    net = UDPNetwork(latency=0.001)
    node = DHTNode(net.reactor("10.0.0.1"), bootstrap=[], port=4000, host="10.0.0.1", holepunch_relay_per_ip=1)
    node.startService()
    utp = UTPSocket(net.reactor("10.0.0.1"), node.udp)
    mdns = MulticastDiscovery(net.reactor("10.0.0.1"))
    stub = StubTreq(status_site(node, utp=utp, mdns=mdns).resource)
    # the new reason for real: two holepunches to relay from one address, budget 1
    for rid in (1, 2):
        msg = m.Message(version=1, type=m.QUERY, rid=rid, command=b"_holepunch",
                        value=m.Holepunch(to=m.encode_peer("10.0.0.7", 7)).SerializeToString())
        net.transmit(msg.SerializeToString(), ("10.0.0.2", 5), ("10.0.0.1", 4000))
    net.run(0.1)
    assert node.dropped["holepunch_ip"] == 1
    counters = {"dht": node.dropped, "routing": node.routing_table.refused, "utp": utp.dropped,
                "mdns": mdns.dropped}
    for kind, reasons in LIMIT_REASONS.items():
        for n, reason in enumerate(reasons, start=2):
            counters[kind][reason] = n
    samples = metric_samples((yield (yield stub.get("http://node/metrics")).text()))
    for kind, reasons in LIMIT_REASONS.items():
        family = "hyperswarm_dht_routing_refused_total" if kind == "routing" else "hyperswarm_dropped_datagrams_total"
        for n, reason in enumerate(reasons, start=2):
            assert samples[(family, (("reason", reason),))] == n, (kind, reason)
    yield utp.close()
    yield node.stopService()
