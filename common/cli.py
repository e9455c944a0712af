"""The `ftpcluster` command: one subcommand per role, plus `up`, `stats` and `hash-password`.

This is the only place that parses the command line; each role's `run(config)` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


def version() -> str:
    """The installed package's version (pyproject.toml's, recorded at install time)."""
    try:
        return metadata.version("ftpcluster")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftpcluster", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ftpcluster {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for role in ("broker", "master", "slave"):
        p = sub.add_parser(role, help=f"run the {role}")
        p.add_argument("--config", required=True, help="TOML config file")
    up = sub.add_parser("up", help="run a whole cluster on this machine in the foreground")
    # Existing configs in DATA/conf are kept and win over --port/--host (common.launcher.decide_start).
    up.add_argument("--port", type=int, help="FTP port of a new master.toml (default 2121)")
    up.add_argument("--slaves", type=int, help="number of slaves; missing slave configs are written "
                    "(default: as many as DATA/conf has, else 3)")
    up.add_argument("--data", default="./var", help="data directory (default ./var)")
    up.add_argument("--host", help="FTP listen address of a new master.toml (default 127.0.0.1)")
    st = sub.add_parser("stats", help="show the slaves' stats live (from the broker's stats feed)")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--endpoint", help="the broker's stats XPUB, e.g. tcp://10.0.0.1:5553")
    where.add_argument("--config", help="a broker or master TOML config to read the endpoint from")
    where.add_argument("--data", metavar="DIR", help="the data directory of an `ftpcluster up` cluster "
                       "(reads DIR/conf/broker.toml; default ./var when it has one, else "
                       "tcp://127.0.0.1:5553)")
    st.add_argument("--once", action="store_true", help="print one snapshot and exit")
    st.add_argument("--json", action="store_true", help="JSON: one object per stats message (with --once: "
                    "one snapshot object)")
    st.add_argument("--prometheus", metavar="HOST:PORT", default="", help="serve Prometheus metrics there")
    st.add_argument("--wait", type=float, default=2.5, help="--once: seconds to collect stats (default 2.5)")
    st.add_argument("--stale-after", type=float, default=5.0, help="seconds without stats before a slave "
                    "is shown stale (default 5)")
    st.add_argument("--offline-after", type=float, default=15.0, help="seconds without stats before a "
                    "slave is shown offline (default 15)")
    hp = sub.add_parser("hash-password", help="print a password hash for a [[users]] entry")
    hp.add_argument("password", nargs="?", help="the password (read from stdin when omitted)")
    args = parser.parse_args(argv)

    from common.config import ConfigError

    try:
        if args.command == "broker":
            from broker.service import run as run_broker
            return run_broker(args.config)
        if args.command == "master":
            from master.service import run as run_master
            return run_master(args.config)
        if args.command == "slave":
            from slave.service import run as run_slave
            return run_slave(args.config)
        if args.command == "up":
            from common.launcher import run_local_cluster
            return run_local_cluster(port=args.port, slaves=args.slaves, data=args.data,
                                     host=args.host)
        if args.command == "stats":
            from common import statstool
            endpoint, source = statstool.find_endpoint(args.endpoint, args.config, args.data)
            return statstool.run(endpoint, once=args.once, as_json=args.json, prometheus=args.prometheus,
                                 stale_after=args.stale_after, offline_after=args.offline_after,
                                 wait=args.wait, source=source)
        if args.command == "hash-password":
            from master.users import hash_password
            password = args.password if args.password is not None else sys.stdin.readline().rstrip("\n")
            if not password:
                print("ftpcluster: empty password", file=sys.stderr)
                return 2
            print(hash_password(password))
            return 0
    except ConfigError as exc:
        print(f"ftpcluster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
