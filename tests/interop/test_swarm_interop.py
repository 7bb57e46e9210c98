"""
The swarm against Node's hyperswarm 2.15.3 (tests/node/swarm_peer.js).

Every test runs inside the private network namespace (``private_netns``)
the conftest makes: a Node swarm always opens mDNS on 0.0.0.0:5353. The DHT
is one persistent Python :class:`DHTNode` serving ``peers`` on 127.0.0.1
(fixture ``bootstrap``); it is the only node that stores records, since
every swarm's DHT node starts ephemeral.

The Python side runs in this process (:class:`PyPeer`, a
:class:`txhyperswarm.Hyperswarm` with a recording protocol factory),
so the ``logged_errors`` fixture sees any error it swallows. It reports the
same event dicts as the Node script's JSON lines, so one test body drives
any pairing. The Node <-> Node runs are the reference: the expectations
below (``expected_client_line``, ``SERVER_LINE``, the addresses) are what
Node 2.15.3 reports, written down from them. What Node does that a reader
might not expect, seen in those runs:

* a TCP socket accepted on Node's dual-stack listener reports its remote as
  ``::ffff:127.0.0.1``;
* a dial with a referrer runs TCP and holepunch + uTP at once; now and then
  the uTP attempt wins on loopback, and a uTP attempt dropped before its
  SYN was acknowledged stays open, silent, on the accepting side until uTP's
  keepalive (~30 s);
* a dial attempt that lost is destroyed; when the accepting side had
  already written to it, the kernel answers with a reset (ECONNRESET
  there), so resets are normal during a simultaneous connect;
* ``swarm.destroy()`` ends every connection with a FIN: the remote sees
  ``end``, no error.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode

LOOPBACK = "127.0.0.1"
WAIT = 20.0
_ids = itertools.count()


def sleep(reactor, seconds):
    return deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def bootstrap_node(private_netns, reactor):
    """
    A persistent Python DHT node serving ``peers`` on 127.0.0.1: yields
    ``(node, command)``, the :class:`~txhyperswarm.dht.peers.PeersCommand`.
    """
    boot = DHTNode(reactor, bootstrap=[], ephemeral=False, host=LOOPBACK, port=0)
    command = dht_peers.register(boot)
    boot.startService()
    yield boot, command
    pytest_twisted.blockon(boot.stopService())


@pytest.fixture
def bootstrap(bootstrap_node):
    """The bootstrap node's ``(host, port)``."""
    return bootstrap_node[0].address()


# ---------------------------------------------------------------- the two kinds of peer


class EventLog:
    """Event dicts in arrival order; :meth:`wait_for` as JSONLinesProcess's."""

    def __init__(self, reactor, name):
        self.reactor = reactor
        self.name = name
        self.lines = []
        self._waiters = []

    def out(self, obj):
        self.lines.append(obj)
        for pred, d in list(self._waiters):
            if pred(obj):
                self._waiters.remove((pred, d))
                d.callback(obj)

    def wait_for(self, predicate=lambda o: True, timeout=WAIT):
        for obj in self.lines:
            if predicate(obj):
                return defer.succeed(obj)
        d = defer.Deferred()
        entry = (predicate, d)
        self._waiters.append(entry)

        def expire():
            if entry in self._waiters:
                self._waiters.remove(entry)
                d.errback(defer.TimeoutError(f"{self.name}: nothing matching after {timeout}s; events:\n"
                                             + "\n".join(json.dumps(o) for o in self.lines[-40:])))

        call = self.reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d


def event(name, **fields):
    return lambda o: o.get("event") == name and all(o.get(k) == v for k, v in fields.items())


class NodePeer:
    """tests/node/swarm_peer.js in a child process."""

    kind = "node"

    def __init__(self, processes, *, bootstrap, mdns=True, dedup_id=None, greet=None, **options):
        cfg = dict(options, bootstrap=[f"{bootstrap[0]}:{bootstrap[1]}"] if bootstrap else [], mdns=mdns)
        if dedup_id is not None:
            cfg["dedupId"] = dedup_id.hex()
        if greet is not None:
            cfg["greet"] = greet
        self.proc = processes.node("swarm_peer.js", json.dumps(cfg))
        self.lines = self.proc.lines
        self.port = None

    def wait_for(self, predicate, timeout=WAIT):
        return self.proc.wait_for(predicate, timeout)

    @defer.inlineCallbacks
    def ask(self, reply, timeout=WAIT, **cmd):
        cmd["id"] = next(_ids)
        self.proc.send(cmd)
        line = yield self.proc.wait_for(lambda o: o.get("id") == cmd["id"] and o.get("event") == reply, timeout)
        return line

    @defer.inlineCallbacks
    def listen(self):
        self.proc.send({"cmd": "listen"})
        line = yield self.wait_for(event("listening"))
        self.port = line["port"]
        return self.port

    def join(self, topic, *, announce=False, lookup=True):
        return self.ask("joined", cmd="join", topic=topic.hex(), announce=announce, lookup=lookup)

    def leave(self, topic):
        return self.ask("left", cmd="leave", topic=topic.hex())

    def write(self, conn, text):
        self.proc.send({"cmd": "write", "conn": conn, "data": text})

    def close_tcp(self):
        return self.ask("tcp-closed", cmd="close-tcp")

    @defer.inlineCallbacks
    def connections(self):
        line = yield self.ask("connections", cmd="connections")
        return line["conns"]

    def errors(self):
        return [o for o in self.lines if o.get("event") in ("socket-error", "error")]

    @defer.inlineCallbacks
    def stop(self):
        yield self.proc.stop()


@implementer(IHalfCloseableProtocol)
class Recorder(protocol.Protocol):
    """
    The protocol PyPeer's factory builds: reports data, does the id
    exchange; on the remote's end it ends its side too (as Node's sockets).
    """

    peer = None  # the PyPeer
    conn = None  # its number, set by the "connection" handler
    info = None

    def connectionMade(self):
        self.received = 0
        self.pending = b""
        self.id_buf = b"" if self.peer.dedup_id is not None else None
        if self.peer.dedup_id is not None:
            self.transport.write(self.peer.dedup_id)
        if self.peer.greet is not None:
            self.transport.write(self.peer.greet.encode())

    def dataReceived(self, data):
        self.received += len(data)
        if self.conn is None:  # the "connection" event has not run yet
            self.pending += data
            return
        if self.id_buf is not None:
            self.id_buf += data
            if len(self.id_buf) < 32:
                return
            remote_id, data = self.id_buf[:32], self.id_buf[32:]
            self.id_buf = None
            duplicate = self.info.deduplicate(self.peer.dedup_id, remote_id)
            self.peer.log.out({"event": "dedup", "conn": self.conn, "remote_id": remote_id.hex(),
                               "duplicate": duplicate})
            if not data:
                return
        self.peer.log.out({"event": "data", "conn": self.conn, "data": data.decode("utf-8", "replace")})

    def readConnectionLost(self):
        self.peer.log.out({"event": "end", "conn": self.conn})
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.peer.live.pop(self.conn, None)
        self.peer.log.out({"event": "lost", "conn": self.conn, "reason": type(reason.value).__name__})


def _hp(addr):
    return None if addr is None else f"{addr[0]}:{addr[1]}"


class PyPeer:
    """A txhyperswarm.Hyperswarm in this process, reporting as swarm_peer.js does."""

    kind = "python"

    def __init__(self, reactor, *, bootstrap, mdns=True, dedup_id=None, greet=None, **options):
        from txhyperswarm import Hyperswarm

        self.reactor = reactor
        self.dedup_id = dedup_id
        self.greet = greet
        self.log = EventLog(reactor, "python swarm")
        self.lines = self.log.lines
        self.live = {}
        self._next = itertools.count()
        peer = self

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                p = Recorder()
                p.peer = peer
                return p

        self.swarm = Hyperswarm(reactor, bootstrap=[bootstrap] if bootstrap else [], multicast=mdns,
                                factory=Factory(), **options)
        self.swarm.on("listening", lambda: self.log.out({"event": "listening", "port": self.swarm.address()[1]}))
        self.swarm.on("peer", self._on_peer)
        self.swarm.on("updated", lambda u: self.log.out({"event": "updated", "topic": u["key"].hex()}))
        self.swarm.on("connection", self._on_connection)
        self.swarm.on("disconnection", self._on_disconnection)
        self.port = None

    def _on_peer(self, p):
        self.log.out({"event": "peer", "host": p.host, "port": p.port, "local": p.local,
                      "referrer": _hp(p.referrer), "to": _hp(p.to) if p.source == "dht" else "absent",
                      "topic": p.topic.hex()})

    def _addresses(self, proto):
        host, peer = proto.transport.getHost(), proto.transport.getPeer()
        return {"remote": {"host": peer.host, "port": peer.port}, "local": {"host": host.host, "port": host.port},
                "transport": "tcp" if peer.type == "TCP" else "utp"}

    def _on_connection(self, proto, info):
        n = next(self._next)
        self.live[n] = (proto, info)
        p = info.peer
        line = {
            "event": "connection", "conn": n, "client": info.client, "type": info.type,
            "peer": None if p is None else {"host": p.host, "port": p.port, "local": p.local,
                                            "referrer": _hp(p.referrer), "topic": p.topic.hex()},
            "topics": [t.hex() for t in info.topics],
            "info_remote": list(info.remote) if info.remote is not None else None,
            "info_local": info.local,
            "t": time.monotonic(),
        }
        line.update(self._addresses(proto))
        self.log.out(line)
        proto.conn, proto.info = n, info
        if proto.pending:
            data, proto.pending = proto.pending, b""
            proto.received -= len(data)
            proto.dataReceived(data)

    def _on_disconnection(self, proto, info):
        self.log.out({"event": "disconnection", "conn": proto.conn, "client": info.client, "type": info.type,
                      "duplicate": info.duplicate, "received": proto.received})

    def wait_for(self, predicate, timeout=WAIT):
        return self.log.wait_for(predicate, timeout)

    @defer.inlineCallbacks
    def listen(self):
        self.swarm.startService()
        yield self.wait_for(event("listening"))
        self.port = self.swarm.address()[1]
        return self.port

    @defer.inlineCallbacks
    def join(self, topic, *, announce=False, lookup=True):
        ok = yield self.swarm.join(topic, announce=announce, lookup=lookup)
        return {"event": "joined", "topic": topic.hex(), "ok": ok, "err": None}

    @defer.inlineCallbacks
    def leave(self, topic):
        yield self.swarm.leave(topic)
        return {"event": "left", "topic": topic.hex()}

    def write(self, conn, text):
        self.live[conn][0].transport.write(text.encode())

    def close_tcp(self):
        # The network's TCP listener stops listening: the port then refuses
        # TCP while uTP and the DHT stay on the UDP socket.
        return defer.maybeDeferred(self.swarm.network.tcp_port.stopListening)

    def connections(self):
        out = []
        for n, (proto, info) in sorted(self.live.items()):
            c = {"conn": n, "client": info.client, "type": info.type, "duplicate": info.duplicate,
                 "received": proto.received}
            c.update(self._addresses(proto))
            out.append(c)
        return defer.succeed(out)

    def errors(self):
        # errors logged in this process are the logged_errors fixture's;
        # here: connections that did not end cleanly
        return [o for o in self.lines if o.get("event") == "lost" and o["reason"] != "ConnectionDone"]

    @defer.inlineCallbacks
    def stop(self):
        if self.swarm.running:
            yield self.swarm.stopService()


@pytest.fixture
def make_peer(private_netns, node, processes, reactor, bootstrap):
    """``make_peer(kind, **options)`` -> a started-on-demand NodePeer or PyPeer, stopped at teardown."""
    made = []

    def make(kind, **options):
        options.setdefault("bootstrap", bootstrap)
        peer = NodePeer(processes, **options) if kind == "node" else PyPeer(reactor, **options)
        made.append(peer)
        return peer

    yield make
    for peer in reversed(made):
        pytest_twisted.blockon(peer.stop())


PAIRS = [("node", "node"), ("python", "node"), ("node", "python")]
PAIR_IDS = ["node->node", "python->node", "node->python"]  # dialler -> announcer


def expected_client_line(announcer_port, topic, boot, transport):
    """
    The dialler's "connection", as Node reports it: over uTP a DHT peer
    (with the bootstrap node as referrer); over TCP an mDNS peer (local,
    no referrer).
    """
    return {
        "client": True,
        "type": transport,
        "transport": transport,
        "peer": {"host": LOOPBACK, "port": announcer_port, "local": transport == "tcp",
                 "referrer": f"{boot[0]}:{boot[1]}" if transport == "utp" else None, "topic": topic.hex()},
        "topics": [topic.hex()],
    }


SERVER_LINE = {"client": False, "peer": None, "topics": []}


def story(*peers):
    """Every peer's events but ``peer`` and ``connections``, for assertion messages."""
    return "".join(f"\n{p.kind}: " + "\n  ".join(json.dumps(o) for o in p.lines
                                                if o.get("event") not in ("peer", "connections"))
                   for p in peers)


def pick(line, keys):
    return {k: line[k] for k in keys}


def ipv4(host):
    """Node's dual-stack TCP listener reports IPv4 peers as ::ffff:a.b.c.d."""
    return host[7:] if host and host.startswith("::ffff:") else host


@defer.inlineCallbacks
def stop_and_check_clean_end(dialler, announcer, server):
    """
    The dialler's swarm stops (Node: ``destroy()``): the announcer's end of
    the connection sees an orderly end, as Node's destroy sends a FIN (TCP
    and uTP alike), not a reset. (Over uTP the announcer's own FIN then
    finds the dialler gone: its close may take until uTP gives up.)
    """
    yield dialler.stop()
    n = server["conn"]
    yield announcer.wait_for(lambda o: o.get("conn") == n and o.get("event") in ("end", "socket-error", "lost"))
    assert announcer.errors() == [], "\n".join(json.dumps(o) for o in announcer.lines
                                               if o.get("event") not in ("peer", "connections"))


@defer.inlineCallbacks
def connect_pair(reactor, make_peer, dialler_kind, announcer_kind, bootstrap, *, utp):
    """
    The announcer announces once (DHT and mDNS). With ``utp`` its TCP
    listener is then closed, and the dialler has mDNS off, so the peer comes
    from the DHT with a referrer: TCP is refused, a holepunch and uTP follow.
    Without, the dialler has no DHT and finds the peer over mDNS (a LAN peer
    is dialled over TCP only): with a referrer, the holepunch + uTP attempt
    Node runs beside TCP now and then wins on loopback.
    Returns both "connection" lines.
    """
    topic = os.urandom(32)
    announcer = make_peer(announcer_kind, greet=f"hello from {announcer_kind} announcer")
    if utp:
        dialler = make_peer(dialler_kind, mdns=False, greet=f"hello from {dialler_kind} dialler")
    else:
        dialler = make_peer(dialler_kind, bootstrap=None, greet=f"hello from {dialler_kind} dialler")
    port = yield announcer.listen()
    joined = yield announcer.join(topic, announce=True, lookup=False)
    assert joined["ok"] is True
    if utp:
        yield announcer.close_tcp()
    yield dialler.listen()
    joined = yield dialler.join(topic, lookup=True)
    assert joined["ok"] is utp  # no DHT node answers a dialler without bootstrap nodes
    client = yield dialler.wait_for(event("connection"))
    server = yield announcer.wait_for(event("connection"))
    return topic, announcer, dialler, port, client, server


@pytest.mark.parametrize("dialler_kind,announcer_kind", PAIRS, ids=PAIR_IDS)
@pytest_twisted.inlineCallbacks
def test_tcp_connection_events_and_data_both_ways(reactor, make_peer, bootstrap, dialler_kind, announcer_kind):
    topic, announcer, dialler, port, client, server = yield connect_pair(
        reactor, make_peer, dialler_kind, announcer_kind, bootstrap, utp=False)
    keys = ["client", "type", "transport", "peer", "topics"]
    assert pick(client, keys) == expected_client_line(port, topic, bootstrap, "tcp"), story(dialler, announcer)
    assert pick(server, ["client", "peer", "topics", "type", "transport"]) == dict(SERVER_LINE, type="tcp",
                                                                                 transport="tcp")
    # the two ends of one TCP connection
    assert (client["remote"]["port"], ipv4(client["remote"]["host"])) == (port, LOOPBACK)
    assert server["remote"]["port"] == client["local"]["port"]
    assert ipv4(server["remote"]["host"]) == LOOPBACK
    # info.remote and info.local, Python's additions (hyperswarm#97)
    if dialler.kind == "python":
        assert (client["info_remote"], client["info_local"]) == ([LOOPBACK, port], True)
    if announcer.kind == "python":
        assert (server["info_remote"], server["info_local"]) == ([LOOPBACK, client["local"]["port"]], True)
    # data both ways: each side greets on "connection"
    yield dialler.wait_for(event("data", conn=client["conn"], data=f"hello from {announcer_kind} announcer"))
    yield announcer.wait_for(event("data", conn=server["conn"], data=f"hello from {dialler_kind} dialler"))
    dialler.write(client["conn"], "more from the dialler")
    announcer.write(server["conn"], "more from the announcer")
    yield dialler.wait_for(event("data", conn=client["conn"], data="more from the announcer"))
    yield announcer.wait_for(event("data", conn=server["conn"], data="more from the dialler"))
    assert [o for o in dialler.lines if o.get("event") == "connection"] == [client]
    assert [o for o in announcer.lines if o.get("event") == "connection"] == [server]
    yield stop_and_check_clean_end(dialler, announcer, server)


@pytest.mark.parametrize("dialler_kind,announcer_kind", PAIRS, ids=PAIR_IDS)
@pytest_twisted.inlineCallbacks
def test_utp_through_a_holepunch_when_tcp_is_refused(reactor, make_peer, bootstrap, dialler_kind, announcer_kind):
    topic, announcer, dialler, port, client, server = yield connect_pair(
        reactor, make_peer, dialler_kind, announcer_kind, bootstrap, utp=True)
    assert pick(client, ["client", "type", "transport", "peer", "topics"]) == expected_client_line(
        port, topic, bootstrap, "utp")
    assert pick(server, ["client", "peer", "topics", "type", "transport"]) == dict(SERVER_LINE, type="utp",
                                                                                 transport="utp")
    # uTP runs on the swarms' own UDP sockets: each end's remote is the other's port
    assert (client["remote"]["port"], client["remote"]["host"]) == (port, LOOPBACK)
    assert server["remote"]["port"] == client["local"]["port"] == dialler.port
    assert server["local"]["port"] == port
    if dialler.kind == "python":
        assert (client["info_remote"], client["info_local"]) == ([LOOPBACK, port], False)
    if announcer.kind == "python":
        assert server["info_remote"] == [LOOPBACK, dialler.port]
    yield dialler.wait_for(event("data", conn=client["conn"], data=f"hello from {announcer_kind} announcer"))
    yield announcer.wait_for(event("data", conn=server["conn"], data=f"hello from {dialler_kind} dialler"))
    yield stop_and_check_clean_end(dialler, announcer, server)


SMALL, LARGE = bytes(31) + b"\x01", bytes(31) + b"\x02"


@pytest.mark.parametrize("a_kind,b_kind", [("node", "node"), ("python", "node"), ("python", "python")],
                         ids=["node-node", "python-node", "python-python"])
@pytest.mark.parametrize("a_id,b_id", [(SMALL, LARGE), (LARGE, SMALL)], ids=["a-smaller", "b-smaller"])
@pytest_twisted.inlineCallbacks
def test_simultaneous_connect_deduplicates_to_the_smaller_ids_dial(reactor, make_peer, a_kind, b_kind, a_id, b_id):
    """
    Both announce and look up, DHT and mDNS on, so both dial. Each exchanges
    a 32-byte id and calls ``deduplicate(own, remote)``: within 10 s one
    connection is left on each side, the same one (address pair), dialled by
    the peer with the smaller id.
    """
    topic = os.urandom(32)
    a = make_peer(a_kind, dedup_id=a_id)
    b = make_peer(b_kind, dedup_id=b_id)
    yield a.listen()
    yield b.listen()
    yield defer.gatherResults([a.join(topic, announce=True, lookup=True),
                               b.join(topic, announce=True, lookup=True)])
    first = yield a.wait_for(event("connection"))
    deadline = first["t"] + 10.0 if a.kind == "python" else time.monotonic() + 10.0
    smaller = a if a_id < b_id else b

    def split(conns):
        # Connections that carried bytes, and the rest. Once settled, the rest
        # may only be an inbound uTP connection whose dialler had already won
        # over TCP and dropped the attempt before its SYN was acknowledged
        # (Node's network does that: it sends nothing more, and the accepting
        # side keeps the connection until uTP's keepalive finds the other end
        # gone, ~30 s).
        return [c for c in conns if c["received"]], [c for c in conns if not c["received"]]

    def settled(conns, idle):
        return len(conns) == 1 and all((c["client"], c["transport"]) == (False, "utp") for c in idle)

    while True:
        conns_a, idle_a = split((yield a.connections()))
        conns_b, idle_b = split((yield b.connections()))
        dialled_both = (any(o["client"] for o in a.lines if o.get("event") == "connection")
                        and any(o["client"] for o in b.lines if o.get("event") == "connection"))
        if settled(conns_a, idle_a) and settled(conns_b, idle_b) and dialled_both:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no single connection on each side 10 s after the first one:"
                        f"\n a: {conns_a} + {idle_a}\n b: {conns_b} + {idle_b}"
                        f"\n a events: {[o for o in a.lines if o.get('event') not in ('peer', 'connections')]}"
                        f"\n b events: {[o for o in b.lines if o.get('event') not in ('peer', 'connections')]}")
        yield sleep(reactor, 0.1)
    (ca,), (cb,) = conns_a, conns_b

    def story():
        return (f"\n a: {ca}\n b: {cb}"
                f"\n a events: {[o for o in a.lines if o.get('event') not in ('peer', 'connections')]}"
                f"\n b events: {[o for o in b.lines if o.get('event') not in ('peer', 'connections')]}")

    # The survivor, by Node's rule (swarm.md 1.4): when both dials got the
    # same transport, the one dialled by the peer with the smaller id; when
    # one got TCP and the other uTP (a holepunch can beat a TCP handshake on
    # loopback), the TCP one.
    dial_a = next(o["transport"] for o in a.lines if o.get("event") == "connection" and o["client"])
    dial_b = next(o["transport"] for o in b.lines if o.get("event") == "connection" and o["client"])
    if dial_a == dial_b:
        dialler = smaller
    else:
        dialler = a if dial_a == "tcp" else b
    assert (ca["client"], cb["client"]) == ((True, False) if dialler is a else (False, True)), story()
    # ... and is one connection: the same address pair seen from both ends
    assert ca["transport"] == cb["transport"]
    assert (ca["local"]["port"], ca["remote"]["port"]) == (cb["remote"]["port"], cb["local"]["port"])
    # both sides ran the id exchange, and each saw the other's id
    assert any(o.get("event") == "dedup" and o["remote_id"] == b_id.hex() for o in a.lines)
    assert any(o.get("event") == "dedup" and o["remote_id"] == a_id.hex() for o in b.lines)
    # no connection that carried the ids was closed but as a duplicate (the
    # survivor is one of the two first connections, not a later redial)
    for side in (a, b):
        closed = [o for o in side.lines if o.get("event") == "disconnection" and o["received"]]
        assert all(o["duplicate"] for o in closed), story()
    # it stays so: the dropped dial is not retried
    yield sleep(reactor, 2.0)
    assert [c["conn"] for c in split((yield a.connections()))[0]] == [ca["conn"]]
    assert [c["conn"] for c in split((yield b.connections()))[0]] == [cb["conn"]]


def dht_lookup_process(processes, bootstrap):
    return processes.node("peers_node.js", json.dumps({"bootstrap": [f"{bootstrap[0]}:{bootstrap[1]}"],
                                                       "ephemeral": True}))


@defer.inlineCallbacks
def node_lookup(proc, topic):
    cmd = {"cmd": "lookup", "topic": topic.hex(), "id": next(_ids)}
    proc.send(cmd)
    line = yield proc.wait_for(lambda o: o.get("event") == "lookup-done" and o.get("id") == cmd["id"], WAIT)
    assert line["error"] is None
    return {(p["host"], p["port"]) for p in line["peers"]}


@pytest.mark.parametrize("kind", ["node", "python"])
@pytest_twisted.inlineCallbacks
def test_leave_unannounces_before_it_fires(reactor, make_peer, processes, bootstrap_node, bootstrap, kind):
    # The bootstrap node applies each update (announce, unannounce) 0.3 s
    # late and only then replies: a leave() that fired before its unannounce
    # completed would let the lookup below still find the record.
    boot, command = bootstrap_node

    def slow_update(request):
        return deferLater(reactor, 0.3, command.update, request)

    boot.remove_command(dht_peers.COMMAND)
    boot.add_command(dht_peers.COMMAND, query=command.query, update=slow_update)
    topic = os.urandom(32)
    swarm = make_peer(kind)
    port = yield swarm.listen()
    joined = yield swarm.join(topic, announce=True, lookup=False)
    assert joined["ok"] is True
    looker = dht_lookup_process(processes, bootstrap)
    yield looker.wait_for(event("ready"))
    assert (yield node_lookup(looker, topic)) == {(LOOPBACK, port)}
    yield swarm.leave(topic)
    assert (yield node_lookup(looker, topic)) == set()
    # the swarm itself is still up
    if kind == "node":
        assert swarm.proc.running
    else:
        assert swarm.swarm.running and swarm.swarm.address()[1] == port
