"""
DHT RPCs answered per CPU-second: a txhyperswarm node and a Node dht-rpc 4.9.6
node, side by side in one run.

Each responder runs in its own process on 127.0.0.1. One load generator (this
process, plain UDP sockets, pre-encoded dht-rpc queries from 20 sender ids)
keeps a window of requests in flight for a fixed number of requests, and the
responder's CPU time (utime + stime from /proc) over the run is measured.
Needs ``npm ci --prefix tests/node`` first.

    python bench/dht_rpc.py [--requests N] [--window W]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from txhyperswarm.dht import messages as m  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start(argv, env=None):
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start")
    info = json.loads(line)
    return proc, info["port"], info["pid"]


def requests_for(command: str, count: int, responder_id_hint=None):
    ids = [os.urandom(32) for _ in range(20)]
    out = []
    for i in range(count):
        msg = m.Message()
        msg.version = 1
        msg.type = m.QUERY
        msg.rid = i & 0xFFFF
        msg.id = ids[i % 20]
        msg.command = command.encode()
        if command == "_find_node":
            msg.target = os.urandom(32)
        out.append(msg.SerializeToString())
    return out


def load(port: int, payloads, window: int, timeout: float = 2.0):
    """Send all payloads keeping ``window`` in flight; returns (answered, seconds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    addr = ("127.0.0.1", port)
    sent = answered = 0
    inflight = 0
    total = len(payloads)
    started = time.perf_counter()
    last_progress = started
    while answered < total:
        while inflight < window and sent < total:
            try:
                sock.sendto(payloads[sent], addr)
            except BlockingIOError:
                break
            sent += 1
            inflight += 1
        if not sel.select(0.05):
            now = time.perf_counter()
            if now - last_progress > timeout:
                # lost requests: stop waiting for them, refill the window
                if sent >= total:
                    break
                inflight = 0
                last_progress = now
            continue
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            answered += 1
            inflight -= 1
            last_progress = time.perf_counter()
    elapsed = time.perf_counter() - started
    sel.close()
    sock.close()
    return answered, elapsed


def measure(name, argv, env, command, count, window):
    proc, port, pid = start(argv, env)
    try:
        load(port, requests_for(command, 2000), window)  # warm up, fill the routing table
        payloads = requests_for(command, count)
        cpu0 = cpu_seconds(pid)
        answered, elapsed = load(port, payloads, window)
        cpu = cpu_seconds(pid) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"impl": name, "command": command, "answered": answered, "sent": count,
            "wall_s": elapsed, "cpu_s": cpu, "per_cpu_s": answered / cpu if cpu else float("inf"),
            "per_wall_s": answered / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--window", type=int, default=64)
    args = ap.parse_args()
    node_env = dict(os.environ, NODE_PATH=str(REPO / "tests" / "node" / "node_modules"))
    py = [sys.executable, str(REPO / "bench" / "_dht_responder.py")]
    js = ["node", str(REPO / "bench" / "node" / "dht_responder.js")]
    rows = []
    for command in ("_ping", "_find_node"):
        ours = measure("txhyperswarm", py, None, command, args.requests, args.window)
        theirs = measure("dht-rpc 4.9.6", js, node_env, command, args.requests, args.window)
        rows.append((command, ours, theirs))
    print(f"{'command':<11} {'impl':<14} {'answered':>9} {'cpu s':>7} {'RPC/cpu-s':>10} {'RPC/wall-s':>10}")
    for command, ours, theirs in rows:
        for r in (ours, theirs):
            print(f"{command:<11} {r['impl']:<14} {r['answered']:>9} {r['cpu_s']:>7.2f} {r['per_cpu_s']:>10.0f} {r['per_wall_s']:>10.0f}")
        print(f"{command:<11} {'ratio py/node':<14} {'':>9} {'':>7} {ours['per_cpu_s'] / theirs['per_cpu_s']:>10.2f}x")


if __name__ == "__main__":
    main()
