"""
Requests per second and MB/s through a topic tunnel, side by side in one run:

``direct``
    the client talks to the backend's port (no tunnel): the ceiling.
``python``
    ``twist hyperswarm --topic T --expose tcp:host=127.0.0.1:port=B`` and
    ``twist hyperswarm --topic T --listen tcp:port=L:interface=127.0.0.1``.
``node``
    the same shape on Node's hyperswarm 2.15.3 (``bench/node/tunnel_pipe.js``,
    hypertele-style: one swarm connection per piped TCP connection).

Everything runs on 127.0.0.1 with a local bootstrap node (``twist hyperswarm
--bootstrap-node``) and ``--no-mdns`` on the Python daemons; the script
re-runs itself inside a private network namespace (``unshare -rn``) when it
can, so nothing reaches a real interface (Node's swarm always uses mDNS).

The backend (a separate process) answers ``GET /`` with a small page and
closes, and ``GET /big`` with ``--size`` MiB. ``req/s``: ``--concurrency``
clients, each doing connect, request, read to the end, for ``--seconds``
seconds (a new TCP connection per request, so through a tunnel a new swarm
connection per request). ``MB/s``: one ``GET /big`` over one connection,
from connect to the end of the body, best of ``--runs``. Every phase is
bounded in time; a tunnel that does not come up is reported as failed in
its column. Needs ``npm ci --prefix tests/node`` for the Node column.

    python bench/tunnel.py [--seconds 5] [--concurrency 8] [--size 128] [--runs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / "tests" / "node" / "node_modules"
PIPE_JS = REPO / "bench" / "node" / "tunnel_pipe.js"
PAGE = b"hello through the tunnel\n" * 4
MIB = 1 << 20
READY_TIMEOUT = 45.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------- the backend


async def _backend(port: int, size: int) -> None:
    chunk = b"x" * MIB

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /big"):
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                left = size
                while left:
                    n = min(left, len(chunk))
                    writer.write(chunk[:n])
                    left -= n
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(json.dumps({"event": "listening"}), flush=True)
    async with server:
        await server.serve_forever()


# -------------------------------------------------------------- the client


async def _get(port: int, path: str, timeout: float) -> int:
    """One request on a new connection: the bytes of the response."""

    async def go() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: bench\r\n\r\n")
            await writer.drain()
            total = 0
            while True:
                data = await reader.read(1 << 18)
                if not data:
                    return total
                total += len(data)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


async def _ready(port: int, deadline: float) -> None:
    """Wait until a small request through ``port`` gets the whole page."""
    last = None
    while time.monotonic() < deadline:
        try:
            if await _get(port, "/", 5.0) > len(PAGE):
                return
        except (OSError, asyncio.TimeoutError) as e:
            last = e
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no answer through the tunnel within {READY_TIMEOUT:g}s ({last!r})")


async def _rps(port: int, seconds: float, concurrency: int) -> dict:
    done = failed = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.monotonic() < end:
            try:
                if await _get(port, "/", 10.0) > len(PAGE):
                    done += 1
                else:
                    failed += 1
            except (OSError, asyncio.TimeoutError):
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rps": done / (time.monotonic() - t0), "failed": failed}


async def _throughput(port: int, size: int, runs: int) -> dict:
    """Best MB/s of ``runs`` GETs of ``size`` bytes; failed GETs are counted, not hidden."""
    best, failures = 0.0, []
    for _ in range(runs):
        t0 = time.monotonic()
        try:
            got = await _get(port, "/big", 120.0)
        except (OSError, asyncio.TimeoutError) as e:
            failures.append(f"{type(e).__name__}: {e}")
            continue
        took = time.monotonic() - t0
        if got < size:
            failures.append(f"got {got} of {size} bytes")
            continue
        best = max(best, size / MIB / took)
    if not best:
        raise RuntimeError("every GET /big failed: " + "; ".join(failures))
    return {"mbps": best, "big_failed": failures}


async def measure(port: int, args) -> dict:
    await _ready(port, time.monotonic() + READY_TIMEOUT)
    out = await _rps(port, args.seconds, args.concurrency)
    try:
        out.update(await _throughput(port, args.size * MIB, args.runs))
    except RuntimeError as e:
        out["error"] = f"GET /big: {type(e).__name__}: {e}"
    return out


# -------------------------------------------------------------- processes


class Procs:
    def __init__(self) -> None:
        self.procs: list = []
        self.logs = Path(tempfile.mkdtemp(prefix="bench-tunnel-"))

    def start(self, name: str, argv: list, ready: str, timeout: float = READY_TIMEOUT) -> subprocess.Popen:
        # Output goes to a file, never a pipe nobody reads (a daemon logging
        # a line per tunnel would block once a pipe is full).
        env = dict(os.environ, PYTHONPATH=str(REPO), NODE_PATH=str(NODE_MODULES))
        log = open(self.logs / f"{name}.log", "w+b")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
                             start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            log.seek(0)
            seen = log.read()
            if ready.encode() in seen:
                return p
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not say {ready!r}: {seen.decode('utf-8', 'replace')[-400:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(6)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def twist(*args: str) -> list:
    return [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", *args]


def run(args) -> dict:
    results: dict = {}
    procs = Procs()
    backend_port, boot_port = free_port(), free_port()
    topic_text = f"bench-tunnel-{os.getpid()}"
    try:
        procs.start("backend", [sys.executable, __file__, "--backend", str(backend_port), "--size", str(args.size)],
                    "listening")
        procs.start("bootstrap", twist("--bootstrap-node", "--host", "127.0.0.1", "--port", str(boot_port)),
                    "listening")
        boot = f"127.0.0.1:{boot_port}"
        columns = [("direct", lambda: backend_port)]

        def python_tunnel() -> int:
            listen_port = free_port()
            common = ["--topic", topic_text, "--bootstrap", boot, "--host", "127.0.0.1", "--no-mdns"]
            procs.start("py-expose", twist(*common, "--expose", f"tcp:host=127.0.0.1:port={backend_port}"),
                        "first announce done")
            procs.start("py-listen", twist(*common, "--listen", f"tcp:port={listen_port}:interface=127.0.0.1"),
                        "peer found")
            return listen_port

        def node_pipe() -> int:
            if not _in_private_netns():
                raise RuntimeError("no private network namespace: Node's swarm always uses mDNS")
            if shutil.which("node") is None or not (NODE_MODULES / "hyperswarm").is_dir():
                raise RuntimeError("node or tests/node/node_modules missing (npm ci --prefix tests/node)")
            listen_port = free_port()
            node_topic = hashlib.sha256((topic_text + "-node").encode()).hexdigest()
            procs.start("node-server", ["node", str(PIPE_JS), "server", node_topic, boot, str(backend_port)],
                        "announced")
            procs.start("node-client", ["node", str(PIPE_JS), "client", node_topic, boot, str(listen_port)],
                        '"peer"')
            return listen_port

        columns += [("python", python_tunnel), ("node", node_pipe)]
        for name, setup in columns:
            try:
                port = setup()
                results[name] = asyncio.run(measure(port, args))
            except Exception as e:  # reported in the table, the other columns go on
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            if name != "direct":
                # one tunnel at a time: stop its processes, keep backend and bootstrap
                for p in procs.procs[2:]:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in procs.procs[2:]:
                    try:
                        p.wait(6)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                del procs.procs[2:]
    finally:
        procs.stop()
    if any("error" in r or r.get("failed") for r in results.values()):
        results["logs"] = str(procs.logs)  # kept for a look
    else:
        shutil.rmtree(procs.logs, ignore_errors=True)
    return results


def table(results: dict, args) -> str:
    def cell(name: str, key: str, fmt: str) -> str:
        r = results.get(name, {})
        return format(r[key], fmt) if key in r else "failed"

    def ratio(key: str) -> str:
        py, node = results.get("python", {}), results.get("node", {})
        if key in py and key in node and node[key]:
            return f"{py[key] / node[key]:.2f}"
        return "n/a"

    lines = [
        f"{'':24} {'direct':>10} {'python':>10} {'node':>10} {'python/node':>12}",
        f"{'req/s (c=' + str(args.concurrency) + ')':24} {cell('direct', 'rps', '.0f'):>10} "
        f"{cell('python', 'rps', '.0f'):>10} {cell('node', 'rps', '.0f'):>10} {ratio('rps'):>12}",
        f"{'MB/s (' + str(args.size) + ' MiB GET)':24} {cell('direct', 'mbps', '.0f'):>10} "
        f"{cell('python', 'mbps', '.0f'):>10} {cell('node', 'mbps', '.0f'):>10} {ratio('mbps'):>12}",
    ]
    if "logs" in results:
        lines.append(f"the processes' logs: {results['logs']}")
    for name in ("direct", "python", "node"):
        r = results.get(name, {})
        if "error" in r:
            lines.append(f"{name}: {r['error']}")
        if r.get("failed"):
            lines.append(f"{name}: {r['failed']} failed requests in the req/s run")
        if r.get("big_failed"):
            lines.append(f"{name}: GET /big failed {len(r['big_failed'])} of {args.runs} times: "
                         + "; ".join(r["big_failed"]))
    return "\n".join(lines)


def _in_private_netns() -> bool:
    return os.environ.get("TXHYPERSWARM_BENCH_NETNS") == "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="MiB for the throughput GET")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.backend is not None:
        asyncio.run(_backend(args.backend, args.size * MIB))
        return
    if not _in_private_netns() and shutil.which("unshare") and subprocess.call(
            ["unshare", "-rn", "true"], stderr=subprocess.DEVNULL) == 0:
        inner = ('ip link set lo up multicast on && ip route replace 224.0.0.0/4 dev lo && '
                 'exec "$0" "$@"')
        env = dict(os.environ, TXHYPERSWARM_BENCH_NETNS="1")
        sys.exit(subprocess.call(["unshare", "-rn", "sh", "-c", inner, sys.executable, __file__, *sys.argv[1:]],
                                 env=env))
    results = run(args)
    print(table(results, args))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
