"""The `ftpcluster` command line itself: options that need no role."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common import cli

REPO = Path(__file__).resolve().parents[3]


def pyproject_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_version_prints_the_package_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert out == f"ftpcluster {pyproject_version()}\n" and err == ""


def test_version_from_the_installed_command():
    out = subprocess.run([sys.executable, "-m", "common.cli", "--version"], capture_output=True,
                         text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"ftpcluster {pyproject_version()}\n"
