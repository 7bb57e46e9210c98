"""``twist hyperswarm`` as a real process: bootstrap node, signals, bad input."""

import json
import subprocess
import sys

import pytest
import pytest_twisted

from tests.harness import REPO, free_port
from txhyperswarm.dht.state import SNAPSHOT_INTERVAL, KeepState, NodeState

TWIST = [sys.executable, "-m", "twisted"]


def _twist(*args, timeout=30):
    return subprocess.run([*TWIST, "hyperswarm", *args], capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


@pytest.mark.parametrize(
    "args, says",
    [
        (["--bootstrap-node", "--port", "notaport"], "port"),
        (["--bootstrap-node", "--port", "70000"], "--port"),
        (["--bootstrap-node", "--bootstrap", "127.0.0.1"], "--bootstrap"),
        (["--bootstrap-node", "--bootstrap", "127.0.0.1:0"], "--bootstrap"),
        (["--bootstrap-node", "--bootstrap", "none", "--bootstrap", "127.0.0.1:5"], "--bootstrap: 'none' excludes"),
        (["--bootstrap-node", "--no-such-option"], "no-such-option"),
        (["--bootstrap-node", "--host", "nonsense"], "--host"),
        (["--bootstrap-node", "--host", "::1"], "--host"),
        (["--bootstrap-node", "--state-dir", "/dev/null/state"], "--state-dir"),
        (["--topic", ""], "--topic"),
        (["--topic", "x", "--expose", "nonsense:endpoint:::"], "endpoint"),
        (["--topic", "x", "--status-http", "tcp:notaport"], "endpoint"),
        ([], "--topic"),
        (["--topic", "x", "--expose", "tcp:host=127.0.0.1:port=8000", "--max-conn-per-address", "0"],
         "--max-conn-per-address"),
        (["--bootstrap-node", "--dht-rate-limit", "0"], "--dht-rate-limit must be a whole number, at least 1"),
        (["--bootstrap-node", "--dht-ping-rate", "fast"], "--dht-ping-rate must be a number greater than 0"),
        (["--bootstrap-node", "--max-half-open", "5"], "--max-half-open limits the swarm's transports"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    result = _twist(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert result.stdout == ""


@pytest_twisted.inlineCallbacks
def test_node_peers_bootstrap_from_a_twist_bootstrap_node(processes, node, twist_bootstrap_node):
    boot, port = twist_bootstrap_node

    # hyperswarm ping reaches it and reports its id.
    ping = processes.spawn("ping", [sys.executable, "-m", "txhyperswarm.cli", "ping", f"127.0.0.1:{port}"])
    pong = yield ping.wait_for(lambda o: "rtt_ms" in o, timeout=20)
    assert (yield ping.ended) == 0
    assert ping.lines == [pong] and set(pong) == {"host", "port", "id", "rtt_ms"}
    assert pong["host"] == "127.0.0.1" and pong["port"] == port
    assert isinstance(pong["rtt_ms"], float) and pong["rtt_ms"] > 0
    boot_id = pong["id"]
    assert boot_id and len(bytes.fromhex(boot_id)) == 32

    # Three Node dht-rpc nodes bootstrap from it, one after the other: each
    # learns the bootstrap node, and the later ones learn the earlier ones.
    clients = []
    for i in range(3):
        c = processes.node("dht_bootstrap_client.js", f"127.0.0.1:{port}")
        clients.append((yield c.wait_for(lambda o: o.get("ready"), timeout=30)))
    for info in clients:
        ids = {n["id"] for n in info["nodes"]}
        assert boot_id in ids, info
    last = {n["id"] for n in clients[2]["nodes"]}
    assert {clients[0]["id"], clients[1]["id"]} <= last

    # SIGTERM: a clean exit, status 0, well within 5 s.
    code = yield boot.stop(grace=5.0)
    assert code == 0, boot.stderr.decode()[-2000:]


@pytest_twisted.inlineCallbacks
def test_sigint_stops_the_daemon_with_exit_0(twist_bootstrap_node, reactor):
    boot, _ = twist_bootstrap_node
    boot.signal("INT")
    kill = reactor.callLater(5.0, boot.signal, "KILL")  # the contract: within 5 s
    code = yield boot.ended
    if kill.active():
        kill.cancel()
    assert code == 0, boot.stderr.decode()[-2000:]


def _twist_node(processes, port, status_port, state_dir):
    return processes.spawn(
        "twist",
        [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", "--bootstrap-node",
         "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir),
         "--status-http", f"tcp:port={status_port}:interface=127.0.0.1"],
    )


@pytest_twisted.inlineCallbacks
def test_status_http_and_state_dir(processes, node, reactor, tmp_path):
    import treq

    port, status_port = free_port(), free_port()
    state = tmp_path / "state"  # made by the daemon
    boot = _twist_node(processes, port, status_port, state)
    yield boot.wait_for(lambda o: "listening" in o.get("_text", ""), timeout=20)
    client = processes.node("dht_bootstrap_client.js", f"127.0.0.1:{port}")
    info = yield client.wait_for(lambda o: o.get("ready"), timeout=30)

    response = yield treq.get(f"http://127.0.0.1:{status_port}/status")
    assert response.code == 200
    status = yield response.json()
    node_id = status["node"]["id"]
    assert status["node"]["host"] == "127.0.0.1" and status["node"]["port"] == port
    assert status["node"]["ephemeral"] is False and len(bytes.fromhex(node_id)) == 32
    assert status["node"]["routing_table_size"] >= 1  # the Node client joined its table
    assert status["topics"] == [] and status["connections"] == []

    response = yield treq.get(f"http://127.0.0.1:{status_port}/metrics")
    assert response.code == 200 and response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    metrics = (yield response.text()).splitlines()
    for name in ("hyperswarm_connections", "hyperswarm_peers_discovered_total", "hyperswarm_dht_rpc_requests_total",
                 "hyperswarm_dht_routing_table_size", "hyperswarm_bytes_total", "hyperswarm_dropped_datagrams_total"):
        assert f"# TYPE {name} " in " ".join(line + " " for line in metrics), name
    assert any(line.startswith("hyperswarm_dht_rpc_requests_total{") and 'direction="in"' in line for line in metrics)
    received = [line for line in metrics if line.startswith('hyperswarm_bytes_total{direction="in",transport="udp"}')]
    assert received and float(received[0].split()[-1]) > 0, metrics

    assert (yield boot.stop(grace=5.0)) == 0
    assert (state / "node-id").read_text().strip() == node_id
    saved = json.loads((state / "routing-table.json").read_text())
    assert [info["id"], "127.0.0.1", info["port"]] in saved

    # a restart keeps its id and starts with the saved table
    boot = _twist_node(processes, port, status_port, state)
    yield boot.wait_for(lambda o: "listening" in o.get("_text", ""), timeout=20)
    assert node_id in boot.raw_stdout.decode()
    response = yield treq.get(f"http://127.0.0.1:{status_port}/status")
    status = yield response.json()
    assert status["node"]["id"] == node_id and status["node"]["routing_table_size"] >= 1
    assert (yield boot.stop(grace=5.0)) == 0


def test_state_dir_snapshot_is_saved_while_running_and_at_stop(tmp_path):
    from twisted.internet.task import Clock

    class FakeNode:
        table = [(bytes(32), "127.0.0.1", 4000)]
        added = []

        def nodes(self):
            return list(self.table)

        def add_nodes(self, nodes):
            self.added.extend(nodes)

    clock, node, state = Clock(), FakeNode(), NodeState(str(tmp_path))
    snapshot = tmp_path / "routing-table.json"
    keep = KeepState(node, state, clock)
    keep.startService()
    assert not snapshot.exists()
    clock.advance(SNAPSHOT_INTERVAL)  # a SIGKILL after this keeps the table
    assert json.loads(snapshot.read_text()) == [["00" * 32, "127.0.0.1", 4000]]
    node.table = node.table + [(b"\x01" * 32, "127.0.0.2", 4001)]
    keep.stopService()
    assert len(json.loads(snapshot.read_text())) == 2
    assert clock.getDelayedCalls() == []
    # the next start loads it
    KeepState(node, state, Clock()).startService()
    assert node.added == node.table


def test_a_port_in_use_is_one_line_and_exit_1():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = _twist("--bootstrap-node", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], result.stderr


def test_max_conn_per_address_reaches_the_network_limits():
    from twisted.internet.task import Clock

    from txhyperswarm.tap import Options, build_service

    def network(*args):
        config = Options()
        config.parseOptions(["--topic", "x", "--expose", "tcp:host=127.0.0.1:port=8000", "--bootstrap", "none",
                             "--no-mdns", *args])
        return build_service(Clock(), config).swarm.network

    n = network("--max-conn-per-address", "7")
    assert n.max_tcp_per_address == 7 and n.utp_limits["max_connections_per_address"] == 7
    assert network("--max-peers", "400").max_tcp_per_address == 400
    assert network().max_tcp_per_address == 256
