"""``DHTNode.stats()`` and the internal errors it counts (each one logged as a failure)."""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from txhyperswarm.dht.errors import CommandError, RequestTimeout
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.dht.routing import Contact
from txhyperswarm.interfaces import IStatsSource

from tests.dht.dhtnet import DHTNetwork

TARGET = b"\x05" * 32


def two_nodes():
    net = DHTNetwork()
    a = net.node()
    net.clock.advance(0)
    b = net.node(bootstrap=[a.address()])
    net.run(1)
    return net, a, b


def test_stats_are_a_fresh_dict_of_the_live_figures():
    net, a, b = two_nodes()
    assert verifyObject(IStatsSource, a)
    s = a.stats()
    assert s == {
        "id": a.id.hex(),
        "host": "127.0.0.1",
        "port": a.address()[1],
        "ephemeral": False,
        "routing_table_size": 1,
        "rpc_requests": a.rpc_requests,
        "dropped": Counter(),
        "routing_refused": Counter(),
    }
    assert isinstance(s["rpc_requests"], Counter) and s["rpc_requests"][("_find_node", "in")] >= 1
    assert b.stats()["rpc_requests"][("_find_node", "out")] >= 1
    s["dropped"]["x"] += 1
    a.rpc.datagram_received(b"\xff\xff", ("127.0.0.1", 9))
    assert a.stats()["dropped"] == Counter({"protobuf": 1})  # a copy, and live


def test_stats_of_a_node_not_started():
    n = DHTNode(DHTNetwork().reactor("127.0.0.1"), bootstrap=[], ephemeral=True, id=b"\x01" * 32)
    s = n.stats()
    assert (s["id"], s["host"], s["port"], s["ephemeral"], s["routing_table_size"]) == ("01" * 32, None, None, True, 0)


def ask(net, asker, node, value=b"v"):
    replies = []
    asker.rpc.query(b"thing", TARGET, value, Contact(node.id, *node.address()),
                    lambda err, msg, addr, req: replies.append((err, msg)))
    net.run(0.1)
    return replies


@pytest.mark.parametrize("handler, error", [
    (lambda req: 1 / 0, ZeroDivisionError),
    (lambda req: defer.fail(KeyError("gone")), KeyError),
    (lambda req: "not bytes", TypeError),
])
def test_a_failing_handler_is_counted_logged_and_unanswered(logged_errors, handler, error):
    net, a, b = two_nodes()
    a.add_command("thing", query=handler)
    replies = ask(net, b, a)
    assert replies == []  # no reply: the asker times out (after 3 tries)
    assert a.stats()["dropped"]["handler_error"] == 1
    net.run(8)
    assert isinstance(replies[0][0], RequestTimeout)
    assert len(logged_errors.take(error)) == a.stats()["dropped"]["handler_error"] == 3


def test_a_command_error_is_an_answer_not_an_internal_error():
    # nothing logged as a failure (the fixture fails the test otherwise)
    net, a, b = two_nodes()

    def refuse(req):
        raise CommandError("no such thing")

    a.add_command("thing", query=refuse)
    ((err, msg),) = ask(net, b, a)
    assert err is None and msg.error == b"no such thing"
    assert a.stats()["dropped"]["handler_error"] == 0


def test_an_error_in_the_node_on_a_datagram_is_counted_and_logged(logged_errors, monkeypatch):
    net, a, b = two_nodes()

    def broken(msg, host, port, is_update):
        raise RuntimeError("bug")

    monkeypatch.setattr(a, "request_received", broken)
    b.ping(*a.address()).addErrback(lambda f: f.trap(RequestTimeout))
    net.run(0.1)
    assert a.stats()["dropped"]["error"] == 1
    net.run(8)
    assert len(logged_errors.take(RuntimeError)) == a.stats()["dropped"]["error"] == 3


def test_the_node_is_its_rpcs_controller_and_has_a_stop_hook_seam():
    from txhyperswarm.dht.rpc import IRPCController

    net, a, b = two_nodes()
    assert verifyObject(IRPCController, a)
    calls = []
    a.add_stop_hook(lambda: calls.append("kept"))
    gone = lambda: calls.append("removed")  # noqa: E731
    a.add_stop_hook(gone)
    a.remove_stop_hook(gone)
    a.stopService()
    a.stopService()  # hooks run once
    assert calls == ["kept"]


def test_a_failing_stop_hook_is_logged_and_the_node_still_stops(logged_errors):
    net, a, b = two_nodes()

    def broken():
        raise RuntimeError("hook")

    a.add_stop_hook(broken)
    assert a.stopService().called
    assert not a.udp.listening
    assert len(logged_errors.take(RuntimeError)) == 1
