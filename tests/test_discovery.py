"""
txhyperswarm.discovery: one topic on the DHT and on mDNS, with a fake DHT
join (``txhyperswarm.dht.peers.join`` replaced) and a real
MulticastDiscovery on the in-memory multicast network of test_mdns.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_mdns import NODE_ANSWER, TOPIC, FakeNet, ready, started
from txhyperswarm._observer import OneShotObserver
from txhyperswarm.discovery import Discovery, DiscoveryTopic
from txhyperswarm.interfaces import IDiscoveryTopic
from txhyperswarm.peer_record import PeerRecord

DHT_PORT = 49999


class FakeNode:
    """What Discovery reads of a DHTNode: its bound address."""

    def address(self):
        return ("0.0.0.0", DHT_PORT)


@implementer(IDiscoveryTopic)
class FakeDHTJoin:
    """A DHT join whose first round, cycles and stop the test settles by hand."""

    def __init__(self, node, topic, **kwargs):
        self.node, self.topic, self.kwargs = node, topic, kwargs
        self.announcing = kwargs["announce_port"] is not None
        self.lookup = kwargs["lookup"]
        self.ready = OneShotObserver()
        self.refreshed = 0
        self.stopping = None

    def when_ready(self):
        return self.ready.when_fired()

    def refresh(self):
        self.refreshed += 1

    def stop(self):
        if self.stopping is None:
            self.stopping = defer.Deferred()
            self.ready.fire(False)
        return self.stopping

    # the test's hands
    def peer(self, host="192.0.2.1", port=4000):
        if self.lookup and self.kwargs["on_peer"] is not None:
            self.kwargs["on_peer"](PeerRecord(self.topic, host, port, False, ("192.0.2.9", 49737), None, "dht"))

    def cycle_ended(self, error=None):
        if self.kwargs["on_update"] is not None:
            self.kwargs["on_update"](error)
        self.ready.fire(error is None)


@pytest.fixture
def dht_joins(monkeypatch):
    """Every DHT join Discovery makes, in order (``peers.join`` is the fake)."""
    from txhyperswarm.dht import peers

    made = []

    def join(node, topic, **kwargs):
        made.append(FakeDHTJoin(node, topic, **kwargs))
        return made[-1]

    monkeypatch.setattr(peers, "join", join)
    return made


def both(net=None):
    net = net or FakeNet()
    return net, Discovery(net.clock, dht=FakeNode(), mdns=started(net, "127.0.0.2"))


def test_join_runs_both_with_the_arguments_of_the_contract(dht_joins):
    net, discovery = both()
    peers, updates = [], []
    t = discovery.join(TOPIC, announce_port=0, local_address=("10.0.0.2", 5000), lookup=True,
                       on_peer=peers.append, on_update=updates.append)
    assert isinstance(t, DiscoveryTopic) and verifyObject(IDiscoveryTopic, t)
    [dht] = dht_joins
    assert dht.node is discovery.dht and dht.topic == TOPIC
    assert dht.kwargs == dict(announce_port=0, local_address=("10.0.0.2", 5000), lookup=True,
                              on_peer=peers.append, on_update=updates.append)
    assert t.dht is dht and t.mdns is not None
    # 0 = the DHT socket's port: the DHT is told 0 (it records the UDP
    # source port), mDNS answers with the bound port
    assert t.mdns.announce_port == DHT_PORT and t.mdns.lookup
    assert (t.topic, t.announcing, t.lookup) == (TOPIC, True, True)
    assert discovery.topics == [t]


def test_every_peer_from_either_source_is_passed_on_repeats_included(dht_joins):
    net, discovery = both()
    peers = []
    discovery.join(TOPIC, on_peer=peers.append)
    [dht] = dht_joins
    dht.peer()
    dht.peer()
    for _ in range(2):
        discovery.mdns._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert [(p.source, p.host, p.port) for p in peers] == [
        ("dht", "192.0.2.1", 4000), ("dht", "192.0.2.1", 4000), ("mdns", "127.0.0.7", 37591), ("mdns", "127.0.0.7", 37591),
    ]


def test_when_ready_is_the_dhts_and_mdns_never_holds_it_up(dht_joins):
    net, discovery = both()
    t = discovery.join(TOPIC, announce_port=4000)
    net.run()
    assert ready(t.mdns) is True and ready(t) is None  # mDNS is ready: no matter
    first = t.when_ready()
    [dht] = dht_joins
    dht.cycle_ended(None)
    assert first.result is True and ready(t) is True

    u = discovery.join(bytes(32), announce_port=4000)
    dht_joins[-1].cycle_ended(RuntimeError("no node answered"))
    assert ready(u) is False


def test_without_a_dht_node_when_ready_is_mdns(dht_joins):
    net = FakeNet()
    discovery = Discovery(net.clock, mdns=started(net, "127.0.0.2"))
    t = discovery.join(TOPIC, announce_port=4000, lookup=False)
    assert t.dht is None and dht_joins == []
    assert ready(t) is None
    net.clock.advance(0)  # the announcement
    assert ready(t) is True
    with pytest.raises(ValueError, match="no DHT node"):
        discovery.join(TOPIC, announce_port=0)


def test_without_mdns_everything_is_the_dhts(dht_joins):
    discovery = Discovery(FakeNet().clock, dht=FakeNode())
    t = discovery.join(TOPIC, announce_port=0, lookup=False)
    assert t.mdns is None and dht_joins[0].kwargs["announce_port"] == 0
    t.refresh()
    assert dht_joins[0].refreshed == 1
    dht_joins[0].cycle_ended()
    assert ready(t) is True


def test_on_update_comes_from_the_dht_only(dht_joins):
    net, discovery = both()
    updates = []
    discovery.join(TOPIC, announce_port=4000, lookup=True, on_update=updates.append)
    net.run(200)  # mDNS queries, announces, answers itself: no update
    assert updates == []
    dht_joins[0].cycle_ended(None)
    assert updates == [None]


def test_refresh_runs_both(dht_joins):
    net, discovery = both()
    t = discovery.join(TOPIC)
    net.run()
    sent = discovery.mdns.sent["query"]
    t.refresh()
    assert dht_joins[0].refreshed == 1 and discovery.mdns.sent["query"] == sent + 1


def test_stop_stops_mdns_at_once_and_fires_once_the_dht_stop_has(dht_joins):
    net, discovery = both()
    t = discovery.join(TOPIC, announce_port=4000)
    waiting = t.when_ready()
    stopped = t.stop()
    assert t.mdns.stopped and t.stopped and not stopped.called
    assert waiting.result is False  # stopped before its first round
    again = t.stop()  # idempotent, a Deferred of its own
    assert again is not stopped and not again.called
    assert discovery.topics == []
    dht_joins[0].stopping.callback(None)
    assert stopped.result is None and again.result is None


def test_stop_never_errbacks(dht_joins, logged_errors):
    net, discovery = both()
    t = discovery.join(TOPIC, announce_port=4000)
    stopped = t.stop()
    dht_joins[0].stopping.errback(RuntimeError("broken DHT stop"))
    assert stopped.result is None
    assert len(logged_errors.take(RuntimeError)) == 1


def test_flush_waits_for_the_first_round_of_every_current_topic(dht_joins):
    net, discovery = both()
    a = discovery.join(TOPIC)
    b = discovery.join(bytes(32))
    c = discovery.join(b"\x01" * 32)
    c.stop()  # not current any more
    flushed = discovery.flush()
    dht_joins[0].cycle_ended(None)
    assert not flushed.called
    dht_joins[1].cycle_ended(RuntimeError("no node answered"))  # False is a first round too
    assert flushed.result is None
    assert ready(a) is True and ready(b) is False
    assert discovery.flush().result is None  # nothing pending: at once


def test_close_stops_every_topic_and_refuses_joins(dht_joins):
    net, discovery = both()
    a = discovery.join(TOPIC, announce_port=4000)
    b = discovery.join(bytes(32))
    closed = discovery.close()
    assert a.stopped and b.stopped and not closed.called
    for j in dht_joins:
        j.stopping.callback(None)
    assert closed.result is None
    with pytest.raises(RuntimeError):
        discovery.join(TOPIC)


def test_bad_arguments(dht_joins):
    net, discovery = both()
    with pytest.raises(ValueError):
        discovery.join(b"short")
    with pytest.raises(ValueError):
        discovery.join(TOPIC, lookup=False)
    with pytest.raises(ValueError):
        discovery.join(TOPIC, announce_port=65536)
    with pytest.raises(ValueError):
        Discovery(net.clock)
    assert dht_joins == [] and discovery.topics == []


def test_a_failing_mdns_join_leaves_no_dht_join_behind(dht_joins):
    class BrokenMDNS:
        def join(self, topic, **kwargs):
            raise RuntimeError("mDNS join broke")

    discovery = Discovery(FakeNet().clock, dht=FakeNode(), mdns=BrokenMDNS())
    with pytest.raises(RuntimeError):
        discovery.join(TOPIC)
    assert dht_joins[0].stopping is not None and discovery.topics == []
