"""conf/systemd: the unit files are valid (systemd-analyze verify) and keep their promises."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNITS_DIR = Path(__file__).resolve().parents[2] / "conf" / "systemd"
UNITS = ["ftpcluster-broker.service", "ftpcluster-master.service", "ftpcluster-slave@.service"]


def parse(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS_DIR / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_unit_promises(name: str) -> None:
    service = parse(name)["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "ftpcluster"
    for key, value in (("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectHome", "yes")):
        assert service[key] == value, key
    role = name.split("-")[1].split(".")[0].rstrip("@")
    assert service["ExecStart"].startswith(f"/usr/local/bin/ftpcluster {role} --config /etc/ftpcluster/")
    writable = service.get("ReadWritePaths", "")
    assert {"broker": "", "master": "/var/lib/ftpcluster/master", "slave": "/srv/ftpcluster/%i"}[role] == writable
    if role == "slave":
        assert "/etc/ftpcluster/slave-%i.toml" in service["ExecStart"]
    if role in ("master", "broker"):
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this environment's ftpcluster script.
    exe = Path(sys.executable).with_name("ftpcluster")
    if not exe.exists():
        pytest.skip("no installed ftpcluster script next to the interpreter")
    for name in UNITS:
        text = (UNITS_DIR / name).read_text().replace("/usr/local/bin/ftpcluster", str(exe))
        (tmp_path / name).write_text(text)
    names = ["ftpcluster-broker.service", "ftpcluster-master.service", "ftpcluster-slave@disk1.service"]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "ftpcluster" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr
