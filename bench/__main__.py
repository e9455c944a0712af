"""`python -m bench`: the cluster side by side with plain pyftpdlib and vsftpd, and the
cluster's aggregate bandwidth with N slaves on per-node 100 Mbit/s links.

In one run it starts every server on this machine (loopback only), runs

1. single stream: RETR and STOR of one big file with curl, active and passive (PRET+PASV
   for the cluster, plain PASV/EPSV for the peers);
2. small files: RETRs and STORs of 4 KiB files with ftplib on one session and spread over
   concurrent sessions (one client process per session), active and passive;
3. the master's cost with many idle logged-in sessions (resident memory, CPU time);
4. aggregate bandwidth: N = 1..5 slaves, slave N bound to 127.0.1.N and limited to
   100 Mbit/s by a tc htb class for that source address, N curl clients each downloading a
   different file at once; the master's relayed bytes, RSS and CPU time during the run;

prints a table, and writes results.json, results.md and aggregate.png (with matplotlib)
to --out. `--quick` uses small sizes and N up to 2 (the test suite's smoke test).
See docs/benchmarks.md for the set-up and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import psutil

from bench import clients, tc
from bench.clients import MODES, Target
from bench.servers import ClusterServer, PyftpdlibServer, VsftpdServer, vsftpd_unavailable

MB = 1_000_000
GB = 1_000_000_000
MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    big_bytes: int
    repeat: int
    small_count: int
    small_bytes: int
    sessions: int
    idle_sessions: int
    agg_bytes: int
    agg_max_n: int
    small_repeat: int = 3
    rate_mbit: int = 100


FULL = Sizes(big_bytes=1 << 30, repeat=5, small_count=1000, small_bytes=4096, sessions=20,
             idle_sessions=1000, agg_bytes=200 * MB, agg_max_n=5)
QUICK = Sizes(big_bytes=16 * MIB, repeat=1, small_count=60, small_bytes=4096, sessions=4,
              idle_sessions=50, agg_bytes=2 * MB, agg_max_n=2, small_repeat=1)
TIME_WAIT_LIMIT = 6000
"""Every small-file transfer leaves a TCP connection in TIME_WAIT for 60 s, on loopback
from the same 28,000-port ephemeral range: past a few thousand, picking a free port gets
slow (and vsftpd's bind fails). Each run waits until fewer than this many remain."""


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def time_wait_count() -> int:
    """TCP connections in TIME_WAIT on this machine (/proc/net/sockstat "tw")."""
    count = 0
    for name in ("/proc/net/sockstat", "/proc/net/sockstat6"):
        try:
            for line in Path(name).read_text().splitlines():
                words = line.split()
                if words and words[0] in ("TCP:", "TCP6:") and "tw" in words:
                    count += int(words[words.index("tw") + 1])
        except (OSError, ValueError, IndexError):
            pass
    return count


SETTLED = {"waits": 0, "seconds": 0.0}


def settle(limit: int = TIME_WAIT_LIMIT, timeout: float = 120.0) -> None:
    """Wait (bounded) until fewer than `limit` connections are in TIME_WAIT."""
    start = time.monotonic()
    if time_wait_count() < limit:
        return
    while time_wait_count() >= limit and time.monotonic() - start < timeout:
        time.sleep(1.0)
    SETTLED["waits"] += 1
    SETTLED["seconds"] += time.monotonic() - start


# ---------------------------------------------------------------- data

def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size == size:
        return path
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


def place(src: Path, dst: Path) -> None:
    """Hard link `src` to `dst` (same page-cache pages for every server), copy if impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def populate(root: Path, big: Path, small: list[Path]) -> None:
    place(big, root / "big.bin")
    for f in small:
        place(f, root / "small" / f.name)
    (root / "up").mkdir(parents=True, exist_ok=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    import pyftpdlib
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "pyftpdlib": pyftpdlib.__ver__, "curl": version(["curl", "--version"]),
        "vsftpd": version(["dpkg-query", "-W", "-f", "${Version}", "vsftpd"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ---------------------------------------------------------------- sections

Measured = tuple[float, dict[str, float]]
"""One transfer: bytes/s, and {process: server CPU milliseconds per GB moved}."""


def single_stream(servers: list[Any], big: Path, sizes: Sizes) -> dict:
    """{server: {mode: {"RETR": Bps, "RETR_runs": [Bps], "RETR_cpu_ms_per_gb": {process: ms},
    "RETR_cpu_ms_per_gb_runs": [{process: ms}], the same for STOR}}}:
    the median of `repeat` runs, the servers taking turns run by run (loopback figures drift
    with the machine's other load and with where the scheduler puts sender and receiver;
    the CPU time per GB drifts much less). No CPU figures for vsftpd (see server_pids)."""
    targets = [Target.of(server) for server in servers]
    pids = {server.name: server_pids(server) for server in servers}
    stor_only = {server.name for server in servers if getattr(server, "stor_only", False)}
    runs: dict[tuple[str, str, str], list[Measured]] = {}
    for t in targets:
        clients.curl_transfer(t, modes_of(t)[0], "RETR", "big.bin")  # warm-up: page cache, sessions
    for i in range(sizes.repeat):
        settle()
        for t in targets:
            for mode in modes_of(t):
                if t.name not in stor_only:
                    runs.setdefault((t.name, mode, "RETR"), []).append(
                        measured_transfer(t, pids[t.name], mode, "RETR", "big.bin"))
                name = f"up/big-{mode}-{i}.bin"
                runs.setdefault((t.name, mode, "STOR"), []).append(
                    measured_transfer(t, pids[t.name], mode, "STOR", name, big))
                with clients.connect(t) as ftp:
                    ftp.delete(name)
    out: dict[str, dict] = {}
    for (server, mode, op), measured in runs.items():
        d = out.setdefault(server, {}).setdefault(mode, {})
        d[op] = statistics.median(bps for bps, _ in measured)
        d[f"{op}_runs"] = [bps for bps, _ in measured]
        if pids[server]:
            d[f"{op}_cpu_ms_per_gb"] = median_per_process([cpu for _, cpu in measured])
            d[f"{op}_cpu_ms_per_gb_runs"] = [cpu for _, cpu in measured]
    for t in targets:
        for mode in modes_of(t):
            say(f"single stream {t.name} {mode}: " + ", ".join(
                _single_text(out[t.name][mode], op) for op in ("RETR", "STOR") if op in out[t.name][mode]))
    return out


def modes_of(t: Target) -> tuple[str, ...]:
    """The single-stream modes a target is measured in: FTPS only passive, since curl 7.88.1
    fails every active-mode FTPS transfer ("sa_addr inet_ntop() failed", curl/curl#10622;
    against stock pyftpdlib's TLS_FTPHandler too), which tests/integration/test_ftps.py
    covers with ftplib and lftp instead."""
    return ("passive",) if t.tls else MODES


def _single_text(d: dict[str, Any], op: str) -> str:
    """"RETR 2,100 MB/s [runs], CPU ms/GB broker 20, master 30, slave1 400" for the log."""
    text = f"{op} {d[op] / MB:,.0f} MB/s {[round(v / MB) for v in d[f'{op}_runs']]}"
    cpu = d.get(f"{op}_cpu_ms_per_gb")
    return text + (f", CPU ms/GB {_per_process(cpu)}" if cpu else "")


def measured_transfer(t: Target, pids: dict[str, int], mode: str, op: str, remote: str,
                      local: Path | None = None) -> Measured:
    """One curl transfer, with the CPU time the processes `pids` spent during it."""
    before = cpu_seconds(pids)
    result = clients.curl_transfer(t, mode, op, remote, local)
    spent = cpu_spent(before, cpu_seconds(pids))
    return result["Bps"], {name: s * 1e3 / (result["bytes"] / GB) for name, s in spent.items()}


def median_per_process(runs: list[dict[str, float]]) -> dict[str, float]:
    """{process: median over the runs that have a figure for it}."""
    names = dict.fromkeys(name for run in runs for name in run)  # ordered, no duplicates
    return {name: statistics.median(run[name] for run in runs if name in run) for name in names}


def server_pids(server: Any) -> dict[str, int]:
    """Processes whose CPU time a transfer costs (vsftpd forks per session: not counted)."""
    if isinstance(server, ClusterServer):
        return {name: proc.pid for name, proc in server.procs.items()}
    if isinstance(server, PyftpdlibServer):
        return {"pyftpdlib": server.pid}
    return {}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, all threads) of each process still running."""
    out = {}
    for name, pid in pids.items():
        seconds = process_cpu_seconds(pid)
        if seconds is not None:
            out[name] = seconds
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """From the process's CPU clock (ns resolution; clock_getcpuclockid(3) of `pid` on Linux is
    MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), else from psutil: /proc/PID/stat counts 10 ms
    ticks, i.e. 600 ms per GB of a 16 MiB --quick transfer. None once the process is gone."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two cpu_seconds() samples."""
    return {name: after[name] - before[name] for name in before if name in after}


def small_files(servers: list[Any], names: list[str], sizes: Sizes) -> dict:
    """{server: {"RETR": {sessions: per_s}, "STOR": {...}, "cpu_us": {op: {sessions: {process:
    CPU microseconds per transfer}}}}} in passive mode (PRET+PASV for the cluster, PASV for the
    peers), the median of `repeat` runs.

    Passive, not active: stock pyftpdlib 2.2 stalls (421 after 30 s) when several sessions
    use PORT at once, so active mode would not measure the peer."""
    data = os.urandom(sizes.small_bytes)
    out: dict[str, dict] = {}
    for server in servers:
        t = Target.of(server)
        res: dict[str, dict] = {"RETR": {}, "STOR": {}, "cpu_us": {"RETR": {}, "STOR": {}}}
        pids = server_pids(server)
        for sessions in (1, sizes.sessions):
            retr, stor = [], []
            cpu: dict[str, dict[str, float]] = {"RETR": {}, "STOR": {}}
            for run in range(sizes.small_repeat):
                paths = [f"small/{n}" for n in names]
                settle()
                c0 = cpu_seconds(pids)
                retr.append(clients.small_files(t, "passive", "RETR", paths, sessions)["per_s"])
                c1 = cpu_seconds(pids)
                ups = [f"up/s{sessions}-{run}-{i:04d}" for i in range(len(names))]
                settle()
                c2 = cpu_seconds(pids)
                stor.append(clients.small_files(t, "passive", "STOR", ups, sessions, data)["per_s"])
                c3 = cpu_seconds(pids)
                per = len(names) * sizes.small_repeat / 1e6
                for op, spent in (("RETR", cpu_spent(c0, c1)), ("STOR", cpu_spent(c2, c3))):
                    for name, seconds in spent.items():
                        cpu[op][name] = cpu[op].get(name, 0.0) + seconds / per
            res["cpu_us"]["RETR"][str(sessions)] = cpu["RETR"]
            res["cpu_us"]["STOR"][str(sessions)] = cpu["STOR"]
            res["RETR"][str(sessions)] = statistics.median(retr)
            res["STOR"][str(sessions)] = statistics.median(stor)
            say(f"small files {t.name} x{sessions}: RETR {statistics.median(retr):.0f}/s "
                f"{[round(x) for x in retr]}, STOR {statistics.median(stor):.0f}/s {[round(x) for x in stor]}")
        out[t.name] = res
    return out


def process_cost(pid: int) -> tuple[int, float]:
    p = psutil.Process(pid)
    cpu = p.cpu_times()
    return p.memory_info().rss, cpu.user + cpu.system


def idle_sessions(server: Any, pid: int, count: int) -> dict:
    t = Target.of(server)
    settle()
    rss0, cpu0 = process_cost(pid)
    start = time.monotonic()
    sessions = clients.open_idle_sessions(t, count)
    try:
        opened = time.monotonic() - start
        time.sleep(2.0)
        rss1, cpu1 = process_cost(pid)
        time.sleep(5.0)  # idle: what does holding them cost?
        rss2, cpu2 = process_cost(pid)
    finally:
        clients.close_sessions(sessions)
    result = {"sessions": count, "rss_before": rss0, "rss_with_sessions": max(rss1, rss2),
              "cpu_s_logins": cpu1 - cpu0, "cpu_s_idle_5s": cpu2 - cpu1, "open_seconds": opened}
    say(f"idle sessions {t.name}: {count} sessions, RSS {rss0 / MIB:.0f} -> {max(rss1, rss2) / MIB:.0f} MiB, "
        f"CPU {cpu1 - cpu0:.2f} s to log in, {cpu2 - cpu1:.2f} s idle 5 s")
    return result


class Sampler:
    """Peak RSS of a process, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def aggregate(work: Path, sizes: Sizes, use_tc: bool, modes: tuple[str, ...] = ("passive",)) -> dict:
    files = [random_file(work / "data" / f"agg{i}.bin", sizes.agg_bytes)
             for i in range(1, sizes.agg_max_n + 1)]
    addresses = [f"127.0.1.{i}" for i in range(1, sizes.agg_max_n + 1)]
    note = ""
    runs: list[dict] = []

    def run_all() -> None:
        for n in range(1, sizes.agg_max_n + 1):
            for mode in modes:
                runs.append(aggregate_once(work / f"agg-n{n}-{mode}", files[:n], mode, sizes))
        n = sizes.agg_max_n  # for contrast: the same downloads relayed by the master
        runs.append(aggregate_once(work / f"agg-n{n}-relay", files[:n], "relay", sizes))

    if use_tc:
        why = tc.refusal()
        if why:
            note = f"tc not used: {why}"
            say(note)
            run_all()
        else:
            with tc.limited(addresses, sizes.rate_mbit):
                run_all()
    else:
        note = "tc not used (--no-tc): links are not limited"
        run_all()
    return {"runs": runs, "limited": use_tc and not note, "note": note,
            "tc_commands": [" ".join(c) for c in tc.commands(addresses, sizes.rate_mbit)],
            "rate_mbit": sizes.rate_mbit}


def aggregate_once(base: Path, files: list[Path], mode: str, sizes: Sizes) -> dict:
    n = len(files)
    cluster = ClusterServer(base, slaves=n, own_addresses=True)
    for i, f in enumerate(files, 1):
        place(f, cluster.slave_root(i) / f.name)
    with cluster:
        cluster.wait_visible({f.name: f.stat().st_size for f in files})
        t = Target.of(cluster)
        relayed0 = cluster.relayed_bytes()
        rss0, cpu0 = process_cost(cluster.master_pid)
        with Sampler(cluster.master_pid) as sampler:
            start = time.monotonic()
            procs = [clients.start_curl_download(t, mode, f.name) for f in files]
            outs = [p.communicate() for p in procs]
            seconds = time.monotonic() - start
        rss1, cpu1 = process_cost(cluster.master_pid)
        relayed = cluster.relayed_bytes() - relayed0
    for p, (stdout, stderr) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"curl failed ({p.returncode}): {stderr.strip()}")
    total = sum(int(float(o[0].split()[0])) for o in outs)
    mbit = total * 8 / seconds / 1e6
    result = {"n": n, "mode": mode, "bytes": total, "seconds": seconds, "mbit_s": mbit,
              "ideal_mbit_s": n * sizes.rate_mbit, "ratio": mbit / (n * sizes.rate_mbit),
              "relayed_bytes": relayed, "master_cpu_s": cpu1 - cpu0,
              "master_rss_peak": max(sampler.peak, rss1), "master_rss_before": rss0}
    say(f"aggregate N={n} {mode}: {mbit:.0f} Mbit/s ({result['ratio']:.2f} x N x "
        f"{sizes.rate_mbit}), master relayed {relayed} B, CPU {cpu1 - cpu0:.2f} s, "
        f"RSS {result['master_rss_peak'] / MIB:.0f} MiB")
    return result


# ---------------------------------------------------------------- report

def _mbs(v: float | None) -> str:
    return "-" if v is None else f"{v / MB:,.0f} MB/s"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}/s"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def _per_process(per: dict[str, float]) -> str:
    """"broker 763, master 910, slave1 900"."""
    return ", ".join(f"{k} {v:,.0f}" for k, v in per.items())


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


NOFSYNC = "cluster-fsync-off"
TLS_CLUSTER = "cluster-prot-p"
TLS_PYFTPD = "pyftpdlib-prot-p"
MODE_NAME = {"active": "active (PORT)", "passive": "passive (cluster: PRET+PASV)",
             "relay": "relay (PASV without PRET)"}
SINGLE_CPU_COLUMNS = (("cluster slave", "cluster", "slave1"), ("cluster master", "cluster", "master"),
                      ("cluster broker", "cluster", "broker"), ("pyftpdlib", "pyftpdlib", "pyftpdlib"),
                      ("PROT P: cluster slave", TLS_CLUSTER, "slave1"),
                      ("PROT P: cluster master", TLS_CLUSTER, "master"),
                      ("PROT P: pyftpdlib", TLS_PYFTPD, "pyftpdlib"))
"""(header, server, process) of the single-stream CPU table; the cluster has one slave there."""


def single_cpu_table(single: dict[str, Any], repeat: int) -> list[str]:
    """Markdown lines: server CPU milliseconds per GB of each single-stream transfer."""
    rows = []
    for op in ("RETR", "STOR"):
        for mode in MODES:
            ms = [_get(single, server, mode, f"{op}_cpu_ms_per_gb", process)
                  for _, server, process in SINGLE_CPU_COLUMNS]
            if any(v is not None for v in ms):
                rows.append(f"| {op}, curl | {MODE_NAME[mode]} | "
                            + " | ".join("-" if v is None else f"{v:,.0f} ms" for v in ms) + " |")
    if not rows:
        return []
    return ["", f"Server CPU time per GB moved by a single stream (median of {repeat} run"
            f"{'s' if repeat != 1 else ''}; all threads of each process; vsftpd forks a process "
            "per session and is not counted):", "",
            "| transfer | mode | " + " | ".join(h for h, _, _ in SINGLE_CPU_COLUMNS) + " |",
            "|---|---|" + "---:|" * len(SINGLE_CPU_COLUMNS), *rows]


def report(results: dict) -> str:
    """The results as Markdown tables."""
    lines: list[str] = []
    sizes = results["sizes"]
    single, small = results.get("single", {}), results.get("small", {})
    peers = [s for s in ("pyftpdlib", "vsftpd")]
    big = f"{sizes['big_bytes'] / MIB:,.0f} MiB" if sizes["big_bytes"] < 1 << 30 else \
        f"{sizes['big_bytes'] / (1 << 30):g} GiB"

    lines += ["| measurement | mode | cluster | pyftpdlib | vsftpd | cluster / pyftpdlib | target |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for op in ("RETR", "STOR"):
        for mode in MODES:
            vals = [_get(single, s, mode, op) for s in ("cluster", *peers)]
            lines.append(f"| {op} {big}, curl | {MODE_NAME[mode]} | " + " | ".join(_mbs(v) for v in vals)
                         + f" | {_ratio(vals[0], vals[1])} | >= 1.0 |")
    for op in ("RETR", "STOR"):
        for mode in MODES:
            vals = [_get(single, s, mode, op) for s in (TLS_CLUSTER, TLS_PYFTPD)]
            if vals[0] is not None or vals[1] is not None:
                lines.append(f"| {op} {big}, curl --ssl-reqd (PROT P: TLS data connection) | {MODE_NAME[mode]} | "
                             f"{_mbs(vals[0])} | {_mbs(vals[1])} | - | {_ratio(vals[0], vals[1])} | (no target) |")
    for mode in MODES:
        v = _get(single, NOFSYNC, mode, "STOR")
        if v is not None:
            p = _get(single, "pyftpdlib", mode, "STOR")
            lines.append(f"| STOR {big}, curl, slave `fsync = false` (no durability, like the peers) | "
                         f"{MODE_NAME[mode]} | {_mbs(v)} | {_mbs(p)} | - | {_ratio(v, p)} | (no target) |")
    for op in ("RETR", "STOR"):
        for sessions, target in (("1", "0.8"), (str(sizes["sessions"]), "1.0")):
            vals = [_get(small, s, op, sessions) for s in ("cluster", *peers)]
            what = "1 session" if sessions == "1" else f"{sessions} sessions"
            lines.append(f"| {sizes['small_count']:,} x {op} {sizes['small_bytes'] // 1024} KiB, ftplib, "
                         f"{what} | {MODE_NAME['passive']} | " + " | ".join(_rate(v) for v in vals)
                         + f" | {_ratio(vals[0], vals[1])} | >= {target} |")
    cpu_rows = []
    for op in ("RETR", "STOR"):
        for sessions in ("1", str(sizes["sessions"])):
            cells = []
            for s in ("cluster", "pyftpdlib"):
                per = _get(small, s, "cpu_us", op, sessions)
                if per:
                    total = sum(per.values())
                    parts = _per_process(per) if len(per) > 1 else ""
                    cells.append(f"{total:,.0f} µs" + (f" ({parts})" if parts else ""))
                else:
                    cells.append("-")
            cpu_rows.append(f"| {op}, {sessions} session{'s' if sessions != '1' else ''} | " + " | ".join(cells) + " |")
    if any("µs" in r for r in cpu_rows):
        tail_cpu = ["", "Server CPU time per small-file transfer (all threads of each process):", "",
                    "| transfer | cluster (broker, master, slave) | pyftpdlib |", "|---|---|---|", *cpu_rows]
    else:
        tail_cpu = []
    idle = results.get("idle", {})
    if idle:
        c, p = idle.get("cluster"), idle.get("pyftpdlib")
        lines.append(f"| RSS with {sizes['idle_sessions']:,} idle sessions | - | "
                     f"{c['rss_with_sessions'] / MIB:.0f} MiB | "
                     + (f"{p['rss_with_sessions'] / MIB:.0f} MiB" if p else "-")
                     + " | - | " + (_ratio(c["rss_with_sessions"], p["rss_with_sessions"]) if p else "-")
                     + " | < 150 MB |")
        lines.append(f"| CPU time to log {sizes['idle_sessions']:,} sessions in | - | "
                     f"{c['cpu_s_logins']:.2f} s | " + (f"{p['cpu_s_logins']:.2f} s" if p else "-")
                     + " | - | - | - |")
    lines += single_cpu_table(single, sizes["repeat"])
    lines += tail_cpu
    agg = results.get("aggregate")
    if agg:
        lines += ["", f"Aggregate bandwidth ({'tc htb: ' + str(agg['rate_mbit']) + ' Mbit/s per slave address' if agg['limited'] else agg['note']}), "
                  f"N clients each downloading a different {sizes['agg_bytes'] / MB:g} MB file at once:", "",
                  "| N slaves | mode | aggregate | N x 100 Mbit/s | ratio (target >= 0.95) | master relayed bytes | master CPU | master RSS peak |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in agg["runs"]:
            lines.append(f"| {r['n']} | {MODE_NAME.get(r['mode'], r['mode'])} | {r['mbit_s']:,.1f} Mbit/s | "
                         f"{r['ideal_mbit_s']} Mbit/s | {r['ratio']:.3f} | {r['relayed_bytes']:,} | "
                         f"{r['master_cpu_s']:.2f} s | {r['master_rss_peak'] / MIB:.0f} MiB |")
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> str | None:
    """aggregate.png; returns why not when matplotlib is missing."""
    agg = results.get("aggregate")
    if not agg or not agg["runs"]:
        return "no aggregate runs"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    runs = [r for r in agg["runs"] if r["mode"] == "passive"] or agg["runs"]
    ns = [r["n"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ns, [r["ideal_mbit_s"] for r in runs], "--", color="grey", label="N x 100 Mbit/s")
    ax.plot(ns, [0.95 * r["ideal_mbit_s"] for r in runs], ":", color="grey", label="target 0.95 x N x 100")
    ax.plot(ns, [r["mbit_s"] for r in runs], "o-", color="tab:blue", label="cluster (PRET+PASV)")
    ax.set_xlabel("slaves (one client each)")
    ax.set_ylabel("aggregate download Mbit/s")
    ax.set_xticks(ns)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title("ftpcluster aggregate bandwidth" + ("" if agg["limited"] else " (links not limited)"))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- main

def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new < want and os.geteuid() == 0:
            new = want
            hard = max(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, N up to 2 (smoke test)")
    p.add_argument("--no-tc", action="store_true", help="do not limit the slaves' links with tc")
    p.add_argument("--no-vsftpd", action="store_true", help="leave vsftpd out")
    p.add_argument("--only", default="single,small,idle,aggregate",
                   help="comma-separated sections to run (default: all)")
    p.add_argument("--agg-mb", type=int, default=None, help="size of each aggregate-run file in MB")
    p.add_argument("--max-slaves", type=int, default=None, help="largest N in the aggregate run")
    p.add_argument("--big-mb", type=int, default=None, help="size of the single-stream file in MiB")
    p.add_argument("--repeat", type=int, default=None, help="single-stream runs per transfer (median)")
    p.add_argument("--out", default="bench-out", help="directory for results.json/.md and aggregate.png")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temp dir, removed)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.agg_mb is not None:
        sizes = replace(sizes, agg_bytes=args.agg_mb * MB)
    if args.max_slaves is not None:
        sizes = replace(sizes, agg_max_n=args.max_slaves)
    if args.big_mb is not None:
        sizes = replace(sizes, big_bytes=args.big_mb * MIB)
    if args.repeat is not None:
        sizes = replace(sizes, repeat=args.repeat)
    sections = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(max(4096, 4 * sizes.idle_sessions + 1024))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ftpcluster-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
                               "machine": machine(), "sizes": asdict(sizes), "notes": []}
    started = time.monotonic()
    try:
        run(results, sections, sizes, work, args)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["time_wait_settling"] = dict(SETTLED)
    text = report(results)
    why = plot(results, out / "aggregate.png")
    if why and "aggregate" in sections:
        results["notes"].append(f"no plot: {why}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(text)
    print(text)
    say(f"done in {results['seconds']:.0f} s; results in {out}/")
    return 0


def tls_servers(work: Path, big: Path) -> list[Any]:
    """The cluster with FTPS (its own self-signed certificates for the master and the slave)
    and plain pyftpdlib's TLS_FTPHandler, each serving big.bin; clients use PROT P."""
    from common.certs import ensure_self_signed

    certs = work / "tls"
    master_cert, master_key = ensure_self_signed(certs, "master")
    slave_cert, slave_key = ensure_self_signed(certs, "slave1")
    cluster = ClusterServer(work / "cluster-tls", slaves=1, name=TLS_CLUSTER,
                            master_extra={"tls_certfile": str(master_cert), "tls_keyfile": str(master_key)},
                            slave_extra={"tls_certfile": str(slave_cert), "tls_keyfile": str(slave_key)})
    cluster.tls = True  # type: ignore[attr-defined]
    place(big, cluster.root / "big.bin")
    (cluster.root / "up").mkdir(parents=True, exist_ok=True)
    peer_cert, peer_key = ensure_self_signed(certs, "pyftpdlib")
    combined = certs / "pyftpdlib.pem"  # TLS_FTPHandler.certfile holds the key too
    combined.write_bytes(peer_cert.read_bytes() + peer_key.read_bytes())
    peer = PyftpdlibServer(work / "pyftpdlib-tls", work / "pyftpdlib-tls.log", certfile=combined,
                           name=TLS_PYFTPD)
    place(big, peer.root / "big.bin")
    (peer.root / "up").mkdir(parents=True, exist_ok=True)
    return [cluster, peer]


def run(results: dict, sections: set[str], sizes: Sizes, work: Path, args: argparse.Namespace) -> None:
    data = work / "data"
    need_servers = sections & {"single", "small", "idle"}
    if need_servers:
        say("writing test files")
        big = random_file(data / "big.bin", sizes.big_bytes)
        small = [random_file(data / "small" / f"f{i:04d}", sizes.small_bytes) for i in range(sizes.small_count)]
        names = [f.name for f in small]
        cluster = ClusterServer(work / "cluster", slaves=1,
                                # every session comes from 127.0.0.1: no per-address limit
                                master_extra={"max_connections": sizes.idle_sessions + 200,
                                              "max_connections_per_ip": 0})
        populate(cluster.root, big, small)
        servers: list[Any] = [cluster]
        if "single" in sections:
            # FTPS (curl --ssl-reqd: PROT P) against stock pyftpdlib's TLS_FTPHandler.
            servers += tls_servers(work, big)
            # The same cluster with the slave's fsync off: what the durability of STOR costs.
            nofsync = ClusterServer(work / "cluster-nofsync", slaves=1, slave_extra={"fsync": False},
                                    name=NOFSYNC)
            nofsync.stor_only = True  # type: ignore[attr-defined]
            place(big, nofsync.root / "big.bin")
            (nofsync.root / "up").mkdir(parents=True, exist_ok=True)
            servers.append(nofsync)
        pyftpd = PyftpdlibServer(work / "pyftpdlib", work / "pyftpdlib.log")
        populate(pyftpd.root, big, small)
        servers.append(pyftpd)
        why = "left out (--no-vsftpd)" if args.no_vsftpd else vsftpd_unavailable()
        if why is None:
            vsftpd = VsftpdServer(work / "vsftpd-root", work)
            populate(vsftpd.root, big, small)
            servers.append(vsftpd)
        else:
            results["notes"].append(f"vsftpd skipped: {why}")
        started: list[Any] = []
        try:
            for server in servers:
                server.start()
                started.append(server)
            cluster.wait_visible({"big.bin": sizes.big_bytes, **{f"small/{n}": sizes.small_bytes for n in names}})
            for server in started:
                if server.name == NOFSYNC:
                    server.wait_visible({"big.bin": sizes.big_bytes})
            for server in started:
                if server.name == TLS_CLUSTER:
                    server.wait_visible({"big.bin": sizes.big_bytes})
            if "single" in sections:
                results["single"] = single_stream(started, big, sizes)
                for server in started:
                    if server.name == TLS_CLUSTER:
                        results["relayed_bytes_single_tls"] = server.relayed_bytes()
            for server in [s for s in started if s.name in (NOFSYNC, TLS_CLUSTER, TLS_PYFTPD)]:
                server.stop()
                started.remove(server)
            if "small" in sections:
                results["small"] = small_files(started, names, sizes)
            if "idle" in sections:
                results["idle"] = {"cluster": idle_sessions(cluster, cluster.master_pid, sizes.idle_sessions),
                                   "pyftpdlib": idle_sessions(pyftpd, pyftpd.pid, sizes.idle_sessions)}
            if "single" in sections or "small" in sections:
                results["relayed_bytes_single_small"] = cluster.relayed_bytes()
        finally:
            for server in started:
                server.stop()
    if "aggregate" in sections:
        results["aggregate"] = aggregate(work, sizes, use_tc=not args.no_tc)
        if results["aggregate"]["note"]:
            results["notes"].append(results["aggregate"]["note"])


if __name__ == "__main__":
    sys.exit(main())
