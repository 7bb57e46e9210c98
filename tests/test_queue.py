"""
The peer queue on a Clock (swarm.md 2.1-2.7), the Node bugs it fixes, and
deduplicate's rule on both ends of a pair of connections.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import Stage
from txhyperswarm.queue import BulkTimer, PeerQueue, QueueOptions

T1 = b"\x01" * 32
T2 = b"\x02" * 32


def record(host="10.0.0.1", port=4000, topic=T1, local=False, to=("9.9.9.9", 1)):
    return PeerRecord(topic=topic, host=host, port=port, local=local,
                      referrer=None if local else ("8.8.8.8", 49737), to=to,
                      source="mdns" if local else "dht")


class Listener:
    def __init__(self):
        self.count = 0

    def readable(self):
        self.count += 1


class Conn:
    def __init__(self):
        self.lost = 0
        self.aborted = 0

    def loseConnection(self):
        self.lost += 1

    def abortConnection(self):
        self.aborted += 1


def make(options=None, seed=0):
    clock = Clock()
    listener = Listener()
    q = PeerQueue(clock, options, listener=listener, rng=random.Random(seed))
    return clock, q, listener


def wait_for_queued(clock, q, limit=120.0):
    """Advance timer by timer until something is queued; the time it took."""
    start = clock.seconds()
    while len(q) == 0:
        calls = clock.getDelayedCalls()
        assert calls, "no timer left"
        nxt = min(c.getTime() for c in calls)
        clock.advance(max(nxt - clock.seconds(), 0) + 1e-9)
        assert clock.seconds() - start < limit, "nothing was requeued"
    return round(clock.seconds() - start, 6)


def fail_dial(q):
    info = q.shift()
    assert info is not None
    q.requeue(info)
    return info


def connect(q, tcp=True):
    info = q.shift()
    conn = Conn()
    info.connected(conn, tcp)
    return info, conn


def close(q, info):
    info.disconnected()
    return q.requeue(info)


# -- options ----------------------------------------------------------------------

def test_options_defaults_and_requeue_rule():
    o = QueueOptions()
    assert (o.requeue, o.forget_unresponsive, o.forget_banned, o.multiplex) == (
        (1.0, 5.0, 15.0), 7.5, math.inf, False)
    assert QueueOptions(requeue=[2]).requeue == (2.0, 5.0, 15.0)
    assert QueueOptions(requeue=(1, 2, 3, 4, 5)).requeue == (1.0, 2.0, 3.0)   # gotcha 15


# -- the bulk timer ---------------------------------------------------------------

def advance_to(clock, when, step=0.01):
    while clock.seconds() < when - 1e-9:
        clock.advance(step)


def test_bulk_timer_fires_on_the_second_tick():
    clock = Clock()
    fired = []
    t = BulkTimer(clock, 1.0, lambda batch: fired.append((round(clock.seconds(), 6), list(batch))))
    assert t.period == 0.66
    t.push("a")                           # fresh timer: exactly 2 periods
    advance_to(clock, 0.96)
    assert fired == []
    t.push("b")                           # mid-period: fires on the 2nd tick after it
    advance_to(clock, 1.5)
    assert fired == [(1.32, ["a"])]
    advance_to(clock, 2.5)
    assert fired == [(1.32, ["a"]), (1.98, ["b"])]   # 1.02 s after its push
    t.stop()
    assert clock.getDelayedCalls() == []


@given(st.floats(min_value=0.0, max_value=5.0))
def test_bulk_timer_delay_is_between_066_and_132(offset):
    clock = Clock()
    fired = {}
    t = BulkTimer(clock, 1.0, lambda batch: fired.update({x: clock.seconds() for x in batch}))
    t.push("warm-up")                     # the timer runs from here on
    clock.advance(offset)
    pushed = clock.seconds()
    t.push("x")
    while "x" not in fired:
        clock.advance(0.001)
    assert 0.66 - 0.002 < fired["x"] - pushed <= 1.32 + 0.002


# -- the backoff schedule -----------------------------------------------------------

def test_never_connected_peer_gets_four_attempts_then_is_forgotten():
    """0 / +1.32 / +6.6 / +19.8 s after each failure, then forgotten (swarm.md 2.7)."""
    clock, q, listener = make()
    info = q.add(record())
    delays = []
    for _ in range(3):
        fail_dial(q)
        delays.append(wait_for_queued(clock, q))
    assert delays == [1.32, 6.6, 19.8]
    assert info.priority == 0                      # tried, never connected
    fail_dial(q)                                    # 4th attempt fails: forget
    assert info.stage is Stage.FORGETTING
    clock.advance(9.8)
    assert q.add(record()) is info                 # rediscovery ignored meanwhile
    assert len(q) == 0
    clock.advance(0.2)
    assert info.stage is Stage.FORGOTTEN and q.infos() == []
    fresh = q.add(record())
    assert fresh is not info and fresh.retries == 0 and len(q) == 1


def test_requeue_slots_follow_the_options():
    clock, q, _ = make(QueueOptions(requeue=(2.0, 3.0, 4.0), forget_unresponsive=1.0))
    q.add(record())
    delays = []
    for _ in range(3):
        fail_dial(q)
        delays.append(wait_for_queued(clock, q))
    assert delays == [2.64, 3.96, 5.28]
    info = fail_dial(q)
    clock.advance(1.3)
    assert info.stage is Stage.FORGETTING
    clock.advance(0.03)
    assert info.stage is Stage.FORGOTTEN


def test_same_public_ip_peer_gets_one_attempt():
    clock, q, _ = make()
    info = q.add(record(host="5.5.5.5", to=("5.5.5.5", 1)))
    assert info.priority == 1
    fail_dial(q)
    assert info.stage is Stage.FORGETTING
    clock.advance(30)
    assert info.stage is Stage.FORGOTTEN


def test_proven_peer_reconnects_at_top_priority_after_a_stable_connection():
    clock, q, _ = make()
    q.add(record(port=1))
    info, _ = connect(q)
    other = q.add(record(port=2))
    clock.advance(60)
    assert close(q, info)
    clock.advance(1.33)
    assert len(q) == 2
    assert info.priority == 5 and q.shift() is info
    assert q.shift() is other


def test_failing_reconnects_of_a_proven_peer():
    clock, q, _ = make()
    q.add(record())
    info, _ = connect(q)
    clock.advance(60)
    close(q, info)
    prios = []
    for _ in range(3):
        wait_for_queued(clock, q)
        prios.append(info.priority)
        fail_dial(q)
    assert prios == [5, 4, 1]
    assert info.stage is Stage.FORGETTING


def test_shift_takes_the_highest_priority_first_and_is_random_within():
    firsts = set()
    for seed in range(20):
        clock, q, _ = make(seed=seed)
        q.add(record(port=1))
        q.add(record(port=2))
        q.add(record(port=3, local=True))
        assert q.shift().peer.port == 3
        firsts.add(q.shift().peer.port)
    assert firsts == {1, 2}


def test_prioritised_counts_queued_priority_two_and_up():
    clock, q, _ = make()
    q.add(record(port=1))
    q.add(record(port=2, local=True))
    q.add(record(port=3, host="5.5.5.5", to=("5.5.5.5", 9)))
    assert (len(q), q.prioritised) == (3, 2)


def test_readable_only_on_empty_to_non_empty():
    clock, q, listener = make()
    q.add(record(port=1))
    q.add(record(port=2))
    assert listener.count == 1
    q.shift()
    q.shift()
    q.add(record(port=3))
    assert listener.count == 2


# -- ban, reconnect, forget -------------------------------------------------------------

def test_banned_peer_is_never_dialled_again():
    clock, q, _ = make()
    info, conn = connect(q) if q.add(record()) else None
    info.ban()
    assert conn.aborted == 1
    assert close(q, info) is False
    assert info.stage is Stage.BANNED
    clock.advance(3600)
    assert q.add(record()) is info and len(q) == 0 and q.shift() is None


def test_banned_peer_is_forgotten_after_forget_banned():
    clock, q, _ = make(QueueOptions(forget_banned=10.0))
    q.add(record())
    info, _ = connect(q)
    info.ban()
    close(q, info)
    clock.advance(13.2)
    assert info.stage is Stage.FORGOTTEN
    assert q.add(record()) is not info and len(q) == 1


def test_ban_while_queued_takes_it_out_of_the_queue():
    clock, q, _ = make()
    info = q.add(record())
    info.ban()
    assert len(q) == 0 and info.stage is Stage.BANNED and q.shift() is None


def test_ban_while_backing_off_is_final():
    clock, q, _ = make()
    info = q.add(record())
    fail_dial(q)
    info.ban()
    clock.advance(60)
    assert info.stage is Stage.BANNED and len(q) == 0


def test_ban_while_dialling_then_the_dial_fails():
    clock, q, _ = make()
    q.add(record())
    info = q.shift()
    info.ban()
    assert q.requeue(info) is False and info.stage is Stage.BANNED


def test_reconnect_false_forgets_after_close():
    clock, q, _ = make()
    q.add(record())
    info, _ = connect(q)
    info.reconnect(False)
    assert close(q, info) is False
    assert info.stage is Stage.FORGETTING
    clock.advance(9.91)
    assert info.stage is Stage.FORGOTTEN


def test_forget_unresponsive_infinite_remembers_for_ever():
    clock, q, _ = make(QueueOptions(forget_unresponsive=math.inf))
    info = q.add(record(host="5.5.5.5", to=("5.5.5.5", 1)))
    fail_dial(q)
    clock.advance(10 ** 6)
    assert info.stage is Stage.FORGETTING and q.add(record(host="5.5.5.5", to=("5.5.5.5", 1))) is info
    assert len(q) == 0


def test_remove_forgets_now_and_aborts_the_connection():
    clock, q, _ = make()
    q.add(record())
    info, conn = connect(q)
    q.remove(record())
    assert conn.aborted == 1 and info.stage is Stage.FORGOTTEN and q.infos() == []
    assert q.requeue(info) is False       # the close that follows is absorbed


def test_backoff_on_a_live_connection_picks_a_later_slot():
    clock, q, _ = make()
    q.add(record())
    info, _ = connect(q)
    assert info.backoff() and info.backoff()
    clock.advance(60)
    close(q, info)
    assert wait_for_queued(clock, q) == 19.8


def test_destroy_stops_everything():
    clock, q, _ = make()
    q.add(record(port=1))
    fail_dial(q)
    q.add(record(port=2))
    q.destroy()
    assert clock.getDelayedCalls() == []
    assert q.add(record(port=3)) is None and q.shift() is None and len(q) == 0


# -- multiplex and merging topics ---------------------------------------------------------

def test_without_multiplex_each_topic_is_its_own_identity():
    clock, q, _ = make()
    a = q.add(record(topic=T1))
    b = q.add(record(topic=T2))
    assert a is not b and len(q) == 2
    assert (a.topics, b.topics) == ([T1], [T2])


def test_multiplex_merges_topics_of_one_address():
    clock, q, _ = make(QueueOptions(multiplex=True))
    first = record(topic=T1, local=True, to=None)
    info = q.add(first)
    heard = []
    info.on("topic", heard.append)
    assert q.add(record(topic=T2)) is info
    assert q.add(record(topic=T2)) is info
    assert info.topics == [T1, T2] and heard == [T2] and info.peer is first
    assert len(q) == 1


def test_multiplex_rediscovery_does_not_requeue():
    clock, q, _ = make(QueueOptions(multiplex=True))
    info = q.add(record(topic=T1))
    q.shift()
    q.add(record(topic=T2))
    assert len(q) == 0 and info.stage is Stage.DIALLING


def test_ipv4_mapped_address_is_one_identity():
    clock, q, _ = make()
    a = q.add(record(host="1.2.3.4"))
    b = q.add(record(host="::ffff:1.2.3.4"))
    assert a is b and len(q) == 1 and a.remote == ("1.2.3.4", 4000)


# -- the Node bugs fixed --------------------------------------------------------------------

def test_skipped_peer_of_a_left_topic_is_dialled_after_rejoin():
    """Gotcha 12: Node strands it ACTIVE for ever."""
    clock, q, _ = make()
    info = q.add(record())
    assert q.shift() is info
    q.skip(info)                           # the topic was left
    assert info.stage is Stage.FORGOTTEN
    again = q.add(record())                # re-joined, found again
    assert again is not info and q.shift() is again


def test_peer_that_closes_at_once_backs_off_then_is_forgotten():
    """Gotcha 13: Node redials it every ~1.32 s for ever."""
    clock, q, _ = make()
    info = q.add(record())
    delays = []
    for _ in range(4):
        shifted, conn = connect(q)
        assert shifted is info
        clock.advance(0.001)
        if not close(q, info):
            break
        delays.append(wait_for_queued(clock, q))
    assert delays == [1.32, 6.6, 19.8]
    assert info.stage is Stage.FORGETTING
    clock.advance(9.91)
    assert info.stage is Stage.FORGOTTEN


def test_stable_after_zero_is_nodes_endless_redial():
    clock, q, _ = make(QueueOptions(stable_after=0.0))
    info = q.add(record())
    delays = []
    for _ in range(6):
        connect(q)
        clock.advance(0.001)
        assert close(q, info)
        delays.append(wait_for_queued(clock, q))
    assert all(d <= 1.32 for d in delays)


# -- deduplicate ---------------------------------------------------------------------------

class Side:
    """One swarm: its queue, and its two connections to the other side."""

    def __init__(self, my_id, seed=0):
        self.id = my_id
        self.clock, self.q, _ = make(seed=seed)
        self.infos = {}

    def dial(self, name, tcp=True):
        self.q.add(record(host="10.0.0.2"))
        info = self.q.shift()
        info.connected(Conn(), tcp)
        self.infos[name] = info
        return info

    def accept(self, name, tcp=True):
        info = self.q.accepted(Conn(), ("10.0.0.2", 5555), tcp=tcp)
        self.infos[name] = info
        return info

    def dedup(self, name, other_id):
        return self.infos[name].deduplicate(self.id, other_id)


def run_pair(id_a, id_b, order_a, order_b, tcp_ab=True, tcp_ba=True):
    """A dials B ("ab") and B dials A ("ba") at once; each side then
    deduplicates its two connections in the given order."""
    a, b = Side(id_a), Side(id_b, seed=1)
    a.dial("ab", tcp_ab)
    b.accept("ab", tcp_ab)
    b.dial("ba", tcp_ba)
    a.accept("ba", tcp_ba)
    for name in order_a:
        a.dedup(name, id_b)
    for name in order_b:
        b.dedup(name, id_a)
    alive = lambda side: {n for n, i in side.infos.items() if not i.duplicate}
    return a, b, alive(a), alive(b)


@pytest.mark.parametrize("order_a", [("ab", "ba"), ("ba", "ab")])
@pytest.mark.parametrize("order_b", [("ab", "ba"), ("ba", "ab")])
@pytest.mark.parametrize("smaller", ["a", "b"])
def test_dedup_keeps_the_connection_dialled_by_the_smaller_id(order_a, order_b, smaller):
    low, high = b"\x01" * 32, b"\x02" * 32
    id_a, id_b = (low, high) if smaller == "a" else (high, low)
    a, b, alive_a, alive_b = run_pair(id_a, id_b, order_a, order_b)
    keep = "ab" if smaller == "a" else "ba"
    assert alive_a == alive_b == {keep}
    # The client side of the dropped connection is soft-banned (FIN); the
    # server side is left open for the remote to end.
    loser_side = b if smaller == "a" else a
    lost = "ba" if smaller == "a" else "ab"
    assert loser_side.infos[lost].client and loser_side.infos[lost].banned
    assert not (a if smaller == "a" else b).infos[lost].banned


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=33), st.binary(min_size=1, max_size=33),
       st.permutations(["ab", "ba"]), st.permutations(["ab", "ba"]),
       st.booleans(), st.booleans())
def test_dedup_both_sides_agree(id_a, id_b, order_a, order_b, tcp_ab, tcp_ba):
    if id_a == id_b:
        return
    a, b, alive_a, alive_b = run_pair(id_a, id_b, order_a, order_b, tcp_ab, tcp_ba)
    assert alive_a == alive_b and len(alive_a) == 1
    if tcp_ab == tcp_ba:
        assert alive_a == ({"ab"} if id_a < id_b else {"ba"})


def test_dedup_tcp_beats_utp():
    # a < b would keep "ab", but "ab" is uTP and "ba" TCP.
    a, b, alive_a, alive_b = run_pair(b"\x01" * 32, b"\x02" * 32, ("ab", "ba"), ("ab", "ba"),
                                      tcp_ab=False, tcp_ba=True)
    assert alive_a == alive_b == {"ba"}


def test_dedup_first_call_registers_and_returns_false():
    side = Side(b"\x01" * 32)
    info = side.dial("x")
    assert side.dedup("x", b"\x02" * 32) is False
    assert side.dedup("x", b"\x02" * 32) is False      # again: still not a duplicate
    assert not info.duplicate and not info.banned


def test_dedup_connected_to_self():
    side = Side(b"\x07" * 32)
    info = side.dial("x")
    conn = info.connection
    assert side.dedup("x", b"\x07" * 32) is True
    assert info.banned and conn.aborted == 1


def test_dedup_without_a_connection_is_false():
    side = Side(b"\x01" * 32)
    info = side.dial("x")
    info.disconnected()
    assert side.dedup("x", b"\x02" * 32) is False


def test_dedup_emits_duplicate_and_ends_the_client_loser():
    b = Side(b"\x02" * 32)
    b.accept("ab")
    client = b.dial("ba")
    heard = []
    client.on("duplicate", lambda: heard.append(True))
    b.dedup("ab", b"\x01" * 32)
    conn = client.connection
    assert b.dedup("ba", b"\x01" * 32) is True
    assert heard == [True] and conn.lost == 1 and conn.aborted == 0


def dedup_loser():
    """B (larger id) keeps A's connection ("ab", server side) and drops its
    own dial ("ba")."""
    b = Side(b"\x02" * 32)
    survivor = b.accept("ab")
    loser = b.dial("ba")
    b.dedup("ab", b"\x01" * 32)
    b.dedup("ba", b"\x01" * 32)
    assert loser.banned and loser.duplicate
    return b, survivor, loser


def test_dedup_loser_unbanned_when_the_survivor_closes_after_it():
    """Gotcha 18: Node leaves the loser banned for ever."""
    b, survivor, loser = dedup_loser()
    assert b.q.requeue(loser) is False     # its FIN-ended connection closed
    assert loser.stage is Stage.BANNED
    survivor.disconnected()                 # the surviving connection closes
    assert not loser.banned and loser.stage is Stage.QUEUED
    assert b.q.shift() is loser


def test_dedup_loser_unbanned_when_the_survivor_closes_first():
    b, survivor, loser = dedup_loser()
    survivor.disconnected()
    assert not loser.banned and loser.stage is Stage.CLOSED
    assert b.q.requeue(loser) is True       # backs off as any closed peer
    wait_for_queued(b.clock, b.q)
    assert b.q.shift() is loser


def test_dedup_loser_stays_banned_when_the_survivor_was_banned():
    b, survivor, loser = dedup_loser()
    b.q.requeue(loser)
    survivor.ban()
    b.clock.advance(3600)
    assert loser.banned and loser.stage is Stage.BANNED and len(b.q) == 0


def test_dedup_entry_dropped_on_disconnect():
    side = Side(b"\x01" * 32)
    first = side.dial("x")
    side.dedup("x", b"\x02" * 32)
    first.disconnected()
    second = side.accept("y")
    assert side.dedup("y", b"\x02" * 32) is False and not second.duplicate


# -- properties ------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5), st.sampled_from([T1, T2]),
                  st.booleans(), st.booleans()),
        st.tuples(st.just("shift"), st.sampled_from(["fail", "connect", "skip"])),
        st.tuples(st.just("close"), st.integers(0, 5), st.floats(0, 10)),
        st.tuples(st.just("ban"), st.integers(0, 5)),
        st.tuples(st.just("backoff"), st.integers(0, 5)),
        st.tuples(st.just("advance"), st.floats(0, 30)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans(), st.integers(0, 3))
def test_never_hands_out_a_banned_peer_and_every_peer_is_handed_out_or_forgotten(
        script, multiplex, seed):
    clock, q, _ = make(QueueOptions(multiplex=multiplex, forget_banned=50.0), seed=seed)
    added, handed, banned, connected, pool = set(), set(), set(), [], []

    def shift():
        info = q.shift()
        if info is not None:
            assert not info.banned and info.stage is Stage.DIALLING
            handed.add(info)
        return info

    for op in script:
        kind = op[0]
        if kind == "add":
            _, port, topic, local, mapped = op
            host = "::ffff:10.0.0.%d" % port if mapped else "10.0.0.%d" % port
            info = q.add(record(host=host, port=4000 + port, topic=topic, local=local))
            added.add(info)
            pool.append(info)
        elif kind == "shift":
            info = shift()
            if info is None:
                continue
            if op[1] == "fail":
                q.requeue(info)
            elif op[1] == "skip":
                q.skip(info)
            else:
                info.connected(Conn(), True)
                connected.append(info)
        elif kind == "close" and connected:
            info = connected.pop(op[1] % len(connected))
            clock.advance(op[2])
            info.disconnected()
            q.requeue(info)
        elif kind == "ban" and pool:
            victim = pool[op[1] % len(pool)]
            if victim.stage is not Stage.FORGOTTEN:
                banned.add(victim)
            victim.ban()
        elif kind == "backoff" and pool:
            pool[op[1] % len(pool)].backoff()
        elif kind == "advance":
            clock.advance(op[1])
        assert all(i.stage is Stage.QUEUED and not i.banned for i in q_infos(q))

    # Settle: close every connection, fail every dial, let the timers run.
    for info in connected:
        info.disconnected()
        q.requeue(info)
    for _ in range(200):
        while True:
            info = shift()
            if info is None:
                break
            q.requeue(info)
        clock.advance(5.0)
    for info in added:
        assert info.stage is Stage.FORGOTTEN, info
        assert info in handed or info in banned, info
    assert len(q) == 0
    q.destroy()
    assert clock.getDelayedCalls() == []


def q_infos(q):
    return [i for i in q.infos() if i.stage is Stage.QUEUED]


def test_unbanned_loser_connects_again_as_a_fresh_connection():
    b, survivor, loser = dedup_loser()
    b.q.requeue(loser)
    survivor.disconnected()
    assert b.q.shift() is loser
    loser.connected(Conn(), True)
    assert not loser.duplicate and not loser.banned and loser.topics == [T1]


def test_queue_provides_its_interfaces():
    from zope.interface.verify import verifyObject
    from txhyperswarm.peerinfo import IPeerOwner
    clock, q, _ = make()
    assert verifyObject(IPeerOwner, q)


def test_forgotten_while_dialling_drops_the_late_connection():
    clock, q, _ = make()
    q.add(record())
    info = q.shift()
    q.remove(info)
    assert info.banned                     # as Node's destroy()
    conn = Conn()
    info.connected(conn, True)             # the dial completes afterwards
    assert conn.aborted == 1 and info.stage is Stage.FORGOTTEN
    assert q.requeue(info) is False and q.add(record()) is not info


def test_direct_info_is_never_queued():
    clock, q, _ = make()
    conn = Conn()
    info = q.direct(record(), conn, tcp=True)
    assert (info.client, info.stage, info.type, info.topics) == (True, Stage.CONNECTED, "tcp", [T1])
    assert q.infos() == [] and len(q) == 0
    info.disconnected()
    assert q.requeue(info) is False and info.stage is Stage.CLOSED
    clock.advance(60)
    assert len(q) == 0 and q.add(record()) is not info


def test_direct_info_deduplicates_and_bans():
    clock, q, _ = make()
    kept = q.accepted(Conn(), ("10.0.0.1", 9), tcp=True)
    conn = Conn()
    raw = q.direct(record(), conn, tcp=True)
    assert kept.deduplicate(b"\x02" * 32, b"\x01" * 32) is False
    assert raw.deduplicate(b"\x02" * 32, b"\x01" * 32) is True   # larger id: its dial loses
    assert conn.lost == 1 and raw.banned
