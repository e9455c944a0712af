"""The benchmark (`python -m bench`) cannot rot: its --quick mode runs end to end here.

It asserts nothing about speed (the machines that run the suite are shared and noisy),
only that every section produced figures and that the master carried no file bytes
outside relay mode. Without tc (the suite must not touch the loopback device's qdisc)
and without vsftpd (that needs root and a local user).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_quick_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-tc", "--no-vsftpd",
         "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    for server in ("cluster", "pyftpdlib"):
        for mode in ("active", "passive"):
            for op in ("RETR", "STOR"):
                assert results["single"][server][mode][op] > 0
                cpu = results["single"][server][mode][f"{op}_cpu_ms_per_gb"]
                assert cpu["slave1" if server == "cluster" else server] > 0
        for op in ("RETR", "STOR"):
            assert set(results["small"][server][op]) == {"1", str(results["sizes"]["sessions"])}
    assert results["idle"]["cluster"]["rss_with_sessions"] > 0
    runs = results["aggregate"]["runs"]
    direct = [r for r in runs if r["mode"] == "passive"]
    assert [r["n"] for r in direct] == [1, 2]
    assert all(r["relayed_bytes"] == 0 for r in direct)  # PRET: the master carried no file bytes
    relay = [r for r in runs if r["mode"] == "relay"]
    assert [r["n"] for r in relay] == [2]
    assert relay[0]["relayed_bytes"] == relay[0]["bytes"] > 0  # without PRET it carries them all
    assert results["relayed_bytes_single_small"] == 0
    for server in ("cluster-prot-p", "pyftpdlib-prot-p"):  # FTPS: curl --ssl-reqd, PRET for the cluster
        for op in ("RETR", "STOR"):
            assert results["single"][server]["passive"][op] > 0
    assert results["single"]["cluster-prot-p"]["passive"]["RETR_cpu_ms_per_gb"]["slave1"] > 0
    assert results["relayed_bytes_single_tls"] == 0  # PROT P on the slave: the master carried nothing
    assert "vsftpd skipped" in " ".join(results["notes"])
    table = (out / "results.md").read_text()
    assert "PROT P: TLS data connection" in table
    assert "| RETR" in table and "Aggregate bandwidth" in table and "CPU time per GB" in table
    assert "| measurement |" in proc.stdout
