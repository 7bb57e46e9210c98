"""
The daemon's limits against abuse (issue 12, docs/reliability.rst "Limits
of the daemon"): every ``twist hyperswarm`` limit option reaches its object
in both modes, bad values are a usage error, the holepunch relay's budget
holds a flood from one address while another's holepunch is still relayed
(in memory on a Clock), and a real ``twist hyperswarm --bootstrap-node``
with ``--dht-rate-limit`` sheds a ping flood from one address while
answering another's every ping, and shows it in ``/metrics``.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from tests.harness import REPO, free_port, metric_samples
from txhyperswarm.dht import messages as m
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.tap import LIMITS, Options, build_service
from txhyperswarm.testing import UDPNetwork

EXPOSE = ["--topic", "x", "--expose", "tcp:host=127.0.0.1:port=8000", "--bootstrap", "none"]

#: a value for each limit option, none of them a default
VALUES = {
    "dht-rate-limit": ("7", 7),
    "dht-max-pending-per-ip": ("5", 5),
    "dht-max-pending": ("55", 55),
    "dht-ping-rate": ("2.5", 2.5),
    "dht-ping-burst": ("9", 9),
    "dht-holepunch-rate": ("3", 3),
    "dht-holepunch-total": ("33", 33),
    "dht-overload-rate": ("777", 777),
    "dht-overload-per-ip": ("6", 6),
    "max-utp-connections": ("111", 111),
    "max-utp-per-address": ("11", 11),
    "max-half-open": ("44", 44),
    "max-half-open-per-address": ("4", 4),
    "mdns-answers-per-second": ("1.5", 1.5),
    "connection-buffer": ("12345", 12345),
}
DHT_OPTIONS = [limit for limit in LIMITS if limit.kind == "dht"]
NETWORK_OPTIONS = [limit for limit in LIMITS if limit.kind == "network"]


def parse(*args) -> Options:
    config = Options()
    config.parseOptions(list(args))
    return config


def all_args(limits):
    return [a for limit in limits for a in (f"--{limit.option}", VALUES[limit.option][0])]


# -- options reach their objects ----------------------------------------------


def test_every_limit_option_is_listed_here_and_documents_the_library_default():
    from txhyperswarm.network import Network

    assert set(VALUES) == {limit.option for limit in LIMITS}
    network = Network(Clock())
    utp = network.utp_limits
    defaults = {
        **DHTNode(Clock(), bootstrap=[]).limits(),
        "max_utp_connections": utp["max_connections"],
        "max_utp_per_address": "--max-conn-per-address",
        "max_half_open": utp["max_half_open"],
        "max_half_open_per_address": utp["max_half_open_per_address"],
        "mdns_answers_per_second": network.mdns_answers_per_second,
        "connection_buffer": network.connection_buffer,
    }
    entries = {line.split()[0].strip("`"): line for line in (REPO / "docs" / "cli.rst").read_text().splitlines()
               if line.startswith("``--")}
    for limit in LIMITS:
        assert limit.default == defaults[limit.keyword], limit.option
        default = limit.default if isinstance(limit.default, str) else f"(default {limit.default:n}"
        assert default in entries[f"--{limit.option}"], limit.option


def test_without_options_every_object_keeps_the_library_defaults():
    config = parse("--bootstrap-node")
    assert config["dht-options"] == {} and config["network-options"] == {}
    assert build_service(Clock(), config).dht.limits() == DHTNode(Clock(), bootstrap=[]).limits()


def test_each_dht_option_reaches_the_bootstrap_nodes_dht_node():
    top = build_service(Clock(), parse("--bootstrap-node", *all_args(DHT_OPTIONS)))
    limits = top.dht.limits()
    for limit in DHT_OPTIONS:
        assert limits[limit.keyword] == VALUES[limit.option][1], limit.option


def test_each_option_reaches_the_swarms_dht_node_utp_socket_mdns_and_network():
    net = UDPNetwork(latency=0.001)
    reactor = net.reactor("10.0.0.9")
    top = build_service(reactor, parse(*EXPOSE, "--host", "10.0.0.9", *all_args(LIMITS)))
    swarm = top.swarm
    swarm.startService()
    try:
        assert net.run_until(lambda: swarm.network.bound, 5)
        network = swarm.network
        limits = network.dht.limits()
        for limit in DHT_OPTIONS:
            assert limits[limit.keyword] == VALUES[limit.option][1], limit.option
        utp = network.utp
        assert (utp.max_connections, utp.max_connections_per_address, utp.max_half_open,
                utp.max_half_open_per_address) == (111, 11, 44, 4)
        assert network.mdns.max_answers_per_second == 1.5
        assert network.connection_buffer == 12345
        assert network.max_tcp_per_address == 256  # --max-conn-per-address's default, untouched
    finally:
        d = swarm.stopService()
        net.run(2)
        assert d.called


def test_max_utp_per_address_overrides_max_conn_per_address_for_utp_only():
    network = build_service(Clock(), parse(*EXPOSE, "--max-conn-per-address", "20",
                                           "--max-utp-per-address", "5")).swarm.network
    assert network.max_tcp_per_address == 20 and network.utp_limits["max_connections_per_address"] == 5


BAD = [("0", "at least 1"), ("-3", "at least 1"), ("x", "whole number"), ("1.5", "whole number"), ("", "whole number")]
BAD_RATE = [("0", "greater than 0"), ("-1", "greater than 0"), ("x", "greater than 0"), ("nan", "greater than 0"),
            ("inf", "greater than 0")]


@pytest.mark.parametrize("limit", LIMITS, ids=lambda limit: limit.option)
def test_bad_values_are_a_usage_error(limit, capsys):
    for value, says in BAD if limit.number is int else BAD_RATE:
        with pytest.raises(SystemExit) as exit:
            parse(*EXPOSE, f"--{limit.option}", value)
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--{limit.option} must be" in err and says in err, (value, err)


@pytest.mark.parametrize("limit", NETWORK_OPTIONS, ids=lambda limit: limit.option)
def test_transport_options_are_refused_for_a_bootstrap_node(limit, capsys):
    with pytest.raises(SystemExit):
        parse("--bootstrap-node", f"--{limit.option}", VALUES[limit.option][0])
    assert f"--{limit.option} limits the swarm's transports" in capsys.readouterr().err


# -- the holepunch relay's budget, in memory ---------------------------------------

RELAY = ("10.0.0.1", 4000)
TARGET = ("10.0.0.4", 4004)
FLOODER = ("10.0.0.2", 4002)
CLIENT = ("10.0.0.3", 4003)


def holepunch_to(rid: int, to) -> bytes:
    msg = m.Message()
    msg.version = 1
    msg.type = m.QUERY
    msg.rid = rid & 0xFFFF
    msg.command = b"_holepunch"
    punch = m.Holepunch()
    punch.to = m.encode_peer(*to)
    msg.value = punch.SerializeToString()
    return msg.SerializeToString()


class RelayWorld:
    """A relay node, a target node, and a watch on what the relay forwards to the target."""

    def __init__(self, **relay_kw) -> None:
        self.net = UDPNetwork(latency=0.001)
        self.relay = DHTNode(self.net.reactor(RELAY[0]), bootstrap=[], host=RELAY[0], port=RELAY[1], **relay_kw)
        self.target = DHTNode(self.net.reactor(TARGET[0]), bootstrap=[], host=TARGET[0], port=TARGET[1])
        for n in (self.relay, self.target):
            n.startService()
        #: relayed holepunches the target received, by the source they name
        self.relayed: Counter = Counter()
        self.block_direct = set()
        self.net.drop = self._watch
        self.net.run(0.5)

    def _watch(self, data: bytes, src, dst) -> bool:
        if src[0] in self.block_direct and dst == TARGET:
            return True  # only the relay's path reaches the target
        if src == RELAY and dst == TARGET:
            msg = m.decode_message(data)
            if msg.command == b"_holepunch" and msg.type == m.QUERY:
                frm = getattr(m.decode_holepunch(msg.value), "from")
                self.relayed[m.decode_peers(frm)[0][0]] += 1
        return False

    def stop(self) -> None:
        for n in (self.relay, self.target):
            n.stopService()
        self.net.run(0.1)


def test_holepunch_relay_holds_a_flood_from_one_address_and_relays_another():
    w = RelayWorld(holepunch_relay_per_ip=10)
    client = DHTNode(w.net.reactor(CLIENT[0]), bootstrap=[], ephemeral=True, host=CLIENT[0], port=CLIENT[1])
    client.startService()
    w.block_direct.add(CLIENT[0])
    answered = []
    try:
        # 3 s of 500 relay requests a second from one address (spoofed: no socket there)
        for i in range(300):
            for j in range(5):
                w.net.transmit(holepunch_to(i * 5 + j, TARGET), FLOODER, RELAY)
            if i % 50 == 25:  # meanwhile another address's holepunches, twice a second
                client.holepunch(*TARGET, referrer=RELAY).addCallback(answered.append)
            w.net.run(0.01, step=0.01)
        w.net.run(2)
        flood_seconds = 3 + 1  # windows the flood touched, at most
        # 10 a window: the budget renews each second, never more
        assert 10 * (flood_seconds - 1) <= w.relayed[FLOODER[0]] <= 10 * flood_seconds
        assert w.relay.dropped["holepunch_ip"] == 1500 - w.relayed[FLOODER[0]]
        # every holepunch of the other address reached the target through the
        # relay (the direct path is cut) and the target answered it
        assert len(answered) == 6 and w.relayed[CLIENT[0]] >= 6
        assert all(r.node == TARGET for r in answered)
        assert w.relay.dropped["holepunch_total"] == 0 and w.relay.dropped["rate_ip"] == 0
    finally:
        client.stopService()
        w.stop()


def test_holepunch_relay_total_budget_holds_a_flood_from_many_addresses():
    w = RelayWorld(holepunch_relay_total=50)
    try:
        for i in range(2000):  # 2,000 sources, one request each, within 1 s
            w.net.transmit(holepunch_to(i, TARGET), (f"10.1.{i >> 8}.{i & 255}", 5000), RELAY)
            if i % 100 == 99:
                w.net.run(0.05, step=0.05)
        w.net.run(1)
        relayed = sum(w.relayed.values())
        assert 50 < relayed <= 100  # the 1 s of requests spans two one-second windows
        assert w.relay.dropped["holepunch_total"] == 2000 - relayed
        assert w.relay.dropped["holepunch_ip"] == 0
    finally:
        w.stop()


def relays_all(count: int, **relay_kw) -> None:
    """``count`` holepunches from FLOODER at once are all relayed, none dropped."""
    w = RelayWorld(**relay_kw)
    try:
        for i in range(count):
            w.net.transmit(holepunch_to(i, TARGET), FLOODER, RELAY)
        w.net.run(0.5)
        assert w.relayed[FLOODER[0]] == count and not w.relay.dropped
    finally:
        w.stop()


def test_holepunch_relay_budgets_spare_the_exempt_sources():
    relays_all(20, holepunch_relay_per_ip=1, holepunch_relay_total=1, rate_limit_exempt={FLOODER[0]})


def test_holepunch_relay_defaults_spare_a_peer_dialling_its_whole_swarm_at_once():
    # a --listen daemon opening 256 tunnels (its default --max-peers) at
    # once, each dial holepunching through the same referrer
    relays_all(256)


# -- a real daemon under a ping flood -------------------------------------------------


def ping_query(rid: int) -> bytes:
    msg = m.Message()
    msg.version = 1
    msg.type = m.QUERY
    msg.rid = rid & 0xFFFF
    msg.command = b"_ping"
    return msg.SerializeToString()


class Flooder(DatagramProtocol):
    def __init__(self):
        self.answers = 0

    def datagramReceived(self, data, addr):
        self.answers += 1


@pytest_twisted.inlineCallbacks
def test_a_bootstrap_node_sheds_a_ping_flood_from_one_address_and_answers_another(processes, reactor):
    import treq

    port, status = free_port(), free_port()
    boot = processes.spawn("twist", [
        sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", "--bootstrap-node",
        "--host", "127.0.0.1", "--port", str(port), "--dht-rate-limit", "50",
        "--status-http", f"tcp:port={status}:interface=127.0.0.1",
    ])
    yield boot.wait_for(lambda o: "listening" in o.get("_text", ""), timeout=20)
    flooder = Flooder()
    flood_port = reactor.listenUDP(0, flooder, interface="127.0.0.2")
    client = DHTNode(reactor, bootstrap=[], ephemeral=True, host="127.0.0.3")
    client.startService()
    try:
        sent = 0
        answered = lost = 0
        start = reactor.seconds()
        for i in range(100):  # 2 s: 40 pings every 20 ms (2,000/s) from 127.0.0.2, one from 127.0.0.3
            for _ in range(40):
                flood_port.write(ping_query(sent), ("127.0.0.1", port))
                sent += 1
            if i % 2 == 0:
                try:
                    yield client.ping("127.0.0.1", port)
                    answered += 1
                except Exception:
                    lost += 1
            yield task.deferLater(reactor, 0.02, lambda: None)
        elapsed = reactor.seconds() - start
        yield task.deferLater(reactor, 0.2, lambda: None)
        assert (answered, lost) == (50, 0)
        # the flood's answers: 50 a second (and a window's edge)
        assert 0 < flooder.answers <= 50 * (elapsed + 2), (flooder.answers, elapsed)
        samples = metric_samples((yield (yield treq.get(f"http://127.0.0.1:{status}/metrics")).text()))
        shed = samples[("hyperswarm_dropped_datagrams_total", (("reason", "rate_ip"),))]
        assert shed > 0 and shed + flooder.answers <= sent
        pings_in = samples[("hyperswarm_dht_rpc_requests_total", (("command", "_ping"), ("direction", "in")))]
        assert pings_in >= flooder.answers + 50
        assert ("hyperswarm_dropped_datagrams_total", (("reason", "error"),)) not in samples
        assert not [o for o in boot.lines if any(w in o.get("_text", "") for w in ("Traceback", "#critical", "#error"))]
    finally:
        yield flood_port.stopListening()
        yield client.stopService()
