"""
Tests for txhyperswarm.mdns (wire, topic, service) and txhyperswarm.netif: mDNS as @hyperswarm/discovery 2.0.1.

Most tests drive MulticastDiscovery on a Clock with an in-memory multicast
"network" (no sockets). The NODE_* datagrams were captured from Node
(@hyperswarm/discovery 2.0.1 via tests/node/mdns_discovery.js, recorded by
tests/node/mdns_capture.js) inside a private network namespace: a topic of
32 x 0xab announced on port 37591 with lookup, answering from 127.0.0.1.
The real-socket tests at the end use the private_netns fixture.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from txhyperswarm.mdns import wire
from txhyperswarm.mdns import MulticastDiscovery
from txhyperswarm.peer_record import PeerRecord

TOPIC = bytes([0xAB]) * 32
NAME = "ab" * 20 + ".hyperswarm.local"
NODE_ID = bytes.fromhex("69643d33272bf69c3eee4c60693b4644fc1ae38741ec991b74825c2f8f6e9a51e0e665")

# a lookup (or announce+lookup) topic's query
NODE_QUERY = bytes.fromhex(
    "000000000001000000000000"
    "28616261626162616261626162616261626162616261626162616261626162616261626162616261620a6879706572737761726d056c6f63616c00"
    "00210001"
)
# the unsolicited announcement on the tick after announcing: SRV + TXT, no A
NODE_ANNOUNCE = bytes.fromhex(
    "000084000000000200000000"
    "28616261626162616261626162616261626162616261626162616261626162616261626162616261620a6879706572737761726d056c6f63616c00"
    "002100010000000000" "0f0000000092d70130013001300130" "00"
    "28616261626162616261626162616261626162616261626162616261626162616261626162616261620a6879706572737761726d056c6f63616c00"
    "00100001000000000024" "2369643d33272bf69c3eee4c60693b4644fc1ae38741ec991b74825c2f8f6e9a51e0e665"
)
# the answer to a query from 127.0.0.1: SRV + TXT + A referrer.hyperswarm.local
NODE_ANSWER = bytes.fromhex(
    "000084000000000300000000"
    "28616261626162616261626162616261626162616261626162616261626162616261626162616261620a6879706572737761726d056c6f63616c00"
    "002100010000000000" "0f0000000092d70130013001300130" "00"
    "28616261626162616261626162616261626162616261626162616261626162616261626162616261620a6879706572737761726d056c6f63616c00"
    "00100001000000000024" "2369643d33272bf69c3eee4c60693b4644fc1ae38741ec991b74825c2f8f6e9a51e0e665"
    "0872656665727265720a6879706572737761726d056c6f63616c00" "000100010000000000047f000001"
)


def describe(record):
    """Every field Node's dns-packet decodes for our record types."""
    base = (record.name, record.type, record.class_, record.unique, record.ttl)
    if record.type == wire.TYPE_SRV:
        return base + (record.priority, record.weight, record.port, wire.srv_target(record))
    if record.type == wire.TYPE_TXT:
        return base + (tuple(wire.txt_strings(record.text)),)
    if record.type == wire.TYPE_A:
        return base + (bytes(record.address),)
    return base


# -- an in-memory multicast network on one Clock ------------------------------


class FakeMulticastPort:
    def __init__(self, net, host, protocol, port):
        self.net, self.host, self.protocol, self.port = net, host, protocol, port
        self.groups, self.ttl, self.loopback, self.outgoing = [], None, None, None
        self.written = []
        self.closed = False

    def write(self, data, addr):
        self.written.append((data, addr))
        self.net.transmit(self, data, addr)

    def joinGroup(self, group, interface=""):
        self.groups.append((group, interface))
        return defer.succeed(None)

    def setOutgoingInterface(self, addr):
        self.outgoing = addr
        return defer.succeed(1)

    def setTTL(self, ttl):
        self.ttl = ttl

    def setLoopbackMode(self, mode):
        self.loopback = mode

    def getHost(self):
        return IPv4Address("UDP", "0.0.0.0", self.port)

    def stopListening(self):
        self.closed = True
        self.net.ports.remove(self)
        return defer.succeed(None)


class FakeNet:
    """Datagrams to the group reach every open port (the sender's too if loopback is on), a turn later."""

    def __init__(self):
        self.clock = Clock()
        self.ports = []
        self.log = []  # (source host, data)

    def reactor(self, host):
        return FakeReactor(self, host)

    def transmit(self, sender, data, addr):
        self.log.append((sender.host, data))
        for port in list(self.ports):
            if port is sender and not port.loopback:
                continue
            self.clock.callLater(0, self._deliver, port, data, (sender.host, 5353))

    def _deliver(self, port, data, addr):
        if not port.closed:
            port.protocol.datagramReceived(data, addr)

    def run(self, seconds=0.0, step=0.5):
        self.clock.advance(0)
        self.clock.advance(0)
        t = 0.0
        while t < seconds:
            self.clock.advance(step)
            self.clock.advance(0)
            self.clock.advance(0)
            t += step


class FakeReactor:
    def __init__(self, net, host):
        self.net, self.host = net, host

    def callLater(self, *a, **kw):
        return self.net.clock.callLater(*a, **kw)

    def seconds(self):
        return self.net.clock.seconds()

    def listenMulticast(self, port, protocol, interface="", maxPacketSize=8192, listenMultiple=False):
        assert listenMultiple, "mDNS shares 5353 with other responders"
        p = FakeMulticastPort(self.net, self.host, protocol, port)
        self.net.ports.append(p)
        protocol.makeConnection(p)
        return p


def started(net, host, **kw):
    kw.setdefault("random", random.Random(1))
    d = MulticastDiscovery(net.reactor(host), interface=host, **kw)
    d.startService()
    return d


def ready(topic):
    """What ``topic.when_ready()`` fired with, or ``None`` while it has not fired."""
    d = topic.when_ready()
    out = []
    d.addBoth(out.append)
    if not out:
        d.cancel()  # forgets this waiter; its CancelledError lands in out
        return None
    return out[0]


def decoded(data):
    p = wire.decode_packet(data)
    return p, [describe(r) for r in p.answers]


def looking_up():
    """A started discovery on its own FakeNet with one lookup join of TOPIC: ``(d, join, peers heard)``."""
    d = started(FakeNet(), "127.0.0.2")
    peers = []
    return d, d.lookup(TOPIC, peers.append), peers


# -- codec: Node's datagrams --------------------------------------------------


def test_query_is_byte_identical_to_node():
    assert wire.encode_query([wire.domain_name(TOPIC)]) == NODE_QUERY


def test_announcement_is_byte_identical_to_node():
    records = [wire.srv_record(NAME, 37591), wire.id_record(NAME, NODE_ID)]
    assert wire.encode_response(records) == NODE_ANNOUNCE


def test_answer_with_referrer_is_byte_identical_to_node():
    records = [
        wire.srv_record(NAME, 37591),
        wire.id_record(NAME, NODE_ID),
        wire.referrer_record("hyperswarm.local", "127.0.0.1"),
    ]
    assert wire.encode_response(records) == NODE_ANSWER


def test_node_query_decodes():
    p = wire.decode_packet(NODE_QUERY)
    assert not p.is_response and p.id == 0 and p.flags == 0
    assert [(q.name, q.type, q.class_, q.unique) for q in p.questions] == [(NAME + ".", 33, 1, False)]
    assert p.answers == ()


def test_node_answer_decodes_field_for_field():
    p, records = decoded(NODE_ANSWER)
    assert p.is_response and p.id == 0 and p.flags == 0x8400
    assert records == [
        (NAME + ".", 33, 1, False, 0, 0, 0, 37591, "0.0.0.0"),
        (NAME + ".", 16, 1, False, 0, (NODE_ID,)),
        ("referrer.hyperswarm.local.", 1, 1, False, 0, b"\x7f\x00\x00\x01"),
    ]


def test_domain_name_uses_first_20_bytes_only():
    assert wire.domain_name(bytes(range(32))) == bytes(range(20)).hex() + ".hyperswarm.local"


def node_style_response(name, port, topic_id, referrer=None):
    """Independent oracle: NODE_ANNOUNCE/NODE_ANSWER's layout with other values."""
    def n(s):
        return b"".join(bytes([len(lab)]) + lab.encode() for lab in s.split(".")) + b"\x00"

    out = bytes.fromhex("00008400") + b"\x00\x00" + bytes([0, 3 if referrer else 2]) + bytes(4)
    out += n(name) + bytes.fromhex("0021000100000000000f00000000") + port.to_bytes(2, "big") + n("0.0.0.0")
    out += n(name) + bytes.fromhex("00100001") + bytes(4) + (len(topic_id) + 1).to_bytes(2, "big")
    out += bytes([len(topic_id)]) + topic_id
    if referrer:
        out += n("referrer.hyperswarm.local") + bytes.fromhex("0001000100000000") + b"\x00\x04"
        out += bytes(int(x) for x in referrer.split("."))
    return out


@given(
    topic=st.binary(min_size=32, max_size=32),
    port=st.integers(1, 65535),
    topic_id=st.binary(min_size=32, max_size=32).map(lambda b: b"id=" + b),
    referrer=st.none() | st.ip_addresses(v=4).map(str),
)
def test_our_responses_match_node_layout_and_round_trip(topic, port, topic_id, referrer):
    name = wire.domain_name(topic)
    records = [wire.srv_record(name, port), wire.id_record(name, topic_id)]
    if referrer:
        records.append(wire.referrer_record("hyperswarm.local", referrer))
    data = wire.encode_response(records)
    assert data == node_style_response(name, port, topic_id, referrer)
    p, got = decoded(data)
    assert got == [describe(r) for r in records]
    assert got[0] == (name + ".", 33, 1, False, 0, 0, 0, port, "0.0.0.0")


@given(topic=st.binary(min_size=32, max_size=32))
def test_our_query_matches_node_layout(topic):
    name = wire.domain_name(topic)
    assert wire.encode_query([name]) == NODE_QUERY[:13] + name[:40].encode() + NODE_QUERY[53:]


# -- codec: malformed input ----------------------------------------------------


@given(st.binary(max_size=600))
def test_decode_raises_only_malformed_packet(data):
    try:
        wire.decode_packet(data)
    except wire.MalformedPacket as e:
        assert e.reason in {"short", "undecodable", "bad_record", "bad_txt"}


@pytest.mark.parametrize("packet", [NODE_QUERY, NODE_ANNOUNCE, NODE_ANSWER], ids=["query", "announce", "answer"])
def test_every_truncation_of_a_node_packet_is_refused(packet):
    for cut in range(len(packet)):
        with pytest.raises(wire.MalformedPacket):
            wire.decode_packet(packet[:cut])


def test_overrunning_txt_string_is_refused():
    bad = bytearray(NODE_ANNOUNCE)
    bad[-36] = 36  # first TXT string claims one byte more than the rdata holds
    with pytest.raises(wire.MalformedPacket) as e:
        wire.decode_packet(bytes(bad))
    assert e.value.reason == "bad_txt"


def test_txt_strings():
    assert wire.txt_strings(b"") == []
    assert wire.txt_strings(b"\x00") == [b""]
    assert wire.txt_strings(b"\x02ab\x01c") == [b"ab", b"c"]
    with pytest.raises(wire.MalformedPacket):
        wire.txt_strings(b"\x03ab")


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(
    base=st.sampled_from([NODE_QUERY, NODE_ANNOUNCE, NODE_ANSWER]),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 300),
)
def test_mangled_datagrams_never_raise_out_of_datagram_received(base, edits, cut):
    net = FakeNet()
    d = started(net, "127.0.0.2")
    peers = []
    d.join(TOPIC, announce_port=1, on_peer=peers.append)
    net.run()
    data = bytearray(base)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[:cut])
    d._protocol.datagramReceived(data, ("127.0.0.9", 5353))
    net.run()
    try:
        wire.decode_packet(data)
    except wire.MalformedPacket as e:
        assert d.dropped == {e.reason: 1} and peers == []
    else:
        assert sum(d.dropped.values()) == 0
    for p in peers:
        assert (p.topic, p.local, p.referrer, p.to, p.source) == (TOPIC, True, None, None, "mdns")


@given(st.binary(max_size=300))
def test_random_datagrams_are_dropped_and_counted(data):
    net = FakeNet()
    d = started(net, "127.0.0.2")
    peers = []
    d.join(TOPIC, on_peer=peers.append)
    before = sum(d.dropped.values())
    d._protocol.datagramReceived(data, ("127.0.0.9", 5353))
    try:
        wire.decode_packet(data)
    except wire.MalformedPacket as e:
        assert d.dropped[e.reason] >= 1 and sum(d.dropped.values()) == before + 1
    assert peers == []


def _rr(rtype, rdata, name=b"\x00", rclass=1, ttl=0):
    return name + rtype.to_bytes(2, "big") + rclass.to_bytes(2, "big") + ttl.to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata


def _with_records(packet, before=(), after=(), additional=()):
    """``packet`` (no questions) with extra records before/after its answers and in the additional section."""
    answers = packet[12:]
    count = int.from_bytes(packet[6:8], "big") + len(before) + len(after)
    header = packet[:6] + count.to_bytes(2, "big") + b"\x00\x00" + len(additional).to_bytes(2, "big")
    return header + b"".join(before) + answers + b"".join(after) + b"".join(additional)


# Records zeroconf does not decode (it skips them) but dns-packet 5.6.1 does:
# Node's discovery reads the SRV/TXT answers of such datagrams as usual.
# (Checked with dns-packet.decode: each gives answers [..., SRV, TXT, ...].)
_FOREIGN = {
    "opt-additional": dict(additional=[_rr(41, b"", rclass=1440)]),
    "unknown-type-before-srv": dict(before=[_rr(99, b"\x01\x02\x03\x04")]),
    "mx-after": dict(after=[_rr(15, b"\x00\x0a\x00")]),
    "caa-before-and-a-additional": dict(
        before=[_rr(257, b"\x00\x00\x00")], additional=[_rr(1, b"\x7f\x00\x00\x01")]
    ),
}


@pytest.mark.parametrize("extra", list(_FOREIGN.values()), ids=list(_FOREIGN))
def test_records_of_types_zeroconf_skips_do_not_hide_the_answers(extra):
    data = _with_records(NODE_ANNOUNCE, **extra)
    packet = wire.decode_packet(data)
    assert [r.type for r in packet.answers] == [wire.TYPE_SRV, wire.TYPE_TXT]
    d, _, peers = looking_up()
    d._protocol.datagramReceived(data, ("127.0.0.7", 5353))
    assert peers == [PeerRecord(TOPIC, "127.0.0.7", 37591, True, None, None, "mdns")]
    assert d.dropped == {}


def test_a_known_record_zeroconf_cannot_decode_still_refuses_the_datagram():
    # An SRV whose target name runs past its rdata, a record running past the
    # end: stricter than dns-packet, which reads both leniently (Buffer
    # slices past the end), but never a valid datagram from a Node peer.
    bad_srv = _rr(33, b"\x00\x00\x00\x00\x00\x01\x05ab", name=b"\x01x\x00")
    with pytest.raises(wire.MalformedPacket) as e:
        wire.decode_packet(_with_records(NODE_ANNOUNCE, after=[bad_srv, _rr(99, b"")]))
    assert e.value.reason == "bad_record"
    with pytest.raises(wire.MalformedPacket):  # a skipped record running past the end
        wire.decode_packet(_with_records(NODE_ANNOUNCE, after=[_rr(99, b"abcd")])[:-1])


# -- behaviour: Node's packets --------------------------------------------------


def test_node_answer_reports_peer_at_datagram_source():
    d, _, peers = looking_up()
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert peers == [PeerRecord(TOPIC, "127.0.0.7", 37591, True, None, None, "mdns")]


def test_answer_carrying_our_own_id_is_not_reported():
    d, t, peers = looking_up()
    t.id = NODE_ID  # as if Node's topic were ours
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert peers == []


def test_answer_for_other_names_is_ignored():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    peers = []
    d.lookup(bytes(32), peers.append)
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert peers == []


def test_node_query_is_answered_like_node_answers():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.announce(TOPIC, 37591)
    net.run()
    net.log.clear()
    d._protocol.datagramReceived(NODE_QUERY, ("127.0.0.1", 5353))
    [(src, data)] = net.log
    expected = node_style_response(NAME, 37591, t.id, referrer="127.0.0.1")
    assert data == expected


def test_query_with_our_id_as_known_answer_is_not_answered():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.announce(TOPIC, 4000)
    net.run()
    net.log.clear()
    q = wire.encode_response([wire.id_record(NAME, t.id)])
    q = b"\x00\x00\x00\x00\x00\x01" + q[6:12] + NODE_QUERY[12:] + q[12:]  # question + that TXT as answer
    p = wire.decode_packet(q)
    assert not p.is_response and len(p.answers) == 1
    d._protocol.datagramReceived(q, ("127.0.0.1", 5353))
    assert net.log == []


def test_only_srv_questions_are_answered():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    d.announce(TOPIC, 4000)
    net.run()
    net.log.clear()
    for qtype in (255, 16, 12, 1):  # ANY, TXT, PTR, A
        q = NODE_QUERY[:-4] + qtype.to_bytes(2, "big") + b"\x00\x01"
        d._protocol.datagramReceived(q, ("127.0.0.1", 5353))
    assert net.log == []
    # the QU bit does not matter to Node (it never looks at the class)
    d._protocol.datagramReceived(NODE_QUERY[:-2] + b"\x80\x01", ("127.0.0.1", 5353))
    assert len(net.log) == 1


def test_srv_target_other_than_zeros_is_the_host_verbatim():
    d, _, peers = looking_up()
    from zeroconf import DNSService

    rec = DNSService(NAME + ".", 33, 1, 0, 0, 0, 9000, "10.1.2.3.")
    d._protocol.datagramReceived(wire.encode_response([rec]), ("127.0.0.7", 5353))
    assert [(p.host, p.port) for p in peers] == [("10.1.2.3", 9000)]


def test_several_srv_answers_give_several_peers_and_share_the_first_txt():
    d, t, peers = looking_up()
    records = [wire.srv_record(NAME, 1000), wire.id_record(NAME, b"id=other"), wire.srv_record(NAME, 2000)]
    d._protocol.datagramReceived(wire.encode_response(records), ("127.0.0.7", 5353))
    assert [p.port for p in peers] == [1000, 2000]
    # Node takes the id of the first TXT for the name, for every SRV
    peers.clear()
    records[1] = wire.id_record(NAME, t.id)
    d._protocol.datagramReceived(wire.encode_response(records), ("127.0.0.7", 5353))
    assert peers == []


def test_records_in_additional_section_are_ignored():
    d, _, peers = looking_up()
    # move NODE_ANNOUNCE's two answers to the additional section
    data = NODE_ANNOUNCE[:6] + b"\x00\x00\x00\x00\x00\x02" + NODE_ANNOUNCE[12:]
    d._protocol.datagramReceived(data, ("127.0.0.7", 5353))
    assert peers == [] and sum(d.dropped.values()) == 0


def test_topics_sharing_20_bytes_both_get_the_peer_with_their_own_key():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    other = TOPIC[:20] + bytes(12)
    peers = []
    d.lookup(TOPIC, peers.append)
    d.lookup(other, peers.append)
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert sorted(p.topic for p in peers) == sorted([TOPIC, other])


# -- behaviour: schedule and self-suppression -----------------------------------


def test_lookup_queries_now_then_every_30_to_60_seconds():
    net = FakeNet()
    d = started(net, "127.0.0.2", random=random.Random(7))
    t = d.lookup(TOPIC, lambda p: None)
    sent_at = []
    orig = net.transmit

    def spy(sender, data, addr):
        sent_at.append(net.clock.seconds())
        assert data == NODE_QUERY and addr == ("224.0.0.251", 5353)
        orig(sender, data, addr)

    net.transmit = spy
    assert ready(t) is True
    t.refresh()  # immediate query, restarts the schedule
    net.run(400, step=0.25)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert len(sent_at) >= 7 and all(30 <= g < 60.25 for g in gaps)
    t.stop()
    n = len(sent_at)
    net.run(120)
    assert len(sent_at) == n


def test_announce_only_sends_one_announcement_on_next_turn_and_no_query():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.announce(TOPIC, 37591)
    assert net.log == [] and ready(t) is None
    net.clock.advance(0)
    assert ready(t) is True
    [(src, data)] = net.log
    assert data == node_style_response(NAME, 37591, t.id)
    net.run(300)
    assert len(net.log) == 1


def test_announce_and_lookup_finds_other_host_but_never_itself():
    net = FakeNet()
    a = started(net, "127.0.0.2")
    b = started(net, "127.0.0.3")
    pa, pb = [], []
    a.announce(TOPIC, 1111, lookup=True, on_peer=pa.append)
    b.announce(TOPIC, 2222, lookup=True, on_peer=pb.append)
    net.run(200)
    assert pa and {(p.host, p.port) for p in pa} == {("127.0.0.3", 2222)}
    assert pb and {(p.host, p.port) for p in pb} == {("127.0.0.2", 1111)}


def test_two_joins_on_one_instance_find_each_other():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    p1, p2 = [], []
    d.announce(TOPIC, 1111, lookup=True, on_peer=p1.append)
    d.announce(TOPIC, 2222, lookup=True, on_peer=p2.append)
    net.run(1)
    assert {p.port for p in p1} == {2222}
    assert {p.port for p in p2} == {1111}


def test_lookup_only_never_answers():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    d.lookup(TOPIC, lambda p: None)
    net.run(100)
    assert all(not wire.decode_packet(data).is_response for _, data in net.log)


def test_stopped_topic_neither_answers_nor_reports():
    net = FakeNet()
    a = started(net, "127.0.0.2")
    b = started(net, "127.0.0.3")
    peers = []
    t = a.announce(TOPIC, 1111)
    t.stop()
    lb = b.lookup(TOPIC, peers.append)
    net.run(100)
    assert peers == [] and a.sent["response"] == 0
    assert ready(lb) is True


def test_topics_joined_before_start_send_once_listening():
    net = FakeNet()
    d = MulticastDiscovery(net.reactor("127.0.0.2"), interface="127.0.0.2")
    t = d.join(TOPIC, announce_port=5000)
    net.clock.advance(0)
    assert ready(t) is None and net.log == []
    d.startService()
    assert [wire.decode_packet(x).is_response for _, x in net.log] == [False, True]
    assert ready(t) is True


def test_start_sets_socket_options_and_stop_closes():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    port = d._listening_port
    assert port.groups == [("224.0.0.251", "127.0.0.2")]
    assert port.outgoing == "127.0.0.2" and port.loopback == 1 and port.ttl == 255
    assert d.address() == ("0.0.0.0", 5353)
    t = d.lookup(TOPIC, lambda p: None)
    r = d.stopService()
    assert r.called and port.closed and t.stopped and d.address() is None


def test_on_peer_errors_are_logged_not_raised(logged_errors):
    net = FakeNet()
    d = started(net, "127.0.0.2")

    calls = []

    def boom(peer):
        calls.append(peer)
        raise RuntimeError("user bug")

    d.lookup(TOPIC, boom)
    heard = []
    d.lookup(TOPIC, heard.append)  # a second join on the name still hears the answer
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert len(calls) == 1 and len(heard) == 1
    assert d.dropped == {}
    assert [f.getErrorMessage() for f in logged_errors.take(RuntimeError)] == ["user bug"]


def test_query_collects_distinct_peers_then_stops():
    net = FakeNet()
    a = started(net, "127.0.0.2")
    b = started(net, "127.0.0.3")
    a.announce(TOPIC, 1111)
    result = b.query(TOPIC, timeout=3.0)
    net.run(2)
    assert not result.called
    net.run(2)
    assert [(p.host, p.port, p.source) for p in result.result] == [("127.0.0.2", 1111, "mdns")]
    assert b.stats()["topics"] == 0


def test_bad_arguments():
    d = MulticastDiscovery(Clock())
    with pytest.raises(ValueError):
        d.join(b"short")
    with pytest.raises(ValueError):
        d.join(TOPIC, lookup=False)
    with pytest.raises(ValueError):
        d.announce(TOPIC, 0)
    with pytest.raises(ValueError, match="Discovery passes the DHT node's bound port"):
        d.join(TOPIC, announce_port=0)
    for port in (-1, 65536):
        with pytest.raises(ValueError):
            d.join(TOPIC, announce_port=port)
    assert d.stats()["topics"] == 0
    with pytest.raises(ValueError):
        MulticastDiscovery(Clock(), interface="not-an-address")


# -- the discovery contract (IDiscoveryTopic) ------------------------------------


def test_a_join_is_an_idiscoverytopic():
    from zope.interface.verify import verifyObject

    from txhyperswarm.interfaces import IDiscoveryTopic
    from txhyperswarm.mdns import MDNSTopic

    d = started(FakeNet(), "127.0.0.2")
    t = d.join(TOPIC, announce_port=4000, lookup=False, local_address=("10.0.0.1", 4000))
    assert isinstance(t, MDNSTopic) and verifyObject(IDiscoveryTopic, t)
    assert (t.topic, t.announcing, t.lookup, t.announce_port) == (TOPIC, True, False, 4000)
    u = d.join(TOPIC)
    assert (u.announcing, u.lookup, u.announce_port) == (False, True, None)


def test_when_ready_is_a_new_deferred_per_call_firing_true_once_sent():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.join(TOPIC, announce_port=4000, lookup=True)  # query now, announcement next turn
    first, second = t.when_ready(), t.when_ready()
    assert first is not second
    second.cancel()  # one waiter's cancellation does not touch another
    second.addErrback(lambda f: f.trap(defer.CancelledError))
    assert not first.called and len(net.log) == 1  # the query does not make an announcing join ready
    net.clock.advance(0)
    assert first.result is True and ready(t) is True
    t.stop()
    assert ready(t) is True  # stays True


def test_when_ready_fires_false_when_stopped_first_and_stop_fires_none_at_once():
    net = FakeNet()
    d = MulticastDiscovery(net.reactor("127.0.0.2"), interface="127.0.0.2")  # not listening
    t = d.join(TOPIC, announce_port=4000)
    waiting = t.when_ready()
    stopped = t.stop()
    assert stopped.called and stopped.result is None
    assert waiting.result is False and ready(t) is False
    assert t.stop().result is None  # idempotent
    d.startService()
    net.run()
    assert net.log == [] and ready(t) is False  # a stopped join sends nothing, not even at start


def test_every_answer_is_reported_repeats_included_and_on_update_never_called():
    d, _, _ = looking_up()
    peers, updates = [], []
    d.join(TOPIC, on_peer=peers.append, on_update=updates.append)
    for _ in range(3):
        d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert [(p.host, p.port) for p in peers] == [("127.0.0.7", 37591)] * 3
    assert updates == []


def test_a_join_that_does_not_look_up_reports_no_peer():
    d = started(FakeNet(), "127.0.0.2")
    peers = []
    d.join(TOPIC, announce_port=4000, lookup=False, on_peer=peers.append)
    d._protocol.datagramReceived(NODE_ANSWER, ("127.0.0.7", 5353))
    assert peers == []


def test_refresh_queries_now_even_when_only_announcing_as_node():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.announce(TOPIC, 4000)
    net.run()
    assert [wire.decode_packet(x).is_response for _, x in net.log] == [True]
    t.refresh()  # Node's topic.update() restarts the mDNS loop whatever the topic
    assert [wire.decode_packet(x).is_response for _, x in net.log][1] is False
    t.stop()
    t.refresh()  # a stopped join does nothing
    net.run(120)
    assert net.clock.getDelayedCalls() == []


def test_stats():
    from zope.interface.verify import verifyObject

    from txhyperswarm.interfaces import IStatsSource

    net = FakeNet()
    d = started(net, "127.0.0.2")
    assert verifyObject(IStatsSource, d)
    d.lookup(TOPIC, lambda p: None)
    net.run()
    d._protocol.datagramReceived(b"junk", ("127.0.0.1", 5353))
    stats = d.stats()
    assert stats == {"listening": True, "topics": 1, "sent": {"query": 1}, "dropped": {"short": 1}}
    stats["sent"]["query"] += 5
    assert d.sent == {"query": 1}  # a copy
    d.stopService()
    assert d.stats()["listening"] is False and d.stats()["topics"] == 0


def test_the_interfaces_module_is_public_and_the_old_names_are_gone():
    from txhyperswarm import netif

    assert set(netif.interface_addresses()) == {a for a, _ in netif.interfaces()}
    assert netif.default_outgoing() in ("0.0.0.0", "127.0.0.1")
    import txhyperswarm.mdns as mdns

    assert not hasattr(mdns, "_interfaces")


# -- real sockets, private namespace only --------------------------------------


@pytest.fixture
def real_discovery(private_netns, reactor):
    """Makes started MulticastDiscovery services on 0.0.0.0:5353; all stopped at teardown."""
    made = []

    def make():
        d = MulticastDiscovery(reactor)
        d.startService()
        made.append(d)
        return d

    yield make
    for d in made:
        pytest_twisted.blockon(d.stopService())


@pytest_twisted.inlineCallbacks
def test_two_python_instances_on_one_host_find_each_other(real_discovery, reactor):
    a, b = real_discovery(), real_discovery()
    pa, pb = [], []
    got_a, got_b = defer.Deferred(), defer.Deferred()

    def collect(into, d):
        def on_peer(p):
            into.append(p)
            if not d.called:
                d.callback(p)
        return on_peer

    ta = a.announce(TOPIC, 41001, lookup=True, on_peer=collect(pa, got_a))
    tb = b.announce(TOPIC, 41002, lookup=True, on_peer=collect(pb, got_b))
    for d in (got_a, got_b):
        d.addTimeout(5, reactor)
    yield defer.gatherResults([got_a, got_b])
    # let the self-answers to both queries come back too
    yield deferLater(reactor, 0.3)
    assert {(p.host, p.port) for p in pa} == {("127.0.0.1", 41002)}
    assert {(p.host, p.port) for p in pb} == {("127.0.0.1", 41001)}
    assert all(p.local and p.referrer is None and p.to is None and p.source == "mdns" for p in pa + pb)
    assert ready(ta) is True and ready(tb) is True
    assert a.dropped == {} and b.dropped == {}


@pytest_twisted.inlineCallbacks
def test_one_shot_query_on_real_sockets(real_discovery):
    a, b = real_discovery(), real_discovery()
    a.announce(TOPIC, 41003)
    peers = yield b.query(TOPIC, timeout=0.5)
    assert [(p.topic, p.host, p.port) for p in peers] == [(TOPIC, "127.0.0.1", 41003)]


def deferLater(reactor, seconds):
    from twisted.internet.task import deferLater as _dl

    return _dl(reactor, seconds, lambda: None)


def test_announcement_goes_out_before_any_datagram_is_handled():
    # Node sends the announcement on process.nextTick, which runs before any
    # I/O callback: a datagram handled in between must not overtake it.
    net = FakeNet()
    d = started(net, "127.0.0.2")
    t = d.announce(TOPIC, 37591, lookup=True)
    d._protocol.datagramReceived(NODE_QUERY, ("127.0.0.1", 5353))
    kinds = [len(wire.decode_packet(x).answers) for _, x in net.log]
    assert kinds == [0, 2, 3]  # query, announcement, answer with the A record
    assert ready(t) is True
    net.run()
    assert len(net.log) == 4  # + the answer to our own looped-back query, no second announcement


def test_joins_in_one_turn_announce_every_announcing_topic_of_the_name():
    net = FakeNet()
    d = started(net, "127.0.0.2")
    d.announce(TOPIC, 1111)
    d.announce(TOPIC, 2222)
    net.clock.advance(0)
    ports = [wire.decode_packet(x).answers[0].port for _, x in net.log]
    # as Node: each topic's nextTick answers its name with every announcing
    # topic on it (one SRV+TXT pair per datagram here, see _PAIRS_PER_RESPONSE)
    assert ports == [1111, 2222, 1111, 2222]


def test_default_interfaces_joined_like_multicast_dns(monkeypatch):
    from txhyperswarm import netif

    addresses = [("127.0.0.1", True)]  # (address, internal)
    monkeypatch.setattr(netif, "interfaces", lambda: list(addresses))
    net = FakeNet()
    d = MulticastDiscovery(net.reactor("127.0.0.2"))
    d.startService()
    port = d._listening_port
    assert port.groups == [("224.0.0.251", "127.0.0.1")] and port.outgoing == "127.0.0.1"
    addresses.append(("192.0.2.7", False))  # an interface comes up: joined within 5 s
    net.clock.advance(5)
    assert port.groups[-1] == ("224.0.0.251", "192.0.2.7") and port.outgoing == "0.0.0.0"
    net.clock.advance(5)
    assert len(port.groups) == 2
    d.stopService()
    net.clock.advance(10)
    assert len(port.groups) == 2


def test_is_a_service():
    from twisted.application.service import IService
    from zope.interface.verify import verifyObject

    assert verifyObject(IService, MulticastDiscovery(Clock()))


CHILD = r"""
import json, sys
from twisted.internet import reactor
from txhyperswarm.mdns import MulticastDiscovery
topic, port = bytes.fromhex(sys.argv[1]), int(sys.argv[2])
d = MulticastDiscovery(reactor)
d.startService()
def on_peer(p):
    print(json.dumps({"event": "peer", "host": p.host, "port": p.port}), flush=True)
t = d.announce(topic, port, lookup=True, on_peer=on_peer)
t.when_ready().addCallback(lambda _: print(json.dumps({"event": "ready"}), flush=True))
reactor.run()
"""


@pytest_twisted.inlineCallbacks
def test_separate_python_processes_find_each_other(real_discovery, processes, reactor):
    child = processes.python("-c", CHILD, TOPIC.hex(), "41005")
    yield child.wait_for(lambda o: o.get("event") == "ready", timeout=10)
    d = real_discovery()
    got = defer.Deferred()
    peers = []

    def on_peer(p):
        peers.append(p)
        if not got.called:
            got.callback(p)

    d.announce(TOPIC, 41006, lookup=True, on_peer=on_peer)
    yield got.addTimeout(5, reactor)
    yield child.wait_for(lambda o: o.get("event") == "peer", timeout=5)
    yield deferLater(reactor, 0.3)
    assert {(p.host, p.port) for p in peers} == {("127.0.0.1", 41005)}
    assert {(o["host"], o["port"]) for o in child.lines if o.get("event") == "peer"} == {("127.0.0.1", 41006)}


def test_announce_with_host_puts_it_in_the_srv_target():
    net = FakeNet()
    a = started(net, "127.0.0.2")
    b = started(net, "127.0.0.3")
    peers = []
    b.lookup(TOPIC, peers.append)
    a.announce(TOPIC, 7000, "10.0.0.5")
    net.run()
    assert {(p.host, p.port) for p in peers} == {("10.0.0.5", 7000)}
    with pytest.raises(ValueError):
        a.announce(TOPIC, 7000, "not.an.address")


def test_stop_leaves_no_timer_and_no_deferred_waiting(monkeypatch):
    from txhyperswarm import netif

    monkeypatch.setattr(netif, "interfaces", lambda: [("127.0.0.1", True)])
    net = FakeNet()
    a = started(net, "127.0.0.2")
    a.announce(TOPIC, 1111)
    net.run()
    d = MulticastDiscovery(net.reactor("127.0.0.3"))  # default interfaces: the 5 s refresh loop
    d.startService()
    d.lookup(TOPIC, lambda p: None)
    d.announce(TOPIC, 2222)  # its announcement is still due (next turn)
    found = d.query(TOPIC, timeout=10.0)
    net.run(1)
    a.stopService()
    stopped = d.stopService()
    assert stopped.called
    # the one-shot query ends with what it heard so far (its own instance's
    # other join included: suppression is per join), not 9 s later
    assert {(p.host, p.port) for p in found.result} == {("127.0.0.2", 1111), ("127.0.0.3", 2222)}
    assert net.clock.getDelayedCalls() == []


def test_a_failing_announcement_never_raises_out_of_datagram_received(monkeypatch, logged_errors):
    from txhyperswarm.mdns import service

    net = FakeNet()
    d = started(net, "127.0.0.2")
    d.announce(TOPIC, 4000)

    def broken(records):
        raise RuntimeError("bug while encoding")

    monkeypatch.setattr(service, "encode_response", broken)
    # the announcement is due before this datagram is handled, and fails;
    # the query is still handled (and its answer fails the same way)
    d._protocol.datagramReceived(NODE_QUERY, ("127.0.0.1", 5353))
    assert d.dropped == {"internal_error": 2}
    d._protocol.datagramReceived(b"junk", ("127.0.0.1", 5353))
    assert d.dropped == {"internal_error": 2, "short": 1}
    assert len(logged_errors.take(RuntimeError)) == 2


def test_many_joins_before_start_all_go_out_once_listening():
    # Node queues every datagram until its socket is bound; here 70 topics
    # joined before start all send their query or announcement at start,
    # and every ready fires (none is lost to a bounded queue).
    net = FakeNet()
    d = MulticastDiscovery(net.reactor("127.0.0.2"), interface="127.0.0.2")
    lookups = [d.lookup(bytes([i]) * 32, lambda p: None) for i in range(40)]
    announces = [d.announce(bytes([100 + i]) * 32, 5000 + i) for i in range(30)]
    net.run(100)  # a while before start: re-queries fall due, nothing piles up
    assert net.log == []
    d.startService()
    net.run()
    kinds = [wire.decode_packet(x) for _, x in net.log]
    queries = {q.name for p in kinds if not p.is_response for q in p.questions}
    answered = {r.port for p in kinds if p.is_response for r in p.answers if r.type == wire.TYPE_SRV}
    assert queries == {t.name + "." for t in lookups}
    assert answered == {t.announce_port for t in announces}
    assert len(net.log) == 70
    assert all(ready(t) is True for t in lookups + announces)
    assert d.dropped == {}


def test_no_timer_runs_for_a_discovery_that_is_not_listening():
    net = FakeNet()
    d = MulticastDiscovery(net.reactor("127.0.0.2"), interface="127.0.0.2", random=random.Random(3))
    t = d.lookup(TOPIC, lambda p: None)
    t.refresh()
    net.run()
    assert net.clock.getDelayedCalls() == []  # the query loop starts with the service
    d.startService()
    net.run()  # deliver the first query (looped back)
    [call] = net.clock.getDelayedCalls()
    assert 30 <= call.getTime() - net.clock.seconds() < 60
    d.stopService()
    assert net.clock.getDelayedCalls() == []
    d.lookup(TOPIC, lambda p: None)  # joined while stopped: waits for the next start
    net.run()
    assert net.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_a_response_longer_than_8192_bytes_is_read_whole(real_discovery, reactor):
    # Node's dgram reads datagrams up to 64 KiB; a response with our answer
    # and a long record for another name (~8 500 bytes) reports the peer.
    import socket

    d = real_discovery()
    got = defer.Deferred()
    d.lookup(TOPIC, lambda p: got.called or got.callback(p))
    filler = b"".join(bytes([250]) + b"x" * 250 for _ in range(33))  # 33 strings of 250 bytes
    ours = wire.encode_response([wire.srv_record(NAME, 41007), wire.id_record(NAME, b"id=" + bytes(32))])
    big = _with_records(ours, after=[_rr(16, filler, name=b"\x05other\x0ahyperswarm\x05local\x00")])
    assert 8192 < len(big) < 9000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.sendto(big, ("224.0.0.251", 5353))
    peer = yield got.addTimeout(5, reactor)
    assert (peer.host, peer.port) == ("127.0.0.1", 41007)
    assert d.dropped == {}
