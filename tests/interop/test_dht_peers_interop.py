"""
The ``peers`` command between Python and Node's @hyperswarm/dht 4.0.1
(tests/node/peers_node.js) on loopback: announces and lookups both ways, with
records stored on Node nodes and, in a network whose only persistent nodes
are Python ones, on Python nodes; unannounce removes them for both.

Plain @hyperswarm/dht does no multicast, so no private namespace is needed.
"""

from __future__ import annotations

import itertools
import json

import pytest_twisted
from twisted.internet import defer

from txhyperswarm.dht import peers
from txhyperswarm.dht.node import DHTNode

TOPIC = bytes.fromhex("ab" * 32)
LOOPBACK = "127.0.0.1"
_ids = itertools.count()


def start_js(processes, **cfg):
    cfg.setdefault("host", LOOPBACK)
    return processes.node("peers_node.js", json.dumps(cfg))


@defer.inlineCallbacks
def ask(proc, event, timeout=30.0, **cmd):
    cmd["id"] = next(_ids)
    proc.send(cmd)
    line = yield proc.wait_for(lambda o: o.get("id") == cmd["id"] and o.get("event") == event, timeout=timeout)
    return line


def js_peers(line):
    return sorted((p["host"], p["port"], p["local"]) for p in line["peers"])


class PyNet:
    def __init__(self, reactor):
        self.reactor = reactor
        self.nodes = []
        self.commands = []

    def node(self, serve=True, **kw):
        n = DHTNode(self.reactor, host=LOOPBACK, port=0, **kw)
        if serve:
            self.commands.append(peers.register(n))
        n.startService()
        self.nodes.append(n)
        return n

    def stop(self):
        return defer.gatherResults([n.stopService() for n in self.nodes])


@pytest_twisted.inlineCallbacks
def test_python_and_node_find_each_other_through_node_stores(reactor, node, processes):
    # The persistent nodes are Node's (their record-cache stores the records);
    # the Python peer is an ephemeral client.
    js = start_js(processes, count=4, chain=True)
    listening = yield js.wait_for(lambda o: o.get("event") == "listening")
    yield js.wait_for(lambda o: o.get("event") == "ready")
    boot = [(LOOPBACK, listening["nodes"][0]["port"])]
    net = PyNet(reactor)
    try:
        py = net.node(serve=False, bootstrap=boot, ephemeral=True)
        yield py.bootstrapped()

        # Node announces (port 4000, LAN 10.7.0.5:4000); Python looks up
        line = yield ask(js, "announced", cmd="announce", node=3, topic=TOPIC.hex(), port=4000,
                         localAddress="10.7.0.5:4000")
        assert line["error"] is None
        found = yield peers.lookup(py, TOPIC, local_address=("10.7.9.9", 1))
        js_addrs = {(LOOPBACK, n["port"]) for n in listening["nodes"]}
        public = [p for p in found if not p.local]
        assert [(p.host, p.port) for p in public] == [(LOOPBACK, 4000)]
        assert public[0].referrer in js_addrs
        assert public[0].to == py.address()
        assert [(p.host, p.port, p.referrer) for p in found if p.local] == [("10.7.0.5", 4000, None)]

        # Python announces with the default port (its DHT port); Node looks up
        a = peers.announce(py, TOPIC)
        assert (yield a.when_ready()) is True
        line = yield ask(js, "lookup-done", cmd="lookup", node=1, topic=TOPIC.hex())
        assert line["error"] is None
        assert (LOOPBACK, py.address()[1], False) in js_peers(line)
        assert all(p["referrer"] in {f"{h}:{p_}" for h, p_ in js_addrs} for p in line["peers"])

        # both unannounce: neither finds the other's record
        assert (yield a.stop()) is None
        line = yield ask(js, "unannounced", cmd="unannounce", node=3, topic=TOPIC.hex(), port=4000,
                         localAddress="10.7.0.5:4000")
        assert line["error"] is None
        assert (yield peers.lookup(py, TOPIC, local_address=("10.7.9.9", 1))) == []
        line = yield ask(js, "lookup-done", cmd="lookup", node=1, topic=TOPIC.hex())
        assert line["peers"] == []
        records = yield ask(js, "records", cmd="records")
        assert records["counts"] == [0, 0, 0, 0]
    finally:
        yield net.stop()


@pytest_twisted.inlineCallbacks
def test_python_stores_serve_node_peers(reactor, node, processes):
    # The only persistent nodes are Python ones; two ephemeral Node
    # processes announce and look up through them.
    net = PyNet(reactor)
    try:
        boot_node = net.node(bootstrap=[])
        boot = [boot_node.address()]
        for _ in range(3):
            net.node(bootstrap=boot)
        yield defer.gatherResults([n.bootstrapped() for n in net.nodes])
        yield defer.gatherResults([n.bootstrap() for n in net.nodes[1:]])
        py_addrs = {n.address() for n in net.nodes}

        bootstrap = [f"{h}:{p}" for h, p in boot]
        announcer = start_js(processes, ephemeral=True, bootstrap=bootstrap)
        looker = start_js(processes, ephemeral=True, bootstrap=bootstrap)
        for proc in (announcer, looker):
            yield proc.wait_for(lambda o: o.get("event") == "ready")

        line = yield ask(announcer, "announced", cmd="announce", topic=TOPIC.hex(), port=4100,
                         localAddress="10.8.0.5:4100")
        assert line["error"] is None
        stored = sum(len(c.store) for c in net.commands)
        assert stored >= 2  # public + LAN record, on Python nodes only
        line = yield ask(looker, "lookup-done", cmd="lookup", topic=TOPIC.hex(), localAddress="10.8.3.3:1")
        assert line["error"] is None
        assert sorted(set(js_peers(line))) == [("10.8.0.5", 4100, True), (LOOPBACK, 4100, False)]
        for p in line["peers"]:
            if not p["local"]:
                assert tuple(p["referrer"].rsplit(":", 1)) in {(h, str(p_)) for h, p_ in py_addrs}

        # a Python client sees the same record, and Node sees a Python announce
        client = net.node(serve=False, bootstrap=boot, ephemeral=True)
        yield client.bootstrapped()
        found = yield peers.lookup(client, TOPIC)
        assert [(p.host, p.port) for p in found] == [(LOOPBACK, 4100)]
        a = peers.announce(client, TOPIC, 4200)
        assert (yield a.when_ready()) is True
        line = yield ask(looker, "lookup-done", cmd="lookup", topic=TOPIC.hex())
        assert sorted(set(js_peers(line))) == [(LOOPBACK, 4100, False), (LOOPBACK, 4200, False)]

        # unannounce from both sides empties the Python stores
        line = yield ask(announcer, "unannounced", cmd="unannounce", topic=TOPIC.hex(), port=4100,
                         localAddress="10.8.0.5:4100")
        assert line["error"] is None
        assert (yield a.stop()) is None
        assert sum(len(c.store) for c in net.commands) == 0
        line = yield ask(looker, "lookup-done", cmd="lookup", topic=TOPIC.hex(), localAddress="10.8.3.3:1")
        assert line["peers"] == []
        assert (yield peers.lookup(client, TOPIC)) == []
        # nothing the Node peers sent was refused as malformed
        assert all(not c.errors for c in net.commands)
    finally:
        yield net.stop()
