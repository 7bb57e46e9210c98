"""
DHT scale, simulated: networks of 1,000 to 20,000 persistent ``DHTNode`` s in
one process on ``txhyperswarm.testing.UDPNetwork``, driven by one clock (a
``HeapClock``), and the same procedure with Node's ``@hyperswarm/dht`` 4.0.1
(dht-rpc 4.9.6) nodes on an in-memory socket and a simulated clock
(``tests/node/dht_scale.js``), side by side in one run.

Procedure, per network size N (each size in a process of its own, so that
memory figures do not mix):

1. three bootstrap nodes, then the other nodes join in batches (N/20 at a
   time, 5 s of clock apart), each bootstrapping from the three; every node
   serves ``peers``; then 60 s of clock for the tables to settle; then
   background traffic (``--warm``, 1): every node walks towards a random
   target, spread over 20 s, and 10 s more (dht-rpc has no bucket refresh:
   without traffic a node's far buckets hold little more than the
   bootstrap nodes, and at 20,000 nodes whole quarters of the id space can
   be out of a walk's reach: 3.5 % of lookups missed with ``--warm 0``);
2. ``--topics`` topics are announced (``peers.join``, re-announced every
   300-600 s as hyperswarm does) from as many random nodes;
3. ``--lookups`` lookups (``peers.lookup_stream``) from random nodes for
   random announced topics;
4. 30 % of the nodes (never an announcer) are killed at once (stopped, and
   their hosts put ``down``); lookups again at once, and again after 620 s
   of clock: past the next re-announce (at most 600 s after the last) and
   the 40 s table sweeps.

Definitions (the same for Node):

* messages per lookup: the requests the lookup's walk sent (QUERYs; a
  retry or a holepunch of the same request is not counted again);
* hops: the walk's nodes from the routing table (or the bootstrap list)
  are depth 1, a node named in the closerNodes of a depth-d reply is depth
  d+1 (the smallest when several name it); the hops of a lookup are the
  depth of the reply that first carried the announced peer
  (``txhyperswarm.dht.query.WalkTrace``);
* success: the lookup found the announcer's record (host and port);
* memory per node: the process's RSS growth from before the first node
  was made to after the announces, divided by N (for Node also the V8 heap
  in use, ``process.memoryUsage().heapUsed``).

    python3 bench/dht_scale.py [--sizes 1000,5000,20000] [--node-size 5000]

Asserts: mean messages per lookup at the largest size <= 1.6 x that at the
smallest (when they are 1,000 and 20,000, or given ``--check-ratio``), and
>= 99 % of lookups succeed after the kill and the refresh.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from txhyperswarm.dht import peers  # noqa: E402
from txhyperswarm.dht.node import DHTNode  # noqa: E402
from txhyperswarm.dht.query import WalkTrace  # noqa: E402
from txhyperswarm.testing import HeapClock, UDPNetwork  # noqa: E402

NODE_SCRIPT = REPO / "tests" / "node" / "dht_scale.js"
PORT = 49737
BOOTSTRAP_NODES = 3
LATENCY = 0.005
#: Clock seconds after the kill: past the next re-announce (300-600 s after
#: the previous one ended) and the 40 s table sweeps.
REFRESH = 620.0

Address = Tuple[str, int]


def host_of(i: int) -> str:
    """The host of the ``i``-th node: 10.0.0.1, 10.0.0.2, ..."""
    k = i + 1
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Simulation:
    """N persistent DHT nodes serving ``peers`` on one in-memory network."""

    def __init__(self, n: int, seed: int = 1, latency: float = LATENCY) -> None:
        self.n = n
        self.rng = random.Random(seed)
        random.seed(seed)  # the RPC layer's first request ids
        self.net = UDPNetwork(HeapClock(), latency=latency, seed=seed)
        self.nodes: List[DHTNode] = []
        self.alive: List[int] = []
        self.dead: set = set()
        #: topic -> index of the node announcing it
        self.topics: Dict[bytes, int] = {}
        self.joins: list = []

    # -- building ------------------------------------------------------------

    def _make(self, i: int, bootstrap: List[Address]) -> DHTNode:
        host = host_of(i)
        node = DHTNode(
            self.net.reactor(host),
            bootstrap=bootstrap,
            host=host,
            port=PORT,
            id=self.rng.randbytes(32),
            random_bytes=self.rng.randbytes,
        )
        peers.register(node)
        node.startService()
        self.nodes.append(node)
        self.alive.append(i)
        return node

    def build(self, batch: Optional[int] = None, pause: float = 5.0, settle: float = 60.0) -> None:
        """Bootstrap nodes, then the rest in batches; then ``settle`` s of clock."""
        boots: List[Address] = []
        for i in range(min(BOOTSTRAP_NODES, self.n)):
            self._make(i, list(boots))
            boots.append((host_of(i), PORT))
            self.net.run(1.0, step=0.05)
        batch = batch or max(50, self.n // 20)
        i = len(self.nodes)
        while i < self.n:
            for j in range(i, min(self.n, i + batch)):
                self._make(j, boots)
            i = len(self.nodes)
            self.net.run(pause, step=0.05)
        self.net.run(settle, step=0.05)

    def warm(self, walks: int = 1, spread: float = 20.0, settle: float = 10.0) -> None:
        """
        Background traffic: every live node walks (``_find_node``) towards
        ``walks`` random targets, spread over ``spread`` s of clock, then
        ``settle`` s. dht-rpc has no bucket refresh: a node's far buckets
        fill only from traffic, as a real network's own announces and
        lookups fill them.
        """
        step = 0.05
        for _ in range(walks):
            order = list(self.alive)
            self.rng.shuffle(order)
            per_step = max(1, -(-len(order) // max(1, int(spread / step))))
            for k in range(0, len(order), per_step):
                for i in order[k:k + per_step]:
                    d = self.nodes[i].query_stream("_find_node", self.rng.randbytes(32))
                    d.addErrback(lambda f: None)
                self.net.run(step, step=step)
        self.net.run(settle, step=step)

    def announce(self, count: int, limit: float = 60.0) -> int:
        """``count`` topics, each announced by a random non-bootstrap node; returns how many announced."""
        candidates = [i for i in self.alive if i >= BOOTSTRAP_NODES]
        for i in self.rng.sample(candidates, min(count, len(candidates))):
            topic = self.rng.randbytes(32)
            self.topics[topic] = i
            self.joins.append(
                peers.join(self.nodes[i], topic, announce_port=0, lookup=False, random=self.rng)
            )
        self.net.run_until(lambda: all(t.cycles for t in self.joins), limit=limit, step=0.05)
        return sum(1 for t in self.joins if t.cycles)

    def kill(self, fraction: float) -> int:
        """Kill ``fraction`` of the nodes at once (never an announcer): stopped, hosts down."""
        keep = set(self.topics.values())
        candidates = [i for i in self.alive if i not in keep]
        victims = self.rng.sample(candidates, int(round(fraction * len(self.alive))))
        for i in victims:
            self.nodes[i].stopService()
            self.net.down.add((host_of(i), None))
            self.dead.add(i)
        self.alive = [i for i in self.alive if i not in self.dead]
        return len(victims)

    # -- measuring -----------------------------------------------------------

    def lookups(self, count: int, limit: float = 60.0) -> dict:
        """
        ``count`` lookups at once, each from a random live node for a random
        announced topic; returns the figures.
        """
        topics = sorted(self.topics)
        runs = []
        for _ in range(count):
            topic = self.rng.choice(topics)
            announcer = self.topics[topic]
            i = self.rng.choice(self.alive)
            while i == announcer:
                i = self.rng.choice(self.alive)
            runs.append(self._lookup(self.nodes[i], topic, (host_of(announcer), PORT)))
        self.net.run_until(lambda: all(r["done"] for r in runs), limit=limit, step=0.05)
        return summarize(runs)

    def _lookup(self, node: DHTNode, topic: bytes, want: Address) -> dict:
        run = {"done": False, "found": False, "hops": None, "messages": 0, "failed": None}
        trace = WalkTrace()

        def on_peer(record) -> None:
            if (record.host, record.port) == want and not run["found"]:
                run["found"] = True
                run["hops"] = trace.reply_depth

        def ended(result) -> None:
            run["done"] = True
            run["messages"] = trace.sent
            if result is not None and hasattr(result, "getErrorMessage"):
                run["failed"] = result.getErrorMessage()

        context = node.walk_context
        context.tracer = lambda walk: trace
        try:
            d = peers.lookup_stream(node, topic, on_peer)
        finally:
            context.tracer = None
        d.addBoth(ended)
        return run

    def table_sizes(self) -> Tuple[float, int, int]:
        sizes = [self.nodes[i].routing_table_size for i in self.alive]
        return statistics.mean(sizes), min(sizes), max(sizes)


def summarize(runs: List[dict]) -> dict:
    hops = [r["hops"] for r in runs if r["found"]]
    msgs = [r["messages"] for r in runs if r["done"]]
    return {
        "lookups": len(runs),
        "found": sum(1 for r in runs if r["found"]),
        "unfinished": sum(1 for r in runs if not r["done"]),
        "hops_mean": statistics.mean(hops) if hops else None,
        "hops_max": max(hops) if hops else None,
        "messages_mean": statistics.mean(msgs) if msgs else None,
        "messages_max": max(msgs) if msgs else None,
    }


def measure(n: int, topics: int, lookups: int, seed: int = 1, kill: float = 0.3, warm: int = 1) -> dict:
    """The whole procedure for one size; returns the figures."""
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    sim = Simulation(n, seed)
    sim.build()
    if warm:
        sim.warm(warm)
    t_build = time.perf_counter() - t0
    announced = sim.announce(topics)
    gc.collect()
    rss1 = rss_bytes()
    table_mean, table_min, table_max = sim.table_sizes()
    t1 = time.perf_counter()
    before = sim.lookups(lookups)
    t_lookups = time.perf_counter() - t1
    killed = sim.kill(kill)
    after_kill = sim.lookups(lookups)
    t2 = time.perf_counter()
    sim.net.run(REFRESH, step=0.05)
    t_refresh = time.perf_counter() - t2
    after_refresh = sim.lookups(lookups)
    return {
        "impl": "python",
        "nodes": n,
        "announced": announced,
        "topics": topics,
        "warm": warm,
        "table_mean": table_mean,
        "table_min": table_min,
        "table_max": table_max,
        "rss_per_node": (rss1 - rss0) / n,
        "killed": killed,
        "before": before,
        "after_kill": after_kill,
        "after_refresh": after_refresh,
        "wall_build": t_build,
        "wall_lookups": t_lookups,
        "wall_refresh": t_refresh,
        "wall_total": time.perf_counter() - t0,
        "clock": sim.net.clock.seconds(),
        "datagrams": sim.net.counts["sent"],
    }


# -- the driver ------------------------------------------------------------------


def run_python(n: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--topics", str(args.topics),
           "--lookups", str(args.lookups), "--seed", str(args.seed), "--warm", str(args.warm)]
    if args.profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_node(n: int, args) -> Optional[dict]:
    if not (REPO / "tests" / "node" / "node_modules" / "@hyperswarm" / "dht").is_dir():
        print("(Node reference not installed: npm ci --prefix tests/node)", file=sys.stderr)
        return None
    cmd = ["node", "--expose-gc", "--max-old-space-size=16384", str(NODE_SCRIPT), "--nodes", str(n), "--topics", str(args.topics),
           "--lookups", str(args.lookups), "--seed", str(args.seed), "--warm", str(args.warm)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(s: dict) -> str:
    return f"{100.0 * s['found'] / s['lookups']:.1f}%"


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: List[dict]) -> str:
    head = (f"{'impl':7} {'nodes':>6} {'table':>6} {'hops':>5} {'max':>4} {'msgs':>6} {'found':>7} "
            f"{'killed':>6} {'found':>7} {'found':>7} {'hops':>5} {'msgs':>6} {'KiB/node':>9} {'wall s':>7}")
    sub = (f"{'':7} {'':>6} {'mean':>6} {'':>5} {'hops':>4} {'':>6} {'':>7} "
           f"{'':>6} {'at once':>7} {'refresh':>7} {'after':>5} {'after':>6} {'(RSS)':>9} {'':>7}")
    lines = [head, sub]
    for r in rows:
        b, k, a = r["before"], r["after_kill"], r["after_refresh"]
        lines.append(
            f"{r['impl']:7} {r['nodes']:>6} {r['table_mean']:>6.0f} {fmt(b['hops_mean']):>5} {fmt(b['hops_max'], 'd'):>4} "
            f"{fmt(b['messages_mean'], '.1f'):>6} {pct(b):>7} {r['killed']:>6} {pct(k):>7} {pct(a):>7} "
            f"{fmt(a['hops_mean']):>5} {fmt(a['messages_mean'], '.1f'):>6} {r['rss_per_node'] / 1024:>9.1f} "
            f"{r['wall_total']:>7.0f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="network sizes, comma-separated")
    p.add_argument("--node-size", type=int, default=5000,
                   help="size of the side-by-side run with Node (0: none)")
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warm", type=int, default=1,
                   help="random-target walks per node after joining (background traffic; 0: none)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per size")
    p.add_argument("--check-ratio", action="store_true",
                   help="assert the messages ratio even when the sizes are not 1,000 and 20,000")
    p.add_argument("--profile", action="store_true", help="cProfile each size, top entries to stderr")
    p.add_argument("--json", help="also write every row, as JSON lines, to this file")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            result = prof.runcall(measure, args.one, args.topics, args.lookups, args.seed, 0.3, args.warm)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        else:
            result = measure(args.one, args.topics, args.lookups, args.seed, 0.3, args.warm)
        print(json.dumps(result))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    for n in sizes:
        r = run_python(n, args)
        rows.append(r)
        print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    side = []
    if args.node_size:
        node = run_node(args.node_size, args)
        if node is not None:
            ours = next((r for r in rows if r["nodes"] == args.node_size), None) or run_python(args.node_size, args)
            side = [ours, node]

    if args.json:
        with open(args.json, "w") as f:
            for r in rows + side[1:]:
                f.write(json.dumps(r) + "\n")
    print(f"DHT scale, simulated ({time.strftime('%Y-%m-%d')}; {args.topics} topics, {args.lookups} lookups "
          f"per phase, {args.warm} random walk(s) per node after joining, {int(REFRESH)} s of clock between the "
          f"kill and the last phase)")
    print(table(rows))
    if side:
        ours, node = side
        print()
        print(f"side by side at {args.node_size} nodes, txhyperswarm vs Node @hyperswarm/dht 4.0.1 (dht-rpc 4.9.6):")
        print(table(side))
        b1, b2 = ours["before"], node["before"]
        print(f"ratio python/node: hops {b1['hops_mean'] / b2['hops_mean']:.2f}, "
              f"messages {b1['messages_mean'] / b2['messages_mean']:.2f}, "
              f"memory/node {ours['rss_per_node'] / node['rss_per_node']:.2f} "
              f"(Node V8 heap per node: {node['heap_per_node'] / 1024:.1f} KiB)")

    ok = True
    small, large = rows[0], rows[-1]
    if args.check_ratio or (small["nodes"] <= 1000 and large["nodes"] >= 20000):
        ratio = large["before"]["messages_mean"] / small["before"]["messages_mean"]
        print(f"messages per lookup, {large['nodes']} vs {small['nodes']} nodes: x{ratio:.2f} (limit 1.6)")
        ok &= ratio <= 1.6
    for r in rows + side[1:]:
        a = r["after_refresh"]
        if a["found"] < 0.99 * a["lookups"]:
            print(f"FAIL: {r['impl']} {r['nodes']}: {pct(a)} of lookups succeed after the kill and refresh")
            ok = ok and r["impl"] != "python"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
