"""
``hyperswarm lookup`` and ``hyperswarm announce`` as real processes, against
a ``twist hyperswarm --bootstrap-node`` process and Node peers (DHT), and
against a Node hyperswarm on the LAN (mDNS, private namespace only).
"""

import sys

import pytest
import pytest_twisted

from tests.harness import free_port
from tests.test_cli import TOPIC, cli as _cli


def test_lookup_with_no_bootstrap_and_no_mdns_fails_with_exit_1():
    result = _cli("lookup", TOPIC, "--bootstrap", "none", "--no-mdns")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "DHT walk failed" in result.stderr


@pytest_twisted.inlineCallbacks
def test_cli_announce_is_found_by_node_and_gone_after_sigterm(processes, node, twist_bootstrap_node):
    boot = f"127.0.0.1:{twist_bootstrap_node[1]}"
    announcer = processes.python("-m", "txhyperswarm.cli", "announce", TOPIC, "--port", "4000",
                                 "--bootstrap", boot, "--no-mdns")
    line = yield announcer.wait_for(lambda o: "announced" in o, timeout=30)
    assert line == {"topic": TOPIC, "announced": True}

    js = processes.node("peers_node.js", f'{{"bootstrap": ["{boot}"], "ephemeral": true}}')
    yield js.wait_for(lambda o: o.get("event") == "ready", timeout=30)
    js.send({"cmd": "lookup", "topic": TOPIC, "id": 1})
    done = yield js.wait_for(lambda o: o.get("event") == "lookup-done" and o.get("id") == 1, timeout=30)
    assert [(p["host"], p["port"]) for p in done["peers"]] == [("127.0.0.1", 4000)]
    assert done["peers"][0]["referrer"] == boot

    announcer.signal("TERM")
    assert (yield announcer.ended) == 0

    js.send({"cmd": "lookup", "topic": TOPIC, "id": 2})
    done = yield js.wait_for(lambda o: o.get("event") == "lookup-done" and o.get("id") == 2, timeout=30)
    assert done["peers"] == []


@pytest_twisted.inlineCallbacks
def test_cli_lookup_prints_a_node_announce(processes, node, twist_bootstrap_node):
    boot = f"127.0.0.1:{twist_bootstrap_node[1]}"
    js = processes.node("peers_node.js", f'{{"bootstrap": ["{boot}"]}}')
    yield js.wait_for(lambda o: o.get("event") == "ready", timeout=30)
    js.send({"cmd": "announce", "topic": TOPIC, "port": 5000, "id": 1})
    yield js.wait_for(lambda o: o.get("event") == "announced" and o.get("id") == 1, timeout=30)

    lookup = processes.python("-m", "txhyperswarm.cli", "lookup", TOPIC, "--bootstrap", boot, "--no-mdns")
    code = yield lookup.ended
    assert code == 0, lookup.stderr.decode()
    assert lookup.lines == [{
        "topic": TOPIC, "host": "127.0.0.1", "port": 5000, "local": False,
        "referrer": boot, "source": "dht",
    }]


@pytest_twisted.inlineCallbacks
def test_cli_lookup_over_mdns_prints_a_node_peer_and_exits(processes, node, private_netns, reactor):
    js = processes.node("mdns_swarm.js", TOPIC, "--announce", "--no-lookup")
    listening = yield js.wait_for(lambda o: o.get("event") == "listening", timeout=30)
    started = reactor.seconds()
    lookup = processes.python("-m", "txhyperswarm.cli", "lookup", TOPIC, "--bootstrap", "none")
    code = yield lookup.ended
    took = reactor.seconds() - started
    assert code == 0, lookup.stderr.decode()
    assert {"topic": TOPIC, "host": "127.0.0.1", "port": listening["port"], "local": True,
            "referrer": None, "source": "mdns"} in lookup.lines
    assert took < 10.0  # 3 s after its first query, never past --timeout (10 s)


@pytest_twisted.inlineCallbacks
def test_cli_announce_over_mdns_is_found_by_node(processes, node, private_netns):
    port = free_port()
    announcer = processes.python("-m", "txhyperswarm.cli", "announce", TOPIC, "--port", str(port),
                                 "--bootstrap", "none")
    line = yield announcer.wait_for(lambda o: "announced" in o, timeout=30)
    assert line == {"topic": TOPIC, "announced": True}
    js = processes.node("mdns_swarm.js", TOPIC)
    peer = yield js.wait_for(lambda o: o.get("event") == "peer", timeout=30)
    assert (peer["host"], peer["port"], peer["local"]) == ("127.0.0.1", port, True)
    announcer.signal("TERM")
    assert (yield announcer.ended) == 0
