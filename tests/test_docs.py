"""The Sphinx docs build with warnings as errors (a broken table or reference fails)."""

import shutil
import subprocess
import sys

import pytest

from tests.harness import REPO


def test_docs_build_with_W(tmp_path):
    if shutil.which("sphinx-build") is None and subprocess.run([sys.executable, "-c", "import sphinx"]).returncode:
        pytest.fail("sphinx is missing: it is in the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-E", "-W", "-b", "html", str(REPO / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
