"""
A DHT node under a flood from 1,000 source addresses, on real sockets.

A txhyperswarm DHT node runs in its own process on 127.0.0.1. A flooder
process sends pre-encoded ``_find_node`` queries (fresh ids) from 1,000 UDP
sockets bound to 127.0.x.y (x = 1-4), as fast as it can, bounded in count and
time; a pinger process on 127.0.0.2 pings the node every 10 ms and records
each round trip. Reported per run: the flood rate sent and absorbed (answered
plus shed), ping latency percentiles and losses, the node's RSS before and
after. Runs: no flood, flood at the default per-IP limit, flood at a lowered
per-IP limit. Only 127.0.0.0/8 is used.

    python bench/dht_flood.py [--seconds S] [--max-datagrams N] [--limit L]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from txhyperswarm.dht import messages as m  # noqa: E402

NODE_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor
from txhyperswarm.dht.node import DHTNode
limit = int(sys.argv[2])
node = DHTNode(reactor, bootstrap=[], host="127.0.0.1", port=0, rate_limit_per_ip=limit)
node.startService()
def stats():
    print(json.dumps({"dropped": dict(node.dropped),
                      "requests": {f"{c}/{d}": n for (c, d), n in node.rpc_requests.items()},
                      "table": node.routing_table_size}), flush=True)
def cmd():
    line = sys.stdin.readline()
    if not line:
        reactor.stop()
        return
    stats()
    reactor.callLater(0, lambda: None)
import threading
def reader():
    for line in sys.stdin:
        reactor.callFromThread(stats)
    reactor.callFromThread(reactor.stop)
threading.Thread(target=reader, daemon=True).start()
print(json.dumps({"port": node.address()[1], "pid": os.getpid()}), flush=True)
reactor.run()
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def query(command: bytes, rid: int, node_id=None, target=None) -> bytes:
    msg = m.Message()
    msg.version = 1
    msg.type = m.QUERY
    msg.rid = rid & 0xFFFF
    if node_id is not None:
        msg.id = node_id
    msg.command = command
    if target is not None:
        msg.target = target
    return msg.SerializeToString()


def flooder(port: int, seconds: float, max_datagrams: int, out) -> None:
    socks = []
    for i in range(1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
        s.setblocking(False)
        socks.append(s)
    rng = random.Random(1)
    payloads = [query(b"_find_node", k, rng.randbytes(32), rng.randbytes(32)) for k in range(4096)]
    addr = ("127.0.0.1", port)
    sent = blocked = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    k = 0
    while sent < max_datagrams:
        if (k & 1023) == 0 and time.perf_counter() >= end:
            break
        try:
            socks[k % 1000].sendto(payloads[k & 4095], addr)
            sent += 1
        except BlockingIOError:
            blocked += 1
        k += 1
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    out.put({"sent": sent, "seconds": elapsed, "blocked": blocked})


def pinger(port: int, seconds: float, out) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.settimeout(0.01)
    addr = ("127.0.0.1", port)
    rtts = []
    lost = 0
    rid = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        rid = (rid + 1) & 0xFFFF
        t0 = time.perf_counter()
        s.sendto(query(b"_ping", rid), addr)
        got = False
        while time.perf_counter() - t0 < 1.0:
            try:
                data = s.recv(2048)
            except socket.timeout:
                continue
            try:
                msg = m.decode_message(data)
            except m.DecodeError:
                continue
            if msg.rid == rid:
                rtts.append(time.perf_counter() - t0)
                got = True
                break
        if not got:
            lost += 1
        time.sleep(max(0.0, 0.01 - (time.perf_counter() - t0)))
    s.close()
    out.put({"rtts": rtts, "lost": lost})


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


def run(limit: int, flood: bool, seconds: float, max_datagrams: int) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-c", NODE_SCRIPT, str(REPO), str(limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        info = json.loads(proc.stdout.readline())
        port, pid = info["port"], info["pid"]
        time.sleep(0.5)
        rss0 = rss_kib(pid)
        q: mp.Queue = mp.Queue()
        ping = mp.Process(target=pinger, args=(port, seconds, q))
        procs = [ping]
        if flood:
            procs.append(mp.Process(target=flooder, args=(port, seconds, max_datagrams, q)))
        for p in procs:
            p.start()
        results = [q.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join(10)
        time.sleep(1.0)
        rss1 = rss_kib(pid)
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        stats = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pings = next(r for r in results if "rtts" in r)
    fl = next((r for r in results if "sent" in r), {"sent": 0, "seconds": seconds, "blocked": 0})
    answered = stats["requests"].get("_find_node/in", 0)
    shed = stats["dropped"].get("rate_ip", 0)
    return {
        "limit": limit, "flood": flood, "sent": fl["sent"], "send_rate": fl["sent"] / fl["seconds"],
        "answered": answered, "shed": shed, "absorbed_rate": (answered + shed) / fl["seconds"],
        "p50": pct(pings["rtts"], 50), "p90": pct(pings["rtts"], 90), "p99": pct(pings["rtts"], 99),
        "pings": len(pings["rtts"]), "lost": pings["lost"], "rss0": rss0 / 1024, "rss1": rss1 / 1024,
        "table": stats["table"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-datagrams", type=int, default=1_000_000)
    ap.add_argument("--limit", type=int, default=20, help="the lowered per-IP limit of the third run")
    args = ap.parse_args()
    rows = [
        run(2000, False, args.seconds, 0),
        run(2000, True, args.seconds, args.max_datagrams),
        run(args.limit, True, args.seconds, args.max_datagrams),
    ]
    print(f"{'flood':<6} {'limit/IP/s':>10} {'sent':>8} {'sent/s':>8} {'answered':>8} {'shed':>8} "
          f"{'absorbed/s':>10} {'ping p50':>8} {'p90':>7} {'p99':>7} {'pings':>6} {'lost':>5} "
          f"{'RSS0 MiB':>8} {'RSS1 MiB':>8}")
    for r in rows:
        print(f"{'yes' if r['flood'] else 'no':<6} {r['limit']:>10} {r['sent']:>8} {r['send_rate']:>8.0f} "
              f"{r['answered']:>8} {r['shed']:>8} {r['absorbed_rate']:>10.0f} {r['p50']:>7.2f}ms "
              f"{r['p90']:>5.2f}ms {r['p99']:>5.2f}ms {r['pings']:>6} {r['lost']:>5} "
              f"{r['rss0']:>8.1f} {r['rss1']:>8.1f}")


if __name__ == "__main__":
    main()
