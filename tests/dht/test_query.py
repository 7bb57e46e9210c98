"""Iterative walks on an in-memory network driven by a Clock."""

from __future__ import annotations

import os
import random

import pytest
from twisted.internet import defer

from txhyperswarm.dht import messages as m
from txhyperswarm.dht.errors import QueryError
from txhyperswarm.dht.query import QueryTable, Reply
from txhyperswarm.dht.routing import Contact

from tests.dht.dhtnet import DHTNetwork


def xor(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def network(size: int, seed: int = 1):
    rnd = random.Random(seed)
    net = DHTNetwork()
    boot = net.node(id=rnd.randbytes(32))
    net.clock.advance(0)
    nodes = [boot]
    for _ in range(size - 1):
        nodes.append(net.node(bootstrap=[boot.address()], id=rnd.randbytes(32)))
        net.run(0.05)
    net.run(2)
    assert all(n.is_bootstrapped for n in nodes)
    return net, nodes


def test_query_table_keeps_k_closest_sorted():
    target = os.urandom(32)
    table = QueryTable(os.urandom(32), target, k=5)
    ids = [os.urandom(32) for _ in range(30)]
    for i in ids:
        table.add_unverified(Contact(i, "10.0.0.1", 1), None)
        table.add_unverified(Contact(i, "10.0.0.1", 1), None)  # duplicates ignored
    assert [p.id for p in table.unverified] == sorted(ids, key=lambda i: xor(i, target))[:5]
    table.add_verified(ids[0], None, "10.0.0.1", 1)  # no token: not verified
    table.add_verified(ids[0], b"t" * 32, "10.0.0.1", 1)
    assert [p.id for p in table.closest] == [ids[0]]
    assert table.closest[0].token == b"t" * 32


def test_find_node_walks_find_the_true_closest_nodes():
    net, nodes = network(40)
    all_ids = [n.id for n in nodes]
    rnd = random.Random(7)
    exact = 0
    total = 0
    for querier in nodes[1:4]:
        for _ in range(10):
            target = rnd.randbytes(32)
            d = querier.query("_find_node", target)
            net.run(1)
            replies = d.result
            assert all(isinstance(r, Reply) for r in replies)
            got = sorted({r.id for r in replies}, key=lambda i: xor(i, target))[:20]
            want = sorted((i for i in all_ids if i != querier.id), key=lambda i: xor(i, target))[:20]
            exact += got == want
            total += 1
    assert exact == total


def test_query_and_update_updates_the_closest_nodes_with_their_tokens():
    net, nodes = network(30)
    target = os.urandom(32)
    stored = {}
    for n in nodes:
        n.add_command(
            "store",
            query=lambda req, n=n: stored.get(n.id),
            update=lambda req, n=n: stored.__setitem__(n.id, req.value) or None,
        )
    querier = nodes[5]
    d = querier.query_and_update("store", target, b"hello")
    net.run(1)
    replies = d.result
    want = sorted((n.id for n in nodes if n is not querier), key=lambda i: xor(i, target))[:20]
    assert sorted(stored) == sorted(want)
    assert set(stored.values()) == {b"hello"}
    # query replies (no value) and update replies are both returned
    assert len(replies) >= 40
    # every UPDATE carried the recipient's token for our IP
    by_addr = {n.address(): n for n in nodes}
    updates = [(dst, msg) for src, dst, msg in net.decoded() if src == querier.address() and msg.type == m.UPDATE]
    assert len(updates) == 20
    for dst, msg in updates:
        assert by_addr[dst].rpc.tokens.valid(msg.roundtripToken, "127.0.0.1")
    # a later lookup sees the stored values
    d = nodes[9].query("store", target)
    net.run(1)
    assert b"hello" in {r.value for r in d.result}


def test_update_walks_with_find_node_then_updates():
    net, nodes = network(25)
    target = os.urandom(32)
    got = []
    for n in nodes:
        n.add_command("store", update=lambda req, n=n: got.append(n.id) or b"ok")
    querier = nodes[3]
    net.log.clear()
    d = querier.update("store", target, b"v")
    net.run(1)
    assert [r.value for r in d.result] == [b"ok"] * 20
    sent = [msg for src, dst, msg in net.decoded() if src == querier.address() and msg.type != m.RESPONSE]
    assert {msg.command for msg in sent if msg.type == m.QUERY} == {b"_find_node"}
    assert sum(msg.type == m.UPDATE for msg in sent) == 20


def test_query_stream_calls_on_reply_as_replies_arrive():
    net, nodes = network(10)
    seen = []
    net.down.add(nodes[7].address())  # the walk waits for this one to time out
    d = nodes[2].query_stream("_find_node", os.urandom(32), on_reply=seen.append)
    net.run(1)
    assert seen and not d.called  # replies arrive before the walk ends
    net.run(8)
    assert d.result is None
    assert {r.node for r in seen} <= {n.address() for n in nodes}


def test_walk_with_no_responses_fails():
    net = DHTNetwork()
    boot = ("127.0.0.1", 9)
    net.down.add(boot)
    a = net.node(bootstrap=[boot])
    net.run(10)
    assert a.is_bootstrapped  # bootstrap ends (and fails) like dht-rpc's ready
    d = a.query("_find_node", os.urandom(32))
    net.run(10)
    with pytest.raises(QueryError, match="No nodes responded"):
        d.result.raiseException()
    d.addErrback(lambda f: None)


def test_bootstrap_nodes_are_forced_into_small_walks():
    net, nodes = network(5)
    fresh = net.node(bootstrap=[nodes[0].address()])
    net.log.clear()
    net.run(1)
    first = net.messages(src=fresh.address())[0]
    assert first.command == b"_find_node" and first.target == fresh.id
    assert fresh.routing_table_size == 5


def test_cancelling_a_walk_stops_it():
    net, nodes = network(20)
    size = nodes[1].routing_table_size
    d = nodes[1].query("_find_node", os.urandom(32))
    assert nodes[1].rpc.inflight_count > 0
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(defer.CancelledError)
    assert nodes[1].rpc.inflight_count == 0  # its requests are forgotten
    assert nodes[1].inflight_queries == 0 and not nodes[1].walk_context.walks
    net.run(10)
    assert nodes[1].routing_table_size == size  # cancelling evicts nobody


def _named_bootstrap(net, nodes, answers):
    """A node whose bootstrap node is given by name; the name resolves
    after 50 ms (``answers`` counts the look-ups)."""
    from twisted.internet import task

    def resolve(name):
        answers.append(name)
        return task.deferLater(net.clock, 0.05, lambda: "127.0.0.1")

    net.reactor("127.0.0.1").resolve = resolve  # every node of the network is on 127.0.0.1
    return net.node(bootstrap=[("boot.example", nodes[0].address()[1])])


def test_a_walk_right_after_start_waits_for_bootstrap_names():
    # The CLI starts a node and looks up at once; with the default (named)
    # bootstrap nodes the walk failed at once with "No nodes responded".
    net, nodes = network(5)
    looked_up = []
    n = _named_bootstrap(net, nodes, looked_up)
    first = n.query("_find_node", os.urandom(32))
    second = n.query("_find_node", os.urandom(32))
    net.run(2)
    assert {r.id for r in first.result} == {r.id for r in second.result} == {x.id for x in nodes}
    assert n.is_bootstrapped
    assert looked_up == ["boot.example"]  # one resolution, shared


def test_cancelling_a_walk_that_waits_for_names():
    net, nodes = network(3)
    n = _named_bootstrap(net, nodes, [])
    target = os.urandom(32)
    d = n.query("_find_node", target)
    d.cancel()
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    net.run(2)
    assert n.is_bootstrapped and n.inflight_queries == 0 and not n.walk_context.walks
    assert [m for m in net.messages(src=n.address()) if m.target == target] == []  # never sent
