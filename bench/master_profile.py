"""The master's CPU per small transfer, by thread, for profiling the hot path.

    python -m bench.master_profile [--count 4000] [--kind RETR|STOR] [--py-spy OUT.txt]

Starts a one-slave cluster (log level warning, as the benchmark does), runs `count` 4 KiB
PRET+PORT transfers on one ftplib session and prints the master's CPU per transfer for each of
its threads (psutil). With --py-spy, py-spy (not a dependency; `pip install py-spy`) samples the
master for the middle of the run and writes its raw stacks to OUT.txt, which --summarise reads
back into shares by kind of frame.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.servers import ClusterServer

SIZE = 4096


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def run(count: int, kind: str, spy_out: Path | None) -> None:
    with tempfile.TemporaryDirectory() as base, ClusterServer(Path(base)) as cluster:
        ftp = cluster.ftp()
        ftp.set_pasv(False)
        ftp.voidcmd("TYPE I")
        data = os.urandom(SIZE)
        ftp.sendcmd("PRET STOR /small.bin")
        conn = ftp.transfercmd("STOR /small.bin")
        conn.sendall(data)
        conn.close()
        ftp.voidresp()
        master = psutil.Process(cluster.master_pid)
        spy: subprocess.Popen[bytes] | None = None
        before = _thread_cpu(master)
        started = time.perf_counter()
        for i in range(count):
            if spy_out is not None and spy is None and i == count // 4:
                spy = subprocess.Popen(["py-spy", "record", "-p", str(master.pid), "-d", "8", "-r", "500",
                                        "-f", "raw", "-o", str(spy_out)], stdout=subprocess.DEVNULL)
            if kind == "RETR":
                ftp.sendcmd("PRET RETR /small.bin")
                conn = ftp.transfercmd("RETR /small.bin")
                while conn.recv(65536):
                    pass
            else:
                ftp.sendcmd(f"PRET STOR /s{i}.bin")
                conn = ftp.transfercmd(f"STOR /s{i}.bin")
                conn.sendall(data)
            conn.close()
            ftp.voidresp()
        elapsed = time.perf_counter() - started
        after = _thread_cpu(master)
        names = {tid: _thread_name(master.pid, tid) for tid in after}
        ftp.close()
        if spy is not None:
            spy.wait(60)
    print(f"{count} {kind}s of {SIZE} bytes, one session: {count / elapsed:.0f}/s")
    total = sum(after.values()) - sum(before.get(t, 0.0) for t in after)
    print(f"master CPU per {kind}: {total / count * 1e6:.0f} us")
    for tid, cpu in sorted(after.items()):
        used = cpu - before.get(tid, 0.0)
        if used > 0:
            print(f"  thread {tid} ({names[tid]}): {used / count * 1e6:.0f} us")


def kind_of(frame: str) -> str:
    """What a py-spy leaf frame (`function (file:line)`) is spent on."""
    if "AsyncChat.send" in frame or "AsyncChat.recv" in frame:
        return "control socket send/recv"
    if "zmq/" in frame or "zmqsock" in frame:
        return "pyzmq"
    if "vfs.py" in frame:
        return "SQLite lookups"
    if "logging" in frame or "FTPHandler.log" in frame:
        return "logging"
    if "pyftpdlib" in frame or "asyn" in frame:
        return "pyftpdlib / asynchat"
    if any(part in frame for part in ("master/", "common/", "<string>")):
        return "the project's own code"
    return "other"


def summarise(raw: Path) -> dict[str, int]:
    """Busy samples of the master's main thread by kind (idle epoll waits and the pool left out)."""
    shares: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any("_worker (concurrent/futures/thread.py" in f for f in frames):
            continue
        if frames[-1].startswith("_BasePollEpoll.poll (pyftpdlib/ioloop.py"):
            continue
        shares[kind_of(frames[-1])] += int(count)
    return dict(shares.most_common())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.master_profile",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--kind", choices=("RETR", "STOR"), default="RETR")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="OUT.txt")
    parser.add_argument("--summarise", type=Path, default=None, metavar="RAW.txt",
                        help="only print the shares of an earlier --py-spy output")
    args = parser.parse_args()
    if args.summarise is None:
        run(args.count, args.kind, args.py_spy)
    raw = args.summarise or args.py_spy
    if raw is not None:
        shares = summarise(raw)
        busy = sum(shares.values())
        for what, samples in shares.items():
            print(f"{samples:6d} {samples / busy:6.1%}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
