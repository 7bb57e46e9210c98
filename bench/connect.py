"""
Swarm connections: announce -> connected latency and stream throughput
through a swarm connection, txhyperswarm and hyperswarm 2.15.3 side by
side, over TCP and over uTP (through a holepunch), each peer in its own
process, on a local DHT on 127.0.0.1.

One ``twist hyperswarm --bootstrap-node`` on 127.0.0.1 is the DHT. For each
transport and each pairing (announcer <- dialler: Python <- Python,
Node <- Python, Python <- Node, Node <- Node) a fresh announcer joins a fresh
topic (announce only) and, for uTP, then closes its TCP listener, so the
dialler's TCP attempt is refused and the connection comes over uTP after a
holepunch through the bootstrap node. A fresh dialler (bound, mDNS off so
the peer comes from the DHT) joins the topic (lookup only) on a "go":

* latency: from the dialler's ``join`` call to its ``connection`` event
  (one DHT lookup, the dial, for uTP the holepunch);
* throughput: the dialler writes ``--tcp-size`` / ``--utp-size`` MiB in
  64 KiB writes (Python: a streaming producer on the transport; Node:
  ``write``/``drain``), then ends; the announcer counts bytes from its
  ``connection`` to end-of-stream.

The table gives the median of ``--runs`` runs and the ratio to Node <-> Node;
the last row measures raw uTP (bench/utp.py, Python -> Python, the swarm's
4 MiB socket buffers) with the uTP size, for the "uTP through the swarm"
comparison. Every wait is bounded (``--timeout``). mDNS sockets are opened
(Node always opens one), so the run happens inside a private network
namespace: started outside one, the script re-runs itself under
``unshare -rn`` with ``lo`` up. Needs ``npm ci --prefix tests/node``.

    python bench/connect.py [--runs N] [--tcp-size MiB] [--utp-size MiB] [--only tcp|utp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._netns import enter_private_netns  # noqa: E402
from bench._peer import Peer, emit, end_process, serve_role  # noqa: E402
from tests.harness import free_port  # noqa: E402

NODE_MODULES = REPO / "tests" / "node" / "node_modules"


# ---------------------------------------------------------------- the Python peer


def _python_peer(cfg: dict) -> None:
    """The Python end: the same roles and lines as bench/node/connect_peer.js."""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from txhyperswarm import Hyperswarm

    host, port = cfg["bootstrap"].rsplit(":", 1)
    state = {"first": True, "joined_at": None}
    from bench._bulk import BulkSender

    class Send(BulkSender):
        """Writes ``size`` bytes as fast as the transport takes them, then ends."""

        def start(self):
            self.send(cfg["size"], lambda: emit(event="sent", t=time.monotonic()))

    @implementer(IHalfCloseableProtocol)
    class Count(Protocol):
        """
        Counts bytes from the connection to the end of the stream; the first
        connection that brought any is reported (a dial attempt that lost
        the race may have been accepted first; a dialler redials after the
        end).
        """

        def connectionMade(self):
            self.t0 = time.monotonic()
            self.bytes = 0
            self.type = "tcp" if self.transport.getPeer().type == "TCP" else "utp"

        def dataReceived(self, data):
            self.bytes += len(data)

        def readConnectionLost(self):
            self.done()
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

        def connectionLost(self, reason):
            self.done()

        def done(self):
            if self.bytes and not state.get("reported"):
                state["reported"] = True
                emit(event="received", bytes=self.bytes, t0=self.t0, t1=time.monotonic(), type=self.type)

    role = cfg["role"]
    swarm = Hyperswarm(reactor, bootstrap=[(host, int(port))], multicast=False,
                       factory=Factory.forProtocol(Count if role == "announce" else Send))

    def on_connection(protocol, info):
        if role == "announce" or not state["first"]:
            return
        state["first"] = False
        kind = "tcp" if protocol.transport.getPeer().type == "TCP" else "utp"
        emit(event="connected", t0=state["joined_at"], t1=time.monotonic(), type=kind)
        protocol.start()

    swarm.on("connection", on_connection)
    topic = bytes.fromhex(cfg["topic"])

    serve_role(swarm, topic, role, state,
               on_announced=(lambda: swarm.network.tcp_port.stopListening()) if cfg["utp"] else None)
    swarm.startService()  # binds, then "listening"
    reactor.run()


# ---------------------------------------------------------------- the driver


class Bootstrap:
    """``twist hyperswarm --bootstrap-node`` on 127.0.0.1 (its log in a temporary file)."""

    def __init__(self, timeout: float) -> None:
        import tempfile

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(mode="w+", prefix="bench-connect-boot-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", "--bootstrap-node",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO))
        end = time.monotonic() + timeout
        while "listening" not in Path(self.log.name).read_text():
            if self.proc.poll() is not None:
                raise RuntimeError("the bootstrap node exited:\n" + Path(self.log.name).read_text())
            if time.monotonic() > end:
                self.stop()
                raise TimeoutError("the bootstrap node did not start")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        end_process(self.proc)
        self.log.close()


def argv_for(impl: str, cfg: dict) -> list:
    if impl == "py":
        return [sys.executable, "-u", str(Path(__file__).resolve()), "--peer", json.dumps(cfg)]
    return ["node", str(REPO / "bench" / "node" / "connect_peer.js"), json.dumps(cfg)]


def measure(announcer: str, dialler: str, transport: str, size: int, boot: Bootstrap, timeout: float) -> dict:
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    base = {"topic": os.urandom(32).hex(), "bootstrap": boot.address, "utp": transport == "utp", "size": size}
    ann = Peer(argv_for(announcer, dict(base, role="announce")), env,
               f"{NAMES[announcer]} announcer ({NAMES[dialler]} dialler, {transport})", quiet=True)
    dial = None
    try:
        ann.read("announced", 30)
        dial = Peer(argv_for(dialler, dict(base, role="dial")), env,
                    f"{NAMES[dialler]} dialler ({NAMES[announcer]} announcer, {transport})", quiet=True)
        dial.read("ready", 30)
        dial.send_line("go")
        conn = dial.read("connected", 20)
        if conn["type"] != transport:
            # over TCP: the holepunch + uTP attempt the dial runs beside TCP
            # won the race (Node's network allows it; it happens on loopback)
            return None
        got = ann.read("received", timeout)
    finally:
        if dial is not None:
            dial.stop()
        ann.stop()
    if got["type"] != transport:
        raise RuntimeError(f"{dialler}->{announcer}: the dialler got {transport}, the announcer {got['type']}")
    if got["bytes"] != size:
        raise RuntimeError(f"{dialler}->{announcer}: {got['bytes']} of {size} bytes arrived")
    return {"latency_ms": (conn["t1"] - conn["t0"]) * 1000, "mbps": size / (got["t1"] - got["t0"]) / 1e6}


def raw_utp(size: int, timeout: float) -> float:
    """bench/utp.py's Python -> Python figure with the swarm's 4 MiB buffers."""
    sys.path.insert(0, str(REPO / "bench"))
    import utp as utp_bench  # bench/utp.py

    return utp_bench.measure("py", "py", size, 4 << 20, timeout)["mbps"]


NAMES = {"py": "Python", "js": "Node"}
PAIRS = (("py", "py"), ("js", "py"), ("py", "js"), ("js", "js"))  # (announcer, dialler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--runs", type=int, default=3, help="runs per cell (the median is shown)")
    ap.add_argument("--tcp-size", type=int, default=512, help="MiB sent over TCP")
    ap.add_argument("--utp-size", type=int, default=32, help="MiB sent over uTP")
    ap.add_argument("--timeout", type=float, default=120, help="seconds any one transfer may take")
    ap.add_argument("--only", choices=["tcp", "utp"], help="one transport only")
    args = ap.parse_args()
    enter_private_netns("BENCH_CONNECT_NETNS")
    if not (NODE_MODULES / "hyperswarm").is_dir():
        sys.exit("tests/node/node_modules is missing: run `npm ci --prefix tests/node`")

    transports = [t for t in ("tcp", "utp") if args.only in (None, t)]
    boot = Bootstrap(30)
    try:
        print(f"{'transport':<9} {'announcer <- dialler':<22} {'MiB':>5} {'latency ms':>10} {'x js':>6}"
              f" {'MB/s':>8} {'x js':>6}")
        for transport in transports:
            mib = args.tcp_size if transport == "tcp" else args.utp_size
            results = {}
            for ann, dial in PAIRS:
                runs, raced = [], 0
                while len(runs) < args.runs:
                    r = measure(ann, dial, transport, mib << 20, boot, args.timeout)
                    if r is None:
                        raced += 1
                        if raced > 3 * args.runs:
                            sys.exit(f"{NAMES[ann]} <- {NAMES[dial]}: uTP beat TCP {raced} times")
                        continue
                    runs.append(r)
                results[ann, dial] = {
                    "latency_ms": statistics.median(r["latency_ms"] for r in runs),
                    "mbps": statistics.median(r["mbps"] for r in runs),
                    "raced": raced,
                }
            base = results["js", "js"]
            for ann, dial in PAIRS:
                x = results[ann, dial]
                raced = f"   ({x['raced']} run(s) where uTP won, redone)" if x["raced"] else ""
                print(f"{transport:<9} {NAMES[ann] + ' <- ' + NAMES[dial]:<22} {mib:>5} {x['latency_ms']:>10.1f}"
                      f" {x['latency_ms'] / base['latency_ms']:>5.2f}x {x['mbps']:>8.1f}"
                      f" {x['mbps'] / base['mbps']:>5.2f}x{raced}")
            if transport == "utp":
                raw = statistics.median(raw_utp(mib << 20, args.timeout) for _ in range(args.runs))
                swarm = results["py", "py"]["mbps"]
                print(f"{'utp':<9} {'raw uTP, bench/utp.py':<22} {mib:>5} {'-':>10} {'':>6} {raw:>8.1f}"
                      f"   (Python <- Python through the swarm: {swarm / raw:.2f}x of it)")
            sys.stdout.flush()
    finally:
        boot.stop()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--peer":
        _python_peer(json.loads(sys.argv[2]))
    else:
        main()
