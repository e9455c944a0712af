"""Metadata at scale: `python -m bench.metadata [--files N]` (not a timed test).

Builds N empty files (default 1,000,000) on the disks of 3 slaves before the cluster
starts: per slave, DIRS directories of about 333 files each, the directory names shared by
the slaves (as placement spreads a directory), plus one 10,000-entry directory /big on
slave1; then starts broker, master and slaves as real processes (the integration harness,
tests/integration/conftest.py) and prints:

- full merge: from the processes' start until every slave is online (all inventories
  merged into an empty metadata database), and the master's resident memory (peak, sampled
  every 0.2 s, and after the merge);
- unchanged re-merge: every slave killed, seen offline, restarted: until all are online
  again (their disks did not change: partial merges);
- master restart: SIGKILL, restart, until a LIST of /big succeeds;
- LIST latency of the 10,000-entry directory (median of 5, logged-in session, PASV).

Everything lives under a temporary directory that is removed at the end (--keep to keep it).
"""

from __future__ import annotations

import argparse
import ftplib
import os
import shutil
import signal
import sqlite3
import statistics
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import launcher  # noqa: E402
from tests.integration.conftest import Cluster, wait_for  # noqa: E402

SLAVES = 3
FILES_PER_DIR = 333
BIG_DIR = 10_000
TIMEOUT_S = 900.0


def build_tree(cluster: Cluster, files: int) -> int:
    """Empty files on the slaves' disks; returns how many were made."""
    big = min(BIG_DIR, files // 10)
    per_slave = (files - big) // SLAVES
    made = 0
    for i, name in enumerate(cluster.slave_names):
        root = cluster.slave_root(name)
        left = per_slave
        d = 0
        while left > 0:
            directory = root / f"d{d:05d}"
            directory.mkdir(parents=True, exist_ok=True)
            base = str(directory)
            for f in range(min(FILES_PER_DIR, left)):
                os.mknod(f"{base}/f{f:04d}-{i}", stat.S_IFREG | 0o644)
            left -= FILES_PER_DIR
            d += 1
        made += per_slave
    big_dir = cluster.slave_root(cluster.slave_names[0]) / "big"
    big_dir.mkdir()
    for f in range(big):
        os.mknod(f"{big_dir}/entry{f:06d}", stat.S_IFREG | 0o644)
    return made + big


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


def online_now(cluster: Cluster) -> list[str]:
    try:
        with cluster.ftp() as ftp:
            return launcher.online_slaves(ftp.sendcmd("SITE SLAVES"))
    except (OSError, EOFError, ftplib.Error):
        return []


def list_ok(cluster: Cluster, path: str) -> int:
    try:
        with cluster.ftp() as ftp:
            lines: list[str] = []
            ftp.retrlines(f"LIST {path}", lines.append)
            return len(lines)
    except (OSError, EOFError, ftplib.Error):
        return 0


def files_known(cluster: Cluster) -> int:
    """Files in the master's database (read-only, beside the running master: WAL allows it)."""
    db = sqlite3.connect(f"file:{cluster.master_state_dir / 'vfs.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM entries WHERE is_dir = 0").fetchone()[0]
    finally:
        db.close()


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ftpc-bench-meta-"))
    cluster = Cluster(base, SLAVES, log_level="warning")
    try:
        t0 = time.monotonic()
        made = build_tree(cluster, args.files)
        print(f"built {made} files in {time.monotonic() - t0:.1f} s under {base}", flush=True)

        t0 = time.monotonic()
        for role in cluster.roles.values():
            role.start()
        sampler = RssSampler(cluster.roles["master"].pid)
        sampler.start()
        cluster.wait_banner(60)
        wait_for(lambda: set(online_now(cluster)) == set(cluster.slave_names), TIMEOUT_S,
                 "every slave online", interval=0.2)
        full_s = time.monotonic() - t0
        sampler.stop.set()
        rss_after = psutil.Process(cluster.roles["master"].pid).memory_info().rss
        big_entries = list_ok(cluster, "/big")
        known = files_known(cluster)
        print(f"full merge of {made} files: {full_s:.1f} s; master RSS peak {mib(sampler.peak)}, "
              f"after {mib(rss_after)}; the master knows {known} files, /big lists {big_entries}",
              flush=True)

        for name in cluster.slave_names:
            cluster.kill(name, signal.SIGKILL)
        wait_for(lambda: not online_now(cluster), 30, "every slave offline", interval=0.2)
        t0 = time.monotonic()
        for name in cluster.slave_names:
            cluster.restart(name)
        wait_for(lambda: set(online_now(cluster)) == set(cluster.slave_names), TIMEOUT_S,
                 "every slave online again", interval=0.05)
        remerge_s = time.monotonic() - t0
        print(f"unchanged re-merge of {SLAVES} slaves (restart to online): {remerge_s:.2f} s", flush=True)

        cluster.kill("master", signal.SIGKILL)
        t0 = time.monotonic()
        cluster.restart("master")
        wait_for(lambda: list_ok(cluster, "/big") > 0, 60, "LIST after the master's restart",
                 interval=0.05)
        restart_s = time.monotonic() - t0
        print(f"master restart (SIGKILL) until LIST /big is served: {restart_s:.2f} s", flush=True)
        wait_for(lambda: set(online_now(cluster)) == set(cluster.slave_names), TIMEOUT_S,
                 "slaves online after the master's restart", interval=0.1)
        rejoin_s = time.monotonic() - t0
        print(f"  ... and every slave re-registered and merged: {rejoin_s:.2f} s", flush=True)

        times = []
        with cluster.ftp() as ftp:
            for _ in range(5):
                lines: list[str] = []
                t0 = time.monotonic()
                ftp.retrlines("LIST /big", lines.append)
                times.append(time.monotonic() - t0)
        rss_end = psutil.Process(cluster.roles["master"].pid).memory_info().rss
        print(f"LIST of the {len(lines)}-entry directory: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); master RSS now {mib(rss_end)}")
        return 0
    finally:
        cluster.close()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
