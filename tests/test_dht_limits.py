"""
The DHT node under abuse, in memory on a Clock (issue 12, the DHT side).

* the re-ping storm: a 10 s burst of 40,000 ``_find_node`` requests at
  4,000/s, each from a fresh node id and a fresh source address, at a
  persistent node;
* the per-source inbound rate limit, the pending-work limits, and a flood
  from 1,000 addresses, each while a legitimate client keeps pinging.

The figures are in docs/reliability.rst; bench/dht_flood.py is the
real-socket form.
"""

from __future__ import annotations

import os
import random
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer

from tests.dht.raw import query
from txhyperswarm.dht import messages as m
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.testing import UDPNetwork

Address = Tuple[str, int]

NODE = ("127.0.0.1", 10001)
CLIENT = ("127.0.0.2", 10002)


def source(i: int) -> Address:
    """The ``i``-th flood source: spread over 127.1.0.0 - 127.255.255.255."""
    return f"127.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", 1024 + (i * 7919) % 60000


def find_node(rng: random.Random, rid: int) -> bytes:
    return query(b"_find_node", rid, rng.randbytes(32), rng.randbytes(32))


class Probe:
    """A network with the node under test and an ephemeral client that pings it."""

    def __init__(self, **node_kw) -> None:
        self.net = UDPNetwork(latency=0.001)
        self.node = DHTNode(self.net.reactor(NODE[0]), bootstrap=[], host=NODE[0], port=NODE[1], **node_kw)
        self.node.startService()
        self.client = DHTNode(
            self.net.reactor(CLIENT[0]), bootstrap=[], ephemeral=True, host=CLIENT[0], port=CLIENT[1]
        )
        self.client.startService()
        #: (time, destination) of every _ping the node sent.
        self.pings: List[Tuple[float, Address]] = []
        self.answered = 0
        self.lost = 0
        self.latencies: List[float] = []
        self.net.drop = self._watch
        self.net.run(1)

    def _watch(self, data: bytes, src: Address, dst: Address) -> bool:
        if src == NODE and b"_ping" in data:
            try:
                msg = m.decode_message(data)
            except m.DecodeError:
                return False
            if msg.type == m.QUERY and msg.command == b"_ping":
                self.pings.append((self.net.clock.seconds(), dst))
        return False

    def ping(self) -> None:
        """One client ping of the node; counted answered or lost."""
        t0 = self.net.clock.seconds()
        d = self.client.ping(*NODE)

        def ok(_):
            self.answered += 1
            self.latencies.append(self.net.clock.seconds() - t0)

        def lost(f):
            self.lost += 1

        d.addCallbacks(ok, lost)

    def inject(self, data: bytes, src: Address) -> None:
        self.net.transmit(data, src, NODE)

    def flood(self, payloads: List[bytes], steps: int, per_step: int) -> int:
        """
        ``per_step`` datagrams every 10 ms for ``steps`` steps, payload ``i``
        from :func:`source` ``i`` round the list; the client pings every 100 ms.
        Returns how many were sent.
        """
        sent = 0
        for step in range(steps):
            for k in range(per_step):
                i = (step * per_step + k) % len(payloads)
                self.inject(payloads[i], source(i))
                sent += 1
            if step % 10 == 0:
                self.ping()
            self.net.clock.advance(0.01)
        return sent

    def sizes(self) -> Dict[str, int]:
        table = self.node.routing_table
        rpc = self.node.rpc
        return {
            "table": len(table),
            "evictions": getattr(table, "evictions_pending", 0),
            "inflight": rpc.inflight_count,
            "queued": rpc.pending_count(),
        }


def storm(seconds: int = 10, rate: int = 4000, after: float = 330.0, seed: int = 1) -> dict:
    """
    The re-ping burst; returns its figures: ``pings`` (all the node sent),
    ``late_pings`` (15 s or more after the burst), ``answered``/``lost`` of
    the client's 50 pings, and the sizes before, right after and at the end.
    """
    p = Probe()
    rng = random.Random(seed)
    before = p.sizes()
    per_step = rate // 100
    i = 0
    client_pings = 0
    for step in range(seconds * 100):
        for _ in range(per_step):
            p.inject(find_node(rng, i), source(i))
            i += 1
        if step % 40 == 0 and client_pings < 25:  # every 0.4 s
            p.ping()
            client_pings += 1
        p.net.clock.advance(0.01)
    burst_end = p.net.clock.seconds()
    during = p.sizes()
    t = 0.0
    while t < after:
        if client_pings < 50:
            p.ping()
            client_pings += 1
        p.net.run(1.0, step=0.05)
        t += 1.0
    end = p.sizes()
    late = [x for x in p.pings if x[0] >= burst_end + 15]
    p.node.stopService()
    p.client.stopService()
    return {
        "requests": i,
        "pings": len(p.pings),
        "late_pings": len(late),
        "pinged_sources": len({d for _, d in p.pings}),
        "answered": p.answered,
        "lost": p.lost,
        "before": before,
        "during": during,
        "end": end,
        "refused": dict(getattr(p.node.routing_table, "refused", {})),
        "dropped": dict(p.node.dropped),
    }


def test_reping_storm_is_bounded():
    r = storm()
    assert r["requests"] == 40_000
    assert r["pings"] < 1000, r
    # one eviction ping in flight per full bucket (10 buckets here, 3
    # transmissions each; the budget alone would allow about 1,300)
    assert r["pings"] <= 60 and r["refused"]["newcomer"] > 20_000, r
    assert r["late_pings"] == 0, r
    assert (r["answered"], r["lost"]) == (50, 0), r
    # what the burst left behind is gone again (the table forgets quiet
    # unverified nodes after 5 min; nothing is pending)
    assert r["end"] == r["before"], r


def ping_datagram(rid: int, node_id: Optional[bytes] = None) -> bytes:
    return query(b"_ping", rid, node_id)


def median(xs: List[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def test_rate_limit_per_source_ip_sheds_a_flood_and_serves_others():
    p = Probe(rate_limit_per_ip=100)
    flooder = ("127.9.9.9", 4000)
    for step in range(500):  # 5 s, 2,000 datagrams a second from one IP
        for k in range(20):
            p.inject(ping_datagram(step * 20 + k), flooder)
        if step % 10 == 0:
            p.ping()
        p.net.clock.advance(0.01)
    p.net.run(2)
    answered_flood = p.node.rpc_requests[("_ping", "in")] - p.answered
    assert (p.answered, p.lost) == (50, 0)
    # at most 100 a second got through (a window may straddle)
    assert 400 <= answered_flood <= 600, answered_flood
    assert p.node.dropped["rate_ip"] == 10_000 - answered_flood
    assert median(p.latencies) < 0.05


def test_rate_limit_default_spares_the_machine_itself():
    p = Probe()
    assert p.node.rpc.rate_limit_per_ip == 2000
    for k in range(5000):
        p.inject(ping_datagram(k), ("127.0.0.1", 5000))
    p.net.run(1)
    assert p.node.dropped["rate_ip"] == 0
    assert p.node.rpc_requests[("_ping", "in")] == 5000


def test_flood_from_1000_addresses_is_shed_and_the_client_served():
    # the client (10 pings a second) stays under the limit, each of the
    # flood's addresses (40 a second) does not
    p = Probe(rate_limit_per_ip=20)
    rng = random.Random(2)
    payloads = [find_node(rng, k) for k in range(1000)]
    sent = p.flood(payloads, 500, 400)  # 5 s; 1,000 addresses, 40 a second each
    p.net.run(2)
    assert (p.answered, p.lost) == (50, 0)
    assert median(p.latencies) < 0.05
    taken = p.node.rpc_requests[("_find_node", "in")]
    assert p.node.dropped["rate_ip"] == sent - taken
    assert sent == 200_000
    assert taken <= 1000 * 20 * 6  # 20 a second each, 5-6 windows
    assert p.node.dropped["rate_ip"] >= sent * 0.4


def test_pending_requests_per_source_and_in_total():
    p = Probe(max_pending_per_ip=10, max_pending=25)
    waiting: List[defer.Deferred] = []

    def slow(request):
        d = defer.Deferred()
        waiting.append(d)
        return d

    p.node.add_command("slow", query=slow)

    def slow_query(rid: int) -> bytes:
        return query(b"slow", rid, target=bytes(32))

    for k in range(30):
        p.inject(slow_query(k), ("127.3.0.1", 3000))
    p.net.run(0.1)
    assert len(waiting) == 10
    assert p.node.dropped["pending_ip"] == 20
    for a in range(2, 6):  # four more sources: 15 more fit in the total
        for k in range(10):
            p.inject(slow_query(k), (f"127.3.0.{a}", 3000))
    p.net.run(0.1)
    assert len(waiting) == 25
    assert p.node.dropped["pending_total"] == 25
    for _ in range(50):  # the node still answers others
        p.ping()
        p.net.run(0.05)
    assert (p.answered, p.lost) == (50, 0)
    for d in waiting:
        d.callback(b"ok")
    p.net.run(0.1)
    for k in range(5):
        p.inject(slow_query(k), ("127.3.0.1", 3000))
    p.net.run(0.1)
    assert len(waiting) == 30  # room again


def test_ping_budget_bounds_the_liveness_pings():
    from txhyperswarm.dht.routing import PING_BURST, PING_RATE, RoutingTable

    assert (PING_RATE, PING_BURST) == (20.0, 100)
    now = [0.0]
    sent = []
    table = RoutingTable(
        bytes(32), ping=lambda c, cb: sent.append(c), seconds=lambda: now[0], ping_rate=1.0, ping_burst=2
    )
    for i in range(10):
        table.add_node(bytes([1 + i]) + bytes(31), "10.0.0.1", 1000 + i)
    table.tick = 1
    table.ping_some(0)
    assert len(sent) == 2 and table.refused["ping_budget"] == 1
    now[0] = 1.0  # one token back
    table.ping_some(0)
    assert len(sent) == 3 and table.refused["ping_budget"] == 2


def test_unverified_nodes_are_not_swept_and_forgotten_when_quiet():
    from txhyperswarm.dht.routing import UNVERIFIED_TTL, RoutingTable

    sent = []
    table = RoutingTable(bytes(32), ping=lambda c, cb: sent.append(c))
    table.add_node(b"\x01" + bytes(31), "10.0.0.1", 1000, verified=False)
    table.add_node(b"\x02" + bytes(31), "10.0.0.2", 1000)
    for _ in range(UNVERIFIED_TTL):
        table.on_tick(0)
    assert {c.host for c in sent} == {"10.0.0.2"}  # the sweeps skipped the unverified one
    assert len(table) == 1 and table.refused["unverified"] == 1
