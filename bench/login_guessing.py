"""Password guessing over parallel connections from one address: how many passwords the
master really checks, how many logins the ban refuses, and whether the right password works
afterwards.

    python -m bench.login_guessing [--connections 40] [--tries 3] [--source 127.0.0.9]

Starts a one-slave cluster with the default limits (tests.integration.conftest.Cluster) and
opens `connections` control connections from `source`, each sending up to `tries` wrong
passwords (pyftpdlib's max_login_attempts is 3).
"""

from __future__ import annotations

import argparse
import collections
import socket
import tempfile
import threading
import time
from pathlib import Path

from tests.integration.conftest import ADMIN_PASSWORD, Cluster


def attack(port: int, source: str, tries: int, counts: collections.Counter[str],
           lock: threading.Lock) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30,
                                      source_address=(source, 0)) as s:
            f = s.makefile("rb")
            if f.readline().startswith(b"421"):
                kind = "421 at connect"
            else:
                for _ in range(tries):
                    s.sendall(b"USER admin\r\nPASS wrong\r\n")
                    f.readline()
                    reply = f.readline()
                    kind = ("checked" if b"Authentication failed" in reply else
                            "refused by the ban" if b"failed logins" in reply else "other")
                    if kind != "checked":
                        break
                    with lock:
                        counts[kind] += 1
                    kind = ""
            if kind:
                with lock:
                    counts[kind] += 1
    except OSError:
        with lock:
            counts["other"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--source", default="127.0.0.9")
    args = parser.parse_args()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="login-guessing-")), slaves=1).start()
    try:
        counts: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()
        t0 = time.monotonic()
        threads = [threading.Thread(target=attack, args=(cluster.ftp_port, args.source,
                                                         args.tries, counts, lock))
                   for _ in range(args.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.monotonic() - t0
        with socket.create_connection(("127.0.0.1", cluster.ftp_port), timeout=30,
                                      source_address=(args.source, 0)) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(f"USER admin\r\nPASS {ADMIN_PASSWORD}\r\n".encode())
            f.readline()
            right = f.readline().decode().strip()
    finally:
        cluster.close()
    print(f"{args.connections} connections x up to {args.tries} wrong passwords from "
          f"{args.source} in {took:.1f} s: {counts['checked']} checked "
          f"({counts['checked'] / took:.1f}/s), {counts['refused by the ban']} refused by the "
          f"ban, {counts['421 at connect']} got 421 at connect, {counts['other']} other; "
          f"then the right password: {right!r}")


if __name__ == "__main__":
    main()
