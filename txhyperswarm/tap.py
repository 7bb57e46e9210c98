"""
``twist hyperswarm``: the daemon (interfaces.md, "twist hyperswarm").

:func:`makeService` is what the twist plugin calls; :func:`build_service`
does the work with an injected reactor, so tests can use a fake one.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from txhyperswarm._parsing import bootstrap_list, topic_from_text
from txhyperswarm._signals import on_stop_signals
from txhyperswarm.dht.state import KeepState, NodeState

__all__ = ["Options", "makeService", "build_service"]

BOOTSTRAP_NODE_PORT = 49737

log = Logger(namespace="txhyperswarm.tap")


def _check_endpoint(kind: str, text: str) -> None:
    """Raise UsageError unless ``text`` parses as a server/client endpoint string."""
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        (serverFromString if kind == "server" else clientFromString)(MemoryReactor(), text)
    except Exception as e:  # endpoint parsers raise ValueError, KeyError, TypeError...
        raise usage.UsageError(f"bad endpoint {text!r}: {e}") from None


class Options(usage.Options):
    """Command line of ``twist hyperswarm``."""

    synopsis = "[--bootstrap-node | --topic T ...] [options]"
    optFlags = [
        ["bootstrap-node", None, "Run a persistent DHT node only (answers RPCs, stores peer records)."],
        ["no-mdns", None, "Do not use multicast DNS."],
        ["ephemeral", None, "DHT node is ephemeral (sends no id)."],
        ["persistent", None, "DHT node is persistent (joins the routing tables of others)."],
    ]
    optParameters = [
        ["host", None, "0.0.0.0", "Interface for the UDP socket (DHT + uTP) and the TCP listener."],
        ["port", None, None, "Port for UDP and TCP (default 49737 with --bootstrap-node, else 0).", int],
        ["expose", None, None, "Announce the topics; pipe incoming swarm connections to this client endpoint."],
        ["listen", None, None, "Look the topics up; pipe local connections on this server endpoint to peers."],
        ["status-http", None, None, "Serve GET /status and GET /metrics on this server endpoint."],
        ["state-dir", None, None, "Keep the node id and a routing-table snapshot here."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []
        self["topic"] = []

    def opt_bootstrap(self, value: str) -> None:
        """DHT bootstrap node HOST:PORT (repeatable); 'none' for none."""
        self["bootstrap"].append(value)  # parsed in postOptions

    def opt_topic(self, value: str) -> None:
        """Topic to join (repeatable): 64 hex characters, or text hashed with SHA-256."""
        try:
            self["topic"].append(topic_from_text(value))
        except ValueError as e:
            raise usage.UsageError(f"--topic: {e}") from None

    def parseOptions(self, options=None):
        # twist prints the whole usage text and exits 64 on a UsageError; the
        # contract is one line on stderr and exit status 2, nothing started.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twist hyperswarm: error: {e}\n")
            raise SystemExit(2)

    def postOptions(self) -> None:
        if self["ephemeral"] and self["persistent"]:
            raise usage.UsageError("--ephemeral and --persistent exclude each other")
        try:
            ipaddress.IPv4Address(self["host"])
        except ValueError:
            raise usage.UsageError(f"--host must be an IPv4 address, got {self['host']!r}") from None
        port = self["port"]
        if port is None:
            self["port"] = BOOTSTRAP_NODE_PORT if self["bootstrap-node"] else 0
        elif not 0 <= port < 65536:
            raise usage.UsageError(f"--port must be 0..65535, got {port}")
        try:
            boots = bootstrap_list(self["bootstrap"])
        except ValueError as e:
            raise usage.UsageError(f"--bootstrap: {e}") from None
        if boots is None and self["bootstrap-node"]:
            boots = []
        self["bootstrap"] = boots  # None: DHTNode's public list
        if self["expose"]:
            _check_endpoint("client", self["expose"])
        if self["listen"]:
            _check_endpoint("server", self["listen"])
        if self["status-http"]:
            _check_endpoint("server", self["status-http"])
        if self["expose"] and self["listen"]:
            raise usage.UsageError("--expose and --listen exclude each other")
        if not self["bootstrap-node"] and not self["topic"]:
            raise usage.UsageError("give --bootstrap-node, or at least one --topic")
        if self["bootstrap-node"] and self["topic"]:
            raise usage.UsageError("--bootstrap-node runs a DHT node only: it takes no --topic")
        if self["topic"]:
            # Joining topics (and --expose/--listen) is the swarm's job; until
            # that layer exists, say so instead of starting a node that
            # silently ignores the topics.
            raise usage.UsageError(
                "joining topics (--topic, --expose, --listen) needs the swarm layer, "
                "which this version does not have yet; --bootstrap-node runs"
            )
        state_dir = self["state-dir"]
        if state_dir is not None:
            # last: the only check with a side effect (the directory is made)
            try:
                os.makedirs(state_dir, exist_ok=True)
            except OSError as e:
                raise usage.UsageError(f"--state-dir: cannot use {state_dir!r}: {e.strerror or e}") from None


class _ExitCleanly(service.Service):
    """
    Make SIGINT/SIGTERM stop the reactor as a plain ``reactor.stop()``.

    twist re-raises the signal after shutdown (exit status 128+N); the
    contract asks for exit status 0 once every topic is left.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        # twist starts services before the reactor runs: a signal before
        # the reactor runs queues a stop that runs once it does.
        on_stop_signals(self._reactor, self._on_signal)

    def _on_signal(self, signum: int) -> None:
        from twisted.internet.error import ReactorNotRunning

        log.info("signal {signum}: shutting down", signum=signum)
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # a second signal while shutting down
            pass


class _Daemon(service.MultiService):
    """The daemon's top service: a port it cannot bind is one line and exit 1."""

    def startService(self) -> None:
        from twisted.internet.error import CannotListenError

        try:
            super().startService()
        except CannotListenError as e:
            sys.stderr.write(
                f"twist hyperswarm: error: cannot listen on {e.interface or '0.0.0.0'}:{e.port}: {e.socketError}\n"
            )
            raise SystemExit(1)


def build_service(reactor, config: Options) -> service.MultiService:
    """The daemon's services, for the given reactor and parsed options."""
    from txhyperswarm.dht.node import DHTNode

    top = _Daemon()
    # first, so the signal handlers are in place before anything starts
    _ExitCleanly(reactor).setServiceParent(top)
    ephemeral = not config["bootstrap-node"] and not config["persistent"]
    if config["ephemeral"]:
        ephemeral = True
    state = NodeState(config["state-dir"]) if config["state-dir"] else None
    node = DHTNode(
        reactor,
        bootstrap=config["bootstrap"],
        ephemeral=ephemeral,
        host=config["host"],
        port=config["port"],
        id=state.node_id() if state is not None else None,
    )
    node.setServiceParent(top)
    top.dht = node
    if state is not None:
        KeepState(node, state, reactor).setServiceParent(top)
    if config["bootstrap-node"]:
        _attach_record_store(node)
        _SayListening(node, "bootstrap node").setServiceParent(top)
    if config["status-http"]:
        from twisted.application import strports

        from txhyperswarm.web import status_site

        strports.service(config["status-http"], status_site(node)).setServiceParent(top)
    return top


def _attach_record_store(node) -> None:
    """A persistent node stores peer records (the `peers` command)."""
    from txhyperswarm.dht import peers

    peers.register(node)


class _SayListening(service.Service):
    """One log line, once bound, saying where and who the node is."""

    def __init__(self, node, role: str) -> None:
        self._node = node
        self._role = role

    def startService(self) -> None:
        super().startService()
        host, port = self._node.address()
        log.info(
            "hyperswarm {role} listening on {host}:{port} (UDP), id {id}",
            role=self._role, host=host, port=port, id=self._node.id.hex(),
        )


def makeService(config: Options) -> service.MultiService:
    from twisted.internet import reactor

    return build_service(reactor, config)
