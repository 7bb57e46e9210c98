"""
``twist hyperswarm``: the daemon (interfaces.md, "twist hyperswarm").

:func:`makeService` is what the twist plugin calls; :func:`build_service`
does the work with an injected reactor, so tests can use a fake one.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

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


class _Limit:
    """
    One option of the daemon for a limit against abuse: its object's keyword
    (``DHTNode`` for ``dht``, ``Network`` for ``network``), the number type
    and the library default it documents (``tests/test_daemon_limits.py``
    checks these against the library's constants).
    """

    def __init__(self, option: str, keyword: str, kind: str, number: type, default, text: str, example) -> None:
        self.option = option
        self.keyword = keyword
        self.kind = kind
        self.number = number
        self.default = default
        self.text = text
        self.example = example

    def help(self) -> str:
        where = "" if self.kind == "dht" else " Swarm only (not with --bootstrap-node)."
        default = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        return f"{self.text} (default {default}).{where} Example: --{self.option} {self.example}"

    def parse(self, value: str):
        """The number of ``value``, at least 1 (``> 0`` for a rate); UsageError otherwise."""
        what = "a whole number, at least 1" if self.number is int else "a number greater than 0"
        try:
            n = self.number(value)
        except ValueError:
            raise usage.UsageError(f"--{self.option} must be {what}, got {value!r}") from None
        if not (n >= 1 if self.number is int else n > 0) or n != n or n == float("inf"):
            raise usage.UsageError(f"--{self.option} must be {what}, got {value!r}")
        return n


#: The daemon's options for the limits against abuse (docs/cli.rst,
#: docs/reliability.rst "Limits of the daemon"). Not given: the library default.
LIMITS = [
    _Limit("dht-rate-limit", "rate_limit_per_ip", "dht", int, 2000,
           "Datagrams one source IP address may send the DHT per second; the rest of that second is "
           "dropped before decoding. 127.0.0.1 is exempt", 500),
    _Limit("dht-max-pending-per-ip", "max_pending_per_ip", "dht", int, 64,
           "DHT requests from one source IP address whose answer is still being worked on; more are "
           "dropped", 16),
    _Limit("dht-max-pending", "max_pending", "dht", int, 4096,
           "DHT requests from all sources whose answer is still being worked on; more are dropped", 1024),
    _Limit("dht-ping-rate", "ping_rate", "dht", float, 20.0,
           "Liveness pings per second the DHT routing table may start, on average", 10),
    _Limit("dht-ping-burst", "ping_burst", "dht", int, 100,
           "Liveness pings the DHT routing table may start at once after a quiet spell", 50),
    _Limit("dht-holepunch-rate", "holepunch_relay_per_ip", "dht", int, 256,
           "Holepunch requests from one source IP address the DHT node relays per second; more are "
           "dropped. 127.0.0.1 is exempt", 64),
    _Limit("dht-holepunch-total", "holepunch_relay_total", "dht", int, 2048,
           "Holepunch requests from all sources the DHT node relays per second", 512),
    _Limit("dht-overload-rate", "overload_rate", "dht", int, 10000,
           "DHT datagrams per second from all rate-limited sources beyond which the node is "
           "overloaded: for the rest of that second a source that sent --dht-overload-per-ip is "
           "dropped before decoding", 5000),
    _Limit("dht-overload-per-ip", "overload_limit_per_ip", "dht", int, 20,
           "DHT datagrams per second one source IP address may send while the node is overloaded", 10),
    _Limit("max-utp-connections", "max_utp_connections", "network", int, 3000,
           "uTP connections in all (any state, any direction); SYNs beyond are dropped", 1000),
    _Limit("max-utp-per-address", "max_utp_per_address", "network", int, "--max-conn-per-address",
           "Inbound uTP connections one remote IP address may hold, overriding --max-conn-per-address "
           "for uTP", 32),
    _Limit("max-half-open", "max_half_open", "network", int, 512,
           "Inbound uTP connections still in their handshake, in all; beyond, the oldest is evicted", 128),
    _Limit("max-half-open-per-address", "max_half_open_per_address", "network", int, 64,
           "Inbound uTP connections still in their handshake from one IP address; more SYNs are dropped", 8),
    _Limit("mdns-answers-per-second", "mdns_answers_per_second", "network", float, 50.0,
           "Multicast DNS answers sent per second, whoever asks", 10),
    _Limit("connection-buffer", "connection_buffer", "network", int, 1 << 20,
           "Bytes a swarm connection holds before its tunnel takes it; beyond, reading pauses", 262144),
]


class Options(usage.Options):
    """Command line of ``twist hyperswarm``."""

    synopsis = "[--bootstrap-node | --topic T ... (--expose ENDPOINT | --listen ENDPOINT)] [options]"
    longdesc = (
        "Reach a TCP service by topic instead of by address. On the machine with the service:\n"
        "  twist hyperswarm --topic my-service --expose tcp:host=127.0.0.1:port=8000\n"
        "On the machine that uses it:\n"
        "  twist hyperswarm --topic my-service --listen tcp:port=8080:interface=127.0.0.1\n"
        "then connect to 127.0.0.1:8080. The topic is the only secret and the bytes travel in "
        "clear: use --allow, or a protocol with its own encryption.\n"
        "A DHT bootstrap node: twist hyperswarm --bootstrap-node --port 49737"
    )
    optFlags = [
        ["bootstrap-node", None, "Run a persistent DHT node only (answers RPCs, stores peer records). "
         "Example: --bootstrap-node --port 49737"],
        ["no-mdns", None, "Do not use multicast DNS (default: use it). Example: --no-mdns"],
        ["ephemeral", None, "DHT node is ephemeral (sends no id). Example: --ephemeral"],
        ["persistent", None, "DHT node is persistent (joins the routing tables of others); "
         "default as hyperswarm 2: adaptive. Example: --persistent"],
    ]
    optParameters = [
        ["host", None, "0.0.0.0", "Interface for the UDP socket (DHT + uTP) and the TCP listener. "
         "Example: --host 127.0.0.1"],
        ["port", None, None, "Port for UDP and TCP (default 49737 with --bootstrap-node, else 0: any). "
         "Example: --port 49737", int],
        ["expose", None, None, "Announce the topics; pipe every incoming swarm connection to a new "
         "connection to this client endpoint. Example: --expose tcp:host=127.0.0.1:port=8000"],
        ["listen", None, None, "Look the topics up; pipe every local connection accepted on this server "
         "endpoint over a swarm connection to a peer. Example: --listen tcp:port=8080:interface=127.0.0.1"],
        ["max-peers", None, 256, "Connection limit of the swarm (every tunnel is a swarm connection). "
         "Example: --max-peers 64", int],
        ["max-conn-per-address", None, None, "Inbound TCP and uTP connections one remote IP address may "
         "hold, each (default: the larger of 256 and --max-peers). Example: --max-conn-per-address 32", int],
        ["status-http", None, None, "Serve GET /status and GET /metrics on this server endpoint. "
         "Example: --status-http tcp:port=9100:interface=127.0.0.1"],
        ["state-dir", None, None, "Keep the node id and a routing-table snapshot here. "
         "Example: --state-dir /var/lib/hyperswarm"],
    ] + [[limit.option, None, None, limit.help()] for limit in LIMITS]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []
        self["topic"] = []
        self["topic-text"] = []
        self["allow"] = []

    def opt_bootstrap(self, value: str) -> None:
        """DHT bootstrap node HOST:PORT (repeatable); 'none' for none. Example: --bootstrap 10.0.0.5:49737"""
        self["bootstrap"].append(value)  # parsed in postOptions

    def opt_topic(self, value: str) -> None:
        """Topic to join (repeatable): 64 hex characters, or text hashed with SHA-256. Example: --topic my-service"""
        try:
            self["topic"].append(topic_from_text(value))
        except ValueError as e:
            raise usage.UsageError(f"--topic: {e}") from None
        self["topic-text"].append(value)

    def opt_allow(self, value: str) -> None:
        """Only remote addresses in this network may connect (repeatable; default: any). Example: --allow 10.0.0.0/8"""
        try:
            self["allow"].append(ipaddress.ip_network(value, strict=False))
        except ValueError as e:
            raise usage.UsageError(f"--allow: {e}") from None

    def parseOptions(self, options=None):
        # twist prints the whole usage text and exits 64 on a UsageError; the
        # contract is one line on stderr and exit status 2, nothing started.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twist hyperswarm: error: {e}\n")
            raise SystemExit(2)

    def _limits(self) -> None:
        """Parse the limit options into ``self["dht-options"]`` and ``self["network-options"]``."""
        chosen: dict = {"dht": {}, "network": {}}
        for limit in LIMITS:
            value = self[limit.option]
            if value is None:
                continue
            if limit.kind == "network" and self["bootstrap-node"]:
                raise usage.UsageError(
                    f"--{limit.option} limits the swarm's transports: a --bootstrap-node has only its DHT node")
            self[limit.option] = chosen[limit.kind][limit.keyword] = limit.parse(value)
        self["dht-options"] = chosen["dht"]
        self["network-options"] = chosen["network"]

    def postOptions(self) -> None:
        if self["max-peers"] < 1:
            raise usage.UsageError(f"--max-peers must be at least 1, got {self['max-peers']}")
        if self["max-conn-per-address"] is None:
            self["max-conn-per-address"] = max(256, self["max-peers"])
        elif self["max-conn-per-address"] < 1:
            raise usage.UsageError(
                f"--max-conn-per-address must be at least 1, got {self['max-conn-per-address']}")
        self._limits()
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
        if (self["expose"] or self["listen"]) and not self["topic"]:
            raise usage.UsageError(f"--{'expose' if self['expose'] else 'listen'} needs at least one --topic")
        if not self["bootstrap-node"] and not self["topic"]:
            raise usage.UsageError("give --bootstrap-node, or at least one --topic")
        if self["bootstrap-node"] and self["topic"]:
            raise usage.UsageError("--bootstrap-node runs a DHT node only: it takes no --topic")
        if self["topic"] and not (self["expose"] or self["listen"]):
            raise usage.UsageError("--topic needs --expose ENDPOINT or --listen ENDPOINT")
        if self["allow"] and not self["topic"]:
            raise usage.UsageError("--allow limits who reaches --expose/--listen tunnels: it needs --topic")
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

    #: what the daemon runs, for tests and embedding: the DHT node of a
    #: bootstrap node, or the swarm and its tunnels
    dht: Any = None
    swarm: Any = None
    tunnels: Any = None

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
    if config["topic"]:
        return _build_swarm(reactor, config, top)
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
        **(config.get("dht-options") or {}),
    )
    node.setServiceParent(top)
    top.dht = node
    if state is not None:
        KeepState(node, state, reactor).setServiceParent(top)
    records = None
    if config["bootstrap-node"]:
        records = _attach_record_store(node)
        _SayListening(node, "bootstrap node").setServiceParent(top)
    if config["status-http"]:
        from twisted.application import strports

        from txhyperswarm.web import status_site

        strports.service(config["status-http"], status_site(node, records=records)).setServiceParent(top)
    return top


#: Seconds the daemon waits for the DHT unannounces at shutdown.
LEAVE_TIMEOUT = 3.0


def allow_firewall(networks):
    """
    The swarm's ``firewall`` for ``--allow``: refuse (``True``) a remote
    address in none of ``networks``; every refusal is logged.
    """

    def firewall(host: str, port: int, client: bool) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None and isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr is not None and any(addr in net for net in networks):
            return False
        log.warn(
            "refused {direction} connection {host}:{port}: not in --allow {allowed}",
            direction="outbound" if client else "inbound", host=host, port=port,
            allowed=",".join(str(n) for n in networks),
        )
        return True

    return firewall


def _build_swarm(reactor, config: Options, top: _Daemon) -> service.MultiService:
    """``--topic`` with ``--expose`` or ``--listen``: a swarm and its tunnels."""
    import math

    from twisted.internet.endpoints import clientFromString, serverFromString

    from txhyperswarm.swarm import Hyperswarm
    from txhyperswarm.tunnel import Tunnels

    ephemeral = True if config["ephemeral"] else (False if config["persistent"] else None)
    state = NodeState(config["state-dir"]) if config["state-dir"] else None
    tunnels = Tunnels(reactor)
    topics = list(config["topic"])
    expose = config["expose"]
    swarm_holder: list = []

    def connect(peer):
        return swarm_holder[0].connect(peer)

    if expose:
        swarm_factory = tunnels.expose_factory(clientFromString(reactor, expose), expose)
        local_factory = None
    else:
        swarm_factory, local_factory = tunnels.listen_factories(
            connect, topics, config["listen"], max_connections=config["max-peers"]
        )
    swarm = Hyperswarm(
        reactor,
        bootstrap=config["bootstrap"],
        ephemeral=ephemeral,
        max_peers=config["max-peers"],
        # the queue never dials: --expose does not look up, and --listen
        # dials with connect() only, one swarm connection per local
        # connection (counted against --max-peers by the tunnels); --listen
        # takes no inbound connection
        max_client_sockets=0,
        max_server_sockets=math.inf if expose else -1,
        multicast=not config["no-mdns"],
        port=config["port"] or None,
        host=config["host"],
        id=state.node_id() if state is not None else None,
        factory=swarm_factory,
        firewall=allow_firewall(config["allow"]) if config["allow"] else None,
        network_options={
            "max_tcp_per_address": config["max-conn-per-address"],
            "max_utp_per_address": config["max-conn-per-address"],
            **(config.get("network-options") or {}),
            "dht_options": config.get("dht-options") or {},
        },
    )
    swarm_holder.append(swarm)
    swarm.on("connection", tunnels.swarm_connection)
    swarm.on("peer", tunnels.peer_found)
    def listening() -> None:
        if state is not None:
            _keep_state(swarm, state, reactor)
        _say_swarm_listening(swarm)

    swarm.on("listening", listening)
    swarm.setServiceParent(top)
    top.swarm = swarm
    top.tunnels = tunnels
    _Topics(swarm, tunnels, topics, config["topic-text"], announce=bool(expose),
            dht=config["bootstrap"] != []).setServiceParent(top)
    if local_factory is not None:
        _LocalListener(serverFromString(reactor, config["listen"]), local_factory, config["listen"]).setServiceParent(top)
    if config["status-http"]:
        from twisted.application import strports

        from txhyperswarm.web import status_site

        strports.service(config["status-http"], status_site(swarm=swarm, tunnels=tunnels)).setServiceParent(top)
    return top


def _keep_state(swarm, state, reactor) -> None:
    """Once bound: load the routing-table snapshot, save it periodically."""
    keep = KeepState(swarm.network.dht, state, reactor)
    keep.startService()
    reactor.addSystemEventTrigger("before", "shutdown", keep.stopService)


def _say_swarm_listening(swarm) -> None:
    host, port = swarm.address()
    log.info(
        "hyperswarm swarm listening on {host}:{port} (TCP and UDP), id {id}",
        host=host, port=port, id=swarm.network.dht.id.hex(),
    )


class _Topics(service.Service):
    """Join the topics at start (logging the hex topic of each); leave them at stop."""

    def __init__(self, swarm, tunnels, topics, texts, announce: bool, dht: bool = True) -> None:
        self.dht = dht
        self.swarm = swarm
        self.tunnels = tunnels
        self.topics = topics
        self.texts = texts
        self.announce = announce

    def startService(self) -> None:
        super().startService()
        for topic, text in zip(self.topics, self.texts):
            log.info(
                "topic {text!r} is {hex} ({what})", text=text, hex=topic.hex(),
                what="announcing" if self.announce else "looking up",
            )
            d = self.swarm.join(topic, lookup=not self.announce, announce=self.announce)
            d.addCallbacks(self._joined, self._join_failed, callbackArgs=(topic,), errbackArgs=(topic,))

    def _joined(self, ok, topic: bytes) -> None:
        if ok is None:
            return
        if ok:
            log.info("topic {hex}: first {what} done", hex=topic.hex(),
                     what="announce" if self.announce else "lookup")
        elif self.dht:
            log.warn("topic {hex}: no DHT node answered (check --bootstrap)", hex=topic.hex())
        else:
            log.info("topic {hex}: no DHT (--bootstrap none): peers come from multicast DNS only",
                     hex=topic.hex())

    def _join_failed(self, f, topic: bytes) -> None:
        from txhyperswarm.swarm import SwarmClosed

        if not f.check(SwarmClosed):
            log.failure("joining topic {hex} failed", f, hex=topic.hex())

    def stopService(self):
        from twisted.internet import defer

        super().stopService()
        reactor = self.swarm.reactor
        leaves = [self.swarm.leave(t) for t in self.topics]
        done = defer.DeferredList(leaves, consumeErrors=True)
        timer = reactor.callLater(LEAVE_TIMEOUT, done.cancel)

        def left(_):
            if timer.active():
                timer.cancel()
                log.info("left every topic (unannounced)")
            else:
                log.warn("unannouncing took longer than {t:g} s: stopping anyway", t=LEAVE_TIMEOUT)
            return self.tunnels.close_all()

        done.addBoth(left)
        done.addErrback(lambda f: None)
        return done


class _LocalListener(service.Service):
    """``--listen``: accept local connections; logs the bound address."""

    def __init__(self, endpoint, factory, text: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.text = text
        self.port = None

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)

        def listening(port) -> None:
            self.port = port
            addr = port.getHost()
            log.info("accepting local connections on {host}:{port} ({text})",
                     host=addr.host, port=addr.port, text=self.text)

        failures: list = []
        d.addCallbacks(listening, failures.append)
        if failures:
            # endpoints fail at once for a port in use: one line, exit 1 (_Daemon)
            failures[0].raiseException()
        d.addErrback(lambda f: log.failure("cannot listen on {text}", f, text=self.text))

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


def _attach_record_store(node):
    """A persistent node stores peer records (the `peers` command): its RecordStore."""
    from txhyperswarm.dht import peers

    return peers.register(node).store


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
