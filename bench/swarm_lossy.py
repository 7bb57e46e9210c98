"""
uTP at swarm level through a lossy relay (issue 12): a swarm connection
carried through tests/utp/relay.py's LossyRelay at 5 % and 20 % loss (with
2 % reordering and 1 % duplication, both directions, seeded), timed,
txhyperswarm and hyperswarm 2.15.3 side by side.

Each run has its own processes: a DHT bootstrap node (``twist hyperswarm
--bootstrap-node``), the relay (this script with ``--relay``), an announcer
and a dialler (Python: this script with ``--peer``; Node:
bench/node/swarm_lossy_peer.js). The announcer joins a fresh topic
announcing the relay's port instead of its own; the relay's port refuses TCP
(a TCP socket bound there, not listening), so the dialler's TCP attempt fails
and its dial goes on with a holepunch through the DHT node and a uTP connect,
which the relay carries (it serves only the dialler's address lossily; the
DHT node's relayed holepunch passes untouched). The dialler writes ``size``
bytes (a random MiB over and over, 64 KiB writes, respecting backpressure)
and ends; the announcer echoes the first ``echo`` bytes back as they arrive
and ends once the stream ended. Checked: the sha256 of what arrived equals
what was sent, the echo is intact, the connection is uTP, the relay carried
it (its counters).

Time is the announcer's, from its ``connection`` event to end-of-stream;
"connect ms" is the dialler's, from its ``join`` to its ``connection`` event
(the DHT lookup, the refused TCP attempt, the holepunch and the uTP
handshake; the relay spares the first two datagrams each way, the handshake,
since libutp never answers a retransmitted SYN).
A run is capped at ``--cap`` seconds; a capped run reports the bytes that
had arrived. Python -> Python must finish within the issue's 60 s
(``--limit``): the script exits non-zero otherwise. The rows:
Python <- Python, Node <- Node (the reference: libutp) and, unless
``--no-mixed``, Python <- Node and Node <- Python (announcer <- dialler).

mDNS sockets are opened (Node always opens one), so the run happens inside a
private network namespace: started outside one, the script re-runs itself
under ``unshare -rn`` with ``lo`` up. Needs ``npm ci --prefix tests/node``.

    python bench/swarm_lossy.py [--cap S] [--runs N] [--only 5|20] [--no-mixed]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._peer import Peer, emit, serve_role  # noqa: E402
from bench._netns import enter_private_netns  # noqa: E402
from bench.connect import Bootstrap  # noqa: E402

NODE_MODULES = REPO / "tests" / "node" / "node_modules"
MiB = 1 << 20

#: (loss, size, echo, seed): the issue's two transfers.
CASES = {
    "5": (0.05, 64 * MiB, 1 * MiB, 5),
    "20": (0.20, 4 * MiB, 256 * 1024, 20),
}


# ---------------------------------------------------------------- the relay


def _relay(cfg: dict) -> None:
    """The LossyRelay in its own process; stdin: {"cmd": "target"|"client", "port"} / {"cmd": "stats"}."""
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from tests.utp.relay import LossyRelay

    relay = LossyRelay(reactor, None, loss=cfg["loss"], seed=cfg["seed"], spare_first=cfg["spare_first"],
                       refuse_tcp=True)

    def stats() -> dict:
        out = {"strangers": relay.strangers}
        for name, d in (("up", relay.up), ("down", relay.down)):
            out[name] = {"passed": d.passed, "dropped": d.dropped, "reordered": d.reordered,
                         "duplicated": d.duplicated}
        return out

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            msg = json.loads(line)
            if msg["cmd"] == "target":
                relay.target = ("127.0.0.1", msg["port"])
            elif msg["cmd"] == "client":
                relay.pin(("127.0.0.1", msg["port"]))
            emit(event="ok", cmd=msg["cmd"], stats=stats())

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())
    emit(event="ready", port=relay.port, pid=os.getpid())
    reactor.run()


# ---------------------------------------------------------------- the Python peer


def _python_peer(cfg: dict) -> None:
    """The Python end: the same roles and lines as bench/node/swarm_lossy_peer.js."""
    from twisted.internet import reactor, task

    from bench._bulk import StreamPump

    from txhyperswarm import Hyperswarm

    host, port = cfg["bootstrap"].rsplit(":", 1)
    role = cfg["role"]
    options = {"announce_port": cfg["announcePort"]} if role == "announce" else {}
    swarm = Hyperswarm(reactor, bootstrap=[(host, int(port))], host="127.0.0.1", multicast=False, **options)
    topic = bytes.fromhex(cfg["topic"])
    state = {"first": True, "joined_at": None}

    def announcer(stream, info):
        t0 = time.monotonic()
        h = hashlib.sha256()
        got = {"bytes": 0, "echo": cfg["echo"]}

        def data(chunk):
            h.update(chunk)
            got["bytes"] += len(chunk)
            if got["echo"] > 0:
                part = chunk[:got["echo"]]
                got["echo"] -= len(part)
                stream.write(part)

        progress = task.LoopingCall(lambda: emit(event="progress", bytes=got["bytes"]))
        progress.start(1.0, now=False)

        def end():
            progress.stop()
            emit(event="received", bytes=got["bytes"], sha256=h.hexdigest(), t0=t0, t1=time.monotonic(),
                 type=info.type)

        stream.on_data = data
        stream.on_end = end  # then the stream ends our side (allow_half_open False)
        stream.on_close = lambda reason: progress.running and progress.stop()

    def dialler(stream, info):
        info.reconnect(False)
        emit(event="connected", t0=state["joined_at"], t1=time.monotonic(), type=info.type)
        stream.allow_half_open = True
        echo = hashlib.sha256()
        echoed = [0]

        def data(chunk):
            echo.update(chunk)
            echoed[0] += len(chunk)

        pump = StreamPump(stream, os.urandom(MiB), cfg["size"],
                          on_sent=lambda: emit(event="sent", bytes=cfg["size"], sha256=pump.sent.hexdigest()))
        progress = task.LoopingCall(lambda: emit(event="echo", bytes=echoed[0]))
        progress.start(1.0, now=False)
        stream.on_close = lambda reason: progress.running and progress.stop()

        def end():
            progress.stop()
            want = hashlib.sha256(pump.block[:min(cfg["echo"], cfg["size"])]).hexdigest()
            emit(event="done", echo=echoed[0], echo_ok=echo.hexdigest() == want)

        stream.on_data = data
        stream.on_end = end
        pump.resumeProducing()

    def on_connection(stream, info):
        if not state["first"]:
            return
        state["first"] = False
        (announcer if role == "announce" else dialler)(stream, info)

    swarm.on("connection", on_connection)

    serve_role(swarm, topic, role, state)
    swarm.startService()
    reactor.run()


# ---------------------------------------------------------------- the driver


def argv_for(impl: str, cfg: dict) -> list:
    if impl == "py":
        return [sys.executable, "-u", str(Path(__file__).resolve()), "--peer", json.dumps(cfg)]
    return ["node", str(REPO / "bench" / "node" / "swarm_lossy_peer.js"), json.dumps(cfg)]


class Lines:
    """JSON lines of a child's stdout read straight from its descriptor (no hidden buffer), every wait bounded."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.fd = peer.proc.stdout.fileno()
        self.buf = b""
        self.seen: dict = {}

    def read(self, event: str, timeout: float, *, fail: bool = True) -> dict | None:
        """The next ``event`` line; ``None`` (or TimeoutError with ``fail``) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        try:
            while True:
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    self.seen[obj.get("event")] = obj
                    if obj.get("event") == event:
                        return obj
                    if obj.get("event") in ("error", "socket-error"):
                        raise RuntimeError(f"{self.peer.name}: {obj}")
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    if fail:
                        raise TimeoutError(f"no {event!r} from the {self.peer.name} in {timeout} s")
                    return None
                data = os.read(self.fd, 65536)
                if not data:
                    raise RuntimeError(f"{self.peer.name} exited before {event!r}")
                self.buf += data
        finally:
            sel.close()

    def send(self, obj) -> None:
        self.peer.send_line(obj if isinstance(obj, str) else json.dumps(obj))


def measure(announcer: str, dialler: str, case: str, boot: Bootstrap, cap: float) -> dict:
    loss, size, echo, seed = CASES[case]
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    label = f"{NAMES[announcer]} <- {NAMES[dialler]}, {loss:.0%}"
    relay = Peer([sys.executable, "-u", str(Path(__file__).resolve()), "--relay",
                  json.dumps({"loss": loss, "seed": seed, "spare_first": 2})], env, f"relay ({label})")
    procs = [relay]
    try:
        r = Lines(relay)
        base = {"topic": os.urandom(32).hex(), "bootstrap": boot.address, "size": size, "echo": echo,
                "announcePort": r.read("ready", 30)["port"]}
        procs.append(Peer(argv_for(announcer, dict(base, role="announce")), env, f"announcer ({label})", quiet=True))
        a = Lines(procs[-1])
        r.send({"cmd": "target", "port": a.read("announced", 30)["port"]})
        r.read("ok", 10)
        procs.append(Peer(argv_for(dialler, dict(base, role="dial")), env, f"dialler ({label})", quiet=True))
        d = Lines(procs[-1])
        r.send({"cmd": "client", "port": d.read("ready", 30)["port"]})
        r.read("ok", 10)
        d.send("go")
        conn = d.read("connected", 30)
        if conn["type"] != "utp":
            raise RuntimeError(f"{label}: the dialler got {conn['type']}, not uTP")
        got = a.read("received", cap, fail=False)
        done = d.read("done", 15, fail=False) if got is not None else None
        r.send({"cmd": "stats"})
        stats = r.read("ok", 10)["stats"]
    finally:
        for p in reversed(procs):
            p.stop()
    sent = d.seen
    if got is None:
        moved = a.seen.get("progress", {}).get("bytes", 0)
        return {"label": label, "capped": True, "bytes": moved, "seconds": cap, "mbps": moved / cap / 1e6,
                "size": size, "stats": stats, "connect": conn["t1"] - conn["t0"], "note": "cut at the cap"}
    if got["type"] != "utp":
        raise RuntimeError(f"{label}: the announcer got {got['type']}")
    if "sent" not in sent or got["bytes"] != size or got["sha256"] != sent["sent"]["sha256"]:
        raise RuntimeError(f"{label}: {got['bytes']} of {size} bytes arrived, sent: {sent.get('sent')}, got {got}")
    note = ""
    if done is None:  # the announcer's end did not reach the dialler
        note = f"the echo back had {d.seen.get('echo', {}).get('bytes', '?')} of {echo} bytes 15 s after; not waited for"
    elif done["echo"] != echo or not done["echo_ok"]:
        raise RuntimeError(f"{label}: echo {done['echo']} of {echo} bytes, intact {done['echo_ok']}")
    if stats["up"]["passed"] < size // 1500 or not stats["up"]["dropped"] or not stats["down"]["dropped"]:
        raise RuntimeError(f"{label}: the relay did not carry it: {stats}")
    seconds = got["t1"] - got["t0"]
    return {"label": label, "capped": False, "bytes": size, "seconds": seconds, "mbps": size / seconds / 1e6,
            "size": size, "stats": stats, "connect": conn["t1"] - conn["t0"], "note": note}


NAMES = {"py": "Python", "js": "Node"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--cap", type=float, default=60.0, help="seconds a transfer may take before it is cut")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds Python <- Python must finish within")
    ap.add_argument("--runs", type=int, default=1, help="runs per cell (the median time is shown)")
    ap.add_argument("--only", choices=sorted(CASES), help="one loss rate only (5 or 20)")
    ap.add_argument("--no-mixed", action="store_true", help="skip Python <- Node and Node <- Python")
    ap.add_argument("--pairs", help="announcer-dialler pairs to run, e.g. py-py,js-js (Node <- Node is the reference)")
    args = ap.parse_args()
    enter_private_netns("BENCH_CONNECT_NETNS")
    if not (NODE_MODULES / "hyperswarm").is_dir():
        sys.exit("tests/node/node_modules is missing: run `npm ci --prefix tests/node`")
    pairs = [("js", "js"), ("py", "py")] + ([] if args.no_mixed else [("py", "js"), ("js", "py")])
    if args.pairs:
        pairs = [tuple(p.split("-")) for p in args.pairs.split(",")]
    missed = []
    boot = Bootstrap(30)
    try:
        print(f"{'loss':>5} {'announcer <- dialler':<22} {'MiB':>4} {'moved MiB':>9} {'seconds':>9} {'MB/s':>7}"
              f" {'x Node':>7} {'connect ms':>10}  relay up passed/dropped, down passed/dropped")
        for case in [c for c in CASES if args.only in (None, c)]:
            rows = {}
            for ann, dial in pairs:
                runs = [measure(ann, dial, case, boot, args.cap) for _ in range(args.runs)]
                runs.sort(key=lambda r: (r["capped"], r["seconds"]))
                rows[ann, dial] = r = runs[len(runs) // 2]
                ref = rows["js", "js"]["mbps"] if ("js", "js") in rows else float("nan")
                s = r["stats"]
                ref_cut = ("js", "js") in rows and rows["js", "js"]["capped"] and (ann, dial) != ("js", "js")
                ratio = f"{'>' if ref_cut and not r['capped'] else ''}{r['mbps'] / ref:.1f}x" if ref > 0 else (
                    "-" if ref != ref else "inf")
                when = f">{args.cap:.0f} (cut)" if r["capped"] else f"{r['seconds']:.1f}"
                print(f"{CASES[case][0]:>5.0%} {NAMES[ann] + ' <- ' + NAMES[dial]:<22} {r['size'] // MiB:>4}"
                      f" {r['bytes'] / MiB:>9.2f} {when:>9} {r['mbps']:>7.3f} {ratio:>7} {r['connect'] * 1000:>10.1f}"
                      f"  {s['up']['passed']}/{s['up']['dropped']}, {s['down']['passed']}/{s['down']['dropped']}"
                      + (f"  ({r['note']})" if r["note"] else ""))
                sys.stdout.flush()
            py = rows.get(("py", "py"))
            if py is not None and (py["capped"] or py["seconds"] >= args.limit):
                missed.append(f"{CASES[case][0]:.0%}: Python <- Python took {py['seconds']:.1f} s"
                              f" (limit {args.limit:.0f} s)")
    finally:
        boot.stop()
    if missed:
        sys.exit("missed the issue's figure: " + "; ".join(missed))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--peer":
        _python_peer(json.loads(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--relay":
        _relay(json.loads(sys.argv[2]))
    else:
        main()
