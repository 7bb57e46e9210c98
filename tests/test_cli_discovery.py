"""
``hyperswarm lookup`` and ``hyperswarm announce`` as real processes, against
a ``twist hyperswarm --bootstrap-node`` process and Node peers (DHT), and
against a Node hyperswarm on the LAN (mDNS, private namespace only).
"""

import hashlib
import signal

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from tests.harness import free_port
from tests.test_cli import TOPIC, cli as _cli


@defer.inlineCallbacks
def stderr_says(reactor, proc, text, timeout=20.0):
    """Wait until ``text`` is on the process's stderr (polled; bounded)."""
    for _ in range(int(timeout / 0.05)):
        if text in proc.stderr.decode(errors="replace"):
            return
        if not proc.running:
            break
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{text!r} not on stderr: {proc.stderr.decode(errors='replace')}")


def silent_bootstrap():
    """A HOST:PORT where no DHT node answers (nothing listens there)."""
    return f"127.0.0.1:{free_port()}"


def test_lookup_with_no_bootstrap_and_no_mdns_fails_with_exit_1():
    result = _cli("lookup", TOPIC, "--bootstrap", "none", "--no-mdns")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "DHT walk failed" in result.stderr


@pytest.mark.parametrize("sig", ["TERM", "INT"])
@pytest_twisted.inlineCallbacks
def test_cli_announce_is_found_by_node_and_gone_after_a_signal(processes, node, twist_bootstrap_node, sig):
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

    announcer.signal(sig)
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
    lookup = processes.python("-m", "txhyperswarm.cli", "lookup", TOPIC, "--bootstrap", "none", "--timeout", "60")
    code = yield lookup.ended
    took = reactor.seconds() - started
    assert code == 0, lookup.stderr.decode()
    assert {"topic": TOPIC, "host": "127.0.0.1", "port": listening["port"], "local": True,
            "referrer": None, "source": "mdns"} in lookup.lines
    # it listens 3 s after its first query, then exits: not at --timeout
    # (the 3 s from the process start, plus its start-up)
    assert 3.0 <= took < 6.0


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
    announcer.signal("INT")
    assert (yield announcer.ended) == 0


def test_lookup_and_announce_say_on_stderr_which_hex_topic_they_use():
    hashed = hashlib.sha256("hello world".encode()).hexdigest()
    result = _cli("lookup", "hello world", "--bootstrap", "none", "--no-mdns")
    assert f"hyperswarm lookup: topic {hashed} (SHA-256 of 'hello world')" in result.stderr.splitlines()
    assert result.stdout == ""
    result = _cli("announce", TOPIC.upper(), "--port", "4000", "--bootstrap", "none", "--no-mdns")
    assert f"hyperswarm announce: topic {TOPIC} (as given)" in result.stderr.splitlines()
    assert result.returncode == 1 and result.stdout == ""


def test_lookup_that_finds_nothing_exits_0_with_no_output(twist_bootstrap_node):
    boot = f"127.0.0.1:{twist_bootstrap_node[1]}"
    result = _cli("lookup", TOPIC, "--bootstrap", boot, "--no-mdns")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "failed" not in result.stderr


def test_lookup_stops_at_timeout_with_exit_0_when_mdns_is_on(private_netns):
    # the DHT walk would take ~7 s (its bootstrap node never answers) and
    # mDNS listens 3 s: --timeout 1.5 cuts both short, and with mDNS on that
    # is no failure
    result = _cli("lookup", TOPIC, "--bootstrap", silent_bootstrap(), "--timeout", "1.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "no bootstrap node answered within --timeout 1.5s" in result.stderr
    assert "Traceback" not in result.stderr


def test_lookup_at_timeout_with_no_bootstrap_answer_and_no_mdns_exits_1():
    result = _cli("lookup", TOPIC, "--bootstrap", silent_bootstrap(), "--timeout", "1", "--no-mdns")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "the DHT walk failed: no bootstrap node answered within --timeout 1s" in result.stderr


@pytest_twisted.inlineCallbacks
def test_lookup_ends_at_sigint(processes, reactor):
    lookup = processes.python("-m", "txhyperswarm.cli", "lookup", TOPIC, "--bootstrap", silent_bootstrap(),
                              "--no-mdns", "--timeout", "60")
    yield stderr_says(reactor, lookup, "hyperswarm lookup: topic")
    lookup.signal("INT")
    code = yield lookup.ended
    # not the walk giving up on its own (~7 s later, "No nodes responded")
    assert "no bootstrap node answered before the interrupt" in lookup.stderr.decode()
    assert code == 1 and lookup.lines == []


@pytest_twisted.inlineCallbacks
def test_announce_interrupted_before_its_first_announce_exits_0(processes, reactor):
    announcer = processes.python("-m", "txhyperswarm.cli", "announce", TOPIC, "--port", "4000",
                                 "--bootstrap", silent_bootstrap(), "--no-mdns")
    yield stderr_says(reactor, announcer, "hyperswarm announce: topic")
    announcer.signal("TERM")
    code = yield announcer.ended
    assert code == 0, announcer.stderr.decode()
    assert announcer.lines == [] and "failed" not in announcer.stderr.decode()


def test_announce_whose_first_announce_fails_exits_1():
    result = _cli("announce", TOPIC, "--port", "4000", "--bootstrap", silent_bootstrap(), "--no-mdns")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "the first announce failed" in result.stderr


@pytest_twisted.inlineCallbacks
def test_lookup_cut_short_by_timeout_after_a_node_answered_exits_0(processes, node, twist_bootstrap_node):
    # The bootstrap node answers, but sends the walk on to a node that has
    # stopped (SIGSTOP): the walk would wait ~7 s for it. At --timeout the
    # walk has not failed (a node answered), so no mDNS is no reason for 1.
    boot = f"127.0.0.1:{twist_bootstrap_node[1]}"
    frozen = processes.node("dht_bootstrap_client.js", boot)
    yield frozen.wait_for(lambda o: o.get("ready"), timeout=30)
    frozen.signal(signal.SIGSTOP)
    try:
        lookup = processes.python("-m", "txhyperswarm.cli", "lookup", TOPIC, "--bootstrap", boot,
                                  "--no-mdns", "--timeout", "2")
        code = yield lookup.ended
    finally:
        frozen.signal(signal.SIGCONT)
    assert code == 0, lookup.stderr.decode()
    assert lookup.lines == [] and "failed" not in lookup.stderr.decode()


@pytest_twisted.inlineCallbacks
def test_cli_lookup_finds_cli_announce_over_mdns(processes, private_netns):
    port = free_port()
    announcer = processes.python("-m", "txhyperswarm.cli", "announce", "a text topic", "--port", str(port),
                                 "--bootstrap", "none")
    line = yield announcer.wait_for(lambda o: "announced" in o, timeout=30)
    topic = hashlib.sha256(b"a text topic").hexdigest()
    assert line == {"topic": topic, "announced": True}
    lookup = processes.python("-m", "txhyperswarm.cli", "lookup", "a text topic", "--bootstrap", "none")
    assert (yield lookup.ended) == 0, lookup.stderr.decode()
    assert lookup.lines == [{"topic": topic, "host": "127.0.0.1", "port": port, "local": True,
                             "referrer": None, "source": "mdns"}]
    announcer.signal("TERM")
    assert (yield announcer.ended) == 0
