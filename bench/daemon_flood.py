"""
Floods at a running daemon: ``twist hyperswarm`` and a Node hyperswarm 2.15.3
node (@hyperswarm/dht 4.0.1 on utp-native) side by side, on real sockets.

Each target is a persistent node that serves a topic on one port (a DHT node
that stores peer records, a uTP socket, a TCP listener) on 127.0.0.1. A
flooder process sends, as fast as it can (pre-encoded, non-blocking
sockets), from 1,000 UDP sockets bound to 1,000 addresses spread over
127.0.0.0/8 (not 127.0.0.1, which the per-IP limit spares):

* ``random``: random bytes, 1-600 long;
* ``forged``: ``peers`` announces (UPDATE) with a forged roundtrip token;
* ``announce``: ``peers`` announces with valid tokens (each address fetched
  its token with a ``_ping`` first): 500 addresses announce 270 records each
  over 4,999 topics, then 500 others announce one hot topic;
* ``syn``: uTP SYNs, a fresh connection id each.

Meanwhile a pinger process sends a dht-rpc ``_ping`` every 2 ms, each from
the next of 50 client addresses (127.0.2.1-50: 10 pings a second each, a
normal client's rate) (pipelined; a ping unanswered within 2 s is lost, no
retry) and records each
round trip. Per flood kind: datagrams sent and the send rate, what the node
absorbed (sent minus what the kernel dropped at the node's socket, from
``/proc/net/udp``; for txhyperswarm also answered and refused as its
``/metrics`` counts them), the ping percentiles and losses, RSS before and
after. Then the baseline rows: idle RSS, 200 sequential pings, and 140,000
valid announces for 5,000 topics sent paced (the node's receive queue
drained every 100 datagrams, so none is lost) to a fresh node: records
held in total, for the hot topic, for the largest address; and forged
tokens refused (records held after the forged flood: 0).

mDNS sockets are opened (the daemon and Node's swarm use it), so the run
happens inside a private network namespace: started outside one, the
script re-runs itself under ``unshare -rn`` with ``lo`` up. Needs
``npm ci --prefix tests/node`` for the Node column (``--only py`` without).

    python bench/daemon_flood.py [--count N] [--only py|js] [--no-assert]

The flooder and pinger are also this script's children (``--child``),
used by ``tests/test_daemon_flood.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._netns import enter_private_netns  # noqa: E402
from bench._peer import Peer, end_process  # noqa: E402
from tests.harness import free_port, metric_samples  # noqa: E402
from tests.dht.raw import dht_message  # noqa: E402
from txhyperswarm.dht import messages as m  # noqa: E402

NODE_MODULES = REPO / "tests" / "node" / "node_modules"
NODE_SCRIPT = REPO / "tests" / "node" / "flood_node.js"

#: Flood sources: 1,000 addresses spread over 127.0.0.0/8.
SOURCES = 1000
#: The pinger's client addresses (127.0.2.1-...): the legitimate clients.
PING_CLIENTS = 50
HOT_TOPIC = bytes.fromhex("ab" * 32)
MiB = 1024 * 1024


def source_address(i: int) -> str:
    """The ``i``-th flood source: never 127.0.0.1 or 127.0.0.2."""
    return f"127.{1 + i % 250}.{1 + (i // 250) % 250}.{1 + (i * 7) % 250}"


def cold_topic(k: int) -> bytes:
    return k.to_bytes(4, "big") * 8


def emit(**obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ encoding


def peers_input(port: int) -> bytes:
    value = m.PeersInput()
    value.port = port
    return value.SerializeToString()


def utp_syn(conn_id: int, seq: int, ts: int) -> bytes:
    # type 4 (ST_SYN), version 1; no extension; window 1 MiB
    return struct.pack(">BBHIIIHH", 0x41, 0, conn_id & 0xFFFF, ts & 0xFFFFFFFF, 0, 1 << 20, seq & 0xFFFF, 0)


def build(kind: str, count: int, tokens: dict, seed: int = 1, plan: dict = None):
    """``[(source index, payload)]`` for a flood kind, pre-encoded."""
    rng = random.Random(seed)
    out = []
    if kind == "random":
        pool = os.urandom(count * 300 + 600)
        for k in range(count):
            n = rng.randint(1, 600)
            off = rng.randrange(len(pool) - n)
            out.append((k % SOURCES, pool[off:off + n]))
    elif kind == "forged":
        for k in range(count):
            out.append((k % SOURCES, dht_message(
                m.UPDATE, b"peers", k, target=cold_topic(k % 64), value=peers_input(1 + k % 60000),
                token=rng.randbytes(32))))
    elif kind == "syn":
        for k in range(count):
            out.append((k % SOURCES, utp_syn(rng.randrange(65536), rng.randrange(65536), k)))
    elif kind == "announce":
        plan = plan or announce_plan(count)
        cold_sources, per_source, topics = plan["cold_sources"], plan["per_source"], plan["topics"]
        rid = 0
        for a in range(cold_sources):
            for r in range(per_source):
                topic = cold_topic(1 + (a * per_source + r) % topics)
                out.append((a, dht_message(m.UPDATE, b"peers", rid, target=topic, value=peers_input(1 + r),
                                           token=tokens.get(a))))
                rid += 1
        hot_sources = SOURCES - cold_sources
        for j in range(plan["hot"]):
            a = cold_sources + j % hot_sources
            out.append((a, dht_message(m.UPDATE, b"peers", rid, target=HOT_TOPIC,
                                       value=peers_input(1 + j // hot_sources), token=tokens.get(a))))
            rid += 1
    else:
        raise ValueError(kind)
    return out


def announce_plan(count: int, topics: int = 4999) -> dict:
    """
    ``count`` announces: 500 sources, one after the other, announce 96.4 %
    of them over ``topics`` cold topics (one record per announce: a port of
    its own), then the other 500 sources the hot topic (the rest, 3.6 %). At
    140,000: 270 per cold source (over the per-address cap of 256) and 5,040
    for the hot topic (over its cap of 4,096); 128,000 records would be
    kept without the total cap (65,536), which evicts the oldest.
    """
    cold_sources = SOURCES // 2
    per_source = max(1, round(count * 0.964 / cold_sources))
    return {"cold_sources": cold_sources, "per_source": per_source, "topics": topics,
            "hot": max(0, count - cold_sources * per_source)}


# ------------------------------------------------------------------ /proc


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def udp_socket_figures(port: int) -> dict:
    """
    ``rx_queue`` (bytes) and ``drops`` of the UDP socket bound to ``port``
    on 127.0.0.1 or on any address (this netns).
    """
    rx = drops = 0
    found = False
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, hexport = f[1].rsplit(":", 1)
            # the node's socket: 127.0.0.1 or any address (not a flood source that got the same port)
            if int(hexport, 16) != port or local.lstrip("0").upper() not in ("", "100007F", "FFFF00000100007F"):
                continue
            found = True
            rx += int(f[4].split(":")[1], 16)
            drops += int(f[-1])
    return {"rx_queue": rx, "drops": drops, "found": found}


# ------------------------------------------------------------------ the flooder child


def flooder(cfg: dict) -> None:
    """
    JSON lines on stdin: ``{"cmd": "tokens"}`` (a ``_ping`` from every
    source, keeping the roundtrip token of the answer), ``{"cmd": "flood",
    "kind", "count", "progress", "paced", "drain", "plan"}`` (``progress``:
    a line every that many datagrams; ``paced``: let the node's receive
    queue drain every 100; ``drain``: report the end once it drained);
    ``{"cmd": "exit"}``.
    """
    host, port = cfg.get("host", "127.0.0.1"), cfg["port"]
    addr = (host, port)
    socks = []
    for i in range(SOURCES):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source_address(i), 0))
        s.setblocking(False)
        socks.append(s)
    tokens: dict = {}
    emit(event="ready", pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            break
        if cmd["cmd"] == "tokens":
            _fetch_tokens(socks, addr, tokens)
            emit(event="tokens", got=len(tokens))
        elif cmd["cmd"] == "flood":
            payloads = build(cmd["kind"], cmd["count"], tokens, cmd.get("seed", 1), cmd.get("plan"))
            _flood(socks, addr, payloads, cmd)
    for s in socks:
        s.close()


def _fetch_tokens(socks, addr, tokens) -> None:
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    for attempt in range(5):
        for i, s in enumerate(socks):
            if i not in tokens:
                try:
                    s.sendto(dht_message(m.QUERY, b"_ping", i), addr)
                except BlockingIOError:
                    pass
        end = time.monotonic() + 1.0
        while len(tokens) < len(socks) and time.monotonic() < end:
            for key, _ in sel.select(0.05):
                try:
                    data = key.fileobj.recv(2048)
                except BlockingIOError:
                    continue
                try:
                    msg = m.decode_message(data)
                except m.DecodeError:
                    continue
                if msg.HasField("roundtripToken"):
                    tokens[key.data] = msg.roundtripToken
        if len(tokens) == len(socks):
            break
    sel.close()
    # drain what the answers left
    for s in socks:
        try:
            while True:
                s.recv(2048)
        except BlockingIOError:
            pass


def _flood(socks, addr, payloads, cmd) -> None:
    sends = [s.sendto for s in socks]
    every = cmd.get("progress") or 0
    paced = cmd.get("paced", False)
    port = addr[1]
    sent = blocked = nbytes = 0
    emit(event="sending", kind=cmd["kind"], count=len(payloads))
    t0 = time.perf_counter()
    for i, data in payloads:
        while True:
            try:
                sends[i](data, addr)
                break
            except BlockingIOError:
                blocked += 1
                time.sleep(0.0005)
        sent += 1
        nbytes += len(data)
        if every and sent % every == 0:
            emit(event="progress", sent=sent)
        if paced and sent % 100 == 0:
            end = time.monotonic() + 10
            while udp_socket_figures(port)["rx_queue"] and time.monotonic() < end:
                time.sleep(0.002)
    seconds = time.perf_counter() - t0
    if cmd.get("drain"):  # report once the node has read what its socket queued
        end = time.monotonic() + 10
        while udp_socket_figures(port)["rx_queue"] and time.monotonic() < end:
            time.sleep(0.005)
    # what the sources were sent back (answers, SYN-ACKs) is of no interest
    for s in socks:
        try:
            while True:
                s.recv(65536)
        except (BlockingIOError, ConnectionRefusedError):
            pass
    emit(event="flooded", kind=cmd["kind"], sent=sent, seconds=seconds, blocked=blocked, bytes=nbytes)


# ------------------------------------------------------------------ the pinger child


def pinger(cfg: dict) -> None:
    """
    Legitimate clients: ``{"cmd": "start", "interval"}`` pings every
    ``interval`` s (pipelined), each ping from the next of ``clients``
    addresses (127.0.2.1, 127.0.2.2, ...; a ping every 2 ms from 50
    addresses is 10 a second each, a normal client's rate, below the RPC
    layer's overload limit per source) until ``{"cmd": "stop"}``, then reports
    ``{"event": "pings", "rtts" (s), "lost"}`` after waiting ``timeout`` s
    for the last answers; ``{"cmd": "seq", "count"}``: ``count`` pings one
    after the other (each waits up to ``timeout``).
    """
    addr = (cfg.get("host", "127.0.0.1"), cfg["port"])
    timeout = cfg.get("timeout", 2.0)
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(cfg.get("clients", PING_CLIENTS)):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((f"127.0.2.{1 + i}", 0))
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ, "udp")
        socks.append(c)
    s = socks[0]  # the sequential pings' client
    turn = 0
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    rid = random.randrange(65536)
    outstanding: dict = {}
    rtts: list = []
    lost = 0

    def receive(s: socket.socket) -> None:
        while True:
            try:
                data = s.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            try:
                msg = m.decode_message(data)
            except m.DecodeError:
                continue
            t = outstanding.pop(msg.rid, None)
            if t is not None and msg.type == m.RESPONSE:
                rtts.append(time.perf_counter() - t)

    def send(one: bool = False) -> None:
        nonlocal rid, turn
        rid = (rid + 1) & 0xFFFF
        outstanding[rid] = time.perf_counter()
        c = s if one else socks[turn % len(socks)]
        turn += 1
        try:
            c.sendto(dht_message(m.QUERY, b"_ping", rid), addr)
        except BlockingIOError:
            pass

    def expire(now: float) -> None:
        nonlocal lost
        for r, t in list(outstanding.items()):
            if now - t > timeout:
                del outstanding[r]
                lost += 1

    emit(event="ready", pid=os.getpid())
    running = False
    interval = 0.002
    next_at = 0.0
    while True:
        wait = max(0.0, next_at - time.perf_counter()) if running else 0.5
        for key, _ in sel.select(wait):
            if key.data == "udp":
                receive(key.fileobj)
                continue
            line = sys.stdin.readline()
            if not line:
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "start":
                rtts, lost, running = [], 0, True
                interval = cmd.get("interval", 0.002)
                next_at = time.perf_counter()
            elif cmd["cmd"] == "stop":
                running = False
                end = time.perf_counter() + timeout
                while outstanding and time.perf_counter() < end:
                    for key, _ in sel.select(0.01):
                        if key.data == "udp":
                            receive(key.fileobj)
                expire(float("inf"))
                emit(event="pings", rtts=rtts, lost=lost)
            elif cmd["cmd"] == "seq":
                rtts, lost = [], 0
                for _ in range(cmd["count"]):
                    send(one=True)
                    end = time.perf_counter() + timeout
                    while outstanding and time.perf_counter() < end:
                        if s in [k.fileobj for k, _ in sel.select(0.01)]:
                            receive(s)
                    expire(float("inf"))
                emit(event="pings", rtts=rtts, lost=lost)
            elif cmd["cmd"] == "exit":
                return
        now = time.perf_counter()
        if running and now >= next_at:
            send()
            next_at += interval
            if next_at < now:
                next_at = now + interval
            expire(now)


# ------------------------------------------------------------------ the targets


def twist_argv(port: int, status_port: int, topic: str = "daemon flood") -> list:
    """The daemon under test: persistent, serving a topic, /status on 127.0.0.1."""
    return [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm",
            "--topic", topic, "--expose", "tcp:host=127.0.0.1:port=9", "--persistent",
            "--bootstrap", "none", "--host", "127.0.0.1", "--port", str(port),
            "--status-http", f"tcp:port={status_port}:interface=127.0.0.1"]


class PyTarget:
    """``twist hyperswarm`` in a process of its own, its log in a file."""

    name = "txhyperswarm"

    def __init__(self, workdir: Path) -> None:
        self.port, self.status = free_port(), free_port()
        self.log_path = workdir / f"twist-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(twist_argv(self.port, self.status), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=str(REPO))
        self.pid = self.proc.pid
        end = time.monotonic() + 30
        while b"swarm listening" not in self.log_path.read_bytes():
            if time.monotonic() > end or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("twist hyperswarm did not start:\n" + self.log_text()[-3000:])
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def log_lines(self) -> int:
        """Lines the daemon logged, but the web access log of our own /metrics scrapes."""
        return sum(1 for line in self.log_text().splitlines() if '"GET /metrics' not in line)

    def metrics(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status}/metrics", timeout=10) as r:
            return metric_samples(r.read().decode())

    def records(self) -> dict:
        s = self.metrics()
        return {"records": int(s[("hyperswarm_dht_records", ())]),
                "hot": int(s[("hyperswarm_dht_records_largest_topic", ())]),
                "per_address": int(s[("hyperswarm_dht_records_largest_address", ())])}

    def stop(self) -> None:
        end_process(self.proc)
        self.log.close()
        keep = os.environ.get("DAEMON_FLOOD_LOG")
        if keep:  # a copy of the daemon's log, for a look
            Path(keep).write_bytes(self.log_path.read_bytes())


class NodeTarget:
    """tests/node/flood_node.js: a hyperswarm 2.15.3 swarm, persistent, announcing a topic."""

    name = "Node"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / f"node-{self.port}.log"
        self.peer = Peer(["node", str(NODE_SCRIPT), json.dumps({"port": self.port, "hot": HOT_TOPIC.hex()})],
                         name="Node flood node")
        ready = self.peer.read("ready", 30)
        self.pid = ready["pid"]

    def log_lines(self) -> int:
        self.peer.send_line(json.dumps({"cmd": "stats"}))
        return self.peer.read("stats", 30)["log_lines"]

    def metrics(self) -> dict:
        return {}

    def records(self) -> dict:
        self.peer.send_line(json.dumps({"cmd": "stats"}))
        s = self.peer.read("stats", 30)
        return {"records": s["records"], "hot": s["hot"], "per_address": s["per_address"]}

    def stop(self) -> None:
        self.peer.stop()


# ------------------------------------------------------------------ measuring


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


def child(role: str, cfg: dict) -> Peer:
    return Peer([sys.executable, str(Path(__file__).resolve()), "--child", role, json.dumps(cfg)],
                name=f"{role} child")


def counted(before: dict, after: dict) -> tuple:
    """(answered, refused) as the daemon's /metrics counts them between two scrapes."""
    def total(s, name, cond=lambda labels: True):
        return sum(v for (n, labels), v in s.items() if n == name and cond(dict(labels)))

    # the pinger's _pings are not the flood's
    def flood_in(labels):
        return labels["direction"] == "in" and labels["command"] != "_ping"

    answered = (total(after, "hyperswarm_dht_rpc_requests_total", flood_in)
                - total(before, "hyperswarm_dht_rpc_requests_total", flood_in))
    sending = {"send_error", "send_closed"}
    refused = (total(after, "hyperswarm_dropped_datagrams_total", lambda l: l["reason"] not in sending)
               - total(before, "hyperswarm_dropped_datagrams_total", lambda l: l["reason"] not in sending))
    # uTP SYNs let in: half-open connections, answered with a SYN-ACK (ST_STATE, 20 bytes)
    answered += int((after.get(("hyperswarm_utp_half_open", ()), 0) - before.get(("hyperswarm_utp_half_open", ()), 0))
                    + total(after, "hyperswarm_dropped_datagrams_total", lambda l: l["reason"] == "half_open_evicted")
                    - total(before, "hyperswarm_dropped_datagrams_total", lambda l: l["reason"] == "half_open_evicted"))
    return int(answered), int(refused)


def measure_target(make, kinds, count: int, workdir: Path) -> dict:
    """The floods at one target: a row per kind, plus the idle figures."""
    target = make(workdir)
    flood = ping = None
    try:
        time.sleep(1.0)
        out = {"name": target.name, "idle_rss": rss_mib(target.pid), "rows": []}
        ping = child("pinger", {"port": target.port})
        ping.read("ready", 20)
        ping.send_line(json.dumps({"cmd": "seq", "count": 200}))
        idle = ping.read("pings", 120)
        out["idle_p50"] = pct(idle["rtts"], 50)
        out["idle_lost"] = idle["lost"]
        flood = child("flooder", {"port": target.port})
        flood.read("ready", 30)
        flood.send_line(json.dumps({"cmd": "tokens"}))
        out["tokens"] = flood.read("tokens", 60)["got"]
        for kind in kinds:
            n = count if kind != "announce" else round(count * 1.4)
            before = target.metrics()
            k0 = udp_socket_figures(target.port)
            rss0, lines0 = rss_mib(target.pid), target.log_lines()
            ping.send_line(json.dumps({"cmd": "start", "interval": 0.002}))
            time.sleep(0.1)
            flood.send_line(json.dumps({"cmd": "flood", "kind": kind, "count": n, "drain": True}))
            done = flood.read("flooded", 300)
            time.sleep(0.3)
            ping.send_line(json.dumps({"cmd": "stop"}))
            pings = ping.read("pings", 60)
            time.sleep(0.5)
            k1 = udp_socket_figures(target.port)
            after = target.metrics()
            row = {
                "kind": kind, "sent": done["sent"], "send_rate": done["sent"] / done["seconds"],
                "kernel_drops": k1["drops"] - k0["drops"],
                "p50": pct(pings["rtts"], 50), "p90": pct(pings["rtts"], 90), "p99": pct(pings["rtts"], 99),
                "max": pct(pings["rtts"], 100), "pings": len(pings["rtts"]), "lost": pings["lost"],
                "rss0": rss0, "rss1": rss_mib(target.pid), "log_lines": target.log_lines() - lines0,
            }
            row["absorbed"] = row["sent"] - row["kernel_drops"]
            row["absorbed_rate"] = row["absorbed"] / done["seconds"]
            if before:
                row["answered"], row["refused"] = counted(before, after)
                row["reasons"] = {dict(labels)["reason"]: int(v - before.get((n, labels), 0))
                                  for (n, labels), v in after.items()
                                  if n == "hyperswarm_dropped_datagrams_total" and v != before.get((n, labels), 0)}
                for (n, labels), v in after.items():
                    if n == "hyperswarm_dht_records_refused_total" and v != before.get((n, labels), 0):
                        row["reasons"]["records " + dict(labels)["reason"]] = int(v - before.get((n, labels), 0))
            if kind == "forged":
                row["records_after"] = target.records()["records"]
            if kind == "announce":
                row["records"] = target.records()
            out["rows"].append(row)
        out["rss_end"] = rss_mib(target.pid)
        return out
    finally:
        for c in (flood, ping):
            if c is not None:
                c.stop()
        target.stop()


def measure_announces(make, count: int, workdir: Path) -> dict:
    """The baseline row: ``count`` valid announces, paced, at a fresh node."""
    target = make(workdir)
    flood = None
    try:
        time.sleep(1.0)
        flood = child("flooder", {"port": target.port})
        flood.read("ready", 30)
        flood.send_line(json.dumps({"cmd": "tokens"}))
        tokens = flood.read("tokens", 60)["got"]
        k0 = udp_socket_figures(target.port)
        flood.send_line(json.dumps({"cmd": "flood", "kind": "announce", "count": count, "paced": True}))
        done = flood.read("flooded", 600)
        time.sleep(0.5)
        k1 = udp_socket_figures(target.port)
        return {"sent": done["sent"], "tokens": tokens, "kernel_drops": k1["drops"] - k0["drops"],
                **target.records()}
    finally:
        if flood is not None:
            flood.stop()
        target.stop()


# ------------------------------------------------------------------ main


KINDS = ("random", "forged", "announce", "syn")


def print_report(results: list, baseline: dict, count: int) -> None:
    print(f"floods at a persistent node serving a topic ({count} datagrams a kind, announce "
          f"{round(count * 1.4)}); pings every 2 ms from 50 clients (127.0.2.x, 10/s each), lost = unanswered in 2 s")
    print(f"{'node':<12} {'flood':<9} {'sent':>7} {'sent/s':>8} {'absorbed/s':>10} {'answered':>8} "
          f"{'refused':>8} {'p50 ms':>7} {'p90':>7} {'p99':>7} {'max':>7} {'pings':>6} {'lost':>5} "
          f"{'RSS0 MiB':>8} {'RSS1 MiB':>8} {'log':>4}")
    for res in results:
        for r in res["rows"]:
            ans = str(r["answered"]) if "answered" in r else "-"
            ref = str(r["refused"]) if "refused" in r else "-"
            print(f"{res['name']:<12} {r['kind']:<9} {r['sent']:>7} {r['send_rate']:>8.0f} "
                  f"{r['absorbed_rate']:>10.0f} {ans:>8} {ref:>8} {r['p50']:>7.2f} {r['p90']:>7.2f} "
                  f"{r['p99']:>7.2f} {r['max']:>7.1f} {r['pings']:>6} {r['lost']:>5} {r['rss0']:>8.1f} "
                  f"{r['rss1']:>8.1f} {r['log_lines']:>4}")
    for res in results:
        for r in res["rows"]:
            if r.get("reasons"):
                print(f"  {res['name']} {r['kind']}: refused " + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())))
    if len(results) == 2:
        py, js = results
        print("ratio txhyperswarm / Node, ping p50 and p99 during each flood:")
        for a, b in zip(py["rows"], js["rows"]):
            print(f"  {a['kind']:<9} p50 x{a['p50'] / b['p50']:.2f}  p99 x{a['p99'] / b['p99']:.2f}  "
                  f"lost {a['lost']} vs {b['lost']}")
    print()
    print("baseline (issue 12)         issue's figure          " + "  ".join(f"{r['name']:<22}" for r in results))

    def row(label, issue, cells):
        print(f"{label:<27} {issue:<23} " + "  ".join(f"{c:<22}" for c in cells))

    row("idle RSS", "51.9 MB (Node 52.4)", [f"{r['idle_rss'] * MiB / 1e6:.1f} MB" for r in results])
    row("200 pings p50", "0.08 ms (Node 0.32)", [f"{r['idle_p50']:.3f} ms ({r['idle_lost']} lost)" for r in results])
    for r in results:
        r["by_kind"] = {x["kind"]: x for x in r["rows"]}
    row("random flood: rate", "300k datagrams/s",
        [f"{x['by_kind']['random']['send_rate'] / 1e3:.0f}k/s sent, {x['by_kind']['random']['absorbed_rate'] / 1e3:.0f}k/s read"
         for x in results if "random" in x["by_kind"]])
    row("random flood: RSS, log", "+0.2 MB, no log line",
        [f"{(x['by_kind']['random']['rss1'] - x['by_kind']['random']['rss0']) * MiB / 1e6:+.1f} MB, "
         f"{x['by_kind']['random']['log_lines']} lines" for x in results if "random" in x["by_kind"]])
    names = [r["name"] for r in results]
    row(f"{baseline.get('count', 0)} announces, 5,000 topics", "65,536 / 4,096 / 256",
        [f"{baseline[n]['records']} / {baseline[n]['hot']} / {baseline[n]['per_address']}" for n in names if n in baseline])
    row("forged tokens refused", "all",
        [("all" if x["by_kind"]["forged"]["records_after"] == 0 else
          f"{x['by_kind']['forged']['records_after']} records stored")
         for x in results if "forged" in x["by_kind"]])


def check(results: list, baseline: dict) -> list:
    """The issue's figures, for txhyperswarm: what missed."""
    missed = []
    py = next((r for r in results if r["name"] == "txhyperswarm"), None)
    if py is None:
        return missed
    for r in py["rows"]:
        if r["rss1"] - r["rss0"] > 50:
            missed.append(f"{r['kind']}: RSS grew {r['rss1'] - r['rss0']:.1f} MiB (limit 50)")
        if r["log_lines"] and r["kind"] == "random":
            missed.append(f"random: {r['log_lines']} log lines")
    if py["rss_end"] - py["idle_rss"] > 50:
        missed.append(f"RSS grew {py['rss_end'] - py['idle_rss']:.1f} MiB over the floods (limit 50)")
    forged = next((r for r in py["rows"] if r["kind"] == "forged"), None)
    if forged is not None and forged["records_after"] != 0:
        missed.append(f"forged tokens: {forged['records_after']} records stored")
    b = baseline.get("txhyperswarm")
    if b is not None and (b["records"], b["hot"], b["per_address"]) != (65536, 4096, 256):
        missed.append(f"announces held {b['records']} / {b['hot']} / {b['per_address']}, not 65,536 / 4,096 / 256")
    return missed


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        {"flooder": flooder, "pinger": pinger}[sys.argv[2]](json.loads(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--count", type=int, default=100_000, help="datagrams per flood kind (announce: 1.4 x)")
    ap.add_argument("--announces", type=int, default=140_000, help="announces of the baseline row")
    ap.add_argument("--only", choices=["py", "js"], help="one implementation only")
    ap.add_argument("--kinds", default=",".join(KINDS), help="flood kinds, comma-separated")
    ap.add_argument("--no-assert", action="store_true", help="report only, exit 0")
    args = ap.parse_args()
    enter_private_netns("BENCH_DAEMON_FLOOD_NETNS")
    makes = []
    if args.only in (None, "py"):
        makes.append(PyTarget)
    if args.only in (None, "js"):
        if not (NODE_MODULES / "hyperswarm").is_dir():
            sys.exit("tests/node/node_modules is missing: run `npm ci --prefix tests/node`")
        makes.append(NodeTarget)
    kinds = [k for k in args.kinds.split(",") if k]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="daemon_flood-") as tmp:
        workdir = Path(tmp)
        results = [measure_target(make, kinds, args.count, workdir) for make in makes]
        baseline = {"count": args.announces}
        if args.announces:
            for make in makes:
                baseline[make.name] = measure_announces(make, args.announces, workdir)
        print_report(results, baseline, args.count)
        for name in (make.name for make in makes):
            b = baseline.get(name)
            if b is not None:
                print(f"  {name}: {b['sent']} announces sent paced, {b['tokens']} of {SOURCES} tokens, "
                      f"{b['kernel_drops']} dropped by the kernel")
    missed = check(results, baseline)
    for line in missed:
        print("MISSED:", line)
    if missed and not args.no_assert:
        sys.exit(1)


if __name__ == "__main__":
    main()
