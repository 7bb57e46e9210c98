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
    return parser


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


_COMMANDS = {"ping": _ping}


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the command on the global reactor, return the exit status."""
    args = _build_parser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.task import react

    status = {"code": 1}

    async def job(reactor):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: reactor.callFromThread(_interrupted.set))
        status["code"] = await _COMMANDS[args.command](reactor, args)

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
