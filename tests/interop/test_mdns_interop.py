"""
mDNS against the Node reference (@hyperswarm/discovery 2.0.1, hyperswarm 2.15.3).

Every test runs inside the private network namespace (``private_netns``):
Node's multicast-dns and our MulticastDiscovery share 0.0.0.0:5353 on ``lo``.
Node peers use ``bootstrap: []`` so mDNS is their only discovery.
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from txhyperswarm.mdns import MulticastDiscovery

WAIT = 10.0


def new_topic() -> bytes:
    return os.urandom(32)


@defer.inlineCallbacks
def started_discovery(reactor):
    d = MulticastDiscovery(reactor)
    d.startService()
    yield deferLater(reactor, 0, lambda: None)
    return d


@pytest.fixture
def discovery(private_netns, reactor):
    """A started MulticastDiscovery on 0.0.0.0:5353, stopped at teardown."""
    d = pytest_twisted.blockon(started_discovery(reactor))
    yield d
    pytest_twisted.blockon(d.stopService())


class PeerWaiter:
    """on_peer callback that also lets a test wait for a matching peer."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.peers = []
        self._waiters = []

    def __call__(self, peer):
        self.peers.append(peer)
        for pred, d in list(self._waiters):
            if pred(peer):
                self._waiters.remove((pred, d))
                d.callback(peer)

    def wait_for(self, pred, timeout=WAIT):
        for p in self.peers:
            if pred(p):
                return defer.succeed(p)
        d = defer.Deferred()
        self._waiters.append((pred, d))
        return d.addTimeout(timeout, self.reactor)


def is_peer(line, port=None):
    return line.get("event") == "peer" and (port is None or line["port"] == port)


@pytest_twisted.inlineCallbacks
def test_python_finds_node_discovery_announcer(discovery, node, processes, reactor):
    topic = new_topic()
    announcer = processes.node("mdns_discovery.js", topic.hex(), "--announce", "37011")
    yield announcer.wait_for(lambda o: o.get("event") == "ready")
    d = discovery
    found = PeerWaiter(reactor)
    d.lookup(topic, found)
    peer = yield found.wait_for(lambda p: p.port == 37011)
    assert (peer.topic, peer.host, peer.port) == (topic, "127.0.0.1", 37011)
    assert peer.local is True and peer.referrer is None and peer.to is None and peer.source == "mdns"


@pytest_twisted.inlineCallbacks
def test_python_finds_node_hyperswarm_announcer(discovery, node, processes, reactor):
    topic = new_topic()
    swarm = processes.node("mdns_swarm.js", topic.hex(), "--announce", "--no-lookup")
    listening = yield swarm.wait_for(lambda o: o.get("event") == "listening")
    d = discovery
    found = PeerWaiter(reactor)
    d.lookup(topic, found)
    peer = yield found.wait_for(lambda p: p.port == listening["port"])
    assert (peer.host, peer.source) == ("127.0.0.1", "mdns")


@pytest_twisted.inlineCallbacks
def test_node_lookup_finds_python_announcer(discovery, node, processes, reactor):
    topic = new_topic()
    d = discovery
    d.announce(topic, 37012)
    looker = processes.node("mdns_discovery.js", topic.hex())
    line = yield looker.wait_for(lambda o: is_peer(o, 37012), timeout=WAIT)
    assert line == {
        "event": "peer",
        "host": "127.0.0.1",
        "port": 37012,
        "local": True,
        "referrer": None,
        "to": "absent",
        "topic": topic.hex(),
    }


@pytest_twisted.inlineCallbacks
def test_node_swarm_hears_python_announcement_when_it_was_first(discovery, node, processes, reactor):
    # Node queries once now and then only after 30-60 s: it can only find us
    # soon through our unsolicited announcement.
    topic = new_topic()
    swarm = processes.node("mdns_swarm.js", topic.hex())
    yield swarm.wait_for(lambda o: o.get("event") == "joined")
    yield deferLater(reactor, 0.3, lambda: None)
    d = discovery
    d.announce(topic, 37013)
    yield swarm.wait_for(lambda o: is_peer(o, 37013), timeout=WAIT)


@pytest_twisted.inlineCallbacks
def test_node_and_python_find_each_other_but_never_themselves(discovery, node, processes, reactor):
    topic = new_topic()
    d = discovery
    found = PeerWaiter(reactor)
    mine = d.announce(topic, 37014, lookup=True, on_peer=found)
    nodeproc = processes.node("mdns_discovery.js", topic.hex(), "--announce", "37015", "--lookup")
    yield nodeproc.wait_for(lambda o: is_peer(o, 37014), timeout=WAIT)
    yield found.wait_for(lambda p: p.port == 37015)
    # a few more query/answer rounds in both directions
    nodeproc.send({"cmd": "update"})
    mine.refresh()
    yield deferLater(reactor, 0.5, lambda: None)
    assert {(p.host, p.port) for p in found.peers} == {("127.0.0.1", 37015)}
    node_peers = {(o["host"], o["port"]) for o in nodeproc.lines if is_peer(o)}
    assert node_peers == {("127.0.0.1", 37014)}


@pytest_twisted.inlineCallbacks
def test_discovery_announces_the_dht_port_on_mdns_to_node(discovery, node, processes, reactor):
    # txhyperswarm.discovery with announce_port=0: the DHT socket's port,
    # which mDNS answers with (Node's discovery does the same)
    from txhyperswarm.dht.node import DHTNode
    from txhyperswarm.discovery import Discovery

    dht = DHTNode(reactor, bootstrap=[], ephemeral=True, host="127.0.0.1", port=0)
    dht.startService()
    try:
        topic = new_topic()
        joined = Discovery(reactor, dht=dht, mdns=discovery).join(topic, announce_port=0, lookup=False)
        port = dht.address()[1]
        assert joined.mdns.announce_port == port
        looker = processes.node("mdns_discovery.js", topic.hex())
        line = yield looker.wait_for(lambda o: is_peer(o, port), timeout=WAIT)
        assert (line["host"], line["local"]) == ("127.0.0.1", True)
        assert (yield joined.mdns.when_ready()) is True
        assert (yield joined.when_ready()) is False  # no DHT node answered (it has none)
        assert (yield joined.stop()) is None
    finally:
        yield dht.stopService()


def _normalise(decoded, topic_id_hex):
    """dns-packet's decode of a datagram with the sender's random id blanked."""
    for rec in decoded["answers"]:
        if rec["type"] == "TXT":
            rec["data"] = ["<id>" if s["hex"] == topic_id_hex else s for s in rec["data"]]
    return decoded


@pytest_twisted.inlineCallbacks
def test_our_datagrams_decode_in_node_exactly_as_nodes_own(discovery, node, processes, reactor):
    """
    Capture (with dns-packet, in Node) the first three datagrams of a Node
    announce+lookup topic and then of ours on the same topic and port:
    query, unsolicited announcement, answer to the own query (with the A
    record). They must decode to the same fields, and be the same bytes
    apart from the random 35-byte id.
    """
    topic = new_topic()
    capture = processes.node("mdns_capture.js")
    yield capture.wait_for(lambda o: o.get("event") == "ready")

    def packets():
        return [o for o in capture.lines if o.get("event") == "packet"]

    nodeproc = processes.node("mdns_discovery.js", topic.hex(), "--announce", "37016", "--lookup")
    ready = yield nodeproc.wait_for(lambda o: o.get("event") == "ready")
    yield capture.wait_for(lambda o: len(packets()) >= 3)
    yield nodeproc.stop()
    yield deferLater(reactor, 0.3, lambda: None)
    node_packets = packets()[:3]
    seen = len(packets())

    d = discovery
    mine = d.announce(topic, 37016, lookup=True)
    yield capture.wait_for(lambda o: len(packets()) >= seen + 3)
    our_packets = packets()[seen : seen + 3]

    assert [p["error"] for p in node_packets + our_packets] == [None] * 6
    theirs = [_normalise(p["decoded"], ready["id"]) for p in node_packets]
    ours = [_normalise(p["decoded"], mine.id.hex()) for p in our_packets]
    assert [len(p["answers"]) for p in theirs] == [0, 2, 3]  # what Node sent, as spec 4.5 says
    assert ours == theirs
    for n, o in zip(node_packets, our_packets):
        assert bytes.fromhex(o["hex"]).replace(mine.id, b"<id>") == bytes.fromhex(n["hex"]).replace(
            bytes.fromhex(ready["id"]), b"<id>"
        )


# multicast-dns 7.2.5's allInterfaces() and defaultInterface() (Linux), on
# os.networkInterfaces() in this namespace.
NODE_INTERFACES = r"""
const os = require('os')
const all = []
let dflt = '127.0.0.1'
for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
  const v4 = addrs.filter(a => a.family === 'IPv4' || a.family === 4)
  if (v4.length) all.push(v4[0].address)
  if (dflt === '127.0.0.1' && v4.some(a => !a.internal)) dflt = '0.0.0.0'
}
console.log(JSON.stringify({ all, dflt }))
"""


def test_interfaces_joined_are_the_ones_multicast_dns_joins(private_netns, node):
    import subprocess

    from txhyperswarm import netif

    def node_view():
        out = subprocess.run([node, "-e", NODE_INTERFACES], capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    # a veth pair with addresses: with one end down, neither is running
    # (no carrier), and Node's os.networkInterfaces() leaves both out
    ip("link", "add", "hsv0", "type", "veth", "peer", "name", "hsv1")
    try:
        ip("addr", "add", "10.77.0.1/24", "dev", "hsv0")
        ip("addr", "add", "10.77.0.2/24", "dev", "hsv1")
        ip("link", "set", "hsv0", "up")
        theirs = node_view()
        assert theirs == {"all": ["127.0.0.1"], "dflt": "127.0.0.1"}
        assert sorted(netif.interface_addresses()) == sorted(theirs["all"])
        assert netif.default_outgoing() == theirs["dflt"]
        ip("link", "set", "hsv1", "up")  # both ends up: both running
        theirs = node_view()
        assert sorted(theirs["all"]) == ["10.77.0.1", "10.77.0.2", "127.0.0.1"] and theirs["dflt"] == "0.0.0.0"
        assert sorted(netif.interface_addresses()) == sorted(theirs["all"])
        assert netif.default_outgoing() == theirs["dflt"]
    finally:
        ip("link", "del", "hsv0")
