"""
One UDP port, two protocols at once: a DHT node answers pings while a uTP
transfer from utp-native runs to the same port (as in Node's hyperswarm,
where dht-rpc and utp-native share one socket).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, error

from tests.utp.streams import OneFactory, Sink
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp import UTPSocket

SIZE = 64 * 1024 * 1024


@pytest_twisted.inlineCallbacks
def test_dht_pings_answered_during_a_utp_transfer_on_the_same_port(reactor, node, processes):
    udp = UDPSocket(reactor, host="127.0.0.1")
    udp.listen()
    dht = DHTNode(reactor, bootstrap=[], udp=udp)
    dht.startService()
    utp = UTPSocket(reactor, udp)
    pinger = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    pinger.startService()
    try:
        sink = Sink()
        utp.listen(OneFactory(sink))
        peer = processes.node("utp_peer.js", "connect", "127.0.0.1", str(udp.port), f"source:{SIZE}")
        yield peer.wait_for(lambda o: o.get("event") == "connect")
        during = []  # pings answered while the transfer was under way
        answered = []

        @defer.inlineCallbacks
        def pinging():
            for _ in range(2000):
                if sink.done.called:
                    return
                reply = yield pinger.ping("127.0.0.1", udp.port).addTimeout(10, reactor)
                answered.append(reply)
                if 0 < sink.count < SIZE:
                    during.append(sink.count)

        yield defer.gatherResults([pinging() for _ in range(4)], consumeErrors=True)
        reason = yield sink.done.addTimeout(60, reactor)
        print(f"\n{len(answered)} pings answered, {len(during)} while {SIZE >> 20} MiB of uTP were arriving")
        assert isinstance(reason, error.ConnectionDone), reason
        assert sink.count == SIZE
        sent = yield peer.wait_for(lambda o: o.get("event") == "sent")
        assert sink.hash.hexdigest() == sent["sha256"]
        assert all(r.id == dht.id for r in answered)
        assert len(during) >= 5
        assert udp.dropped["receiver_error"] == 0
    finally:
        yield utp.close()
        yield pinger.stopService()
        yield dht.stopService()
        yield udp.close()
