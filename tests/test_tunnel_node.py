"""
Interop of the tunnels with Node's hyperswarm 2.15.3: a Node peer reaches a
Python ``--expose`` daemon, a Python ``--listen`` daemon reaches a Node peer
serving a topic, and SIGTERM unannounces (a Node lookup finds nothing).
"""

from __future__ import annotations

import json
import time

import pytest_twisted
import treq

from tests.harness import free_port
from tests.test_tunnel_daemon import PAGE, TOPIC, TOPIC_TEXT, has, twist, web  # noqa: F401  (web: a fixture)


@pytest_twisted.inlineCallbacks
def test_a_node_peer_gets_the_page_from_an_expose_daemon(processes, node, private_netns, twist_bootstrap_node, web):  # noqa: F811
    _, boot_port = twist_bootstrap_node
    expose = twist(processes, "expose", "--topic", TOPIC_TEXT, "--bootstrap", f"127.0.0.1:{boot_port}",
                   "--host", "127.0.0.1", "--no-mdns", "--expose", f"tcp:host=127.0.0.1:port={web}")
    yield expose.wait_for(has("first announce done"), timeout=30)
    peer = processes.node("http_get_topic.js", TOPIC, f"127.0.0.1:{boot_port}")
    response = yield peer.wait_for(lambda o: o.get("event") == "response", timeout=60)
    assert response["body"].startswith("HTTP/1.0 200") and response["body"].endswith(PAGE.decode())
    yield expose.wait_for(has("tunnel closed"), timeout=20)
    assert (yield expose.stop(grace=5.0)) == 0


@pytest_twisted.inlineCallbacks
def test_a_listen_daemon_reaches_a_node_peer_serving_a_topic(processes, node, private_netns, twist_bootstrap_node):
    _, boot_port = twist_bootstrap_node
    serving = processes.node("http_serve_topic.js", TOPIC, f"127.0.0.1:{boot_port}")
    yield serving.wait_for(lambda o: o.get("event") == "announced", timeout=30)
    listen_port = free_port()
    listen = twist(processes, "listen", "--topic", TOPIC_TEXT, "--bootstrap", f"127.0.0.1:{boot_port}",
                   "--host", "127.0.0.1", "--no-mdns", "--listen", f"tcp:port={listen_port}:interface=127.0.0.1")
    yield listen.wait_for(has("peer found"), timeout=30)
    response = yield treq.get(f"http://127.0.0.1:{listen_port}/")
    assert response.code == 200 and (yield response.content()) == b"hello from node\n"
    assert (yield listen.stop(grace=5.0)) == 0


@pytest_twisted.inlineCallbacks
def test_sigterm_unannounces_and_exits_0_within_5_s(processes, node, private_netns, twist_bootstrap_node, web):  # noqa: F811
    _, boot_port = twist_bootstrap_node
    expose = twist(processes, "expose", "--topic", TOPIC_TEXT, "--bootstrap", f"127.0.0.1:{boot_port}",
                   "--host", "127.0.0.1", "--no-mdns", "--expose", f"tcp:host=127.0.0.1:port={web}")
    yield expose.wait_for(has("first announce done"), timeout=30)
    looker = processes.node("peers_node.js", json.dumps({"bootstrap": [f"127.0.0.1:{boot_port}"], "ephemeral": True}))
    yield looker.wait_for(lambda o: o.get("event") == "ready", timeout=30)
    looker.send({"cmd": "lookup", "topic": TOPIC, "id": 1})
    found = yield looker.wait_for(lambda o: o.get("event") == "lookup-done" and o.get("id") == 1, timeout=30)
    assert found["peers"], found
    t0 = time.monotonic()
    code = yield expose.stop(grace=5.0)
    assert code == 0 and time.monotonic() - t0 < 5.0
    assert any("left every topic (unannounced)" in o.get("_text", "") for o in expose.lines)
    looker.send({"cmd": "lookup", "topic": TOPIC, "id": 2})
    after = yield looker.wait_for(lambda o: o.get("event") == "lookup-done" and o.get("id") == 2, timeout=30)
    assert after["peers"] == [], after
