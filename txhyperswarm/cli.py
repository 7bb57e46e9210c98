"""
``hyperswarm``: one-shot jobs on the command line (interfaces.md, "hyperswarm").

Each command prints JSON lines on stdout (nothing else); stderr carries
the hex topic used (``lookup``/``announce``), warnings, and errors (bad
input: one line). Exit status: 0 success, 1 the job failed (ping timeout,
no bootstrap node answered with mDNS off, first announce failed), 2 bad
input. SIGINT/SIGTERM end any command cleanly: ``announce`` unannounces
(at most 3 s) and exits 0, ``lookup`` stops as at ``--timeout``, ``ping``
exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

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

    walk = {"failed": None, "ended": False, "decided": False}
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


_COMMANDS = {"ping": _ping, "lookup": _lookup, "announce": _announce}


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
