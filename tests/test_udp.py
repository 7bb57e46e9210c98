"""UDPSocket: the datagram split between uTP and the DHT, on real loopback sockets."""

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from txhyperswarm.udp import UDPSocket, is_utp_datagram

# Captured first bytes (dht.md 3.1, utp.md 6.1): a dht-rpc message and a uTP SYN.
DHT_FIND_NODE = bytes.fromhex("5801080110b1b70252067f0000012711")
UTP_SYN = bytes.fromhex("41000000") + bytes(16)


@pytest.mark.parametrize(
    "data, utp",
    [
        (UTP_SYN, True),
        (DHT_FIND_NODE + bytes(10), False),  # 0x58: version nibble 8
        (b"\x08" + bytes(30), False),  # pre-version dht-rpc
        (UTP_SYN[:19], False),  # shorter than the uTP header
        (b"\x51" + bytes(19), False),  # type 5 is not uTP
        (b"\x41\x03" + bytes(18), False),  # extension byte 3 is not uTP
        (b"\x01\x02" + bytes(18), True),  # ST_DATA, SACK extension
    ],
)
def test_split_rule_is_libutps(data, utp):
    assert is_utp_datagram(data) is utp


@given(st.binary(min_size=0, max_size=24) | st.binary(min_size=20, max_size=24).map(lambda b: bytes([b[0] & 0x4F | 0x01]) + b[1:]))
def test_the_sockets_inlined_split_is_is_utp_datagram(data):
    # UDPSocket inlines the rule on its per-datagram path: it must not drift.
    sides = []
    udp = UDPSocket()
    udp.set_utp_receiver(lambda d, a: sides.append("utp"))
    udp.set_dht_receiver(lambda d, a: sides.append("dht"))
    udp.datagramReceived(data, ("127.0.0.1", 1))
    assert sides == ["utp" if is_utp_datagram(data) else "dht"]


@pytest_twisted.inlineCallbacks
def test_datagrams_reach_their_side_over_loopback(reactor):
    a = UDPSocket(reactor, host="127.0.0.1")
    b = UDPSocket(reactor, host="127.0.0.1")
    got = {"dht": [], "utp": []}
    done = defer.Deferred()

    def record(side):
        def receive(data, addr):
            got[side].append((data, addr))
            if len(got["dht"]) + len(got["utp"]) == 2 and not done.called:
                done.callback(None)
        return receive

    b.set_dht_receiver(record("dht"))
    b.set_utp_receiver(record("utp"))
    a.listen()
    b.listen()
    a_addr = a.address()
    try:
        a.send(UTP_SYN, b.address())
        a.send(DHT_FIND_NODE, b.address())
        yield done.addTimeout(5, reactor)
    finally:
        yield a.close()
        yield b.close()
    assert got["utp"] == [(UTP_SYN, a_addr)]
    assert got["dht"] == [(DHT_FIND_NODE, a_addr)]


def test_send_when_closed_is_counted(reactor):
    s = UDPSocket(reactor, host="127.0.0.1")
    assert s.send(b"x", ("127.0.0.1", 9)) is False
    assert s.dropped["send_closed"] == 1


@pytest.mark.parametrize(
    "data, addr",
    [
        (b"x" * 70000, ("127.0.0.1", 9)),  # over the UDP maximum
        (b"x", ("localhost", 9)),  # Twisted wants an address, not a name
    ],
)
@pytest_twisted.inlineCallbacks
def test_a_datagram_the_kernel_refuses_is_dropped_not_raised(reactor, data, addr):
    s = UDPSocket(reactor, host="127.0.0.1")
    s.listen()
    try:
        assert s.send(data, addr) is False
        assert s.dropped["send_error"] == 1
    finally:
        yield s.close()


@pytest_twisted.inlineCallbacks
def test_bytes_are_counted_on_both_paths_and_both_sides(reactor):
    a = UDPSocket(reactor, host="127.0.0.1")
    b = UDPSocket(reactor, host="127.0.0.1")
    arrived = defer.Deferred()
    got = []

    def receive(data, addr):
        got.append(data)
        if len(got) == 2:
            arrived.callback(None)

    b.set_dht_receiver(receive)
    b.set_utp_receiver(receive)
    a.listen()
    b.listen()
    try:
        assert a.send(DHT_FIND_NODE, b.address())
        assert a.send_to_address(UTP_SYN, b.address())
        yield arrived.addTimeout(5, reactor)
    finally:
        yield a.close()
        yield b.close()
    assert a.bytes_sent == b.bytes_received == len(DHT_FIND_NODE) + len(UTP_SYN)


@pytest_twisted.inlineCallbacks
def test_receive_buffer_size_is_what_the_kernel_granted(reactor):
    s = UDPSocket(reactor, host="127.0.0.1", buffer_size=1 << 20)
    assert s.receive_buffer_size() is None  # not bound
    s.listen()
    try:
        granted = s.receive_buffer_size()
        # Linux doubles what is asked, capped by net.core.rmem_max
        with open("/proc/sys/net/core/rmem_max") as f:
            cap = int(f.read())
        assert granted == 2 * min(1 << 20, cap)
    finally:
        yield s.close()


def test_datagrams_for_a_side_nobody_attached_are_counted(reactor):
    s = UDPSocket(reactor, host="127.0.0.1")
    s.datagramReceived(UTP_SYN, ("127.0.0.1", 9))
    s.datagramReceived(DHT_FIND_NODE, ("127.0.0.1", 9))
    assert s.dropped["no_utp"] == 1 and s.dropped["no_dht"] == 1
    got = []
    s.set_utp_receiver(lambda data, addr: got.append(data))
    s.datagramReceived(UTP_SYN, ("127.0.0.1", 9))
    s.set_utp_receiver(None)  # detached again
    s.datagramReceived(UTP_SYN, ("127.0.0.1", 9))
    assert got == [UTP_SYN] and s.dropped["no_utp"] == 2


def test_stats_are_a_copy_of_the_live_figures(reactor):
    from zope.interface.verify import verifyObject

    from txhyperswarm.interfaces import IStatsSource

    s = UDPSocket(reactor, host="127.0.0.1")
    verifyObject(IStatsSource, s)
    s.datagramReceived(UTP_SYN, ("127.0.0.1", 9))
    assert s.send(b"x", ("127.0.0.1", 9)) is False
    stats = s.stats()
    assert stats == {
        "bytes_received": len(UTP_SYN),
        "bytes_sent": 0,
        "dropped": {"no_utp": 1, "send_closed": 1},
    }
    stats["dropped"]["no_utp"] += 1
    assert s.stats()["dropped"]["no_utp"] == 1


def test_a_receiver_that_raises_is_counted_and_logged(reactor, logged_errors):
    s = UDPSocket(reactor, host="127.0.0.1")

    def broken(data, addr):
        raise ZeroDivisionError("bug")

    s.set_dht_receiver(broken)
    s.datagramReceived(DHT_FIND_NODE, ("127.0.0.1", 9))
    assert s.dropped["receiver_error"] == 1
    assert len(logged_errors.take(ZeroDivisionError)) == 1
