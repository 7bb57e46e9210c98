"""The ``hyperswarm`` console script as real processes."""

import json
import subprocess
import sys

import pytest
from twisted.internet import defer

from tests.harness import REPO, free_port

CLI = [sys.executable, "-m", "txhyperswarm.cli"]
TOPIC = "11" * 32


def cli(*args, timeout=30):
    """Run ``hyperswarm ARGS`` to completion."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


@pytest.mark.parametrize(
    "args, says",
    [
        (["ping"], "HOST:PORT"),
        (["ping", "localhost"], "HOST:PORT"),
        (["ping", "127.0.0.1:0"], "port"),
        (["ping", "127.0.0.1:99999"], "port"),
        (["ping", "127.0.0.1:1", "--timeout", "-1"], "timeout"),
        (["nosuchcommand"], "invalid choice"),
        ([], "command"),
        (["lookup"], "TOPIC"),
        (["ping", "127.0.0.1:5", "extra"], "unrecognized"),
        (["lookup", TOPIC, "--bootstrap", "none", "--bootstrap", "127.0.0.1:5"], "--bootstrap: 'none' excludes"),
        (["lookup", ""], "empty topic"),
        (["announce", "", "--port", "4000"], "empty topic"),
        (["lookup", TOPIC, "--bootstrap", "127.0.0.1"], "HOST:PORT"),
        (["lookup", TOPIC, "--bootstrap", "nohost:port"], "port"),
        (["announce", TOPIC, "--port", "4000", "--bootstrap", ":4000"], "HOST:PORT"),
        (["announce", TOPIC, "--port", "4000", "--local-address", "10.0.0.1"], "HOST:PORT"),
        (["announce", TOPIC], "--port"),
        (["announce", TOPIC, "--port", "0"], "port"),
        (["lookup", TOPIC, "--timeout", "0"], "timeout"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert result.stdout == ""


def test_ping_nobody_times_out_with_exit_1():
    port = free_port()
    result = cli("ping", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"127.0.0.1:{port}" in result.stderr


def test_lookup_prints_each_source_host_port_local_once(monkeypatch, capsys):
    # Discovery passes every report on (repeats included); the CLI alone
    # de-duplicates what it prints, by (source, host, port, local).
    from twisted.internet.task import Clock

    from txhyperswarm import cli
    from txhyperswarm._observer import OneShotObserver
    from txhyperswarm.peer_record import PeerRecord

    topic = bytes.fromhex(TOPIC)
    records = [
        PeerRecord(topic, "192.0.2.1", 4000, False, ("192.0.2.9", 49737), None, "dht"),
        PeerRecord(topic, "192.0.2.1", 4000, False, ("192.0.2.8", 49737), None, "dht"),  # another referrer
        PeerRecord(topic, "192.0.2.1", 4000, True, None, None, "dht"),
        PeerRecord(topic, "192.0.2.1", 4000, True, None, None, "mdns"),
        PeerRecord(topic, "192.0.2.1", 4000, True, None, None, "mdns"),
    ]

    class Joined:
        dht, mdns = object(), None

        def stop(self):
            return defer.succeed(None)

    class FakeDiscovery:
        def join(self, topic, **kwargs):
            assert kwargs["lookup"] is True
            for record in records:
                kwargs["on_peer"](record)
            kwargs["on_update"](None)  # the walk ended
            return Joined()

    monkeypatch.setattr(cli, "_discovery", lambda reactor, bootstrap, mdns_on: (None, None, FakeDiscovery()))
    args = cli._build_parser().parse_args(["lookup", TOPIC, "--no-mdns"])
    done = defer.Deferred.fromCoroutine(cli._lookup(Clock(), args, OneShotObserver()))
    assert done.result == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["source"], p["local"], p["referrer"]) for p in printed] == [
        ("dht", False, "192.0.2.9:49737"), ("dht", True, None), ("mdns", True, None),
    ]


def test_bootstrap_list():
    from txhyperswarm._parsing import bootstrap_list

    assert bootstrap_list(None) is None and bootstrap_list([]) is None
    assert bootstrap_list(["none"]) == []
    assert bootstrap_list(["127.0.0.1:5", "[::1]:6"]) == [("127.0.0.1", 5), ("::1", 6)]
    for bad in (["none", "127.0.0.1:5"], ["127.0.0.1"], ["127.0.0.1:0"]):
        with pytest.raises(ValueError):
            bootstrap_list(bad)


class _FakeJoined:
    """A Discovery topic whose first round (the early flush) is already done."""

    mdns = None

    def __init__(self):
        self.dht = object()
        self.stopped = 0

    def when_ready(self):
        return defer.succeed(True)

    def stop(self):
        self.stopped += 1
        return defer.succeed(None)


class _FakeDiscovery:
    def __init__(self):
        self.joined = _FakeJoined()
        self.kwargs = None

    def join(self, topic, **kwargs):
        self.kwargs = kwargs
        return self.joined


def _announce_in_process(monkeypatch):
    from twisted.internet.task import Clock

    from txhyperswarm import cli
    from txhyperswarm._observer import OneShotObserver

    fake = _FakeDiscovery()
    monkeypatch.setattr(cli, "_discovery", lambda reactor, bootstrap, mdns_on: (None, None, fake))
    args = cli._build_parser().parse_args(["announce", TOPIC, "--port", "4000", "--no-mdns",
                                           "--local-address", "10.0.0.2:4000"])
    interrupted = OneShotObserver()
    done = defer.Deferred.fromCoroutine(cli._announce(Clock(), args, interrupted))
    return fake, interrupted, done


def test_announce_prints_once_the_first_dht_cycle_ended_not_at_the_early_flush(monkeypatch, capsys):
    fake, interrupted, done = _announce_in_process(monkeypatch)
    assert fake.kwargs["announce_port"] == 4000 and fake.kwargs["local_address"] == ("10.0.0.2", 4000)
    assert fake.kwargs["lookup"] is False
    assert capsys.readouterr().out == ""  # when_ready() fired: not enough
    fake.kwargs["on_update"](None)  # the first cycle, UPDATEs included, has ended
    assert json.loads(capsys.readouterr().out) == {"topic": TOPIC, "announced": True}
    fake.kwargs["on_update"](RuntimeError("a later cycle failed"))  # no matter
    assert not done.called
    interrupted.fire(2)
    assert done.result == 0 and fake.joined.stopped >= 1


def test_announce_whose_first_dht_cycle_failed_exits_1(monkeypatch, capsys):
    fake, interrupted, done = _announce_in_process(monkeypatch)
    fake.kwargs["on_update"](RuntimeError("No nodes responded"))
    assert done.result == 1
    out, err = capsys.readouterr()
    assert out == "" and "the first announce failed: No nodes responded" in err
