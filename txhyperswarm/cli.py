"""
``hyperswarm``: one-shot jobs on the command line (interfaces.md, "hyperswarm").

``ping``, ``lookup`` and ``announce`` print JSON lines on stdout (nothing
else); ``pipe`` (netcat over a topic, :class:`PipeJob`) puts only the peer's
bytes there. stderr carries the hex topic used, warnings, and errors (bad
input: one line). Exit status: 0 success, 1 the job failed (ping timeout,
no bootstrap node answered with mDNS off, first announce failed), 2 bad
input. SIGINT/SIGTERM end any command cleanly: ``announce`` unannounces
(at most 3 s) and exits 0, ``lookup`` stops as at ``--timeout``, ``ping``
and ``pipe`` exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._parsing import bootstrap_list, parse_host_port, topic_from_text
from txhyperswarm._signals import on_stop_signals

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class _BadInput(Exception):
    """Input that parses but makes no sense: one line, exit 2."""


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _host_port(text: str):
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _TopicArg(bytes):
    """A topic as typed: the 32 bytes, plus ``text`` and whether it was hashed."""

    text: str
    hashed: bool


def _topic(text: str) -> _TopicArg:
    try:
        topic = _TopicArg(topic_from_text(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    topic.text = text
    topic.hashed = topic.hex() != text.lower()
    return topic


def _say_topic(command: str, topic: _TopicArg) -> None:
    """interfaces.md: "the log says which hex topic was used" (stderr; stdout stays JSON)."""
    how = f"SHA-256 of {topic.text!r}" if topic.hashed else "as given"
    sys.stderr.write(f"hyperswarm {command}: topic {topic.hex()} ({how})\n")
    sys.stderr.flush()


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hyperswarm", description="hyperswarm one-shot jobs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ping = sub.add_parser("ping", help="ping a DHT node")
    ping.add_argument("address", type=_host_port, metavar="HOST:PORT")
    ping.add_argument("--timeout", type=_positive, default=5.0)

    lookup = sub.add_parser("lookup", help="find the peers of a topic")
    lookup.add_argument("topic", type=_topic, metavar="TOPIC")
    lookup.add_argument("--bootstrap", action="append", metavar="HOST:PORT")
    lookup.add_argument("--timeout", type=_positive, default=10.0)
    lookup.add_argument("--no-mdns", action="store_true")

    announce = sub.add_parser("announce", help="announce a topic until interrupted")
    announce.add_argument("topic", type=_topic, metavar="TOPIC")
    announce.add_argument("--port", type=_port, required=True)
    announce.add_argument("--bootstrap", action="append", metavar="HOST:PORT")
    announce.add_argument("--local-address", type=_host_port, metavar="HOST:PORT")
    announce.add_argument("--no-mdns", action="store_true")

    pipe = sub.add_parser(
        "pipe", help="netcat over a topic: stdin to the first peer, its bytes to stdout",
        description="Pipe stdin to the first peer of TOPIC and that peer's bytes to stdout. "
                    "Example: on one machine `hyperswarm pipe my-files < a.tar`, on another "
                    "`hyperswarm pipe my-files > a.tar`.",
    )
    pipe.add_argument("topic", type=_topic, metavar="TOPIC")
    pipe.add_argument("--announce", action="store_true",
                      help="announce the topic (with neither flag: announce and look up)")
    pipe.add_argument("--lookup", action="store_true",
                      help="look the topic up (with neither flag: announce and look up)")
    pipe.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                      help="DHT bootstrap node (repeatable; 'none': mDNS only); default: the public list")
    pipe.add_argument("--no-mdns", action="store_true", help="do not use multicast DNS")
    pipe.add_argument("--timeout", type=_positive, default=None, metavar="S",
                      help="give up (exit 1) if no peer is connected within S seconds (default: wait)")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text!r}")
    return int(text)


def _bootstrap_arg(values):
    try:
        return bootstrap_list(values)
    except ValueError as e:
        raise _BadInput(f"--bootstrap: {e}") from None


# -- waiting: done, --timeout, or SIGINT/SIGTERM ------------------------------


def _race(reactor, work: defer.Deferred, timeout: Optional[float],
          interrupted: Optional[OneShotObserver] = None) -> defer.Deferred:
    """
    Wait for ``work``, ``timeout`` seconds (``None``: no limit) or (when
    given) the ``interrupted`` observer (fired by :func:`run` at
    SIGINT/SIGTERM).

    :returns: a Deferred firing with ``("done", result)`` (``result`` may be
        a Failure, which is consumed), ``("timeout", None)`` or
        ``("interrupted", None)``; it never errbacks. ``work`` is left alone
        (not cancelled) when it did not finish: the caller decides.
    """
    outcome: defer.Deferred = defer.Deferred()
    signalled = interrupted.when_fired() if interrupted is not None else defer.Deferred()
    timer = reactor.callLater(timeout, lambda: settle("timeout")) if timeout is not None else None

    def settle(kind: str, value=None) -> None:
        if outcome.called:
            return
        if timer is not None and timer.active():
            timer.cancel()
        if not signalled.called:
            signalled.cancel()
        outcome.callback((kind, value))

    signalled.addCallbacks(lambda _: settle("interrupted"), lambda f: f.trap(defer.CancelledError) and None)
    work.addBoth(lambda result: settle("done", result))
    return outcome


# -- ping ------------------------------------------------------------------


async def _ping(reactor, args, interrupted: OneShotObserver) -> int:
    from txhyperswarm.dht.node import DHTNode

    host, port = args.address
    node = DHTNode(reactor, bootstrap=[], ephemeral=True, host="0.0.0.0", port=0)
    node.startService()
    try:
        started = reactor.seconds()
        pinging = node.ping(host, port)
        kind, reply = await _race(reactor, pinging, args.timeout, interrupted)
        if kind != "done":
            pinging.cancel()  # forgets the request
            why = f"no reply in {args.timeout:g}s" if kind == "timeout" else "interrupted before a reply"
            sys.stderr.write(f"hyperswarm ping: {host}:{port}: {why}\n")
            return 1
        if isinstance(reply, Failure):  # a failed RPC (retries exhausted, refused)
            sys.stderr.write(f"hyperswarm ping: {host}:{port} did not answer: {reply.getErrorMessage()}\n")
            return 1
        rtt = (reactor.seconds() - started) * 1000.0
        node_id = getattr(reply, "id", None)
        _emit({"host": host, "port": port, "id": node_id.hex() if node_id else None, "rtt_ms": round(rtt, 3)})
        return 0
    finally:
        await node.stopService()


# -- lookup / announce ------------------------------------------------------

#: How long ``lookup`` listens for mDNS answers after its first query.
MDNS_LISTEN = 3.0
#: How long ``announce`` may take to unannounce once interrupted.
UNANNOUNCE_LIMIT = 3.0


def _record_json(record) -> dict:
    referrer = record.referrer
    return {
        "topic": record.topic.hex(),
        "host": record.host,
        "port": record.port,
        "local": record.local,
        "referrer": f"{referrer[0]}:{referrer[1]}" if referrer else None,
        "source": record.source,
    }


def _start_mdns(reactor):
    """A started MulticastDiscovery, or ``None`` (said on stderr) if it cannot bind."""
    from twisted.internet.error import CannotListenError

    from txhyperswarm.mdns import MulticastDiscovery

    mdns = MulticastDiscovery(reactor)
    try:
        mdns.startService()
    except CannotListenError as e:
        sys.stderr.write(f"hyperswarm: mDNS is off: cannot bind port 5353: {e.socketError}\n")
        return None
    return mdns


async def _stop(*services) -> None:
    for svc in services:
        if svc is not None and svc.running:
            await defer.maybeDeferred(svc.stopService)


def _error_text(error) -> str:
    """An ``on_update`` error (a Failure or an exception) as one line."""
    if isinstance(error, Failure):
        return error.getErrorMessage() or error.type.__name__
    return str(error) or type(error).__name__


def _discovery(reactor, bootstrap, mdns_on: bool):
    """
    The services a command discovers through, started: ``(node, mdns,
    Discovery or None)``; no DHT node with ``--bootstrap none``, no mDNS
    with ``--no-mdns`` or when 5353 cannot be bound.
    """
    from txhyperswarm.dht.node import DHTNode
    from txhyperswarm.discovery import Discovery

    node = mdns = None
    if bootstrap != []:
        node = DHTNode(reactor, bootstrap=bootstrap, ephemeral=True, host="0.0.0.0", port=0)
        node.startService()
    if mdns_on:
        mdns = _start_mdns(reactor)
    if node is None and mdns is None:
        return None, None, None
    return node, mdns, Discovery(reactor, dht=node, mdns=mdns)


async def _lookup(reactor, args, interrupted: OneShotObserver) -> int:
    from twisted.internet.task import deferLater

    bootstrap = _bootstrap_arg(args.bootstrap)
    _say_topic("lookup", args.topic)
    topic = bytes(args.topic)
    seen = set()

    def report(record) -> None:
        # Discovery passes every report on (repeats included); only what
        # is printed is de-duplicated.
        key = (record.source, record.host, record.port, record.local)
        if key not in seen:
            seen.add(key)
            _emit(_record_json(record))

    walk: Dict[str, Any] = {"failed": None, "ended": False, "decided": False}
    walked: defer.Deferred = defer.Deferred()

    def cycle_ended(error) -> None:
        # The first DHT cycle (the walk) has ended. Nothing after the
        # command decided (a cycle ended by the stop) changes the outcome.
        if walk["ended"] or walk["decided"]:
            return
        walk["ended"] = True
        if error is not None:
            walk["failed"] = _error_text(error)
        walked.callback(None)

    node, mdns, discovery = _discovery(reactor, bootstrap, not args.no_mdns)
    if bootstrap == []:
        walk["failed"] = "no bootstrap node (--bootstrap none)"
    if discovery is None:
        sys.stderr.write(f"hyperswarm lookup: the DHT walk failed: {walk['failed']}\n")
        return 1
    joined = None
    try:
        joined = discovery.join(topic, lookup=True, on_peer=report, on_update=cycle_ended)
        waits = []
        if joined.dht is not None:
            waits.append(walked)
        if joined.mdns is not None:
            waits.append(joined.mdns.when_ready().addCallback(lambda _: deferLater(reactor, MDNS_LISTEN, lambda: None)))
        everything = defer.DeferredList(waits, consumeErrors=True)
        kind, _ = await _race(reactor, everything, args.timeout, interrupted)
        if kind != "done":
            # Cut short (--timeout or a signal): the walk failed only if no
            # node has answered it so far.
            if node is not None and not walk["ended"] and node.routing_table_size == 0:
                when = f"within --timeout {args.timeout:g}s" if kind == "timeout" else "before the interrupt"
                walk["failed"] = f"no bootstrap node answered {when}"
            everything.cancel()  # stops waiting for the walk and the mDNS listen
        walk["decided"] = True
    finally:
        walk["decided"] = True
        if joined is not None:
            joined.stop()  # a lookup has nothing to unannounce: this is at once
        await _stop(mdns, node)
    if walk["failed"] is not None and (node is not None or mdns is None):
        sys.stderr.write(f"hyperswarm lookup: the DHT walk failed: {walk['failed']}\n")
    return 1 if walk["failed"] is not None and mdns is None else 0


async def _announce(reactor, args, interrupted: OneShotObserver) -> int:
    bootstrap = _bootstrap_arg(args.bootstrap)
    _say_topic("announce", args.topic)
    topic = bytes(args.topic)
    node, mdns, discovery = _discovery(reactor, bootstrap, not args.no_mdns)
    if discovery is None:
        sys.stderr.write("hyperswarm announce: nothing to announce on: no bootstrap node and no mDNS\n")
        return 1
    first_cycle: defer.Deferred = defer.Deferred()

    def cycle_ended(error) -> None:
        if not first_cycle.called:
            first_cycle.callback(error)

    joined = None
    try:
        joined = discovery.join(topic, announce_port=args.port, local_address=args.local_address,
                                lookup=False, on_update=cycle_ended)
        # The first announce is done when the DHT's first cycle has ended
        # (its UPDATEs sent: not when_ready(), which may fire early, after 6
        # full responses); with no DHT node, once mDNS announced.
        if joined.dht is not None:
            kind, error = await _race(reactor, first_cycle, None, interrupted)
            why = _error_text(error) if error is not None else None
        else:
            kind, ok = await _race(reactor, joined.when_ready(), None, interrupted)
            why = None if ok is True else "mDNS did not announce"
        if kind == "done":
            if why is not None:
                sys.stderr.write(f"hyperswarm announce: the first announce failed: {why}\n")
                return 1
            _emit({"topic": topic.hex(), "announced": True})
            await interrupted.when_fired()
        stopping = joined.stop()  # unannounces on the DHT; mDNS stops at once
        kind, _ = await _race(reactor, stopping, UNANNOUNCE_LIMIT)
        if kind == "timeout":
            stopping.cancel()
            sys.stderr.write(f"hyperswarm announce: unannounce took over {UNANNOUNCE_LIMIT:g}s; exiting\n")
        return 0
    finally:
        if joined is not None:
            joined.stop()
        await _stop(mdns, node)


# -- pipe ----------------------------------------------------------------

#: A pipe that both announces and looks up dials a peer it found at once
#: only if its own port is lower than the peer's; otherwise it waits this
#: long for that peer to dial it first (see :class:`PipeJob`).
DIAL_GRACE = 2.0
#: How long the swarm may take to stop (unannounce) once the pipe is done.
PIPE_STOP_LIMIT = 3.0
#: While no peer is connected, the pipe walks the DHT again after these
#: pauses (then every last one): two pipes started together each miss the
#: other on their first walk, and the swarm's own cycle is 5-10 minutes.
RELOOKUP_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)


@implementer(IHalfCloseableProtocol)
class _StdioSide(Protocol):
    """The process's stdin/stdout (``twisted.internet.stdio.StandardIO``)."""

    transport: Any

    def __init__(self, job: "PipeJob") -> None:
        self.job = job

    def connectionMade(self) -> None:
        self.job.stdio_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.job.stdin_data(data)

    def readConnectionLost(self) -> None:
        self.job.stdin_ended()

    def writeConnectionLost(self) -> None:
        self.job.stdout_closed()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # stdin and stdout are both closed (whichever closed last lands here).
        self.job.stdin_ended()
        self.job.stdout_closed()


@implementer(IHalfCloseableProtocol)
class _PeerSide(Protocol):
    """One swarm connection of the pipe (the chosen one, or a duplicate it closes)."""

    transport: Any

    def __init__(self, job: "PipeJob") -> None:
        self.job = job

    def connectionMade(self) -> None:
        self.job.peer_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.job.peer_data(self, data)

    def readConnectionLost(self) -> None:
        self.job.peer_ended(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.job.peer_closed(self, reason)


class PipeJob:
    """
    ``hyperswarm pipe``: one swarm connection between stdin/stdout and the
    first peer of a topic.

    **One connection.** Two pipes that both announce and look up may find
    each other at the same time; hyperswarm 2 has no handshake to settle a
    double dial on, and the pipe sends nothing but the user's bytes. So:

    - the first connection made (inbound or dialled) is the pipe; every
      later one is closed at once, pending dials are cancelled, and the
      topic is left (unannounced): a pipe serves one peer;
    - a pipe that also announces dials a peer it found at once only if its
      own port is lower than the peer's (or equal); otherwise it waits
      :data:`DIAL_GRACE` seconds for that peer to dial it, and dials then
      if nobody has (the peer may only announce);
    - a pipe that only looks up dials at once; one that only announces
      never dials.

    So two pipes on one topic open one connection, the lower port's dial,
    unless that dial takes longer than the grace period.

    **Flow.** stdin is read only once a peer is connected, and then only
    as fast as the connection takes it (stdin is the connection's
    producer); the peer's bytes are read only as fast as stdout takes them
    (the connection is stdout's producer): memory stays bounded. The end
    of stdin is a half-close (FIN) to the peer; the peer's end closes
    stdout (after what was written). Done, with exit status 0, once both
    directions have ended and stdout is flushed; 1 when the connection
    drops before that.
    """

    def __init__(self, reactor: Any, swarm: Any, *, announce: bool, lookup: bool,
                 grace: float = DIAL_GRACE) -> None:
        self.reactor = reactor
        self.swarm = swarm
        self.announce = announce
        self.lookup = lookup
        self.grace = grace
        self.peer: Optional[_PeerSide] = None
        self.stdio: Optional[_StdioSide] = None
        self.connected: OneShotObserver[None] = OneShotObserver()
        self.finished: OneShotObserver[int] = OneShotObserver()
        self.duplicates = 0
        self._stdin_buffer: List[bytes] = []
        self._stdin_ended = False
        self._stdout_closed = False
        self._peer_ended = False
        self._fin_sent = False
        self._closing = False
        self._peer_gone = False
        self._tried: Set[Tuple[str, int]] = set()
        self._waiting: List[Any] = []
        self._dialling: Optional[defer.Deferred] = None
        self._timers: Dict[Tuple[str, int], Any] = {}
        self._relookups = 0
        self._relookup_call: Any = None
        self._relookup_walk: Optional[defer.Deferred] = None

    def relookup(self, topic: bytes) -> None:
        """Walk the DHT for ``topic`` again, after the next pause, until connected."""
        dht = getattr(self.swarm.network, "dht", None)
        if not self.lookup or dht is None or self.peer is not None or self.finished.fired:
            return
        delay = RELOOKUP_DELAYS[min(self._relookups, len(RELOOKUP_DELAYS) - 1)]
        self._relookups += 1
        self._relookup_call = self.reactor.callLater(delay, self._walk, dht, topic)

    def _walk(self, dht: Any, topic: bytes) -> None:
        from txhyperswarm.dht import peers

        self._relookup_call = None
        d = self._relookup_walk = peers.lookup_stream(dht, topic, on_peer=self.found)

        def ended(_: Any) -> None:
            self._relookup_walk = None
            self.relookup(topic)

        d.addErrback(lambda f: f.trap(Exception) and None).addCallback(ended)

    # -- finding and dialling ------------------------------------------------

    def validate_peer(self, peer: Any) -> bool:
        """The swarm's ``validate_peer``: the pipe dials on its own, never the queue."""
        self.found(peer)
        return False

    def is_self(self, peer: Any) -> bool:
        address = self.swarm.address()
        return address is not None and peer.port == address[1] and (peer.local or _loopback(peer.host))

    def found(self, peer: Any) -> None:
        key = (peer.host, peer.port)
        if self.peer is not None or key in self._tried or key in self._timers or self.is_self(peer):
            return
        own = self.swarm.address()
        if self.announce and own is not None and own[1] > peer.port:
            self._timers[key] = self.reactor.callLater(self.grace, self._grace_over, key, peer)
            return
        self._queue_dial(key, peer)

    def _grace_over(self, key: Tuple[str, int], peer: Any) -> None:
        self._timers.pop(key, None)
        if self.peer is None:
            self._queue_dial(key, peer)

    def _queue_dial(self, key: Tuple[str, int], peer: Any) -> None:
        self._tried.add(key)
        self._waiting.append(peer)
        self._next_dial()

    def _next_dial(self) -> None:
        if self.peer is not None or self._dialling is not None or not self._waiting:
            return
        peer = self._waiting.pop(0)
        d = self._dialling = self.swarm.connect(peer)

        def done(result: Any) -> None:
            self._dialling = None
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                sys.stderr.write(f"hyperswarm pipe: could not connect to {peer.host}:{peer.port}: "
                                 f"{result.getErrorMessage() or result.type.__name__}\n")
            self._next_dial()

        d.addBoth(done)

    def _stop_finding(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._waiting.clear()
        if self._relookup_call is not None and self._relookup_call.active():
            self._relookup_call.cancel()
        self._relookup_call = None
        if self._relookup_walk is not None:
            self._relookup_walk.cancel()
        if self._dialling is not None:
            self._dialling.cancel()

    # -- the connection -------------------------------------------------------

    def peer_connected(self, peer: _PeerSide) -> None:
        if self.peer is not None or self.finished.fired:
            self.duplicates += 1
            peer.transport.abortConnection()
            return
        self.peer = peer
        remote = peer.transport.getPeer()
        sys.stderr.write(f"hyperswarm pipe: connected to {remote.host}:{remote.port} ({remote.type})\n")
        sys.stderr.flush()
        self._stop_finding()
        self.connected.fire(None)
        self._wire()

    def stdio_ready(self, stdio: _StdioSide) -> None:
        self.stdio = stdio
        if self.peer is None:
            stdio.transport.pauseProducing()  # nobody to send stdin to yet
        self._wire()

    def _wire(self) -> None:
        peer, stdio = self.peer, self.stdio
        if peer is None or stdio is None:
            return
        buffered, self._stdin_buffer = b"".join(self._stdin_buffer), []
        if buffered:
            peer.transport.write(buffered)
        stdio.transport.registerProducer(peer.transport, True)  # stdout full: stop reading the peer
        if self._stdin_ended:
            self._send_fin()
        else:
            peer.transport.registerProducer(stdio.transport, True)  # connection full: stop reading stdin
            stdio.transport.resumeProducing()

    def stdin_data(self, data: bytes) -> None:
        if self.peer is None:
            self._stdin_buffer.append(data)
        else:
            self.peer.transport.write(data)

    def stdin_ended(self) -> None:
        if self._stdin_ended:
            return
        self._stdin_ended = True
        if self.peer is not None:
            self._send_fin()

    def _send_fin(self) -> None:
        peer = self.peer
        if self._fin_sent or peer is None or self.finished.fired:
            return
        self._fin_sent = True
        peer.transport.unregisterProducer()
        peer.transport.loseWriteConnection()
        self._check_done()

    def peer_data(self, peer: _PeerSide, data: bytes) -> None:
        if peer is self.peer and self.stdio is not None and not self._stdout_closed:
            self.stdio.transport.write(data)

    def peer_ended(self, peer: _PeerSide) -> None:
        if peer is not self.peer or self._peer_ended:
            return
        self._peer_ended = True
        self._close_stdout()

    def _close_stdout(self) -> None:
        if self.stdio is not None and not self._stdout_closed:
            self.stdio.transport.unregisterProducer()
            self.stdio.transport.loseWriteConnection()

    def stdout_closed(self) -> None:
        if self._stdout_closed:
            return
        self._stdout_closed = True
        self._check_done()

    def _check_done(self) -> None:
        if self._fin_sent and self._peer_ended and self._stdout_closed and self.peer is not None:
            if self._peer_gone:
                self.finished.fire_if_not_fired(0)
                return
            # done once the connection has closed: what we wrote (and our
            # FIN) is sent by then, not dropped by the swarm's stop
            self._closing = True
            self.peer.transport.loseConnection()

    def peer_closed(self, peer: _PeerSide, reason: Optional[Failure]) -> None:
        if peer is not self.peer or self.finished.fired:
            return
        self._peer_gone = True
        if self._closing:
            self.finished.fire_if_not_fired(0)
            return
        clean = self._peer_ended and (reason is None or reason.check(ConnectionDone) is not None)
        # Whatever the peer sent is written before stdout closes; nothing
        # more can be sent.
        self._peer_ended = self._fin_sent = True
        self._close_stdout()
        if not clean:
            why = reason.getErrorMessage() if reason is not None else "closed"
            sys.stderr.write(f"hyperswarm pipe: the connection dropped: {why}\n")
            self.finished.fire_if_not_fired(1)
            return
        self._check_done()  # the peer closed both sides after its FIN: done once stdout is flushed

    def close(self) -> None:
        """Stop everything (the swarm is stopped by the caller)."""
        self._stop_finding()
        if self.stdio is not None:
            self.stdio.transport.loseConnection()


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


class _PipeFactory(Factory):
    def __init__(self, job_holder: Dict[str, PipeJob]) -> None:
        self.job_holder = job_holder

    def buildProtocol(self, addr: Any) -> _PeerSide:
        return _PeerSide(self.job_holder["job"])


async def _pipe(reactor, args, interrupted: OneShotObserver) -> int:
    from twisted.internet.stdio import StandardIO

    from txhyperswarm.swarm import Hyperswarm

    bootstrap = _bootstrap_arg(args.bootstrap)
    if bootstrap == [] and args.no_mdns:
        raise _BadInput("--bootstrap none with --no-mdns leaves no way to find a peer")
    announce, lookup = (args.announce, args.lookup) if (args.announce or args.lookup) else (True, True)
    _say_topic("pipe", args.topic)
    topic = bytes(args.topic)
    holder: Dict[str, PipeJob] = {}
    swarm = Hyperswarm(reactor, bootstrap=bootstrap, ephemeral=True, multicast=not args.no_mdns,
                       factory=_PipeFactory(holder),
                       validate_peer=lambda peer: holder["job"].validate_peer(peer))
    job = holder["job"] = PipeJob(reactor, swarm, announce=announce, lookup=lookup)
    StandardIO(_StdioSide(job), reactor=reactor)
    swarm.startService()
    try:
        joined = swarm.join(topic, announce=announce, lookup=lookup)

        def join_done(ok: Any) -> None:
            if ok is False and args.no_mdns and not job.connected.fired:
                job.finished.fire_if_not_fired(1)
                sys.stderr.write("hyperswarm pipe: no DHT bootstrap node answered (and mDNS is off)\n")
            elif ok is True:
                job.relookup(topic)

        def join_failed(f: Failure) -> None:
            sys.stderr.write(f"hyperswarm pipe: cannot join: {f.getErrorMessage()}\n")
            job.finished.fire_if_not_fired(1)

        joined.addCallbacks(join_done, join_failed)
        kind, _ = await _race(reactor, defer.DeferredList([job.connected.when_fired(), job.finished.when_fired()],
                                                          fireOnOneCallback=True, consumeErrors=True),
                              args.timeout, interrupted)
        if kind == "timeout":
            sys.stderr.write(f"hyperswarm pipe: no peer connected within {args.timeout:g}s\n")
            return 1
        if kind == "interrupted":
            sys.stderr.write("hyperswarm pipe: interrupted\n")
            return 1
        if job.finished.fired:
            return await job.finished.when_fired()
        swarm.leave(topic).addErrback(lambda f: None)  # one peer: unannounce now, keep the connection
        kind, code = await _race(reactor, job.finished.when_fired(), None, interrupted)
        if kind == "interrupted":
            sys.stderr.write("hyperswarm pipe: interrupted\n")
            return 1
        return code
    finally:
        job.close()
        stopping = swarm.stopService()
        kind, _ = await _race(reactor, stopping, PIPE_STOP_LIMIT)
        if kind == "timeout":
            stopping.cancel()


_COMMANDS = {"ping": _ping, "lookup": _lookup, "announce": _announce, "pipe": _pipe}


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the command on the global reactor, return the exit status."""
    args = _build_parser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.task import react

    status = {"code": 1}
    # SIGINT/SIGTERM end every command through its own clean-up (announce:
    # unannounce; lookup: stop as at --timeout; ping: no reply, exit 1).
    interrupted: OneShotObserver = OneShotObserver()
    on_stop_signals(reactor, interrupted.fire)

    async def job(reactor):
        try:
            status["code"] = await _COMMANDS[args.command](reactor, args, interrupted)
        except _BadInput as e:
            sys.stderr.write(f"hyperswarm: error: {e}\n")
            status["code"] = 2

    try:
        react(lambda r: defer.Deferred.fromCoroutine(job(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status["code"]


def main() -> None:
    """Console script entry point."""
    try:
        code = run()
    except _BadInput as e:
        sys.stderr.write(f"hyperswarm: error: {e}\n")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
