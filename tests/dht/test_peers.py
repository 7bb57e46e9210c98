"""
The ``peers`` command: the server handler as a pure function over a request,
the client's values and reply mapping, the announce schedule (on a Clock with
a fake node), and then real DHTNodes over loopback sockets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from txhyperswarm.dht import peers
from txhyperswarm.dht.messages import (
    PeersInput,
    PeersOutput,
    decode_peers_input,
    decode_peers_output,
    encode_peer,
)
from txhyperswarm.dht.errors import CommandError, IgnoreRequest, QueryError
from txhyperswarm.dht.records import RecordStore
from txhyperswarm.peer_record import PeerRecord

TOPIC = b"\x11" * 32


@dataclass
class Req:
    node: Tuple[str, int]
    target: Optional[bytes]
    value: Optional[bytes]
    id: Optional[bytes] = None
    to: Optional[Tuple[str, int]] = None


@dataclass(frozen=True)
class FakeReply:
    node: Tuple[str, int]
    id: Optional[bytes]
    value: Optional[bytes]
    to: Optional[Tuple[str, int]]


def handler(**kw) -> peers.PeersCommand:
    return peers.PeersCommand(RecordStore(Clock(), random=random.Random(0), **kw))


def ann(port=None, local=None, unannounce=False) -> bytes:
    """A ``PeersInput`` with exactly the fields given (``port=None``: absent)."""
    value = PeersInput()
    if port is not None:
        value.port = port
    if local is not None:
        value.localAddress = encode_peer(*local)
    if unannounce:
        value.unannounce = True
    return value.SerializeToString()


def out(value: bytes) -> PeersOutput:
    return decode_peers_output(value)


# -- server handler ------------------------------------------------------------


def test_spec_vector_announce_then_lookup():
    # dht.md 3.3/3.4: B announces port 4000 with LAN 192.168.1.5:4000; C looks
    # up with LAN 192.168.1.9:5000 and gets 7f0000010fa0 and 01050fa0.
    h = handler()
    assert h.update(Req(("127.0.0.1", 10002), TOPIC, bytes.fromhex("08a01f1206c0a801050fa0"))) is None
    value = h.query(Req(("127.0.0.1", 10003), TOPIC, bytes.fromhex("1206c0a801091388")))
    assert value == bytes.fromhex("0a067f0000010fa0120401050fa0")


def test_lookup_with_no_records_answers_an_empty_value():
    h = handler()
    assert h.query(Req(("127.0.0.1", 10003), TOPIC, b"")) == b""


def test_port_zero_or_absent_uses_the_source_port():
    h = handler()
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=0)))
    h.update(Req(("127.0.0.2", 6666), TOPIC, b""))
    got = out(h.query(Req(("127.0.0.3", 1), TOPIC, b"")))
    assert sorted(got.peers[i:i + 6] for i in range(0, len(got.peers), 6)) == sorted(
        [encode_peer("127.0.0.1", 5555), encode_peer("127.0.0.2", 6666)])


def test_lookup_excludes_the_askers_own_record():
    h = handler()
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000)))
    assert h.query(Req(("127.0.0.1", 9), TOPIC, ann(port=4000))) == b""
    assert out(h.query(Req(("127.0.0.1", 9), TOPIC, b""))).peers == encode_peer("127.0.0.1", 4000)


def test_unannounce_removes_the_record():
    h = handler()
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000, local=("10.0.0.5", 4000))))
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000, local=("10.0.0.5", 4000), unannounce=True)))
    assert h.query(Req(("127.0.0.2", 9), TOPIC, ann(local=("10.0.1.1", 1)))) == b""
    assert len(h.store) == 0
    assert h.served == {"lookup": 1, "announce": 1, "unannounce": 1}


def test_announced_records_expire_unless_reannounced():
    clock = Clock()
    h = peers.PeersCommand(RecordStore(clock))
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000)))
    h.update(Req(("127.0.0.2", 5555), TOPIC, ann(port=4000)))
    asker = Req(("127.0.0.9", 1), TOPIC, b"")
    for _ in range(6):  # 127.0.0.1 re-announces every 5 min (discovery's minimum)
        clock.advance(300)
        h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000)))
    assert out(h.query(asker)).peers == encode_peer("127.0.0.1", 4000)
    clock.advance(16 * 60)
    assert h.query(asker) == b""


def test_unannounce_in_a_query_is_a_lookup():
    h = handler()
    h.update(Req(("127.0.0.1", 5555), TOPIC, ann(port=4000)))
    value = h.query(Req(("127.0.0.2", 9), TOPIC, ann(unannounce=True)))
    assert out(value).peers == encode_peer("127.0.0.1", 4000)
    assert len(h.store) == 1


@pytest.mark.parametrize("value,reason,text", [
    (None, "no-value", "Missing value"),
    (b"\x12\x05abcde", "bad-local-address", "Invalid local address"),
    (b"\x08\x80\x80\x04", "bad-port", "Invalid port"),     # port 65536
    (b"\x08\xff\xff\xff\xff\x0f", "bad-port", "Invalid port"),
])
@pytest.mark.parametrize("kind", ["query", "update"])
def test_bad_requests_get_an_error_and_are_counted(value, reason, text, kind):
    h = handler()
    with pytest.raises(CommandError) as e:
        getattr(h, kind)(Req(("127.0.0.1", 5555), TOPIC, value))
    assert e.value.text == text
    assert h.errors == {reason: 1}
    assert len(h.store) == 0


@pytest.mark.parametrize("value", [b"\xff\xff\xff", b"\x08", b"\x1a\x01", b"\x12\x09abc"])
@pytest.mark.parametrize("kind", ["query", "update"])
def test_undecodable_values_are_ignored_as_dht_rpc_does(value, kind):
    h = handler()
    with pytest.raises(IgnoreRequest):
        getattr(h, kind)(Req(("127.0.0.1", 5555), TOPIC, value))
    assert h.errors == {"bad-value": 1}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=64)), st.one_of(st.none(), st.binary(max_size=40)),
       st.integers(0, 65535))
def test_the_handler_raises_nothing_else_on_any_input(value, target, src_port):
    h = handler()
    for kind in ("query", "update"):
        try:
            result = getattr(h, kind)(Req(("127.0.0.1", src_port), target, value))
        except (CommandError, IgnoreRequest):
            continue
        if kind == "query":
            decode_peers_output(result)
        else:
            assert result is None
    assert len(h.store) <= 2


def test_a_source_port_of_zero_without_a_port_is_invalid():
    h = handler()
    with pytest.raises(Exception, match="Invalid port"):
        h.update(Req(("127.0.0.1", 0), TOPIC, b""))


@pytest.mark.parametrize("target", [None, b"", b"\x11" * 31, b"\x11" * 33])
def test_a_target_that_is_not_32_bytes_is_an_error(target):
    h = handler()
    with pytest.raises(Exception, match="Invalid target"):
        h.query(Req(("127.0.0.1", 1), target, b""))
    assert h.errors == {"bad-target": 1}


def test_100k_announces_from_1000_addresses_stay_within_the_caps():
    # 10 heavy senders send 10% of the announces and one hot topic gets 20%,
    # so each of the three caps is hit; the defaults (Node's total) apply.
    h = handler()
    store = h.store
    topics = [bytes([t]) * 32 for t in range(30)]
    ips = [f"127.0.{a // 250}.{a % 250 + 1}" for a in range(1000)]
    rng = random.Random(5)
    values = {}
    for i in range(100_000):
        ip = ips[rng.randrange(10)] if rng.random() < 0.1 else ips[rng.randrange(1000)]
        topic = topics[0] if rng.random() < 0.2 else topics[rng.randrange(1, 30)]
        port = rng.randrange(1, 65536)
        value = values.get(port)
        if value is None:
            value = values[port] = ann(port=port)
        h.update(Req((ip, 1), topic, value))
        if i == 0:
            first = (topic, encode_peer(ip, port))
    assert h.served["announce"] == 100_000
    assert len(store) == store.max_records == 65536
    # the total cap evicted the oldest records, the very first among them
    assert first[1] not in store.get(first[0].hex())
    for t in topics:
        assert store.count_for_topic(t) <= store.max_per_topic
    assert max(store.count_for_ip(ip) for ip in ips) == store.max_per_ip
    assert all(store.refused[r] > 0 for r in ("ip-cap", "topic-cap", "evicted"))
    # and a lookup still answers with at most 128 records
    got = out(h.query(Req(("127.9.9.9", 1), topics[0], b"")))
    assert len(got.peers) == 128 * 6


# -- client values ----------------------------------------------------------------


def test_announce_value_carries_port_zero_explicitly():
    # hyperswarm 2.15.3 announces with `08 00` (dht.md 2.4b)
    assert peers.encode_announce() == b"\x08\x00"
    assert peers.encode_announce(4000, ("192.168.1.5", 4000)) == bytes.fromhex("08a01f1206c0a801050fa0")


def test_lookup_value_has_no_port_and_is_present_even_when_empty():
    assert peers.encode_lookup() == b""
    assert peers.encode_lookup(("192.168.1.9", 5000)) == bytes.fromhex("1206c0a801091388")


def test_unannounce_value():
    assert peers.encode_unannounce(4000) == bytes.fromhex("08a01f1801")
    v = decode_peers_input(peers.encode_unannounce())
    assert v.HasField("port") and v.port == 0 and v.unannounce


def test_peer_records_from_a_reply_as_node_maps_them():
    reply = FakeReply(("127.0.0.1", 10001), b"\xaa" * 32,
                      bytes.fromhex("0a067f0000010fa0120401050fa0"), ("127.0.0.1", 10003))
    got = peers.peer_records(TOPIC, reply, bytes([192, 168]))
    assert got == [
        PeerRecord(TOPIC, "192.168.1.5", 4000, True, None, ("127.0.0.1", 10003), "dht"),
        PeerRecord(TOPIC, "127.0.0.1", 4000, False, ("127.0.0.1", 10001), ("127.0.0.1", 10003), "dht"),
    ]
    # without a LAN prefix (the lookup sent none) localPeers are ignored
    assert [p.local for p in peers.peer_records(TOPIC, reply)] == [False]


@pytest.mark.parametrize("value", [None, b"", b"\xff\xff", bytes.fromhex("0a057f00000100"),
                                   bytes.fromhex("0a067f0000010000"), bytes.fromhex("0a0600000000aaaa")])
def test_malformed_replies_give_no_peers(value):
    assert peers.peer_records(TOPIC, FakeReply(("127.0.0.1", 1), None, value, None), b"\x0a\x00") == []


def test_malformed_local_peers_are_dropped_all_or_nothing():
    v = PeersOutput(localPeers=bytes.fromhex("01050fa0" "01060000")).SerializeToString()
    assert peers.peer_records(TOPIC, FakeReply(("127.0.0.1", 1), None, v, None), b"\x0a\x00") == []


# -- client side on a fake node -----------------------------------------------------


class FakeNode:
    """Records walks; the test fires them."""

    def __init__(self, clock):
        self.reactor = clock
        self.calls = []
        self.stop_hooks = []

    def add_stop_hook(self, hook):
        self.stop_hooks.append(hook)

    def remove_stop_hook(self, hook):
        if hook in self.stop_hooks:
            self.stop_hooks.remove(hook)

    def walk(self, kind, command, target, value, on_reply=None):
        d = defer.Deferred()
        self.calls.append((kind, command, target, value, on_reply, d))
        return d

    def query_stream(self, command, target, value=None, on_reply=None):
        return self.walk("query", command, target, value, on_reply)

    def query_and_update(self, command, target, value=None, on_reply=None):
        return self.walk("query_and_update", command, target, value, on_reply)

    def update(self, command, target, value=None, on_reply=None):
        return self.walk("update", command, target, value, on_reply)


def one_peer_reply(port=4000, node=("127.0.0.1", 1)):
    return FakeReply(node, None, PeersOutput(peers=encode_peer("127.0.0.1", port)).SerializeToString(),
                     ("127.0.0.1", 9))


def test_lookup_stream_reports_every_peer_of_every_reply_and_fires_at_the_end():
    node = FakeNode(Clock())
    found = []
    d = peers.lookup_stream(node, TOPIC, found.append)
    kind, command, target, value, on_reply, walk = node.calls[0]
    assert (kind, command, target, value) == ("query", "peers", TOPIC, b"")
    on_reply(one_peer_reply(node=("127.0.0.1", 1)))
    on_reply(one_peer_reply(node=("127.0.0.1", 2)))
    assert found == [
        PeerRecord(TOPIC, "127.0.0.1", 4000, False, ("127.0.0.1", 1), ("127.0.0.1", 9), "dht"),
        PeerRecord(TOPIC, "127.0.0.1", 4000, False, ("127.0.0.1", 2), ("127.0.0.1", 9), "dht"),
    ]
    assert not d.called
    walk.callback(None)
    assert d.called


def test_lookup_collects_a_list_each_peer_once():
    node = FakeNode(Clock())
    d = peers.lookup(node, TOPIC, local_address=("10.0.0.9", 1))
    *_, value, on_reply, walk = node.calls[0]
    assert value == peers.encode_lookup(("10.0.0.9", 1))
    local = PeersOutput(localPeers=bytes.fromhex("01050fa0")).SerializeToString()
    on_reply(FakeReply(("127.0.0.1", 1), None, local, None))
    on_reply(FakeReply(("127.0.0.1", 2), None, local, None))
    walk.callback(None)
    assert d.result == [PeerRecord(TOPIC, "10.0.1.5", 4000, True, None, None, "dht")]


def test_lookup_rejects_a_topic_that_is_not_32_bytes_or_a_bad_lan_address():
    with pytest.raises(ValueError):
        peers.lookup(FakeNode(Clock()), b"short")
    with pytest.raises(ValueError):  # as documented (was an OSError)
        peers.lookup(FakeNode(Clock()), TOPIC, local_address=("not-an-ip", 1))


@pytest.mark.parametrize("kw", [dict(announce_port=-1), dict(announce_port=65536),
                                dict(announce_port=None, lookup=False),
                                dict(local_address=("not-an-ip", 1))])
def test_join_rejects_what_it_cannot_send(kw):
    node = FakeNode(Clock())
    with pytest.raises(ValueError):
        peers.join(node, TOPIC, **kw)
    assert node.calls == [] and node.stop_hooks == []


def test_join_provides_the_discovery_topic_interface():
    from zope.interface.verify import verifyObject

    from txhyperswarm.interfaces import IDiscoveryTopic

    t = peers.join(FakeNode(Clock()), TOPIC, announce_port=0)
    assert verifyObject(IDiscoveryTopic, t)
    assert (t.topic, t.announcing, t.lookup) == (TOPIC, True, True)
    t = peers.join(FakeNode(Clock()), TOPIC, lookup=False, announce_port=5)
    assert (t.announcing, t.lookup) == (True, False)
    t = peers.join(FakeNode(Clock()), TOPIC)
    assert (t.announcing, t.lookup) == (False, True)


@pytest.mark.parametrize("announce_port, kind, value", [
    (None, "query", b""),
    (0, "query_and_update", b"\x08\x00"),
    (4000, "query_and_update", bytes.fromhex("08a01f")),
])
def test_each_cycle_announces_or_looks_up(announce_port, kind, value):
    clock = Clock()
    node = FakeNode(clock)
    peers.join(node, TOPIC, announce_port=announce_port, reactor=clock)
    assert [c[:4] for c in node.calls] == [(kind, "peers", TOPIC, value)]
    node.calls[0][-1].callback([])
    clock.advance(600)
    assert [c[:4] for c in node.calls] == [(kind, "peers", TOPIC, value)] * 2


def test_cycles_repeat_300_to_600_s_after_each_ended_and_stop():
    clock = Clock()
    node = FakeNode(clock)
    updates = []
    t = peers.join(node, TOPIC, announce_port=0, on_update=updates.append, reactor=clock,
                   random=random.Random(3))
    ready = t.when_ready()
    clock.advance(1000)
    assert len(node.calls) == 1 and not ready.called  # nothing new while the walk runs
    node.calls[0][-1].callback([])
    assert ready.result is True and updates == [None] and t.cycles == 1
    delays = []
    for n in range(2, 8):
        start = clock.seconds()
        while len(node.calls) < n:
            clock.advance(1)
            assert clock.seconds() - start <= 600
        delays.append(clock.seconds() - start)
        node.calls[-1][-1].callback([])
    assert updates == [None] * 7
    assert all(300 <= x <= 601 for x in delays)
    assert len(set(delays)) > 1  # random, not fixed
    stopped = t.stop()
    kind, _, _, value, _, walk = node.calls[-1]
    assert kind == "update" and decode_peers_input(value).unannounce
    assert not stopped.called  # until the unannounce is done
    walk.callback([])
    assert stopped.result is None
    clock.advance(3600)
    assert node.calls[-1][0] == "update" and len(updates) == 7  # no cycle after stop
    assert t.stop().result is None  # idempotent
    assert node.calls[-1][0] == "update" and len([c for c in node.calls if c[0] == "update"]) == 1


def test_the_delay_is_drawn_from_the_injected_random():
    class Fixed:
        def __init__(self, x):
            self.x = x

        def random(self):
            return self.x

    for x, delay in [(0.0, 300), (0.5, 450), (0.999, 599.7)]:
        clock = Clock()
        node = FakeNode(clock)
        peers.join(node, TOPIC, reactor=clock, random=Fixed(x))
        node.calls[0][-1].callback(None)
        clock.advance(delay - 0.01)
        assert len(node.calls) == 1
        clock.advance(0.02)
        assert len(node.calls) == 2


def test_a_failed_first_cycle_makes_ready_false_reports_the_error_and_retries():
    clock = Clock()
    node = FakeNode(clock)
    updates = []
    t = peers.join(node, TOPIC, announce_port=4000, on_update=updates.append, reactor=clock)
    ready = t.when_ready()
    node.calls[0][-1].errback(QueryError("No nodes responded"))
    assert ready.result is False and t.when_ready().result is False
    assert len(updates) == 1 and isinstance(updates[0], QueryError)
    clock.advance(600)
    assert len(node.calls) == 2
    assert node.calls[1][3] == bytes.fromhex("08a01f")
    node.calls[1][-1].callback([])
    assert updates[1:] == [None]
    assert t.when_ready().result is False  # the first round decides


def test_a_failed_first_cycle_nobody_waits_for_logs_no_unhandled_error():
    import gc

    from twisted.logger import globalLogPublisher

    def join_and_forget():
        clock = Clock()
        node = FakeNode(clock)
        t = peers.join(node, TOPIC, announce_port=4000, reactor=clock)
        t.when_ready()
        node.calls[0][-1].errback(QueryError("No nodes responded"))
        t.stop()
        node.calls[1][-1].errback(QueryError("No nodes responded"))

    formats = []
    observer = lambda event: formats.append(str(event.get("log_format")))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        join_and_forget()
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert "announce of {topic} failed: {err}" in " ".join(formats)  # it did fail
    assert not [f for f in formats if "Unhandled error" in f], formats


def test_stop_during_the_first_cycle_cancels_it_makes_ready_false_and_unannounces():
    clock = Clock()
    node = FakeNode(clock)
    updates = []
    t = peers.join(node, TOPIC, announce_port=0, on_update=updates.append, reactor=clock)
    ready = t.when_ready()
    d = t.stop()
    assert node.calls[0][-1].called  # cancelled
    assert ready.result is False and updates == []  # no 'update' after stop, as Node
    assert node.calls[1][0] == "update"
    node.calls[1][-1].errback(QueryError("No close nodes responded"))
    assert d.result is None  # failed or not: done
    clock.advance(3600)
    assert len(node.calls) == 2
    assert node.stop_hooks == []


def test_stop_of_a_lookup_only_join_fires_at_once_and_sends_nothing():
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, reactor=clock)
    node.calls[0][-1].callback(None)
    d = t.stop()
    assert d.result is None
    assert [c[0] for c in node.calls] == ["query"]
    clock.advance(3600)
    assert len(node.calls) == 1
    assert t.stop().result is None


def test_peers_go_to_on_peer_only_when_looking_up():
    clock = Clock()
    for lookup, expect in [(True, [("127.0.0.1", 4000), ("127.0.0.1", 4000)]), (False, [])]:
        node = FakeNode(clock)
        found = []
        peers.join(node, TOPIC, announce_port=0, lookup=lookup, on_peer=found.append, reactor=clock)
        on_reply = node.calls[0][4]
        on_reply(one_peer_reply())
        on_reply(one_peer_reply())  # a repeat is reported again
        assert [(p.host, p.port) for p in found] == expect


def test_announce_reports_peers_found_on_the_way():
    clock = Clock()
    node = FakeNode(clock)
    found = []
    peers.announce(node, TOPIC, on_peer=found.append, reactor=clock)
    on_reply = node.calls[0][4]
    on_reply(one_peer_reply())
    assert [(p.host, p.port) for p in found] == [("127.0.0.1", 4000)]


def _reply(n_peers=0, n_local=None):
    out = PeersOutput()
    if n_peers:
        out.peers = b"".join(encode_peer("127.0.0.1", 1000 + i) for i in range(n_peers))
    if n_local:
        out.localPeers = b"".join(bytes((1, i)) + (2000 + i).to_bytes(2, "big") for i in range(n_local))
    return FakeReply(("127.0.0.1", 1), None, out.SerializeToString(), None)


@pytest.mark.parametrize("replies, local, flushes_at", [
    ([1] * 6, False, 6),                # 6 replies of one peer each
    ([1] * 5, False, None),             # 5 are not enough
    ([3, 1, 3, 3, 3, 3, 3], False, 7),  # a smaller reply does not count
    ([1, 3, 3, 3, 3, 3, 3], False, 7),  # a bigger one restarts the count
    ([20] * 6, False, 6),               # >= 16 counts but is no new maximum
    ([0] * 8, False, None),             # empty replies never count
])
def test_the_first_round_ends_early_after_6_full_responses(replies, local, flushes_at):
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, reactor=clock)
    ready = t.when_ready()
    on_reply = node.calls[0][4]
    fired_at = None
    for i, n in enumerate(replies, 1):
        on_reply(_reply(n))
        if ready.called and fired_at is None:
            fired_at = i
    assert fired_at == flushes_at
    if flushes_at is not None:
        assert ready.result is True
    assert len(node.calls) == 1 and not node.calls[0][-1].called  # the cycle goes on


def test_the_local_early_flush_compares_with_the_remote_maximum_as_node():
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, local_address=("10.1.2.3", 1), reactor=clock)
    ready = t.when_ready()
    on_reply = node.calls[0][4]
    on_reply(_reply(4))  # remote maximum 4, remote count 1
    # 1, 2, 3 local peers are never above the remote maximum, so the local
    # maximum stays 1 and each counts (comparing with the local maximum would
    # restart the count at 2 and 3, and never flush here)
    for n in (1, 2, 3, 1, 1):
        on_reply(_reply(0, n))
    assert not ready.called
    on_reply(_reply(0, 1))  # the 6th local reply of >= 1
    assert ready.result is True


def test_local_peers_do_not_count_without_a_local_address():
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, reactor=clock)
    ready = t.when_ready()
    for _ in range(8):
        node.calls[0][4](_reply(0, 3))
    assert not ready.called


def test_a_later_cycle_does_not_change_the_first_round():
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, reactor=clock)
    node.calls[0][-1].callback(None)
    clock.advance(600)
    node.calls[1][-1].errback(QueryError("No nodes responded"))
    assert t.when_ready().result is True


def test_the_node_stopping_ends_the_cycles():
    clock = Clock()
    node = FakeNode(clock)
    updates = []
    t = peers.join(node, TOPIC, announce_port=0, on_update=updates.append, reactor=clock)
    ready = t.when_ready()
    (hook,) = node.stop_hooks
    hook()
    assert ready.result is False
    node.calls[0][-1].errback(QueryError("DHT node stopped"))
    assert updates == []
    clock.advance(3600)
    assert len(node.calls) == 1
    assert clock.getDelayedCalls() == []


# -- real DHTNodes over loopback sockets ---------------------------------------------

import os  # noqa: E402

import pytest_twisted  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

from tests.dht.raw import dht_message  # noqa: E402
from txhyperswarm.dht.messages import QUERY, RESPONSE, UPDATE, decode_message  # noqa: E402
from txhyperswarm.dht.node import DHTNode  # noqa: E402

LOOPBACK = "127.0.0.1"


def sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class Network:
    """A Python-only DHT on loopback: one bootstrap node, persistent nodes
    serving ``peers``, ephemeral clients."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.nodes = []
        self.commands = []

    @defer.inlineCallbacks
    def start(self, persistent=4, **store_options):
        boot = self._node(bootstrap=[])
        self.commands.append(peers.register(boot, **store_options))
        self.bootstrap = [boot.address()]
        for _ in range(persistent - 1):
            n = self._node(bootstrap=self.bootstrap)
            self.commands.append(peers.register(n, **store_options))
        yield defer.gatherResults([n.bootstrapped() for n in self.nodes])
        # a second round so every persistent node knows the others
        yield defer.gatherResults([n.bootstrap() for n in self.nodes[1:]])
        return self

    def _node(self, **kw):
        n = DHTNode(self.reactor, host=LOOPBACK, port=0, **kw)
        n.startService()
        self.nodes.append(n)
        return n

    @defer.inlineCallbacks
    def client(self):
        n = self._node(bootstrap=self.bootstrap, ephemeral=True)
        yield n.bootstrapped()
        return n

    def stored(self):
        return sum(len(c.store) for c in self.commands)

    def stop(self):
        return defer.gatherResults([n.stopService() for n in self.nodes])


@pytest.fixture
def network(reactor):
    net = Network(reactor)
    yield net
    pytest_twisted.blockon(net.stop())


class RawClient(DatagramProtocol):
    """Sends hand-made dht-rpc datagrams from a chosen loopback address."""

    def __init__(self, reactor, host=LOOPBACK):
        self.reactor = reactor
        self.replies = {}
        self.port = reactor.listenUDP(0, self, interface=host)
        self._rid = int.from_bytes(os.urandom(2), "big")

    def datagramReceived(self, data, addr):
        msg = decode_message(data)
        if msg.type == RESPONSE:
            self.replies[msg.rid] = msg

    def send(self, addr, type_, command, target=TOPIC, value=None, token=None):
        self._rid = (self._rid + 1) & 0xFFFF
        self.transport.write(dht_message(type_, command.encode(), self._rid, target=target, value=value,
                                         token=token), addr)
        return self._rid

    @defer.inlineCallbacks
    def request(self, addr, *args, timeout=2.0, **kw):
        """The reply, or None after ``timeout`` (resending like dht-rpc)."""
        rid = self.send(addr, *args, **kw)
        deadline = self.reactor.seconds() + timeout
        while rid not in self.replies and self.reactor.seconds() < deadline:
            yield sleep(self.reactor, 0.01)
        return self.replies.pop(rid, None)

    def close(self):
        return self.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_announce_lookup_unannounce_over_loopback(reactor, network):
    yield network.start(persistent=4)
    a = yield network.client()
    b = yield network.client()
    ann_ = peers.announce(a, TOPIC, 4000, local_address=("10.1.2.3", 4000))
    assert (yield ann_.when_ready()) is True
    assert network.stored() >= 2  # public + LAN record on at least one node
    found = yield peers.lookup(b, TOPIC, local_address=("10.1.9.9", 7))
    servers = {n.address() for n in network.nodes[:4]}
    public = [p for p in found if not p.local]
    assert [(p.host, p.port, p.source) for p in public] == [(LOOPBACK, 4000, "dht")]
    assert public[0].referrer in servers
    assert public[0].to == b.address()
    assert [(p.host, p.port, p.referrer) for p in found if p.local] == [("10.1.2.3", 4000, None)]
    # the default announce port is our DHT socket's port (sent as 0)
    default = peers.announce(b, TOPIC)
    assert (yield default.when_ready()) is True
    found = yield peers.lookup(a, TOPIC)
    assert {(p.host, p.port) for p in found} == {(LOOPBACK, 4000), b.address()}
    assert (yield ann_.stop()) is None
    assert (yield default.stop()) is None
    assert network.stored() == 0
    assert (yield peers.lookup(b, TOPIC, local_address=("10.1.9.9", 7))) == []


@pytest_twisted.inlineCallbacks
def test_lookup_stream_reports_peers_before_the_walk_ends(reactor, network):
    yield network.start(persistent=3)
    a = yield network.client()
    yield peers.announce(a, TOPIC, 5000).when_ready()
    b = yield network.client()
    events = []
    d = peers.lookup_stream(b, TOPIC, lambda p: events.append(("peer", p.port)))
    d.addCallback(lambda _: events.append(("done", None)))
    yield d
    # every node holding the record reports it (as Node emits per response)
    assert events[-1] == ("done", None) and len(events) >= 2
    assert set(events[:-1]) == {("peer", 5000)}


@pytest_twisted.inlineCallbacks
def test_forged_and_stale_tokens_are_rejected(reactor, network):
    yield network.start(persistent=1)
    server = network.nodes[0]
    addr = server.address()
    raw = RawClient(reactor)
    try:
        reply = yield raw.request(addr, QUERY, "peers", value=b"")
        token = reply.roundtripToken
        assert len(token) == 32
        # forged token, no token: no reply, nothing stored
        assert (yield raw.request(addr, UPDATE, "peers", value=b"", token=os.urandom(32), timeout=0.3)) is None
        assert (yield raw.request(addr, UPDATE, "peers", value=b"", timeout=0.3)) is None
        assert server.dropped["bad_token"] == 2
        assert len(network.commands[0].store) == 0
        # a token from one rotation ago still works (5-10 min validity) ...
        server.rpc.tokens.rotate()
        assert (yield raw.request(addr, UPDATE, "peers", value=peers.encode_announce(4000), token=token)) is not None
        assert len(network.commands[0].store) == 1
        # ... one from two rotations ago does not
        server.rpc.tokens.rotate()
        assert (yield raw.request(addr, UPDATE, "peers", value=peers.encode_announce(4001), token=token,
                                  timeout=0.3)) is None
        assert len(network.commands[0].store) == 1
    finally:
        yield raw.close()


@pytest_twisted.inlineCallbacks
def test_malformed_peers_requests_do_not_stop_the_node(reactor, network):
    yield network.start(persistent=1)
    server = network.nodes[0]
    command = network.commands[0]
    addr = server.address()
    raw = RawClient(reactor)
    try:
        reply = yield raw.request(addr, QUERY, "peers", value=None)  # what crashes Node
        assert reply.error == b"Missing value" and not reply.HasField("roundtripToken")
        assert (yield raw.request(addr, QUERY, "peers", value=b"\xff\xff", timeout=0.3)) is None
        reply = yield raw.request(addr, QUERY, "peers", value=b"\x08\x80\x80\x04")
        assert reply.error == b"Invalid port"
        reply = yield raw.request(addr, QUERY, "peers", target=b"\x01" * 5, value=b"")
        assert reply.error == b"Invalid target"
        assert (yield raw.request(addr, QUERY, "peers", target=None, value=b"", timeout=0.3)) is None
        assert command.errors == {"no-value": 1, "bad-value": 1, "bad-port": 1, "bad-target": 1}
        # still serving
        yield peers.announce((yield network.client()), TOPIC, 4000).when_ready()
        found = yield peers.lookup((yield network.client()), TOPIC)
        assert [(p.host, p.port) for p in found] == [(LOOPBACK, 4000)]
    finally:
        yield raw.close()


@pytest_twisted.inlineCallbacks
def test_5000_announces_over_loopback_stay_within_the_caps(reactor, network):
    caps = dict(max_records=2000, max_per_topic=700, max_per_ip=60)
    yield network.start(persistent=1, **caps)
    addr = network.nodes[0].address()
    store = network.commands[0].store
    topics = [bytes([t]) * 32 for t in range(1, 4)]
    answered = 0
    for i in range(50):  # 50 source addresses x 100 announces
        raw = RawClient(reactor, f"127.0.{1 + i // 200}.{1 + i % 200}")
        try:
            token = (yield raw.request(addr, QUERY, "peers", target=topics[0], value=b"")).roundtripToken
            # half of them on one topic
            rids = [raw.send(addr, UPDATE, "peers", target=topics[0 if j % 2 == 0 else 1 + (j // 2) % 2],
                             value=peers.encode_announce(1000 + j), token=token) for j in range(100)]
            for _ in range(200):
                if all(r in raw.replies for r in rids):
                    break
                yield sleep(reactor, 0.01)
            answered += sum(r in raw.replies for r in rids)
        finally:
            yield raw.close()
        assert len(store) <= caps["max_records"]
    assert answered >= 4500  # loopback may drop a few under load
    assert len(store) <= caps["max_records"]
    for t in topics:
        assert store.count_for_topic(t) <= caps["max_per_topic"]
    assert all(store.refused[r] > 0 for r in ("ip-cap", "topic-cap", "evicted"))
    assert network.commands[0].served["announce"] == answered


@pytest_twisted.inlineCallbacks
def test_what_goes_on_the_wire_is_what_hyperswarm_sends(reactor, network):
    # dht.md 2.4b: announce carries port (0 by default) explicitly, lookup
    # none; unannounce = _find_node walk + UPDATE unannounce; a peers request
    # always carries a value field (Node crashes without one).
    yield network.start(persistent=2)
    client = yield network.client()
    sent = []
    real_send = client.udp.send

    def spy(data, addr):
        sent.append(decode_message(data))
        return real_send(data, addr)

    client.udp.send = spy
    try:
        yield peers.lookup(client, TOPIC)
        a = peers.announce(client, TOPIC)
        yield a.when_ready()
        yield a.stop()
    finally:
        client.udp.send = real_send
    requests = [m for m in sent if m.type in (QUERY, UPDATE) and m.command == b"peers"]
    assert requests and all(m.HasField("value") for m in requests)
    lookups, announces, unannounces = [], [], []
    for m in requests:
        v = decode_peers_input(m.value)
        (unannounces if v.unannounce else announces if v.HasField("port") else lookups).append((m.type, v))
        if not v.unannounce and not v.HasField("port"):
            assert m.type == QUERY and m.value == b""
    assert lookups and {t for t, _ in announces} == {QUERY, UPDATE}
    assert all(v.port == 0 for _, v in announces)
    assert unannounces and {t for t, _ in unannounces} == {UPDATE}
    # the unannounce walk is _find_node, as Node's update()
    assert any(m.command == b"_find_node" and m.target == TOPIC for m in sent)


def test_refresh_starts_the_next_cycle_now_and_keeps_the_schedule():
    clock = Clock()
    node = FakeNode(clock)
    updates = []
    t = peers.join(node, TOPIC, announce_port=0, on_update=updates.append, reactor=clock)
    t.refresh()  # a cycle is running: nothing
    assert len(node.calls) == 1
    node.calls[0][-1].callback(None)
    clock.advance(10)
    t.refresh()
    assert len(node.calls) == 2 and updates == [None]
    assert len(clock.getDelayedCalls()) == 0  # the old timer is gone
    node.calls[1][-1].callback(None)
    assert updates == [None, None]
    clock.advance(299)
    assert len(node.calls) == 2
    clock.advance(301)
    assert len(node.calls) == 3
    t.stop()
    t.refresh()
    assert node.calls[-1][0] == "update"


def test_stopping_the_node_leaves_no_announce_timer():
    # A join waits 300-600 s between cycles on the node's clock; once the
    # node stops, nothing of the DHT layer may stay scheduled.
    from tests.dht.dhtnet import DHTNetwork

    net = DHTNetwork()
    servers = [net.node()]
    net.clock.advance(0)
    servers += [net.node(bootstrap=[servers[0].address()]) for _ in range(3)]
    for s in servers:
        peers.register(s)
    client = net.node(bootstrap=[servers[0].address()], ephemeral=True)
    net.run(1)
    waiting = peers.announce(client, TOPIC, 4000)
    net.run(1)
    assert waiting.cycles == 1  # now between cycles, on its timer
    walking = peers.announce(client, b"\x22" * 32, 4001)
    ready = walking.when_ready()
    for n in [client] + servers:
        n.stopService()
    net.run(1)  # datagrams in flight arrive (and are ignored)
    assert net.clock.getDelayedCalls() == []
    assert ready.result is False
    assert waiting.when_ready().result is True
    assert waiting.stop().result is None  # nothing left to unannounce through


def test_refresh_or_stop_from_on_update_behave_as_node():
    clock = Clock()
    node = FakeNode(clock)
    t = peers.join(node, TOPIC, on_update=lambda err: t.refresh(), reactor=clock, random=random.Random(1))
    node.calls[0][-1].callback(None)
    assert len(node.calls) == 1  # Node's update() finds no timer yet: nothing
    assert len(clock.getDelayedCalls()) == 1  # the next cycle is scheduled once
    stopper = peers.join(node, TOPIC, on_update=lambda err: stopper.stop(), reactor=clock)
    node.calls[1][-1].errback(QueryError("No nodes responded"))
    assert len(clock.getDelayedCalls()) == 1  # stopped: only the first join's timer
    assert stopper.when_ready().result is False


def test_a_node_that_is_not_running_fails_each_cycle_at_once():
    clock = Clock()
    node = FakeNode(clock)
    node.walk = lambda *a, **kw: defer.fail(QueryError("DHT node is not running"))
    updates, joined = [], []

    def on_update(err):
        updates.append(err)
        for t in joined:
            t.refresh()  # while its cycle ends: nothing

    t = peers.join(node, TOPIC, on_update=on_update, reactor=clock)
    joined.append(t)
    assert len(updates) == 1 and t.when_ready().result is False
    clock.advance(600)  # the next cycle fails at once too, and refresh() adds none
    assert len(updates) == 2
    assert len(clock.getDelayedCalls()) == 1
