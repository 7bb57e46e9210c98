"""
uTP bulk throughput: txhyperswarm and utp-native 2.5.3, sender and receiver
in separate processes on 127.0.0.1, all four pairings side by side.

For each socket-buffer configuration (``default``: the kernel's default, as
hyperswarm 2 leaves it; ``4MiB``: SO_RCVBUF/SO_SNDBUF of 4 MiB on both ends)
and each pairing (Python->Python, Python->utp-native, utp-native->Python,
utp-native->utp-native) the receiver listens, the sender connects and writes
``--size`` bytes in 64 KiB writes (Python: a streaming producer registered on
the transport), then ends. Throughput is bytes over the receiver's time from
accept to end-of-stream; CPU seconds (utime + stime from /proc, sender and
receiver separately) cover the transfer only and are scaled to one GiB.
The longest gap between deliveries on the receiver is reported as "stall".
Needs ``npm ci --prefix tests/node`` first.

    python bench/utp.py [--size MiB] [--default-size MiB] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._peer import Peer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------- the Python peers


def _python_recv(bufsize: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp import UTPSocket

    @implementer(IHalfCloseableProtocol)
    class Count(Protocol):
        def connectionMade(self):
            self.t0 = self.last = time.monotonic()
            self.bytes = 0
            self.stall = 0.0

        def dataReceived(self, data):
            now = time.monotonic()
            if now - self.last > self.stall:
                self.stall = now - self.last
            self.last = now
            self.bytes += len(data)

        def readConnectionLost(self):
            emit(event="end", bytes=self.bytes, t0=self.t0, t1=time.monotonic(), stall=self.stall)
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

    udp = UDPSocket(reactor, host="127.0.0.1", buffer_size=bufsize)
    sock = UTPSocket(reactor, udp)
    sock.listen(Factory.forProtocol(Count))
    if os.environ.get("BENCH_PROFILE_RECV"):
        import atexit
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        atexit.register(lambda: (prof.disable(), prof.dump_stats(os.environ["BENCH_PROFILE_RECV"])))
    emit(event="listening", port=udp.port, pid=os.getpid())
    reactor.run()


def _python_send(port: int, total: int, bufsize: int) -> None:
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from bench._bulk import BulkSender
    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp import UTPSocket

    class Send(BulkSender):
        def connectionMade(self):
            self.send(total)

        def connectionLost(self, reason):
            t = self.transport
            emit(event="done", t0=self.t0, t1=time.monotonic(), reason=str(reason.value),
                 timeouts=t.timeouts, resent=t.packets_resent)
            if os.environ.get("BENCH_PROFILE"):
                reactor.callLater(0.1, reactor.stop)

    udp = UDPSocket(reactor, host="127.0.0.1", buffer_size=bufsize)
    sock = UTPSocket(reactor, udp)
    udp.listen()
    if os.environ.get("BENCH_PROFILE"):
        import atexit
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        atexit.register(lambda: (prof.disable(), prof.dump_stats(os.environ["BENCH_PROFILE"])))

    class Go(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            proto = Send()
            proto.t0 = time.monotonic()
            sock.connect("127.0.0.1", port, Factory.forProtocol(lambda: proto))

    stdio.StandardIO(Go())
    emit(event="ready", pid=os.getpid())
    reactor.run()


def emit(**obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the driver


def argv_for(impl: str, role: str, *args) -> list:
    if impl == "py":
        return [sys.executable, str(Path(__file__).resolve()), f"--{role}", *map(str, args)]
    return ["node", str(REPO / "bench" / "node" / "utp_bench.js"), role, *map(str, args)]


def measure(sender: str, receiver: str, size: int, bufsize: int, timeout: float) -> dict:
    env = dict(os.environ, NODE_PATH=str(REPO / "tests" / "node" / "node_modules"))
    recv = Peer(argv_for(receiver, "recv", bufsize), env)
    send = None
    try:
        info = recv.read("listening", 20)
        rpid = info["pid"]
        send = Peer(argv_for(sender, "send", info["port"], size, bufsize), env)
        spid = send.read("ready", 20)["pid"]
        c0 = cpu_seconds(spid), cpu_seconds(rpid)
        send.proc.stdin.write("go\n")
        send.proc.stdin.flush()
        end = recv.read("end", timeout)
        done = send.read("done", 30)
        if os.environ.get("BENCH_VERBOSE"):
            print(f"  {sender}->{receiver}: {done}", file=sys.stderr)
        c1 = cpu_seconds(spid), cpu_seconds(rpid)
    finally:
        if send is not None:
            send.stop()
        recv.stop()
    if end["bytes"] != size:
        raise RuntimeError(f"{sender}->{receiver}: {end['bytes']} of {size} bytes arrived")
    wall = end["t1"] - end["t0"]
    scale = GIB / size
    return {
        "mbps": size / wall / 1e6,
        "wall": wall,
        "send_cpu": (c1[0] - c0[0]) * scale,
        "recv_cpu": (c1[1] - c0[1]) * scale,
        "stall": end.get("stall"),
    }


NAMES = {"py": "Python", "js": "utp-native"}
PAIRS = (("py", "py"), ("py", "js"), ("js", "py"), ("js", "js"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="MiB per run with 4 MiB buffers")
    ap.add_argument("--default-size", type=int, default=32, help="MiB per run with default buffers")
    ap.add_argument("--runs", type=int, default=1, help="runs per cell (the median is shown)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--only", choices=["default", "4MiB"], help="one configuration only")
    args = ap.parse_args()
    configs = [("default", 0, args.default_size), ("4MiB", 4 << 20, args.size)]
    if args.only:
        configs = [c for c in configs if c[0] == args.only]
    print(f"{'buffers':<8} {'sender -> receiver':<26} {'MiB':>5} {'MB/s':>7} {'x js->js':>8}"
          f" {'send cpu-s/GiB':>14} {'recv cpu-s/GiB':>14} {'stall s':>7}")
    for cname, bufsize, mib in configs:
        results = {}
        for s, r in PAIRS:
            runs = sorted((measure(s, r, mib << 20, bufsize, args.timeout) for _ in range(args.runs)),
                          key=lambda x: x["mbps"])
            results[s, r] = runs[len(runs) // 2]
        base = results["js", "js"]["mbps"]
        for s, r in PAIRS:
            x = results[s, r]
            stall = f"{x['stall']:.2f}" if x["stall"] is not None else "-"
            print(f"{cname:<8} {NAMES[s] + ' -> ' + NAMES[r]:<26} {mib:>5} {x['mbps']:>7.1f}"
                  f" {x['mbps'] / base:>7.2f}x {x['send_cpu']:>14.2f} {x['recv_cpu']:>14.2f} {stall:>7}")
        sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--recv":
        _python_recv(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--send":
        _python_send(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
