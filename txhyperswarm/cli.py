"""
``hyperswarm``: one-shot jobs on the command line (interfaces.md, "hyperswarm").

Each command prints JSON lines on stdout; errors are one line on stderr.
Exit status: 0 success, 1 the job failed (timeout, no bootstrap node
answered), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import List, Optional, Sequence

from twisted.internet import defer

from txhyperswarm._parsing import parse_host_port, topic_from_text

__all__ = ["main"]

#: The public hyperswarm 2 bootstrap nodes (@hyperswarm/dht 4.0.1).
PUBLIC_BOOTSTRAP = [
    ("bootstrap1.hyperdht.org", 49737),
    ("bootstrap2.hyperdht.org", 49737),
    ("bootstrap3.hyperdht.org", 49737),
]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class _BadInput(Exception):
    """Input that parses but makes no sense: one line, exit 2."""


def bootstrap_list(values: Optional[List[str]]):
    """
    ``--bootstrap`` values -> ``[(host, port)]``; none given -> ``None`` (the
    public list); ``none`` -> ``[]``.

    :raises ValueError: a value is not ``HOST:PORT``.
    """
    if not values:
        return None
    if values == ["none"]:
        return []
    return [parse_host_port(v) for v in values]


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


def _topic(text: str) -> bytes:
    try:
        return topic_from_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


# -- ping ------------------------------------------------------------------


async def _ping(reactor, args) -> int:
    from txhyperswarm.dht.node import DHTNode

    host, port = args.address
    node = DHTNode(reactor, bootstrap=[], ephemeral=True, host="0.0.0.0", port=0)
    node.startService()
    try:
        started = reactor.seconds()
        d = node.ping(host, port)
        d.addTimeout(args.timeout, reactor)
        try:
            reply = await d
        except defer.TimeoutError:
            sys.stderr.write(f"hyperswarm ping: no reply from {host}:{port} in {args.timeout:g}s\n")
            return 1
        except Exception as e:  # a failed RPC (retries exhausted, refused)
            sys.stderr.write(f"hyperswarm ping: {host}:{port} did not answer: {e}\n")
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


async def _lookup(reactor, args) -> int:
    from twisted.internet.task import deferLater

    from txhyperswarm.dht import peers
    from txhyperswarm.dht.node import DHTNode

    bootstrap = _bootstrap_arg(args.bootstrap)
    topic = args.topic
    seen = set()

    def report(record) -> None:
        key = (record.source, record.host, record.port, record.local)
        if key not in seen:
            seen.add(key)
            _emit(_record_json(record))

    node = mdns = None
    waits = []
    dht_failed = {"why": None}
    if bootstrap == []:
        dht_failed["why"] = "no bootstrap node (--bootstrap none)"
    else:
        node = DHTNode(reactor, bootstrap=bootstrap, ephemeral=True, host="0.0.0.0", port=0)
        node.startService()

        def walk_failed(f):
            dht_failed["why"] = f.getErrorMessage()

        waits.append(peers.lookup_stream(node, topic, report).addErrback(walk_failed))
    if not args.no_mdns:
        mdns = _start_mdns(reactor)
        if mdns is not None:
            handle = mdns.lookup(topic, report)
            waits.append(handle.ready.addCallback(lambda _: deferLater(reactor, MDNS_LISTEN, lambda: None)))
    try:
        if waits:
            everything = defer.gatherResults(waits, consumeErrors=True)
            everything.addTimeout(args.timeout, reactor)
            try:
                await everything
            except defer.TimeoutError:
                pass  # --timeout: report what was found
    finally:
        await _stop(mdns, node)
    if dht_failed["why"] is not None and mdns is None:
        sys.stderr.write(f"hyperswarm lookup: the DHT walk failed: {dht_failed['why']}\n")
        return 1
    return 0


async def _announce(reactor, args) -> int:
    from txhyperswarm.dht import peers
    from txhyperswarm.dht.node import DHTNode

    bootstrap = _bootstrap_arg(args.bootstrap)
    topic = args.topic
    node = mdns = announcement = handle = None
    try:
        if bootstrap != []:
            node = DHTNode(reactor, bootstrap=bootstrap, ephemeral=True, host="0.0.0.0", port=0)
            node.startService()
            announcement = peers.announce(node, topic, port=args.port, local_address=args.local_address)
        if not args.no_mdns:
            mdns = _start_mdns(reactor)
            if mdns is not None:
                handle = mdns.announce(topic, args.port)
        if announcement is None and handle is None:
            sys.stderr.write("hyperswarm announce: nothing to announce on: no bootstrap node and no mDNS\n")
            return 1
        first = announcement.ready if announcement is not None else handle.ready
        try:
            await first
        except Exception as e:
            sys.stderr.write(f"hyperswarm announce: the first announce failed: {e}\n")
            return 1
        _emit({"topic": topic.hex(), "announced": True})
        await _interrupted.deferred
        if announcement is not None:
            unannounce = announcement.stop()
            unannounce.addTimeout(UNANNOUNCE_LIMIT, reactor)
            try:
                await unannounce
            except defer.TimeoutError:
                sys.stderr.write(f"hyperswarm announce: unannounce took over {UNANNOUNCE_LIMIT:g}s; exiting\n")
        return 0
    finally:
        if handle is not None:
            handle.stop()
        await _stop(mdns, node)


_COMMANDS = {"ping": _ping, "lookup": _lookup, "announce": _announce}


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the command on the global reactor, return the exit status."""
    args = _build_parser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.task import react

    status = {"code": 1}

    def install_handlers():
        # react() runs job before the reactor starts, and the reactor then
        # installs its own SIGINT/SIGTERM handlers: replace them once running,
        # so a signal lets a command finish its work (unannounce) and exit 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: reactor.callFromThread(_interrupted.set))

    async def job(reactor):
        reactor.callWhenRunning(install_handlers)
        try:
            status["code"] = await _COMMANDS[args.command](reactor, args)
        except _BadInput as e:
            sys.stderr.write(f"hyperswarm: error: {e}\n")
            status["code"] = 2

    try:
        react(lambda r: defer.Deferred.fromCoroutine(job(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status["code"]


class _Interrupt:
    """A SIGINT/SIGTERM seen by a long-running command."""

    def __init__(self) -> None:
        self.deferred: defer.Deferred = defer.Deferred()

    def set(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(None)


_interrupted = _Interrupt()


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
