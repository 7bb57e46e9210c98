"""The peer-record store: record-cache's expiry and sampling, plus our caps."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from txhyperswarm.dht.records import (
    MAX_LOCAL_PEERS,
    MAX_REMOTE_PEERS,
    RecordStore,
    local_key,
    remote_key,
)
from txhyperswarm.dht.messages import encode_peer

TOPIC = b"\x11" * 32
OTHER = b"\x22" * 32


def rec(host: str, port: int) -> bytes:
    return encode_peer(host, port)


def store(clock=None, **kw) -> RecordStore:
    return RecordStore(clock or Clock(), random=random.Random(1), **kw)


def test_keys_are_nodes_strings():
    assert remote_key(TOPIC) == "11" * 32
    assert local_key(TOPIC, bytes.fromhex("c0a801050fa0")) == "11" * 32 + "@local.c0a8"


def test_announce_then_lookup_returns_the_record():
    s = store()
    s.announce(TOPIC, rec("127.0.0.1", 4000), "127.0.0.1")
    remote, local = s.lookup(TOPIC, rec("127.0.0.2", 9))
    assert remote == [rec("127.0.0.1", 4000)]
    assert local == []
    assert s.lookup(OTHER, rec("127.0.0.2", 9)) == ([], [])


def test_lookup_removes_the_askers_own_record():
    s = store()
    s.announce(TOPIC, rec("127.0.0.1", 4000), "127.0.0.1")
    s.announce(TOPIC, rec("127.0.0.2", 4000), "127.0.0.2")
    remote, _ = s.lookup(TOPIC, rec("127.0.0.1", 4000))
    assert remote == [rec("127.0.0.2", 4000)]


def test_local_records_are_scoped_by_the_first_two_octets():
    s = store()
    lan_a = encode_peer("192.168.1.5", 4000)
    s.announce(TOPIC, rec("127.0.0.1", 4000), "127.0.0.1", lan_a)
    # an asker on 192.168.x.x sees the 4-byte suffix
    _, local = s.lookup(TOPIC, rec("127.0.0.9", 1), encode_peer("192.168.7.7", 1))
    assert local == [bytes.fromhex("01050fa0")]
    # an asker on 10.0.x.x, or without a LAN address, does not
    assert s.lookup(TOPIC, rec("127.0.0.9", 1), encode_peer("10.0.7.7", 1))[1] == []
    assert s.lookup(TOPIC, rec("127.0.0.9", 1))[1] == []
    # the asker's own LAN record is removed
    assert s.lookup(TOPIC, rec("127.0.0.9", 1), lan_a)[1] == []


def test_unannounce_removes_both_records():
    s = store()
    lan = encode_peer("192.168.1.5", 4000)
    s.announce(TOPIC, rec("127.0.0.1", 4000), "127.0.0.1", lan)
    assert len(s) == 2
    s.unannounce(TOPIC, rec("127.0.0.1", 4000), lan)
    assert len(s) == 0
    assert s.lookup(TOPIC, rec("127.0.0.9", 1), encode_peer("192.168.0.1", 1)) == ([], [])


def test_duplicate_announces_store_one_record():
    s = store()
    for _ in range(5):
        s.announce(TOPIC, rec("127.0.0.1", 4000), "127.0.0.1")
    assert len(s) == 1
    assert s.count_for_ip("127.0.0.1") == 1


def test_record_lives_8_to_16_minutes_after_its_last_announce():
    clock = Clock()
    s = store(clock)
    assert s.rotate_interval == 480
    clock.advance(479)  # announced just before the first rotation: lives 8 min
    s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
    clock.advance(1)
    assert len(s) == 1  # now stale
    clock.advance(479)
    assert len(s) == 1
    clock.advance(1)
    assert len(s) == 0  # 480 s after the announce

    s.announce(TOPIC, rec("127.0.0.1", 2), "127.0.0.1")  # right after a rotation: 16 min
    clock.advance(16 * 60 - 1)
    assert len(s) == 1
    clock.advance(1)
    assert len(s) == 0


def test_reannounce_keeps_a_record_alive():
    clock = Clock()
    s = store(clock)
    for _ in range(10):  # every 5 minutes for 50 minutes, as discovery's minimum
        s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
        clock.advance(300)
        assert s.lookup(TOPIC, rec("127.0.0.9", 1))[0] == [rec("127.0.0.1", 1)]
    # the guarantee is 8 minutes (discovery waits 5-10, so a record can lapse
    # for a while, in Node too)
    for _ in range(5):
        s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
        clock.advance(480)
        assert len(s) == 1


def test_a_long_idle_gap_drops_everything():
    clock = Clock()
    s = store(clock)
    s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
    clock.advance(10 * 3600)
    assert len(s) == 0
    s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
    clock.advance(479)  # rotation phase stays on the 480 s grid
    assert len(s) == 1


def test_lookup_samples_at_most_128_with_at_most_32_local():
    s = store(max_per_ip=10_000, max_per_topic=10_000)
    lan_prefix = "10.0."
    for i in range(300):
        host = f"127.0.{i // 250}.{i % 250 + 1}"
        s.announce(TOPIC, rec(host, 1000 + i), host, encode_peer(f"{lan_prefix}{i // 250}.{i % 250 + 1}", 1000 + i))
    remote, local = s.lookup(TOPIC, rec("127.9.9.9", 1), encode_peer("10.0.200.200", 9))
    assert len(local) == MAX_LOCAL_PEERS
    assert len(remote) == MAX_REMOTE_PEERS - MAX_LOCAL_PEERS
    assert len(set(remote)) == len(remote)
    remote, local = s.lookup(TOPIC, rec("127.9.9.9", 1))
    assert len(remote) == MAX_REMOTE_PEERS and local == []


def test_sampling_is_uniform_enough():
    s = RecordStore(Clock())
    records = [rec("127.0.0.1", p) for p in range(1, 201)]
    for r in records:
        s.add("k", r, "127.0.0.%d" % (r[-1] % 200 + 1))
    seen = set()
    for _ in range(40):
        seen.update(s.get("k", 10))
    assert len(seen) > 150  # 400 picks of 200: a fixed subset would stay at 10


def test_per_ip_cap_refuses_new_records_and_evicts_nothing():
    s = store(max_per_ip=3)
    for port in range(1, 4):
        assert s.announce(TOPIC, rec("127.0.0.1", port), "127.0.0.1")
    assert not s.announce(TOPIC, rec("127.0.0.1", 4), "127.0.0.1")
    assert s.refused["ip-cap"] == 1
    assert s.count_for_ip("127.0.0.1") == 3
    assert s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")  # refresh is fine
    assert s.announce(TOPIC, rec("127.0.0.2", 1), "127.0.0.2")  # other IPs unaffected
    assert len(s) == 4


def test_per_ip_cap_counts_local_records():
    s = store(max_per_ip=2)
    assert s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1", encode_peer("10.0.0.1", 1))
    assert not s.announce(TOPIC, rec("127.0.0.1", 2), "127.0.0.1", encode_peer("10.0.0.1", 2))
    assert s.count_for_ip("127.0.0.1") == 2


def test_per_topic_cap_refuses_new_records():
    s = store(max_per_topic=5)
    for i in range(1, 8):
        s.announce(TOPIC, rec(f"127.0.0.{i}", 1), f"127.0.0.{i}")
    assert s.count_for_topic(TOPIC) == 5
    assert s.refused["topic-cap"] == 2
    assert s.announce(OTHER, rec("127.0.0.7", 1), "127.0.0.7")
    # the first five stay: nobody was evicted
    assert sorted(s.get(remote_key(TOPIC))) == sorted(rec(f"127.0.0.{i}", 1) for i in range(1, 6))


def test_total_cap_evicts_the_oldest_stale_first():
    clock = Clock()
    s = store(clock, max_records=4)
    s.add("a", b"1", "127.0.0.1")
    s.add("a", b"2", "127.0.0.1")
    clock.advance(480)  # 1, 2 stale
    s.add("a", b"3", "127.0.0.1")
    s.add("a", b"4", "127.0.0.1")
    s.add("a", b"5", "127.0.0.1")  # evicts 1
    assert sorted(s.get("a")) == [b"2", b"3", b"4", b"5"]
    s.add("a", b"2", "127.0.0.1")  # refresh 2 -> fresh; nothing evicted
    s.add("a", b"6", "127.0.0.1")  # no stale left: evicts the oldest fresh, 3
    assert sorted(s.get("a")) == [b"2", b"4", b"5", b"6"]
    assert s.refused["evicted"] == 2


def test_expired_records_release_their_ip_quota():
    clock = Clock()
    s = store(clock, max_per_ip=2)
    s.announce(TOPIC, rec("127.0.0.1", 1), "127.0.0.1")
    s.announce(TOPIC, rec("127.0.0.1", 2), "127.0.0.1")
    clock.advance(960)
    assert s.announce(TOPIC, rec("127.0.0.1", 3), "127.0.0.1")


# -- property: the caps hold under any sequence ------------------------------

_ips = st.sampled_from([f"127.0.0.{i}" for i in range(1, 7)])
_ops = st.lists(
    st.tuples(
        st.sampled_from(["announce", "unannounce", "lookup", "tick"]),
        st.sampled_from([TOPIC, OTHER, b"\x33" * 32]),
        _ips,
        st.integers(1, 12),
        st.booleans(),
        st.integers(0, 500),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(1, 20), st.integers(1, 15), st.integers(1, 10))
def test_caps_hold_under_random_sequences(ops, max_records, max_per_topic, max_per_ip):
    clock = Clock()
    s = RecordStore(clock, max_records=max_records, max_per_topic=max_per_topic, max_per_ip=max_per_ip,
                    random=random.Random(0))
    for op, topic, ip, port, with_lan, dt in ops:
        r = rec(ip, port)
        lan = encode_peer(f"10.1.0.{port}", port) if with_lan else None
        if op == "announce":
            s.announce(topic, r, ip, lan)
        elif op == "unannounce":
            s.unannounce(topic, r, lan)
            assert r not in s.lookup(topic, rec("127.9.9.9", 1))[0]
        elif op == "lookup":
            remote, local = s.lookup(topic, r, lan)
            assert r not in remote
            assert len(remote) + len(local) <= MAX_REMOTE_PEERS
            assert len(set(remote)) == len(remote)
        else:
            clock.advance(dt)
        assert len(s) <= max_records
        for i in range(1, 7):
            assert s.count_for_ip(f"127.0.0.{i}") <= max_per_ip
        for t in (TOPIC, OTHER, b"\x33" * 32):
            assert s.count_for_topic(t) <= max_per_topic
        assert len(s) == sum(s.count_for_topic(t) for t in (TOPIC, OTHER, b"\x33" * 32))
    clock.advance(2 * s.rotate_interval)
    assert len(s) == 0
