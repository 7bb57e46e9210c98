"""
Typed for users: ``txhyperswarm/py.typed`` ships in the wheel, the public
modules type-check with mypy, and an application's mistakes against the
public API are caught by mypy (the types are real, not ``Any``).

mypy runs as a subprocess, with the options a user's project would likely
use: imports of untyped libraries (zope.interface, pyee, ...) ignored, and
errors reported only for the files named (``--follow-imports=silent``:
private modules are read for their types, not judged).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.harness import REPO

PUBLIC = [
    "txhyperswarm/__init__.py",
    "txhyperswarm/swarm.py",
    "txhyperswarm/network.py",
    "txhyperswarm/stream.py",
    "txhyperswarm/peerinfo.py",
    "txhyperswarm/queue.py",
    "txhyperswarm/discovery.py",
    "txhyperswarm/dht/node.py",
    "txhyperswarm/udp.py",
    "txhyperswarm/utp/socket.py",
    "txhyperswarm/testing.py",
    "txhyperswarm/peer_record.py",
    "txhyperswarm/cli.py",
]

OPTIONS = ["--follow-imports=silent", "--ignore-missing-imports", "--no-incremental", "--show-error-codes"]


def mypy(*args, cwd=REPO):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: `pip install -e '.[test]'` installs it")
    return subprocess.run([sys.executable, "-m", "mypy", *OPTIONS, *args], capture_output=True, text=True,
                          timeout=300, cwd=str(cwd))


def test_the_public_modules_type_check():
    result = mypy(*PUBLIC)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_applications_mistakes_are_caught(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "from txhyperswarm import Hyperswarm, PeerRecord\n"
        "swarm = Hyperswarm(max_peers='many')\n"
        "swarm.join('not bytes')\n"
        "host, port = swarm.address()\n"
        "record = PeerRecord(b'', 'h', 1, False, None, None, 'dht')\n"
        "n: int = record.host\n"
    )
    result = mypy(str(app))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'Argument "max_peers" to "Hyperswarm" has incompatible type "str"' in out, out
    assert 'Argument 1 to "join" of "Hyperswarm" has incompatible type "str"; expected "bytes"' in out, out
    assert 'app.py:4: error: "None" object is not iterable' in out, out  # address() is Optional: before binding
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in out, out


def test_py_typed_ships_in_the_wheel(tmp_path):
    assert (REPO / "txhyperswarm" / "py.typed").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("txhyperswarm-*.whl")
    assert "txhyperswarm/py.typed" in zipfile.ZipFile(wheel).namelist()


# -- what users copy ------------------------------------------------------------


def test_the_testing_pages_swarm_example_runs(tmp_path):
    """docs/testing.rst's Hyperswarm-in-memory example, run as the user would (pytest)."""
    text = (REPO / "docs" / "testing.rst").read_text()
    section = text.split("A swarm on the in-memory network\n", 1)[1]
    block = section.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    (tmp_path / "test_example.py").write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                             str(tmp_path), str(tmp_path / "test_example.py")],
                            capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
