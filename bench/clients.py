"""The clients: curl for single streams and the aggregate run, ftplib for small files.

The same client code runs against every server. Data modes:
- "active": PORT; the server (the slave, for the cluster) connects to the client.
- "passive": PASV; for the cluster PRET is sent first so the client connects to the slave
  (curl: --ftp-pret --no-ftp-skip-pasv-ip --disable-epsv; the peers get plain PASV/EPSV).
- "relay" (curl only): plain EPSV without PRET, which the cluster's master relays.
"""

from __future__ import annotations

import ftplib
import multiprocessing as mp
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("active", "passive")


@dataclass(frozen=True)
class Target:
    """How a client reaches one server (picklable, for worker processes)."""

    name: str
    host: str
    port: int
    user: str
    password: str
    pret: bool
    tls: bool = False
    """FTPS: curl --ssl-reqd (AUTH TLS, PROT P: the data connections are TLS too)."""

    @classmethod
    def of(cls, server: Any) -> "Target":
        return cls(server.name, server.host, server.port, server.user, server.password, server.pret,
                   getattr(server, "tls", False))

    def url(self, path: str) -> str:
        return f"ftp://{self.user}:{self.password}@{self.host}:{self.port}/{path.lstrip('/')}"


# ---------------------------------------------------------------- curl

def curl_args(t: Target, mode: str) -> list[str]:
    args = ["curl", "--silent", "--show-error", "--fail", "--max-time", "600"]
    if t.tls:
        args += ["--ssl-reqd", "--insecure"]  # self-signed certificates (bench.__main__)
    if mode == "active":
        args += ["-P", t.host]
    elif mode == "passive" and t.pret:
        args += ["--ftp-pret", "--no-ftp-skip-pasv-ip", "--disable-epsv"]
    # "relay": plain EPSV/PASV, which the cluster's master answers by relaying the bytes
    return args


def curl_transfer(t: Target, mode: str, op: str, remote: str, local: Path | None = None) -> dict:
    """One RETR (to /dev/null) or STOR (from `local`) with curl; bytes, seconds, bytes/s."""
    args = curl_args(t, mode)
    if op == "RETR":
        args += ["-o", "/dev/null", "-w", "%{size_download} %{time_total}", t.url(remote)]
    else:
        assert local is not None
        args += ["-T", str(local), "-w", "%{size_upload} %{time_total}", t.url(remote)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"curl {op} {t.name} {mode} failed ({out.returncode}): {out.stderr.strip()}")
    size, seconds = out.stdout.split()
    return {"bytes": int(float(size)), "seconds": float(seconds),
            "Bps": int(float(size)) / max(float(seconds), 1e-9)}


def start_curl_download(t: Target, mode: str, remote: str) -> subprocess.Popen:
    args = curl_args(t, mode) + ["-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                                 t.url(remote)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- ftplib small files

def connect(t: Target) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=60)
    ftp.trust_server_pasv_ipv4_address = True
    ftp.connect(t.host, t.port)
    ftp.login(t.user, t.password)
    ftp.voidcmd("TYPE I")
    return ftp


def _open(ftp: ftplib.FTP, t: Target, mode: str, cmd: str):
    if mode == "active":
        ftp.set_pasv(False)
    else:
        ftp.set_pasv(True)
        if t.pret:
            ftp.sendcmd(f"PRET {cmd}")
    return ftp.transfercmd(cmd)


def retr_one(ftp: ftplib.FTP, t: Target, mode: str, path: str) -> int:
    n = 0
    with _open(ftp, t, mode, f"RETR {path}") as conn:
        while chunk := conn.recv(65536):
            n += len(chunk)
    ftp.voidresp()
    return n


def stor_one(ftp: ftplib.FTP, t: Target, mode: str, path: str, data: bytes) -> None:
    with _open(ftp, t, mode, f"STOR {path}") as conn:
        conn.sendall(data)
    ftp.voidresp()


def _worker(t: Target, mode: str, op: str, paths: list[str], data: bytes,
            barrier: Any, results: Any) -> None:
    try:
        ftp = connect(t)
        barrier.wait(60)
        for path in paths:
            if op == "RETR":
                retr_one(ftp, t, mode, path)
            else:
                stor_one(ftp, t, mode, path, data)
        done = time.monotonic()
        ftp.quit()
        results.put(("ok", len(paths), done))
    except BaseException as exc:  # report, never hang the parent
        try:
            barrier.abort()
        except Exception:
            pass
        results.put(("error", f"{type(exc).__name__}: {exc}", time.monotonic()))


def small_files(t: Target, mode: str, op: str, paths: list[str], sessions: int,
                data: bytes = b"") -> dict:
    """`op` on every path, spread over `sessions` sessions (one process each when > 1);
    transfers per second from the first transfer to the last reply."""
    if sessions == 1:
        ftp = connect(t)
        try:
            start = time.monotonic()
            for path in paths:
                if op == "RETR":
                    retr_one(ftp, t, mode, path)
                else:
                    stor_one(ftp, t, mode, path, data)
            seconds = time.monotonic() - start
        finally:
            ftp.close()
        return {"count": len(paths), "seconds": seconds, "per_s": len(paths) / seconds}
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(sessions + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(t, mode, op, paths[i::sessions], data, barrier, results),
                         daemon=True) for i in range(sessions)]
    for p in procs:
        p.start()
    try:
        barrier.wait(60)
        start = time.monotonic()
        outcomes = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    errors = [o[1] for o in outcomes if o[0] == "error"]
    if errors:
        raise RuntimeError(f"{len(errors)} session(s) failed: {errors[0]}")
    count = sum(o[1] for o in outcomes)
    seconds = max(o[2] for o in outcomes) - start
    return {"count": count, "seconds": seconds, "per_s": count / seconds}


# ---------------------------------------------------------------- idle sessions

def open_idle_sessions(t: Target, count: int) -> list[ftplib.FTP]:
    """`count` logged-in control connections that then stay idle (caller closes them)."""
    sessions = []
    try:
        for _ in range(count):
            ftp = ftplib.FTP(timeout=60)
            ftp.connect(t.host, t.port)
            ftp.login(t.user, t.password)
            sessions.append(ftp)
    except BaseException:
        close_sessions(sessions)
        raise
    return sessions


def close_sessions(sessions: list[ftplib.FTP]) -> None:
    for ftp in sessions:
        try:
            ftp.close()
        except OSError:
            pass
