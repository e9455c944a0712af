"""Each slave's published rx/tx are its own transfers' bytes, not its machine's NIC counters.

Two slaves on one machine (loopback), stats every 0.5 s, `ftpcluster stats --json` reading the
feed. A 64 MiB file goes up to slave1 (a path rule allows only it) and comes back down through
the master's relay, each paced by the client to about 32 MiB/s so that several stats samples
fall inside each transfer. slave1 shows rx during the upload and tx during the download (and
nothing in the other direction); slave2 shows nothing at all. Both report the machine's NIC
rates apart, as host_net_*.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CHUNK, Cluster, open_data, random_file, sha256_file, wait_for

pytestmark = pytest.mark.integration

SIZE = 64 * CHUNK
PACE_BPS = 32 * CHUNK
"""The client moves the file at about this rate: the transfer lasts about 2 s (4 samples)."""
STATS_MS = 500
SEEN_BPS = 1_000_000
"""A direction counts as busy in a sample above this rate (the paced transfer moves ~33 MB/s)."""


class StatsEvents:
    """`ftpcluster stats --json` in the background; the slaves' stats events, in order."""

    def __init__(self, cluster: Cluster) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "stats", "--json", *cluster.stats_args()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event.get("event") == "stats":
                self.events.append(event["slave"])

    def of(self, name: str, after_seq: int = 0, upto_seq: int | None = None) -> list[dict[str, Any]]:
        return [s for s in list(self.events) if s["name"] == name and s["seq"] > after_seq
                and (upto_seq is None or s["seq"] <= upto_seq)]

    def last_seq(self, name: str) -> int:
        return max((s["seq"] for s in self.of(name)), default=0)

    def wait_idle(self, name: str, after_seq: int, timeout: float = 10.0) -> int:
        """The seq of the first sample after `after_seq` in which `name` moved nothing."""
        def idle() -> int:
            return next((s["seq"] for s in self.of(name, after_seq)
                         if s["net_rx_bps"] == 0 and s["net_tx_bps"] == 0), 0)
        return int(str(wait_for(idle, timeout, f"an idle stats sample of {name} after seq {after_seq}")))

    def close(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return err


def _pace(began: float, moved: int) -> None:
    ahead = began + moved / PACE_BPS - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


def test_each_slave_reports_its_own_transfer_rates_and_the_host_apart(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(slaves=2, slave_extra={"stats_interval_ms": STATS_MS})
    master_toml = c.roles["master"].config
    master_toml.write_text(master_toml.read_text()
                           + '\n[[placement.upload.rules]]\nglob = "/*"\nallow = ["slave1"]\n')
    c.start()
    source = random_file(tmp_path / "big", SIZE)
    stats = StatsEvents(c)
    try:
        wait_for(lambda: stats.of("slave1") and stats.of("slave2"), 15, "stats of both slaves")
        start_seq = {name: stats.last_seq(name) for name in c.slave_names}

        with c.ftp() as ftp:
            # STOR to slave1, paced.
            with open_data(ftp, "STOR /big", "pret") as conn, open(source, "rb") as f:
                began, sent = time.monotonic(), 0
                while chunk := f.read(CHUNK):
                    conn.sendall(chunk)
                    sent += len(chunk)
                    _pace(began, sent)
            assert ftp.voidresp().startswith("226")
            assert c.holders("/big") == ["slave1"]
            up_idle = stats.wait_idle("slave1", stats.last_seq("slave1"))

            # RETR through the master's relay (the slave's connection is with the master), paced.
            received, digest_path = 0, tmp_path / "back"
            with open_data(ftp, "RETR /big", "relay") as conn, open(digest_path, "wb") as out:
                began = time.monotonic()
                while chunk := conn.recv(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    _pace(began, received)
            assert ftp.voidresp().startswith("226")
            assert received == SIZE and sha256_file(digest_path) == sha256_file(source)
            down_idle = stats.wait_idle("slave1", stats.last_seq("slave1"))
        end_seq = {name: stats.last_seq(name) for name in c.slave_names}
    finally:
        err = stats.close()
    assert stats.proc.returncode == 0, err

    upload_samples = stats.of("slave1", start_seq["slave1"], up_idle)
    download_samples = stats.of("slave1", up_idle, down_idle)
    rates = {"up": [(s["net_rx_bps"], s["net_tx_bps"]) for s in upload_samples],
             "down": [(s["net_rx_bps"], s["net_tx_bps"]) for s in download_samples]}
    # The upload: received bytes in some sample, never sent ones; the download the reverse.
    assert max(rx for rx, _ in rates["up"]) > SEEN_BPS, rates
    assert all(tx == 0 for _, tx in rates["up"]), rates
    assert max(tx for _, tx in rates["down"]) > SEEN_BPS, rates
    assert all(rx == 0 for rx, _ in rates["down"]), rates
    # Each rate times its sample's interval adds up to the file, each way.
    by_seq = {s["seq"]: s for s in stats.of("slave1")}
    assert all(seq in by_seq for seq in range(start_seq["slave1"], down_idle + 1)), sorted(by_seq)

    def moved(samples: list[dict[str, Any]], key: str) -> float:
        return sum(s[key] * (s["ts_ms"] - by_seq[s["seq"] - 1]["ts_ms"]) / 1000 for s in samples)
    assert moved(upload_samples, "net_rx_bps") == pytest.approx(SIZE, rel=0.05), rates
    assert moved(download_samples, "net_tx_bps") == pytest.approx(SIZE, rel=0.05), rates

    # slave2 moved nothing, while sharing slave1's machine (and its NIC counters).
    idle = stats.of("slave2", start_seq["slave2"], end_seq["slave2"])
    assert len(idle) >= 4, idle
    assert all(s["net_rx_bps"] == 0 and s["net_tx_bps"] == 0 for s in idle), idle
    # The machine's rates are reported apart, the same host for both slaves.
    both = upload_samples + download_samples + idle
    assert len({s["host"] for s in both}) == 1 and both[0]["host"]
    assert all(isinstance(s["host_net_rx_bps"], float) and isinstance(s["host_net_tx_bps"], float)
               for s in both), both
    assert max(s["host_net_tx_bps"] for s in both) > SEEN_BPS  # loopback: the machine saw the bytes
