"""
``peers`` lookups on a 200-node DHT: txhyperswarm and Node's @hyperswarm/dht
4.0.1 side by side in one run, on three networks (Python-only, Node-only, and
mixed: 100 + 100).

Each network's persistent nodes run in one process per implementation
(``--serve`` mode of this script for Python, ``tests/node/peers_node.js`` for
Node), all on 127.0.0.1. A few network nodes announce ten topics; then two
ephemeral lookup clients, each in its own process (``--client`` mode of this
script, and ``peers_node.js``), take turns looking each topic up. Each client
measures its own lookups: time to the first peer, time to the end of the walk,
and the datagrams it sent (requests, with retries). Needs ``npm ci --prefix
tests/node`` first.

    python bench/dht_lookup.py [--nodes 200] [--topics 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NODE_SCRIPT = REPO / "tests" / "node" / "peers_node.js"
HOST = "127.0.0.1"


# -- the Python processes ----------------------------------------------------------


def _run_python(args) -> None:
    """``--serve N`` (persistent nodes serving peers) or ``--client``."""
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from txhyperswarm.dht import peers
    from txhyperswarm.dht.node import DHTNode

    bootstrap = [] if args.bootstrap in (None, "none") else [args.bootstrap]
    nodes = []

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def make(boot, ephemeral=False):
        n = DHTNode(reactor, bootstrap=boot, ephemeral=ephemeral, host=HOST, port=0)
        if not ephemeral:
            peers.register(n)
        n.startService()
        n.sent_datagrams = 0
        send = n.udp.send

        def counting(data, addr, _send=send, _n=n):
            _n.sent_datagrams += 1
            return _send(data, addr)

        n.udp.send = counting
        nodes.append(n)
        return n

    @defer.inlineCallbacks
    def start():
        if args.client:
            make(bootstrap, ephemeral=True)
        else:
            first = make(bootstrap)
            boot = bootstrap or [f"{HOST}:{first.address()[1]}"]
            for _ in range(args.serve - 1):
                make(boot)
        out({"event": "listening", "nodes": [{"port": n.address()[1], "id": n.id.hex()} for n in nodes]})
        yield defer.gatherResults([n.bootstrapped() for n in nodes])
        out({"event": "ready"})

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            if not line.strip():
                return
            msg = json.loads(line)
            if msg["cmd"] == "exit":
                reactor.stop()
                return
            node = nodes[msg.get("node", 0)]
            topic = bytes.fromhex(msg["topic"])
            started = time.perf_counter()
            sent0 = node.sent_datagrams
            found = []
            first = []

            def on_peer(p):
                if not first:
                    first.append((time.perf_counter() - started) * 1000)
                found.append({"host": p.host, "port": p.port, "local": p.local})

            def done(result, event):
                err = None
                if hasattr(result, "getErrorMessage"):
                    err = result.getErrorMessage()
                elif result is False:  # a DHTTopic's first round failed
                    err = "no DHT node answered"
                out({"event": event, "id": msg["id"], "error": err, "peers": found,
                     "first_ms": first[0] if first else None,
                     "total_ms": (time.perf_counter() - started) * 1000,
                     "sent": node.sent_datagrams - sent0})

            if msg["cmd"] == "lookup":
                peers.lookup_stream(node, topic, on_peer).addBoth(done, "lookup-done")
            elif msg["cmd"] == "announce":
                a = peers.announce(node, topic, msg.get("port"))
                a.when_ready().addBoth(done, "announced")

    stdio.StandardIO(Commands())
    reactor.callWhenRunning(start)
    reactor.run()


# -- orchestration -------------------------------------------------------------------


class Proc:
    """A child printing JSON lines, read without blocking past a timeout."""

    def __init__(self, name, argv):
        self.name = name
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO))
        os.set_blocking(self.p.stdout.fileno(), False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.lines = []
        self._id = 0

    def wait(self, pred, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, obj in enumerate(self.lines):
                if pred(obj):
                    del self.lines[i]
                    return obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: timed out")
            if self.sel.select(min(left, 1.0)):
                chunk = os.read(self.p.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.p.poll()})")
                self.buf += chunk
                *done, self.buf = self.buf.split(b"\n")
                self.lines.extend(json.loads(x) for x in done if x.strip())

    def ask(self, event, **cmd):
        self._id += 1
        cmd["id"] = self._id
        self.p.stdin.write((json.dumps(cmd) + "\n").encode())
        self.p.stdin.flush()
        return self.wait(lambda o: o.get("id") == cmd["id"] and o.get("event") == event)

    def stop(self):
        try:
            self.p.stdin.write(b'{"cmd":"exit"}\n')
            self.p.stdin.flush()
            self.p.wait(5)
        except Exception:
            self.p.kill()
            self.p.wait()


def py_proc(name, *args):
    return Proc(name, [sys.executable, str(Path(__file__).resolve()), *args])


def js_proc(name, cfg):
    return Proc(name, ["node", str(NODE_SCRIPT), json.dumps(cfg)])


def start_network(kind, n):
    """Returns (procs, bootstrap "HOST:PORT", [(proc, node index) announcers])."""
    procs = []
    if kind == "python":
        p = py_proc("py-net", "--serve", str(n))
        procs.append(p)
        info = p.wait(lambda o: o.get("event") == "listening")
        p.wait(lambda o: o.get("event") == "ready", timeout=300)
        boot = f"{HOST}:{info['nodes'][0]['port']}"
        members = [(p, i) for i in range(n)]
    elif kind == "node":
        j = js_proc("js-net", {"count": n, "chain": True, "host": HOST})
        procs.append(j)
        info = j.wait(lambda o: o.get("event") == "listening")
        j.wait(lambda o: o.get("event") == "ready", timeout=300)
        boot = f"{HOST}:{info['nodes'][0]['port']}"
        members = [(j, i) for i in range(n)]
    else:
        p = py_proc("py-net", "--serve", str(n // 2))
        procs.append(p)
        info = p.wait(lambda o: o.get("event") == "listening")
        p.wait(lambda o: o.get("event") == "ready", timeout=300)
        boot = f"{HOST}:{info['nodes'][0]['port']}"
        j = js_proc("js-net", {"count": n - n // 2, "bootstrap": [boot], "host": HOST})
        procs.append(j)
        j.wait(lambda o: o.get("event") == "listening")
        j.wait(lambda o: o.get("event") == "ready", timeout=300)
        members = [m for pair in zip([(p, i) for i in range(n // 2)], [(j, i) for i in range(n - n // 2)])
                   for m in pair]
    return procs, boot, members


def run_network(kind, n, topics, rounds):
    procs, boot, members = start_network(kind, n)
    clients = {}
    try:
        time.sleep(2.0)  # let routing tables settle after the bootstrap walks
        for i, topic in enumerate(topics):
            proc, idx = members[(i * 37 + 5) % len(members)]
            r = proc.ask("announced", cmd="announce", node=idx, topic=topic.hex(), port=20000 + i)
            if r["error"]:
                print(f"  [{kind}] announce {i} failed: {r['error']}", file=sys.stderr)
        clients["python"] = py_proc("py-client", "--client", "--bootstrap", boot)
        clients["node"] = js_proc("js-client", {"count": 1, "ephemeral": True, "bootstrap": [boot], "host": HOST})
        for c in clients.values():
            c.wait(lambda o: o.get("event") == "ready", timeout=60)
        warm = hashlib.sha256(b"warm-up").digest().hex()
        for c in clients.values():
            for _ in range(2):
                c.ask("lookup-done", cmd="lookup", topic=warm)
        results = {"python": [], "node": []}
        order = ["python", "node"]
        for r in range(rounds):
            for i, topic in enumerate(topics):
                for name in (order if (i + r) % 2 == 0 else order[::-1]):
                    res = clients[name].ask("lookup-done", cmd="lookup", topic=topic.hex())
                    res["found"] = any(p["port"] == 20000 + i for p in res["peers"])
                    results[name].append(res)
        return results
    finally:
        for c in list(clients.values()) + procs:
            c.stop()


def summarise(rows):
    firsts = [r["first_ms"] for r in rows if r["first_ms"] is not None]
    return {
        "first": statistics.median(firsts) if firsts else float("nan"),
        "total": statistics.median(r["total_ms"] for r in rows),
        "sent": statistics.mean(r["sent"] for r in rows),
        "found": sum(r["found"] for r in rows),
        "n": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve or args.client:
        _run_python(args)
        return
    topics = [hashlib.sha256(f"bench-topic-{i}".encode()).digest() for i in range(args.topics)]
    table = []
    for kind in ("python", "node", "mixed"):
        print(f"network {kind}: {args.nodes} nodes ...", file=sys.stderr, flush=True)
        res = run_network(kind, args.nodes, topics, args.rounds)
        table.append((kind, summarise(res["python"]), summarise(res["node"])))
    print(f"{args.nodes}-node network, {args.topics} topics x {args.rounds} rounds per client; medians, "
          f"messages = datagrams the client sent per lookup (mean)")
    print(f"{'network':<8} {'client':<13} {'first ms':>9} {'total ms':>9} {'msgs':>6} {'found':>7} {'err':>4}")
    for kind, py, js in table:
        for name, s in (("txhyperswarm", py), ("@hyperswarm", js)):
            print(f"{kind:<8} {name:<13} {s['first']:>9.1f} {s['total']:>9.1f} {s['sent']:>6.1f} "
                  f"{s['found']:>3}/{s['n']:<3} {s['errors']:>4}")
        print(f"{kind:<8} {'ratio py/node':<13} {py['first'] / js['first']:>8.2f}x {py['total'] / js['total']:>8.2f}x "
              f"{py['sent'] / js['sent']:>5.2f}x")


if __name__ == "__main__":
    main()
