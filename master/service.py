"""The master process: config, logging, the demo-password guard, the VFS, the broker link
and a single-process pyftpdlib FTPServer sharing one IOLoop.

Signals: SIGTERM/SIGINT stop accepting connections, let running transfers finish for up
to `stop_timeout` seconds (a second signal cuts that short), then close everything;
SIGHUP reloads users, permissions and the placement policy from the config file (a bad
file logs its one-line error and changes nothing). systemd is told READY=1 once the FTP
listener is open and the broker has welcomed the master.

Owns start-up and shutdown order only; sessions, transfers and the link live elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from common import log as common_log, sdnotify
from common.config import ConfigError, MasterConfig, UserEntry, load
from common.curve import client_keys
from common.repeating import RepeatingWarning
from master.cluster import Cluster
from master.handler import build_handler
from master.link import BrokerLink
from master.loop import Waker
from master.placement import Placement
from master.recorder import UploadRecorder
from master.relay import RelayCounter
from master.slaves import SlaveRegistry
from master.users import ClusterAuthorizer, verify_password
from master.vfs import VirtualFS

log = logging.getLogger("master")

DEMO_PASSWORD = "demo"
NO_USERS_WARN_EVERY_S = 60.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def demo_password_refusal(host: str, users: list[UserEntry], allowed: bool) -> str:
    """The one-line reason to refuse starting, or "" (a "demo" password only on loopback)."""
    if allowed or is_loopback(host):
        return ""
    weak = [u.name for u in users if verify_password(DEMO_PASSWORD, u.password_hash)]
    if not weak:
        return ""
    return (f"ftpcluster master: refusing to listen on {host or '*'}: user(s) {', '.join(weak)} "
            "still have the password \"demo\" (change it, or set "
            "allow_demo_password_off_loopback = true)")


def run(config_path: str) -> int:
    config = load(config_path, MasterConfig)
    common_log.setup("master", config.log.level)
    section = config.master
    refusal = demo_password_refusal(section.listen_host, list(config.users),
                                    section.allow_demo_password_off_loopback)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2

    keys = None
    if config.curve is not None:
        keys = client_keys(config.curve.secret_key, config.curve.broker_key, config_path)
    try:
        # Users first: a bad entry stops the master with one line before any file is created.
        authorizer = ClusterAuthorizer(list(config.users))
    except ValueError as exc:
        raise ConfigError(f"{config_path}: users: {exc}") from None
    state_dir = Path(section.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    vfs = VirtualFS(str(state_dir / "vfs.sqlite3"))
    ioloop = IOLoop()
    registry = SlaveRegistry()
    link = BrokerLink(ioloop, section, registry, vfs, keys=keys)
    waker = Waker(ioloop)
    cluster = Cluster(config=section, vfs=vfs, registry=registry, link=link, ioloop=ioloop,
                      waker=waker, relayed=RelayCounter(), placement=Placement(config.placement),
                      recorder=UploadRecorder(vfs, ioloop, link.send_op, link.notify))
    handler = build_handler(config, cluster, authorizer)
    try:
        server = FTPServer((section.listen_host, section.listen_port), handler, ioloop=ioloop)
    except OSError as exc:
        print(f"ftpcluster master: cannot listen on {section.listen_host}:{section.listen_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        waker.close()
        authorizer.close()
        vfs.close()
        return 2
    link.start()
    # pyftpdlib's max_cons counts every entry of the IOLoop's socket map: the listener, the
    # link's zmq sockets and the waker are there too, and must not eat client slots.
    server.max_cons = section.max_connections + len(ioloop.socket_map)
    server.max_cons_per_ip = section.max_connections_per_ip

    stopping: list[int] = []
    draining: list[Any] = []

    def shutdown() -> None:
        for call in draining:
            if not call.cancelled:
                call.cancel()
        link.close()  # says Bye while the socket is still open
        server.close_all()

    def running_transfers() -> int:
        return sum(1 for s in list(cluster.sessions) if s.current_transfer() is not None)

    def begin_stop() -> None:
        sdnotify.stopping()
        server.close()  # no new connections; sessions and their transfers go on
        deadline = time.monotonic() + section.stop_timeout
        log.info("stopping: waiting up to %d s for %d running transfers", section.stop_timeout,
                 running_transfers())

        def check() -> None:
            busy = running_transfers()
            if busy and time.monotonic() < deadline:
                return
            if busy:
                log.warning("stop timeout: closing %d sessions with transfers still running", busy)
            shutdown()
        draining.append(ioloop.call_every(0.1, check, _errback=shutdown))
        check()

    def reload() -> None:
        try:
            fresh = load(config_path, MasterConfig)
            handler.authorizer.replace_users(list(fresh.users))
        except (ConfigError, ValueError) as exc:
            log.error("reload failed, keeping the old users: %s", exc)
            return
        cluster.placement.config = fresh.placement
        log.info("reloaded %d users and the placement policy from %s", len(fresh.users), config_path)

    def on_signal(signum: int, _frame: Any) -> None:
        # Runs between bytecodes of the loop thread: only note it and wake the loop.
        stopping.append(signum)
        waker.post(begin_stop if len(stopping) == 1 else shutdown)

    def on_hup(_signum: int, _frame: Any) -> None:
        waker.post(reload)

    def notify_ready() -> None:
        if link.connected:
            sdnotify.ready(f"listening on {section.listen_host}:{section.listen_port}")
            for call in ready_check:
                call.cancel()

    no_users = RepeatingWarning(after=0, every=NO_USERS_WARN_EVERY_S)

    def warn_if_no_users() -> None:
        now = time.monotonic()
        if handler.authorizer.user_table:
            no_users.cleared(now)
        elif no_users.holds(now) is not None:
            log.warning("no users in %s: nobody can log in; add a [[users]] entry (its "
                        "password_hash from `ftpcluster hash-password`) and send SIGHUP",
                        config_path)

    warn_if_no_users()
    ioloop.call_every(1.0, warn_if_no_users)
    ready_check = [ioloop.call_every(0.1, notify_ready)]
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    log.info("master listening on %s:%s (broker %s)", *server.address, section.broker_endpoint)
    try:
        server.serve_forever(handle_exit=True)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        link.close()
        waker.close()
        server.close_all()
        authorizer.close()
        vfs.close()
    log.info("master stopped%s", f" (signal {stopping[0]})" if stopping else "")
    return 0
