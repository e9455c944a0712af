"""Likely operator mistakes are said, not passed over: a slave root that does not exist, a
master with no users, and roles that cannot reach their broker (real processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import launcher
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXIT_TIMEOUT_S = 20


def _write(path: Path, section: str, settings: dict[str, object]) -> Path:
    def toml(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return f'"{value}"' if isinstance(value, str) else str(value)
    path.write_text(f"[{section}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in settings.items()))
    return path


def _slave_config(tmp_path: Path, root: Path, broker_port: int, stats_port: int,
                  **extra: object) -> Path:
    return _write(tmp_path / "slave.toml", "slave", {
        "name": "s1", "root": str(root), "broker_endpoint": f"tcp://127.0.0.1:{broker_port}",
        "stats_endpoint": f"tcp://127.0.0.1:{stats_port}", **extra})


def test_a_slave_with_a_missing_root_stops_with_one_line(tmp_path: Path) -> None:
    broker_port, stats_port = launcher.free_ports(2)
    root = tmp_path / "typo" / "store"
    config = _slave_config(tmp_path, root, broker_port, stats_port)
    done = subprocess.run([sys.executable, "-m", "slave", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0] and "slave.root" in lines[0]
    assert "does not exist" in lines[0] and "create_root = true" in lines[0]
    assert not (tmp_path / "typo").exists()

    (tmp_path / "file").write_text("not a directory")
    config = _slave_config(tmp_path, tmp_path / "file", broker_port, stats_port)
    done = subprocess.run([sys.executable, "-m", "slave", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert done.returncode == 2 and "not a directory" in done.stderr, done.stderr


def test_create_root_true_creates_it(tmp_path: Path) -> None:
    broker_port, stats_port = launcher.free_ports(2)
    root = tmp_path / "new" / "store"
    config = _slave_config(tmp_path, root, broker_port, stats_port, create_root=True)
    with open(tmp_path / "slave.log", "wb") as log:
        proc = launcher.spawn_role("slave", config, log)
    try:
        wait_for(root.is_dir, 15, "the slave to create its root")
        assert proc.poll() is None
    finally:
        launcher.stop_processes([proc])


def test_no_users_and_an_unreachable_broker_are_warned_about_until_fixed(tmp_path: Path) -> None:
    """Nothing listens on the broker's ports at first: after 10 s the master and the slave
    each log a WARNING naming the endpoint; the master also says it has no users. Once a
    broker starts there, both say it answers again."""
    master_ep, slave_ep, stats_in, stats_out, ftp_port = launcher.free_ports(5)
    master_cfg = _write(tmp_path / "master.toml", "master", {
        "listen_port": ftp_port, "broker_endpoint": f"tcp://127.0.0.1:{master_ep}",
        "stats_endpoint": f"tcp://127.0.0.1:{stats_out}", "state_dir": str(tmp_path / "m")})
    root = tmp_path / "root"
    root.mkdir()
    slave_cfg = _slave_config(tmp_path, root, slave_ep, stats_in)
    broker_cfg = _write(tmp_path / "broker.toml", "broker", {
        "master_endpoint": f"tcp://127.0.0.1:{master_ep}",
        "slave_endpoint": f"tcp://127.0.0.1:{slave_ep}",
        "stats_in_endpoint": f"tcp://127.0.0.1:{stats_in}",
        "stats_out_endpoint": f"tcp://127.0.0.1:{stats_out}"})
    logs = {name: tmp_path / f"{name}.log" for name in ("master", "slave", "broker")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        began = time.monotonic()
        for name, cfg in (("master", master_cfg), ("slave", slave_cfg)):
            with open(logs[name], "wb") as log:
                procs.append(launcher.spawn_role(name, cfg, log))

        def warned(name: str, text: str) -> bool:
            return text in logs[name].read_text(errors="replace")
        wait_for(lambda: warned("master", "no users in"), 10, "the master's no-users warning")
        wait_for(lambda: warned("master", "cannot reach the broker")
                 and warned("slave", "cannot reach the broker"), 25, "both unreachable warnings")
        assert time.monotonic() - began >= 10  # not before the condition has lasted 10 s
        master_log, slave_log = (logs[n].read_text() for n in ("master", "slave"))
        assert f"tcp://127.0.0.1:{master_ep}" in master_log and "WARNING" in master_log
        assert f"tcp://127.0.0.1:{slave_ep}" in slave_log
        assert str(master_cfg) in master_log and "ftpcluster hash-password" in master_log
        assert master_log.count("cannot reach the broker") == 1  # rate-limited

        with open(logs["broker"], "wb") as log:
            procs.append(launcher.spawn_role("broker", broker_cfg, log))
        wait_for(lambda: warned("master", "answers again") and warned("slave", "answers again"),
                 20, "both roles to say the broker answers again")
    finally:
        launcher.stop_processes(procs)
