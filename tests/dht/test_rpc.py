"""
The RPC layer on a Clock: retries and timeouts as dht-rpc's io.js, roundtrip
tokens, the built-in commands and the command registry.
"""

from __future__ import annotations

import os

from twisted.internet import defer

from txhyperswarm.dht import messages as m
from txhyperswarm.dht.errors import CommandError, IgnoreRequest, QueryError
from txhyperswarm.dht.routing import Contact
from txhyperswarm.dht.errors import RequestCancelled, RequestTimeout
from txhyperswarm.dht.rpc import TICK_INTERVAL
from txhyperswarm.dht.tokens import TokenStore, roundtrip_token

from tests.dht.dhtnet import DHTNetwork


def started(net, n=1, **kw):
    nodes = [net.node(**kw) for _ in range(n)]
    net.clock.advance(0)
    return nodes


def still_ticking(net, node) -> bool:
    """Whether the node's 750 ms tick still runs: a request to nowhere times out."""
    nowhere = ("127.0.0.1", 7)
    net.down.add(nowhere)
    failures = []
    node.ping(*nowhere).addErrback(failures.append)
    net.run(8)
    return len(failures) == 1 and failures[0].check(RequestTimeout) is not None


# -- timeouts and retries ------------------------------------------------------


def test_request_is_sent_three_times_and_fails_at_tick_10():
    net = DHTNetwork()
    (a,) = started(net)
    dead = ("127.0.0.1", 9)
    net.down.add(dead)
    d = a.ping(*dead)
    failures = []
    d.addErrback(failures.append)
    sent_at = []
    for tick in range(1, 11):
        before = len(net.messages(dst=dead))
        net.clock.advance(TICK_INTERVAL)
        if len(net.messages(dst=dead)) > before:
            sent_at.append(tick)
        if tick == 9:
            assert not failures, "failed before tick 10"
    assert len(net.messages(dst=dead)) == 3  # original + 2 resends
    assert sent_at == [3, 6]
    assert len(failures) == 1
    err = failures[0].value
    assert isinstance(err, RequestTimeout)
    assert "_ping" in str(err) and "127.0.0.1:9" in str(err)
    # resends are the identical datagram (same rid)
    assert len({msg.rid for msg in net.messages(dst=dead)}) == 1


def test_response_to_a_resend_completes_the_request():
    net = DHTNetwork()
    a, b = started(net, 2)
    net.down.add(b.address())
    d = a.ping(*b.address())
    net.clock.advance(TICK_INTERVAL * 3 - 0.01)  # just before the first resend
    net.down.discard(b.address())
    net.run(1.0)
    reply = net.clock and d.result
    assert reply.id == b.id
    assert reply.to == a.address()


def test_saturated_io_queues_requests():
    net = DHTNetwork()
    (a,) = started(net)
    dead = [("127.0.0.1", 100 + i) for i in range(70)]
    net.down.update(dead)
    for addr in dead:
        a.ping(*addr).addErrback(lambda f: None)
    # 50 requests/s reached and >= 16 in flight: the rest wait in the queue
    assert a.rpc.inflight_count < 70
    assert a.rpc.inflight_count + a.rpc.pending_count() == 70
    # an unsendable request is refused now, not when the queue reaches it
    # (from the tick, which must not raise)
    bad = []
    a.ping("127.0.0.1", 70000).addErrback(bad.append)
    assert bad and bad[0].check(ValueError)
    net.run(60)
    assert a.rpc.inflight_count == 0 and a.rpc.pending_count() == 0
    assert still_ticking(net, a)


# -- tokens --------------------------------------------------------------------


def test_token_vector_from_the_spec():
    assert roundtrip_token(b"\x01" * 32, "127.0.0.1").hex() == (
        "d0bb07875c487d8bd7fcd51cd227784c4d3f86f1dee2ede3d119d77897b05820"
    )
    assert roundtrip_token(b"\x02" * 32, "127.0.0.1").hex() == (
        "3a674ace2772eedc96e161b9e8f1e52240a3e877d243d8603b00c07fa9e39995"
    )


def test_token_store_accepts_current_and_previous_secret_only():
    store = TokenStore()
    tok = store.token("10.0.0.1")
    assert store.valid(tok, "10.0.0.1")
    assert not store.valid(tok, "10.0.0.2")  # IP bound
    store.rotate()
    assert store.valid(tok, "10.0.0.1")  # previous secret
    assert store.token("10.0.0.1") != tok
    store.rotate()
    assert not store.valid(tok, "10.0.0.1")


def _update(net, sender, target_node, token):
    """Send an UPDATE 'echo' from ``sender`` to ``target_node`` with ``token``."""
    peer = Contact(target_node.id, *target_node.address())
    peer.token = token
    results = []
    sender.rpc.update(b"echo", b"\x01" * 32, b"hi", peer, lambda err, msg, addr, req: results.append((err, msg)))
    return results


def test_update_needs_a_fresh_token():
    net = DHTNetwork()
    a, b = started(net, 2)
    seen = []
    a.add_command("echo", update=lambda req: seen.append(req.value) or b"ok")
    d = b.ping(*a.address())
    net.run(0.1)
    assert d.called
    token = b.routing_table.get(a.id).token
    assert token == a.rpc.tokens.token("127.0.0.1")

    res = _update(net, b, a, token)
    net.run(0.1)
    assert res[0][0] is None and res[0][1].value == b"ok" and seen == [b"hi"]

    net.clock.advance(300)  # one rotation: the previous secret still counts
    res = _update(net, b, a, token)
    net.run(0.1)
    assert res and res[0][0] is None and len(seen) == 2

    net.clock.advance(300)  # two rotations: stale
    before = a.dropped["bad_token"]
    res = _update(net, b, a, token)
    net.run(10)
    assert len(seen) == 2
    assert isinstance(res[0][0], RequestTimeout)  # no reply at all
    assert a.dropped["bad_token"] == before + 3  # every transmission dropped


def test_update_with_forged_or_missing_token_gets_no_reply():
    net = DHTNetwork()
    a, b = started(net, 2)
    seen = []
    a.add_command("echo", update=lambda req: seen.append(req) or None)
    forged = _update(net, b, a, os.urandom(32))
    missing = _update(net, b, a, None)
    net.run(10)
    assert seen == []
    assert isinstance(forged[0][0], RequestTimeout) and isinstance(missing[0][0], RequestTimeout)
    assert a.dropped["bad_token"] == 6
    assert not [msg for msg in net.messages(src=a.address()) if msg.type == m.RESPONSE]


def pair(net):
    a, = started(net)
    b, = started(net, bootstrap=[a.address()])
    net.run(0.1)
    return a, b


def test_error_responses_carry_no_token():
    net = DHTNetwork()
    a, b = pair(net)
    net.log.clear()
    d = b.query("nosuchcmd", b"\x02" * 32)
    net.run(1)
    assert d.called
    (resp,) = [x for x in net.messages(src=a.address()) if x.type == m.RESPONSE]
    assert resp.error == b"Unsupported command"
    assert not resp.HasField("roundtripToken")
    assert resp.HasField("closerNodes")


# -- built-in commands and the registry -------------------------------------------


def test_ping_reply_and_to_fields():
    net = DHTNetwork()
    a, b = started(net, 2)
    d = a.ping(*b.address())
    net.run(0.1)
    reply = d.result
    assert reply.node == b.address() and reply.id == b.id and reply.to == a.address()
    (req,) = net.messages(src=a.address(), command=b"_ping")
    assert req.to == m.encode_peer(*b.address()) and req.id == a.id and not req.HasField("value")
    (resp,) = net.messages(src=b.address())
    assert resp.to == m.encode_peer(*a.address()) == resp.value
    assert not resp.HasField("closerNodes")
    # both nodes learnt each other
    assert a.routing_table.get(b.id) is not None and b.routing_table.get(a.id) is not None


def test_ping_with_the_wrong_id_is_ignored():
    net = DHTNetwork()
    a, b = started(net, 2)
    d = a.ping(*b.address(), id=os.urandom(32))
    net.run(8)
    assert isinstance(d.result.value, RequestTimeout)
    d.addErrback(lambda f: None)
    assert b.dropped["ping_id"] == 3


def test_ephemeral_node_sends_no_id_and_is_not_added():
    net = DHTNetwork()
    a, = started(net)
    e, = started(net, ephemeral=True, bootstrap=[a.address()])
    net.run(1)
    assert e.ephemeral and e.is_bootstrapped
    assert all(not msg.HasField("id") for msg in net.messages(src=e.address()))
    assert a.routing_table_size == 0
    assert e.routing_table.get(a.id) is not None
    d = e.ping(*a.address())
    net.run(0.1)
    assert d.result.id == a.id


def test_command_registry_query_update_errors_and_deferreds():
    net = DHTNetwork()
    a, b = started(net, 2)
    later = defer.Deferred()
    calls = []

    def query(req):
        calls.append(req)
        if req.value == b"boom":
            raise CommandError("nope", value=b"proof")
        if req.value == b"later":
            return later
        if req.value == b"ignore":
            raise IgnoreRequest()
        return b"v:" + req.value

    a.add_command("thing", query=query)
    target = b"\x05" * 32
    replies = {}
    for v in (b"x", b"boom", b"later", b"ignore"):
        replies[v] = []
        peer = Contact(a.id, *a.address())
        b.rpc.query(b"thing", target, v, peer, lambda err, msg, addr, req, v=v: replies[v].append((err, msg)))
    net.run(0.1)
    assert replies[b"x"][0][1].value == b"v:x"
    boom = replies[b"boom"][0][1]
    assert boom.error == b"nope" and boom.value == b"proof" and not boom.HasField("roundtripToken")
    assert replies[b"later"] == []
    later.callback(b"done")
    net.run(0.1)
    assert replies[b"later"][0][1].value == b"done"
    net.run(8)
    assert isinstance(replies[b"ignore"][0][0], RequestTimeout)
    req = calls[0]
    assert req.node == b.address() and req.id == b.id and req.target == target
    assert req.to == a.address() and req.command == "thing" and not req.is_update


def test_update_without_handler_and_query_without_target():
    net = DHTNetwork()
    a, b = pair(net)
    a.add_command("q", query=lambda req: None)
    # query handler returning None: a response without a value
    d = b.query("q", b"\x07" * 32)
    net.run(1)
    assert [r.value for r in d.result] == [None]
    # the update phase hits the default update handler: an error response,
    # which (as in dht-rpc) is a warning, not a reply
    net.log.clear()
    d = b.query_and_update("q", b"\x07" * 32, b"")
    net.run(1)
    assert len(d.result) == 1  # the query-phase reply only
    (err,) = [x for x in net.messages(src=a.address()) if x.error]
    assert err.error == b"Update not supported"
    # a command without target gets no reply
    before = a.dropped["no_target"]
    res = []
    b.rpc.query(b"q", None, None, Contact(a.id, *a.address()), lambda *args: res.append(args))
    net.run(8)
    assert isinstance(res[0][0], RequestTimeout)
    assert a.dropped["no_target"] == before + 3


def test_holepunch_relay_and_reply_to_initiator():
    net = DHTNetwork()
    relay, target = started(net, 2)
    e, = started(net, ephemeral=True)
    d = e.holepunch(*target.address(), referrer=relay.address())
    net.run(0.1)
    reply = d.result
    assert reply.node == target.address() and reply.id == target.id and reply.to == e.address()
    (direct,) = net.messages(src=e.address(), dst=target.address())
    (to_relay,) = net.messages(src=e.address(), dst=relay.address())
    (fwd,) = net.messages(src=relay.address(), dst=target.address())
    assert direct.rid == to_relay.rid == fwd.rid and fwd.type == m.QUERY
    assert m.decode_peer(m.decode_holepunch(to_relay.value).to) == target.address()
    assert fwd.id == relay.id and fwd.to == m.encode_peer(*target.address())
    assert fwd.HasField("error") and fwd.error == b""
    assert m.decode_peer(getattr(m.decode_holepunch(fwd.value), "from")) == e.address()
    # the direct probe has no value: ignored; only the relayed one is answered
    answers = net.messages(src=target.address())
    assert len(answers) == 1 and answers[0].type == m.RESPONSE


def test_an_answered_holepunch_is_not_relayed_again():
    # dht-rpc clears the 500 ms relay timer when the request finishes
    net = DHTNetwork()
    relay, target = started(net, 2)
    e, = started(net, ephemeral=True)
    d = e.holepunch(*target.address(), referrer=relay.address())
    net.run(0.1)
    assert d.result.id == target.id
    assert net.clock.getDelayedCalls() and all("holepunch" not in repr(c) for c in net.clock.getDelayedCalls())
    net.run(1)
    assert len(net.messages(src=e.address(), dst=relay.address())) == 1
    for n in (e, relay, target):
        n.stopService()
    net.run(0.1)
    assert net.clock.getDelayedCalls() == []


def test_relay_refuses_to_poke_the_sender_itself():
    net = DHTNetwork()
    relay, = started(net)
    e, = started(net)
    d = e.holepunch(*e.address(), referrer=relay.address())
    net.run(0.1)
    assert net.messages(src=relay.address()) == []
    d.addErrback(lambda f: None)


def test_rpc_request_counters():
    net = DHTNetwork()
    a, b = started(net, 2)
    a.ping(*b.address())
    net.run(0.1)
    assert a.rpc_requests[("_ping", "out")] == 1
    assert b.rpc_requests[("_ping", "in")] == 1


def test_stop_service_fails_pending_requests_and_walks():
    net = DHTNetwork()
    a, = started(net)
    dead = ("127.0.0.1", 9)
    net.down.add(dead)
    p = a.ping(*dead)
    errors = []
    p.addErrback(errors.append)
    a.add_nodes([(b"\x09" * 32, *dead)])
    walk = a.query("_find_node", b"\x01" * 32)
    walk.addErrback(errors.append)
    assert a.walk_context.walks and not walk.called
    d = a.stopService()
    assert d.called
    assert len(errors) == 2 and "cancelled" in str(errors[0].value)
    assert errors[1].check(QueryError) and "stopped" in str(errors[1].value)
    assert not a.walk_context.walks and a.inflight_queries == 0
    assert not a.udp.listening  # the node made its socket: it closed it
    # stopped: no timers left on the clock
    net.clock.advance(1000)
    assert net.clock.getDelayedCalls() == []


def test_requests_after_stop_fail_at_once():
    net = DHTNetwork()
    a, b = started(net, 2)
    a.stopService()
    errors = []
    a.ping(*b.address()).addErrback(errors.append)
    assert len(errors) == 1 and "cancelled" in str(errors[0].value)
    a.query("_find_node", b"\x01" * 32).addErrback(errors.append)
    assert len(errors) == 2 and "not running" in str(errors[1].value)


def test_requests_before_start_fail_at_once():
    # before startService there is no socket and no tick to time them out
    from twisted.internet.task import Clock
    from txhyperswarm.dht.node import DHTNode

    clock = Clock()
    node = DHTNode(clock, bootstrap=[("127.0.0.1", 9)])
    errors = []
    node.ping("127.0.0.1", 9).addErrback(errors.append)
    node.bootstrap().addErrback(errors.append)
    assert [type(f.value) for f in errors] == [RequestCancelled, QueryError]
    assert clock.getDelayedCalls() == []


def test_holepunch_request_is_relayed_again_after_500ms_if_unanswered():
    net = DHTNetwork()
    relay, = started(net)
    e, = started(net)
    dead = ("127.0.0.1", 9)
    net.down.add(dead)
    d = e.holepunch(*dead, referrer=relay.address())
    d.addErrback(lambda f: None)
    assert len(net.messages(src=e.address(), dst=relay.address())) == 1
    net.run(0.6)
    relayed = net.messages(src=e.address(), dst=relay.address())
    assert len(relayed) == 2 and relayed[0].rid == relayed[1].rid


# -- hostile input, in process ---------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_FUZZ = DHTNetwork()
_FUZZ.record = False  # thousands of datagrams: keep no log
_FUZZ_NODE = _FUZZ.node()
_FUZZ_NODE.add_command("thing", query=lambda req: req.value, update=lambda req: None)
_FUZZ.clock.advance(0)

_cmd = st.sampled_from([b"_ping", b"_find_node", b"_holepunch", b"thing", b"", b"\xff\xfe"])
_bytes = st.none() | st.binary(max_size=80) | st.binary(min_size=32, max_size=32) | st.binary(min_size=6, max_size=6)


@st.composite
def _envelopes(draw):
    msg = m.Message()
    if draw(st.booleans()):
        msg.version = draw(st.integers(0, 3))
    msg.type = draw(st.sampled_from([m.QUERY, m.UPDATE, m.RESPONSE]))
    msg.rid = draw(st.integers(0, 70000))
    for name in ("to", "id", "target", "closerNodes", "roundtripToken", "value", "error"):
        v = draw(_bytes)
        if v is not None:
            setattr(msg, name, v)
    c = draw(st.none() | _cmd)
    if c is not None:
        msg.command = c
    return msg.SerializeToString()


@given(st.one_of(st.binary(max_size=300), _envelopes()), st.integers(0, 65535))
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_any_datagram_is_handled_or_counted_never_raised(data, port):
    before = sum(_FUZZ_NODE.dropped.values())
    _FUZZ_NODE.rpc.datagram_received(data, ("127.0.0.1", port))
    _FUZZ.clock.advance(0.02)
    assert _FUZZ_NODE.dropped["error"] == 0
    try:
        m.decode_message(data)
        decodable = port != 0
    except m.DecodeError:
        decodable = False
    if not decodable:
        assert sum(_FUZZ_NODE.dropped.values()) == before + 1


# -- node state ------------------------------------------------------------------


def test_persistent_starts_sending_the_id_and_rebootstraps():
    net = DHTNetwork()
    a, = started(net)
    e, = started(net, ephemeral=True, bootstrap=[a.address()])
    net.run(1)
    assert a.routing_table_size == 0
    d = e.persistent()
    net.run(1)
    assert d.called and not e.ephemeral
    assert a.routing_table.get(e.id) is not None


def test_remote_address_needs_three_agreeing_nodes():
    net = DHTNetwork()
    a, = started(net)
    others = started(net, 3)
    for o in others[:2]:
        a.ping(*o.address())
    net.run(0.1)
    assert a.remote_address() is None and not a.holepunchable()
    a.ping(*others[2].address())
    net.run(0.1)
    assert a.remote_address() == a.address() and a.holepunchable()


def test_nodes_snapshot_round_trips():
    net = DHTNetwork()
    a, = started(net)
    others = started(net, 5)
    for o in others:
        a.ping(*o.address())
    net.run(0.1)
    snapshot = a.nodes()
    assert {i for i, _, _ in snapshot} == {o.id for o in others}
    b, = started(net)
    # a corrupt snapshot: a port of 0 would make Node's decoder drop every
    # closerNodes list we send with it, one above 65535 is not encodable
    bad = [(b"short", "127.0.0.1", 1), (b"x" * 32, "not-an-ip", 1),
           (b"y" * 32, "127.0.0.1", 0), (b"z" * 32, "127.0.0.1", 70000)]
    b.add_nodes(snapshot + bad)
    assert b.nodes() == snapshot
    target = others[0].id
    assert b.closest_nodes(target, 1)[0][0] == target


def test_cancelling_a_ping_forgets_the_request():
    net = DHTNetwork()
    a, = started(net)
    dead = ("127.0.0.1", 9)
    net.down.add(dead)
    d = a.ping(*dead)
    d.addTimeout(1.0, net.clock)
    failures = []
    d.addErrback(failures.append)
    net.clock.advance(1.0)
    assert failures and failures[0].check(defer.TimeoutError)
    assert a.rpc.inflight_count == 0
    net.run(10)
    assert len(net.messages(dst=dead)) == 1  # no retries after the cancel


def test_a_datagram_the_transport_refuses_is_lost_not_raised():
    # Twisted's UDP write raises for a host name or an oversized datagram;
    # that must neither escape ping() nor stop the tick that resends.
    net = DHTNetwork()
    a, b = started(net, 2)
    refused = ("127.0.0.1", 9)
    real_send = a.udp.send

    def send(data, addr):
        if addr == refused:
            raise OSError("refused by the transport")
        return real_send(data, addr)

    a.udp.send = send
    failures = []
    a.ping(*refused).addErrback(failures.append)
    net.run(8)
    assert failures and failures[0].check(RequestTimeout)
    assert a.dropped["send_error"] == 3  # the original and both resends
    assert still_ticking(net, a)
    d = a.ping(*b.address())
    net.run(0.1)
    assert d.result.id == b.id


def test_holepunch_resolves_a_referrer_given_by_name():
    net = DHTNetwork()
    relay, target = started(net, 2)
    e, = started(net, ephemeral=True)
    net.add_name("relay.example", "127.0.0.1")
    d = e.holepunch(*target.address(), referrer=("relay.example", relay.address()[1]))
    net.run(0.1)
    assert d.result.id == target.id
    assert relay.rpc_requests[("_holepunch", "in")] == 1


def test_ping_of_a_port_out_of_range_errbacks():
    net = DHTNetwork()
    a, = started(net)
    failures = []
    a.ping("127.0.0.1", 70000).addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
