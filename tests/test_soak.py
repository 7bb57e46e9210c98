"""
The soak, one minute of it (issue 12): ten swarm peers and a DHT bootstrap
node on real sockets on 127.0.0.1 loop join / leave / connect / disconnect /
tunnel traffic (:mod:`tests.soak.workload`); then RSS growth over the second
half < 5 %, the open fds back where they started, no delayed call left
behind after ``stopService``, no error logged or counted, and work done.
The ten-minute run is ``python3 -m tests.soak --minutes 10``
(docs/reliability.rst, "Soak").
"""

from __future__ import annotations

import socket

import pytest_twisted

from tests.soak.workload import Soak

SECONDS = 60.0


def _private_netns() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


@pytest_twisted.inlineCallbacks
def test_soak_one_minute(reactor):
    # tests/conftest.py has begun logging (to nothing), so Twisted's global
    # publisher does not buffer 65,536 events (~15 MiB counted as growth)
    soak = Soak(reactor, seconds=SECONDS, seed=12, peers=10, sample_every=3.0, mdns=_private_netns())
    result = yield soak.run()
    report = result.table() + "\n" + result.report()
    print(report)
    assert result.ok, report
    f, c = result.figures, result.counts
    assert f["growth"] < 0.05 and f["fds_end"] == f["fds_start"] and not result.leftover_calls, report
    assert not result.errors, report
    # work done: every kind of it, over both transports
    assert c["joins"] >= 20 and c["leaves"] >= 10 and c["disconnects"] >= 5, report
    assert c["rounds"] >= 20 and c["tunnels"] >= 10, report
    assert c["conn_tcp_out"] + c["connect_tcp"] >= 10 and c["conn_utp_out"] + c["connect_utp"] >= 3, report
    assert c["tunnel_utp_bytes_in"] > 0 and c["tunnel_tcp_bytes_in"] > 0, report
