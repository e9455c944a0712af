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


def test_keygen_writes_a_pair_in_the_role_layout_and_never_overwrites(tmp_path, capsys):
    from common import curve

    keys = tmp_path / "keys"
    assert cli.main(["keygen", "slave", "disk7", "--keys", str(keys)]) == 0
    out = capsys.readouterr().out
    public, secret = keys / "slaves" / "disk7.key", keys / "slaves" / "disk7.key_secret"
    assert f"wrote {public}: the public key" in out and f"wrote {secret}: the secret key" in out
    assert curve.read_pair(secret)[0] == curve.read_public(public)
    assert curve.read_key_dir(keys / "slaves") == {curve.read_public(public): "disk7"}
    assert secret.stat().st_mode & 0o077 == 0
    before = secret.read_bytes()
    assert cli.main(["keygen", "slave", "disk7", "--keys", str(keys)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and secret.read_bytes() == before
    assert cli.main(["keygen", "broker", "--keys", str(keys)]) == 0
    assert (keys / "broker.key_secret").is_file()
    assert cli.main(["keygen", "stats", "bad name", "--keys", str(keys)]) == 2
    assert "bad name" in capsys.readouterr().err
