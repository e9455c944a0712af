"""The `ftpcluster` command: one subcommand per role, plus `up`, `stats`, `keygen` and `hash-password`.

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
    st.add_argument("--key", metavar="FILE", help="CURVE: this tool's secret key file (from "
                    "`ftpcluster keygen stats NAME`; default with --data: DIR/keys/stats/stats.key_secret)")
    st.add_argument("--broker-key", metavar="FILE", help="CURVE: the broker's public key file (broker.key)")
    st.add_argument("--once", action="store_true", help="print one snapshot and exit")
    st.add_argument("--json", action="store_true", help="JSON: one object per stats message (with --once: "
                    "one snapshot object)")
    st.add_argument("--prometheus", metavar="HOST:PORT", default="", help="serve Prometheus metrics there")
    st.add_argument("--wait", type=float, default=2.5, help="--once: seconds to collect stats (default 2.5)")
    st.add_argument("--stale-after", type=float, default=5.0, help="seconds without stats before a slave "
                    "is shown stale (default 5)")
    st.add_argument("--offline-after", type=float, default=15.0, help="seconds without stats before a "
                    "slave is shown offline (default 15)")
    kg = sub.add_parser("keygen", help="write a CURVE key pair for a role (NAME.key and NAME.key_secret)")
    kg.add_argument("role", choices=("broker", "master", "slave", "stats"))
    kg.add_argument("name", nargs="?", help="the slave's name (the broker admits its key for that name "
                    "only), or a name for a master or stats key (default: the role)")
    kg.add_argument("--keys", default="./keys", help="keys directory (default ./keys): writes "
                    "broker.key, master/NAME.key, slaves/NAME.key or stats/NAME.key and the _secret file")
    hp = sub.add_parser("hash-password", help="print a password hash for a [[users]] entry")
    hp.add_argument("password", nargs="?", help="the password (read from stdin when omitted)")
    args = parser.parse_args(argv)

    from common.config import ConfigError
    from common.curve import KeyFileError

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
            keys = statstool.find_keys(args.key, args.broker_key, args.config, args.data, args.endpoint)
            return statstool.run(endpoint, once=args.once, as_json=args.json, prometheus=args.prometheus,
                                 stale_after=args.stale_after, offline_after=args.offline_after,
                                 wait=args.wait, source=source, keys=keys)
        if args.command == "keygen":
            return keygen(args.role, args.name, args.keys)
        if args.command == "hash-password":
            from master.users import hash_password
            password = args.password if args.password is not None else sys.stdin.readline().rstrip("\n")
            if not password:
                print("ftpcluster: empty password", file=sys.stderr)
                return 2
            print(hash_password(password))
            return 0
    except (ConfigError, KeyFileError) as exc:
        print(f"ftpcluster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def keygen(role: str, name: str | None, keys: str) -> int:
    """`ftpcluster keygen`: write the pair, say where and what goes to which host."""
    from pathlib import Path

    from common.curve import generate
    public, secret = generate(Path(keys), role, name or role)
    where = ("every master, slave and stats host (their curve.broker_key)" if role == "broker"
             else f"the broker's {role} key directory (its curve.{role}_keys)")
    print(f"wrote {public}: the public key; copy it to {where}")
    print(f"wrote {secret}: the secret key; keep it on the {role}'s host only (its curve.secret_key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
