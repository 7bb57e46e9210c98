"""
The twist plugin and the console script are found after a regular and after
an editable install, in a fresh virtual environment.

The venv sees this interpreter's site-packages through a plain path entry
(so Twisted and the other dependencies import without a download), but not
the ``.pth`` files there: the test's own editable install of txhyperswarm
stays invisible, and only the install under test can provide the plugin.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.harness import REPO

IGNORE = shutil.ignore_patterns(".git", "node_modules", "build", "dist", "*.egg-info", "__pycache__", "_build", ".hypothesis")


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    Path(site, "_host_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _install(venv: Path, source: Path, editable: bool) -> None:
    # pip from this interpreter installs into the venv (which has none of its own).
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["-e", str(source)] if editable else [str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _run(venv: Path, *args: str, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_twist_finds_the_plugin_after_install(tmp_path, editable):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=IGNORE)
    venv = _venv(tmp_path)
    # Nothing of ours is importable before the install.
    before = _run(venv, "-m", "twisted", "hyperswarm", "--help", cwd=tmp_path)
    assert before.returncode != 0
    _install(venv, source, editable)

    result = _run(venv, "-m", "twisted", "hyperswarm", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--bootstrap-node" in result.stdout

    where = _run(venv, "-c", "import txhyperswarm; print(txhyperswarm.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(source if editable else venv)), where.stdout

    # Every module of the source tree is installed and imports (a subpackage
    # missing from setup.cfg's packages would be left out of a regular install).
    listing = _run(venv, "-c", (
        "import importlib, pkgutil, txhyperswarm\n"
        "for m in pkgutil.walk_packages(txhyperswarm.__path__, 'txhyperswarm.'):\n"
        "    importlib.import_module(m.name); print(m.name)"
    ), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr[-3000:]
    in_source = {
        ".".join(p.relative_to(source).with_suffix("").parts).removesuffix(".__init__")
        for p in (source / "txhyperswarm").rglob("*.py")
    } - {"txhyperswarm"}
    assert set(listing.stdout.split()) == in_source

    script = venv / "bin" / "hyperswarm"
    assert script.exists()
    cli = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert cli.returncode == 0 and "ping" in cli.stdout
