"""The k-bucket routing table: closest order, splitting, ping-the-oldest eviction."""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from txhyperswarm.dht.routing import KBucket, Contact, RoutingTable

from tests.dht.dhtnet import DHTNetwork

_id = st.binary(min_size=32, max_size=32)


def xor(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@given(_id, st.lists(_id, max_size=120, unique=True), _id)
@settings(max_examples=200)
def test_closest_is_the_brute_force_closest(local, ids, target):
    table = RoutingTable(local, ping=lambda peer, cb: None)
    for i, node_id in enumerate(ids):
        table.add_node(node_id, "10.0.0.1", 1000 + i)
    present = [p.id for p in table.bucket]
    assert len(present) == len(table)
    got = [p.id for p in table.closest(target, 20)]
    assert got == sorted(present, key=lambda i: xor(i, target))[:20]


def test_bucket_splits_only_on_our_side():
    local = b"\x00" * 32
    pinged = []
    bucket = KBucket(local, on_ping=lambda old, new: pinged.append((old, new)))
    far = [Contact(b"\x80" + os.urandom(31), "10.0.0.1", 1) for _ in range(21)]
    # byte 1 = 0..29: every bucket on the far side of a split gets <= 20
    near = [Contact(b"\x00" + bytes([i]) + os.urandom(30), "10.0.0.1", 1) for i in range(30)]
    for p in far[:20]:
        assert bucket.add(p)
    assert not bucket.add(far[20])  # split; the far half may not split again
    assert pinged and pinged[0][0] == far[:3] and pinged[0][1] is far[20]
    for p in near:
        assert bucket.add(p)  # our side keeps splitting
    assert bucket.count() == 50


def test_refresh_moves_a_contact_to_the_newest_end():
    local = b"\x00" * 32
    pinged = []
    bucket = KBucket(local, on_ping=lambda old, new: pinged.append(old))
    far = [Contact(b"\x80" + os.urandom(31), "10.0.0.1", 1) for _ in range(21)]
    for p in far[:20]:
        bucket.add(p)
    bucket.add(far[0])  # seen again
    bucket.add(far[20])
    assert pinged[0] == far[1:4]


def _full_far_bucket(net, down_oldest: bool):
    a = net.node(id=b"\x00" * 32)
    net.clock.advance(0)
    assert a.is_bootstrapped
    others = [net.node(id=b"\x80" + os.urandom(31)) for _ in range(20)]
    for o in others:
        o.ping(*a.address())
        net.run(0.05)
    assert a.routing_table_size == 20
    net.run(5.1)  # next DHT tick: old contacts were not seen this tick
    if down_oldest:
        net.down.add(others[0].address())
    newcomer = net.node(id=b"\x80" + os.urandom(31))
    newcomer.ping(*a.address())
    net.run(0.1)
    return a, others, newcomer


def test_full_bucket_keeps_the_oldest_when_it_answers():
    net = DHTNetwork()
    a, others, newcomer = _full_far_bucket(net, down_oldest=False)
    net.run(10)
    pings = [m for m in net.messages(src=a.address(), command=b"_ping")]
    # the three oldest were pinged (one after the other) with their ids
    assert [m.value for m in pings] == [o.id for o in others[:3]]
    assert a.routing_table.get(newcomer.id) is None
    assert a.routing_table.get(others[0].id) is not None
    assert a.routing_table_size == 20


def test_full_bucket_evicts_the_oldest_when_it_does_not_answer():
    net = DHTNetwork()
    a, others, newcomer = _full_far_bucket(net, down_oldest=True)
    net.run(7)
    assert a.routing_table.get(newcomer.id) is None  # still retrying the oldest
    net.run(2)
    assert a.routing_table.get(others[0].id) is None
    assert a.routing_table.get(newcomer.id) is not None
    assert a.routing_table_size == 20
    assert len(net.messages(src=a.address(), dst=others[0].address(), command=b"_ping")) == 3


def test_stopping_during_a_reping_or_sweep_evicts_nobody():
    net = DHTNetwork()
    a, others, newcomer = _full_far_bucket(net, down_oldest=True)
    net.run(1)  # the oldest is being pinged (it will not answer)
    swept = others[5]
    net.down.add(swept.address())
    checks = []
    a.routing_table._check(a.routing_table.get(swept.id), checks.append)  # as the 40 s sweep
    a.stopService()
    assert checks == [None]  # cancelled: no verdict
    assert a.routing_table.get(others[0].id) is not None
    assert a.routing_table.get(swept.id) is not None
    assert a.routing_table.get(newcomer.id) is None
    assert a.routing_table_size == 20


def test_ping_sweep_removes_dead_nodes():
    net = DHTNetwork()
    a = net.node()
    net.clock.advance(0)
    others = [net.node() for _ in range(4)]
    for o in others:
        a.ping(*o.address())  # they answer: verified, so the sweep checks them
    net.run(0.1)
    assert a.routing_table_size == 4
    net.down.add(others[1].address())
    net.run(40 + 8)  # sweep on the 8th DHT tick, then 3 tries
    assert a.routing_table.get(others[1].id) is None
    assert a.routing_table_size == 3


def test_empty_table_rebootstraps_on_the_sweep():
    net = DHTNetwork()
    boot = net.node()
    net.clock.advance(0)
    a = net.node(bootstrap=[boot.address()])
    net.down.add(boot.address())
    net.run(10)
    assert a.is_bootstrapped and a.routing_table_size == 0
    net.down.discard(boot.address())
    net.run(40)
    assert a.routing_table.get(boot.id) is not None
