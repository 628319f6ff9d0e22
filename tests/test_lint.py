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


def test_vermin_catches_newer_syntax(tmp_path):
    sample = tmp_path / "new.py"
    sample.write_text("if (n := 1):\n    pass\n")
    result = run([str(BIN / "vermin"), "-t=3.7-", "--violations", str(sample)])
    assert result.returncode != 0
