"""
DHT scale, the suite's fast form of ``bench/dht_scale.py`` (issue 12): a
network of persistent ``DHTNode`` s in memory on one ``HeapClock``, topics
announced, lookups from random nodes; then 30 % of the nodes killed at once
and, after the next refresh, lookups again.

The bounds come from Kademlia, not from the code: a lookup reaches the
holders of a topic in O(log n) hops (at most log2 n with one bit of progress
per hop) and sends O(k log n) requests. The figures at 1,000 - 20,000 nodes,
and Node's beside them, are in docs/bench_dht_scale.rst.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from twisted.internet.task import Clock

from txhyperswarm.dht.routing import K
from txhyperswarm.testing import HeapClock, UDPNetwork

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import dht_scale  # noqa: E402

N = 600
LOOKUPS = 100


def test_lookups_at_scale_and_after_killing_30_percent():
    sim = dht_scale.Simulation(N, seed=3)
    sim.build()
    assert len(sim.nodes) == N
    table_mean, table_min, _ = sim.table_sizes()
    assert table_min >= K  # every node knows at least a bucket's worth
    assert sim.announce(20) == 20

    log_n = math.log2(N)
    # the walks' own count of requests matches what the RPC layers sent
    sent_before = sum(n.rpc.sent[b"peers"] for n in sim.nodes)
    before = sim.lookups(LOOKUPS)
    sent = sum(n.rpc.sent[b"peers"] for n in sim.nodes) - sent_before
    assert before["unfinished"] == 0
    assert sent == round(before["messages_mean"] * LOOKUPS)
    assert before["found"] >= 0.99 * LOOKUPS, before
    assert before["hops_max"] <= log_n, before
    assert before["hops_mean"] <= log_n / 2, before
    assert before["messages_mean"] <= K * log_n / 2, before
    assert before["messages_max"] <= K * log_n, before

    killed = sim.kill(0.3)
    assert killed == round(0.3 * N)
    sim.net.run(dht_scale.REFRESH, step=0.05)
    after = sim.lookups(LOOKUPS)
    assert after["unfinished"] == 0
    assert after["found"] >= 0.99 * LOOKUPS, after
    assert after["hops_max"] <= log_n, after
    assert after["messages_mean"] <= K * log_n / 2, after
    # nothing was sent to or by a dead node after it died
    assert all(sim.nodes[i].destroyed for i in sim.dead)


def _trace(clock):
    """Calls made on ``clock``, with reset, delay and cancel; returns what ran after each second."""
    ran = []
    a = clock.callLater(1.0, ran.append, "a")
    clock.callLater(1.0, ran.append, "b")
    c = clock.callLater(3.0, ran.append, "c")
    d = clock.callLater(2.0, ran.append, "d")
    e = clock.callLater(0.5, ran.append, "e")
    clock.callLater(0.0, lambda: clock.callLater(0.0, ran.append, "nested"))
    clock.callLater(1.0, ran.append, "b2")  # same time as b: after it
    c.reset(0.2)  # earlier
    d.reset(5.0)  # later
    e.delay(1.0)  # at 1.5
    a.cancel()
    pending = len(clock.getDelayedCalls())
    steps = []
    for _ in range(6):
        clock.advance(1.0)
        steps.append(list(ran))
    return pending, steps, len(clock.getDelayedCalls())


def test_heap_clock_runs_calls_as_clock_does():
    plain, heap = _trace(Clock()), _trace(HeapClock())
    assert heap == plain
    assert heap[0] == 6
    assert heap[1][-1] == ["c", "b", "b2", "nested", "e", "d"]
    assert heap[2] == 0

    clock = HeapClock()
    net = UDPNetwork(clock)
    times = []
    for t in (0.3, 0.1, 0.2):
        clock.callLater(t, lambda: times.append(clock.seconds()))
    assert clock.next_time() == 0.1
    net.run_events(1.0)
    assert times == [0.1, 0.2, 0.3] and clock.seconds() == 1.0
    assert clock.next_time() is None
