"""The plain pyftpdlib peer: stock FTPHandler on FTPServer, one user over a local directory.

Run as `python -m bench.pyftpd_peer --root DIR --port P --user U --password PW`; with
`--certfile PEM` (certificate and key) stock TLS_FTPHandler instead (AUTH TLS, PROT P).
Logging at WARNING, like the cluster's roles in the benchmark.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--max-cons", type=int, default=2048)
    p.add_argument("--certfile", default="", help="PEM with certificate and key: FTPS")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    auth = DummyAuthorizer()
    auth.add_user(args.user, args.password, args.root, perm="elradfmwMT")
    handler = FTPHandler
    if args.certfile:
        from pyftpdlib.handlers import TLS_FTPHandler
        handler = TLS_FTPHandler
        handler.certfile = args.certfile
    handler.authorizer = auth
    handler.banner = "pyftpdlib peer ready."
    server = FTPServer((args.host, args.port), handler)
    server.max_cons = args.max_cons
    server.max_cons_per_ip = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(handle_exit=True)
    finally:
        server.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
