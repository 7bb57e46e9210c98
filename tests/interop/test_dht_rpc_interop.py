"""
Python DHT nodes and Node's dht-rpc 4.9.6 (tests/node/dht_nodes.js) on
loopback: pings both ways, bootstrapping both ways, and a mixed network of
40 nodes whose walks find the true closest nodes.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest_twisted
from twisted.internet import defer

from txhyperswarm.dht.messages import encode_peer
from txhyperswarm.dht.node import DHTNode

_tags = itertools.count()


def start_node_dht(processes, **opts):
    return processes.node("dht_nodes.js", json.dumps(opts))


@defer.inlineCallbacks
def ask(proc, timeout=30.0, **cmd):
    tag = next(_tags)
    cmd["tag"] = tag
    proc.send(cmd)
    line = yield proc.wait_for(lambda o: o.get("tag") == tag, timeout=timeout)
    return line


def py_node(reactor, **kw):
    n = DHTNode(reactor, host="127.0.0.1", **kw)
    n.startService()
    return n


def xor(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@pytest_twisted.inlineCallbacks
def test_ping_both_ways(reactor, node, processes):
    js = start_node_dht(processes, count=1)
    ready = yield js.wait_for(lambda o: o.get("ready"))
    js_id = bytes.fromhex(ready["nodes"][0]["id"])
    js_port = ready["nodes"][0]["port"]
    py = py_node(reactor, bootstrap=[])
    try:
        reply = yield py.ping("127.0.0.1", js_port)
        assert reply.id == js_id
        assert reply.node == ("127.0.0.1", js_port)
        assert reply.to == py.address()
        # Node took our id, and the `to` of our request, into its table
        table = yield ask(js, op="table")
        host, port = py.address()
        assert table["nodes"] == [
            {"id": py.id.hex(), "host": host, "port": port, "to": {"host": "127.0.0.1", "port": js_port}}
        ]

        pong = yield ask(js, op="ping", host="127.0.0.1", port=py.address()[1])
        assert pong.get("error") is None
        assert pong["id"] == py.id.hex()
        assert pong["to"] == {"host": "127.0.0.1", "port": js_port}
        # and we took Node's id and the `to` of its request into ours
        (entry,) = py.routing_table.nodes.values()
        assert (entry.id, entry.address) == (js_id, ("127.0.0.1", js_port))
        assert entry.to == encode_peer(*py.address())
    finally:
        yield py.stopService()


@pytest_twisted.inlineCallbacks
def test_ephemeral_python_node_is_answered_without_an_id(reactor, node, processes):
    js = start_node_dht(processes, count=1)
    ready = yield js.wait_for(lambda o: o.get("ready"))
    js_port = ready["nodes"][0]["port"]
    py = py_node(reactor, bootstrap=[("127.0.0.1", js_port)], ephemeral=True)
    try:
        yield py.bootstrapped()
        assert py.routing_table_size == 1
        table = yield ask(js, op="table")
        assert table["ids"] == []  # no id sent: Node never adds us
        pong = yield ask(js, op="ping", host="127.0.0.1", port=py.address()[1])
        assert pong["id"] is None
    finally:
        yield py.stopService()


@pytest_twisted.inlineCallbacks
def test_python_bootstraps_from_node(reactor, node, processes):
    js = start_node_dht(processes, count=4, chain=True)
    ready = yield js.wait_for(lambda o: o.get("ready"))
    js_ids = {bytes.fromhex(n["id"]) for n in ready["nodes"]}
    boot = ("127.0.0.1", ready["nodes"][0]["port"])
    py = py_node(reactor, bootstrap=["127.0.0.1:%d" % boot[1]])
    try:
        yield py.bootstrapped()
        assert {i for i, _, _ in py.nodes()} == js_ids
        table = yield ask(js, op="table", i=0)
        assert py.id.hex() in table["ids"]
    finally:
        yield py.stopService()


@pytest_twisted.inlineCallbacks
def test_node_bootstraps_from_a_python_node(reactor, node, processes):
    py = py_node(reactor, bootstrap=[])
    yield py.bootstrapped()
    try:
        js = start_node_dht(processes, count=3, bootstrap=["127.0.0.1:%d" % py.address()[1]])
        ready = yield js.wait_for(lambda o: o.get("ready"))
        js_ids = {bytes.fromhex(n["id"]) for n in ready["nodes"]}
        assert {i for i, _, _ in py.nodes()} == js_ids
        for i in range(3):
            table = yield ask(js, op="table", i=i)
            assert py.id.hex() in table["ids"]
            assert len(table["ids"]) == 3  # the Python node and the two other Node nodes
    finally:
        yield py.stopService()


@pytest_twisted.inlineCallbacks
def test_mixed_network_of_40_finds_the_closest_nodes(reactor, node, processes):
    rnd = random.Random(40)
    pys = [py_node(reactor, bootstrap=[])]
    yield pys[0].bootstrapped()
    boot = pys[0].address()
    js = start_node_dht(processes, count=20, bootstrap=["127.0.0.1:%d" % boot[1]])
    try:
        for _ in range(19):
            pys.append(py_node(reactor, bootstrap=[boot]))
        yield defer.gatherResults([p.bootstrapped() for p in pys])
        ready = yield js.wait_for(lambda o: o.get("ready"), timeout=40)
        js_ids = [bytes.fromhex(n["id"]) for n in ready["nodes"]]
        all_ids = [p.id for p in pys] + js_ids
        assert len(set(all_ids)) == 40

        def truth(querier: bytes, target: bytes):
            return sorted((i for i in all_ids if i != querier), key=lambda i: xor(i, target))[:20]

        def closest(ids, target):
            return sorted(set(ids), key=lambda i: xor(i, target))[:20]

        good = total = 0
        # Node queriers: 3 nodes x 50 targets, run while Python walks run too
        js_targets = [[rnd.randbytes(32) for _ in range(50)] for _ in range(3)]
        js_answers = [
            ask(js, timeout=60, op="find", i=i, targets=[t.hex() for t in js_targets[i]], parallel=5)
            for i in range(3)
        ]
        # Python queriers: 3 nodes x 50 targets, 5 walks at a time each
        for q in pys[1:4]:
            targets = [rnd.randbytes(32) for _ in range(50)]
            for j in range(0, 50, 5):
                batch = targets[j : j + 5]
                results = yield defer.gatherResults([q.query("_find_node", t) for t in batch])
                for t, replies in zip(batch, results):
                    total += 1
                    good += closest([r.id for r in replies if r.id], t) == truth(q.id, t)
        for i, d in enumerate(js_answers):
            line = yield d
            for t, ids in zip(js_targets[i], line["results"]):
                total += 1
                if isinstance(ids, dict):  # {"error": ...}
                    continue
                good += closest([bytes.fromhex(x) for x in ids], t) == truth(js_ids[i], t)
        assert total == 300
        assert good >= 0.95 * total, f"{good}/{total} walks found the true 20 closest"
    finally:
        yield defer.gatherResults([p.stopService() for p in pys])


@pytest_twisted.inlineCallbacks
def test_updates_with_roundtrip_tokens_work_both_ways(reactor, node, processes):
    """query_and_update from Python stores on Node nodes and vice versa."""
    stores = {}

    def serve(n):
        store = stores.setdefault(n.id, {})
        n.add_command(
            "kv",
            query=lambda req: store.get(req.target),
            update=lambda req: store.__setitem__(req.target, req.value),
        )
        return n

    pys = [serve(py_node(reactor, bootstrap=[]))]
    yield pys[0].bootstrapped()
    boot = pys[0].address()
    js = start_node_dht(processes, count=6, bootstrap=["127.0.0.1:%d" % boot[1]])
    try:
        for _ in range(5):
            pys.append(serve(py_node(reactor, bootstrap=[boot])))
        yield defer.gatherResults([p.bootstrapped() for p in pys])
        ready = yield js.wait_for(lambda o: o.get("ready"), timeout=30)
        js_ids = [n["id"] for n in ready["nodes"]]

        t1 = random.randbytes(32)
        replies = yield pys[2].query_and_update("kv", t1, b"from python")
        # query replies + update replies from each of the 11 other nodes
        assert len(replies) == 22 and len({r.id for r in replies}) == 11
        got = yield ask(js, op="get", i=3, target=t1.hex())
        assert got.get("error") is None
        # every node but the writer (and the reader itself) stored it: the
        # Node nodes accepted the Python node's tokens
        holders = {i for i, v in got["values"] if v == b"from python".hex()}
        want = {p.id.hex() for p in pys if p is not pys[2]} | set(js_ids)
        assert holders == want - {js_ids[3]}

        t2 = random.randbytes(32)
        put = yield ask(js, op="put", i=1, target=t2.hex(), value=b"from node".hex())
        assert put.get("error") is None
        # all 6 Python nodes accepted the Node writer's UPDATEs (tokens)
        assert sum(1 for s in stores.values() if s.get(t2) == b"from node") == 6
        replies = yield pys[4].query("kv", t2)
        holders = {r.id.hex() for r in replies if r.value == b"from node"}
        everyone = {p.id.hex() for p in pys} | set(js_ids)
        assert holders == everyone - {js_ids[1], pys[4].id.hex()}
    finally:
        yield defer.gatherResults([p.stopService() for p in pys])


@pytest_twisted.inlineCallbacks
def test_holepunch_relay_between_python_and_node(reactor, node, processes):
    js = start_node_dht(processes, count=2, chain=True)
    ready = yield js.wait_for(lambda o: o.get("ready"))
    relay_port, target_port = (n["port"] for n in ready["nodes"])
    target_id = bytes.fromhex(ready["nodes"][1]["id"])
    e = py_node(reactor, bootstrap=[], ephemeral=True)
    relay = py_node(reactor, bootstrap=[])
    target = py_node(reactor, bootstrap=[])
    try:
        # Python asks a Node relay to poke a Node target; the target answers us
        reply = yield e.holepunch("127.0.0.1", target_port, referrer=("127.0.0.1", relay_port))
        assert reply.id == target_id and reply.node == ("127.0.0.1", target_port)
        assert reply.to == e.address()
        # Node asks a Python relay to poke a Python target
        res = yield ask(
            js, op="holepunch", i=0, host="127.0.0.1", port=target.address()[1],
            referrer={"host": "127.0.0.1", "port": relay.address()[1]},
        )
        assert res.get("error") is None and res["id"] == target.id.hex()
        assert relay.rpc_requests[("_holepunch", "in")] >= 1
    finally:
        yield defer.gatherResults([n.stopService() for n in (e, relay, target)])
