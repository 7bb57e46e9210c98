"""
``peers.join`` (:class:`~txhyperswarm.dht.peers.DHTTopic`) with real
DHTNodes on the in-memory network and its clock (swarm.md 4.3, 4.4, 4.8).
"""

from __future__ import annotations

import pytest

from txhyperswarm.dht import peers
from txhyperswarm.dht.errors import QueryError
from txhyperswarm.dht.messages import QUERY, UPDATE, decode_peers_input

from tests.dht.dhtnet import DHTNetwork

TOPIC = b"\x5a" * 32
ANNOUNCED = 4000


class Fixed:
    """A ``random`` always drawing ``x``."""

    def __init__(self, x: float) -> None:
        self.x = x

    def random(self) -> float:
        return self.x


def network(holders: int, silent: int = 0):
    """
    A bootstrap node (no ``peers`` command), ``holders`` nodes holding the
    record of an announcer (port 4000), and ``silent`` nodes every table
    knows that have gone quiet: a walk waits ~7.5 s for them.
    """
    net = DHTNetwork()
    boot = net.node()
    net.clock.advance(0)
    servers = [net.node(bootstrap=[boot.address()]) for _ in range(holders)]
    commands = [peers.register(s) for s in servers]
    quiet = [net.node(bootstrap=[boot.address()]) for _ in range(silent)]
    net.run(1)
    announcer = net.node(bootstrap=[boot.address()], ephemeral=True)
    net.run(1)
    t = peers.join(announcer, TOPIC, announce_port=ANNOUNCED, lookup=False)
    net.run(1)
    assert t.when_ready().result is True
    assert sum(len(c.store) for c in commands) == holders
    for q in quiet:
        net.down.add(q.address())
    looker = net.node(bootstrap=[boot.address()], ephemeral=True)
    net.run(10)  # bootstrapped (its walk waited for the quiet ones)
    return net, servers, looker, commands


@pytest.mark.parametrize("holders, early", [(6, True), (5, False)])
def test_the_first_round_ends_at_exactly_6_full_responses(holders, early):
    net, servers, looker, _ = network(holders, silent=2)
    found, updates, at_ready = [], [], []
    t = peers.join(looker, TOPIC, on_peer=found.append, on_update=updates.append)
    t.when_ready().addCallback(lambda ok: at_ready.append((ok, len(found), len(updates))))
    net.run(1)
    if early:
        # the 6th response carrying a peer ends the round; the cycle goes on
        assert at_ready == [(True, 6, 0)]
    else:
        assert at_ready == [] and len(found) == 5
    net.run(10)  # the quiet nodes time out: the cycle ends
    assert updates == [None]
    assert at_ready == [(True, 6, 0)] if early else [(True, 5, 1)]


def test_the_first_round_is_false_when_no_node_answers():
    net = DHTNetwork()
    boot = net.node()
    net.clock.advance(0)
    client = net.node(bootstrap=[boot.address()], ephemeral=True)
    net.run(1)
    net.down.add(boot.address())
    client.routing_table.remove_id(boot.id)
    updates = []
    t = peers.join(client, TOPIC, announce_port=0, on_update=updates.append, random=Fixed(0.0))
    ready = t.when_ready()
    net.run(20)
    assert ready.result is False
    assert len(updates) == 1 and isinstance(updates[0], QueryError)
    net.run(300)  # the next cycle, 300 s after: fails again, reported again
    assert len(updates) == 2 and isinstance(updates[1], QueryError)
    assert t.when_ready().result is False


def test_on_update_ends_every_cycle_and_refresh_starts_one_now():
    net, _, looker, _ = network(3)
    ends = []
    t = peers.join(looker, TOPIC, on_update=lambda err: ends.append((round(net.clock.seconds() - start), err)),
                   random=Fixed(0.5))
    start = net.clock.seconds()
    net.run(1)
    assert ends == [(0, None)]  # one cycle: walks of 10 ms hops
    net.run(100)
    t.refresh()  # 101 s after: now, and the schedule restarts from its end
    net.run(1)
    assert ends == [(0, None), (101, None)]
    net.run(449)
    assert len(ends) == 2
    net.run(2)
    assert ends == [(0, None), (101, None), (551, None)]
    t.refresh()
    t.refresh()  # while a cycle runs: nothing more
    net.run(1)
    assert ends[3:] == [(553, None)]


def test_stop_fires_once_the_unannounce_is_done_and_the_records_are_gone():
    net, servers, looker, commands = network(4)
    t = peers.join(looker, TOPIC, announce_port=5000, lookup=False)
    net.run(1)
    assert sum(len(c.store) for c in commands) == 8
    stopped = t.stop()
    assert not stopped.called  # the unannounce walk is on the way
    net.run(1)
    assert stopped.result is None
    assert sum(len(c.store) for c in commands) == 4  # only the first announcer's
    again = t.stop()
    assert again.result is None
    sent = len(net.messages(src=looker.address(), command=b"peers"))
    net.run(3600)
    assert len(net.messages(src=looker.address(), command=b"peers")) == sent  # no cycle after stop


def test_stop_never_errbacks_when_the_unannounce_fails():
    net, servers, looker, _ = network(2)
    t = peers.join(looker, TOPIC, announce_port=5000)
    net.run(1)
    for s in servers:
        net.down.add(s.address())
    net.down.add(("127.0.0.1", None))  # nothing answers any more
    stopped = t.stop()
    net.run(20)
    assert stopped.result is None


def test_a_lookup_only_join_stops_at_once():
    net, _, looker, _ = network(2)
    t = peers.join(looker, TOPIC)
    net.run(1)
    def about_topic():
        return [m for m in net.messages(src=looker.address()) if m.target == TOPIC]

    sent = len(about_topic())
    assert t.stop().result is None
    net.run(3600)
    assert len(about_topic()) == sent  # no unannounce, no cycle


def test_lookup_only_cycles_send_only_lookup_queries():
    net, _, looker, _ = network(3)
    net.log.clear()
    start = net.clock.seconds()
    peers.join(looker, TOPIC, local_address=("10.0.0.7", 4000), random=Fixed(0.0))
    net.run(301)  # two cycles
    sent = [m for m in net.messages(src=looker.address()) if m.command == b"peers"]
    assert sent and {m.type for m in sent} == {QUERY}
    values = {decode_peers_input(m.value).SerializeToString() for m in sent}
    assert values == {peers.encode_lookup(("10.0.0.7", 4000))}  # no port
    assert not [m for m in net.messages(src=looker.address()) if m.type == UPDATE]
    cycles = sorted({round(t - start) for t, src, _, data in net.log
                     if src == looker.address() and b"peers" in data})
    assert cycles == [0, 300]


def test_every_report_is_passed_on():
    net, servers, looker, _ = network(4)
    found = []
    peers.join(looker, TOPIC, on_peer=found.append)
    net.run(1)
    # one record, reported by each node holding it, with that node as referrer
    assert {(p.host, p.port, p.local) for p in found} == {("127.0.0.1", ANNOUNCED, False)}
    assert sorted(p.referrer for p in found) == sorted(s.address() for s in servers)
    net.run(600)  # and again in the next cycle
    assert len(found) == 8


def test_cycles_stop_with_the_node():
    net, _, looker, _ = network(2)
    updates = []
    t = peers.join(looker, TOPIC, announce_port=0, on_update=updates.append)
    net.run(1)
    looker.stopService()
    net.run(3600)
    assert updates == [None]
    assert t.stop().result is None  # nothing to unannounce through: logged, done
