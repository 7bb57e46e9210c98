"""The ``hyperswarm`` console script as real processes."""

import json
import subprocess
import sys

import pytest

from tests.harness import REPO, free_port

CLI = [sys.executable, "-m", "txhyperswarm.cli"]


def _cli(*args, timeout=30):
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
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    result = _cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert result.stdout == ""


def test_ping_nobody_times_out_with_exit_1():
    port = free_port()
    result = _cli("ping", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"127.0.0.1:{port}" in result.stderr
