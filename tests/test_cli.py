"""The ``hyperswarm`` console script as real processes."""

import subprocess
import sys

import pytest

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
