"""Linters run as tests: ruff, and vermin for Python 3.7 compatibility."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
SOURCES = ["patchd", "tests", "bench", "demo"]

pytestmark = pytest.mark.lint


def run(cmd):
    return subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_ruff():
    result = run([str(BIN / "ruff"), "check"] + SOURCES)
    assert result.returncode == 0, result.stdout


def test_vermin_python37():
    # --eval-annotations: annotations are evaluated at runtime on 3.7.
    result = run([str(BIN / "vermin"), "-t=3.7-", "--violations", "--eval-annotations",
                  "--no-tips", "--backport", "typing", "patchd", "demo", "bench", "tests/lab"])
    assert result.returncode == 0, result.stdout


def test_pure_python_tests_pass_on_python37():
    """The sans-IO core and the journal under a real CPython 3.7, if present."""
    python37 = ROOT / ".venv37" / "bin" / "python"
    if not python37.exists():
        pytest.skip("no Python 3.7 on this machine (scripts/setup.sh makes .venv37 "
                    "when one exists); vermin above still checks 3.7 compatibility")
    result = run([str(python37), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "--noconftest", "tests/core", "tests/store"])
    assert result.returncode == 0, result.stdout
    assert "passed" in result.stdout


def test_vermin_catches_newer_syntax(tmp_path):
    sample = tmp_path / "new.py"
    sample.write_text("if (n := 1):\n    pass\n")
    result = run([str(BIN / "vermin"), "-t=3.7-", "--violations", str(sample)])
    assert result.returncode != 0
