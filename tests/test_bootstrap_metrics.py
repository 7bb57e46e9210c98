"""A ``twist hyperswarm --bootstrap-node`` reports the peer records it holds in ``/metrics``."""

from __future__ import annotations

import sys

import pytest_twisted
import treq

from tests.harness import free_port, metric_samples


@pytest_twisted.inlineCallbacks
def test_a_bootstrap_nodes_metrics_show_its_records(processes, reactor):
    from txhyperswarm.dht.node import DHTNode
    from txhyperswarm.dht.peers import announce

    port, status = free_port(), free_port()
    boot = processes.spawn(
        "twist",
        [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", "--bootstrap-node",
         "--host", "127.0.0.1", "--port", str(port), "--status-http", f"tcp:port={status}:interface=127.0.0.1"],
    )
    yield boot.wait_for(lambda o: "listening" in o.get("_text", ""), timeout=20)
    client = DHTNode(reactor, bootstrap=[("127.0.0.1", port)], ephemeral=True, host="127.0.0.2", port=0)
    client.startService()
    try:
        yield client.bootstrapped()
        topic = announce(client, b"t" * 32, 4242)
        assert (yield topic.when_ready()) is True
        s = metric_samples((yield (yield treq.get(f"http://127.0.0.1:{status}/metrics")).text()))
        yield topic.stop()
    finally:
        yield client.stopService()
    assert s[("hyperswarm_dht_records", ())] == 1
    assert s[("hyperswarm_dht_records_largest_topic", ())] == 1
    assert s[("hyperswarm_dht_records_largest_address", ())] == 1
    assert ("hyperswarm_dht_records_refused_total", (("reason", "ip-cap"),)) in s
    assert (yield boot.stop(grace=5.0)) == 0
