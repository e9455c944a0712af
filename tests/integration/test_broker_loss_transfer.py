"""Losing the broker does not abort a running transfer: data flows slave-to-client without
it, and the slave (same incarnation) reports the outcome once it has re-registered."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from tests.integration.conftest import open_data


def test_active_retr_survives_broker_restart(cluster_factory):
    c = cluster_factory(slaves=1)
    data = os.urandom(64 << 20)
    (c.slave_root("slave1") / "big.bin").write_bytes(data)
    c.start()
    with c.ftp() as ftp:
        ftp.sock.settimeout(60)
        conn = open_data(ftp, "RETR /big.bin", "active")
        conn.settimeout(30)
        digest, got = hashlib.sha256(), 0
        killed_at = None
        t0 = time.monotonic()
        while True:
            chunk = conn.recv(256 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
            if killed_at is None and got >= 4 << 20:
                c.kill("broker", signal.SIGKILL)
                c.restart("broker")
                killed_at = time.monotonic()
            # A slow reader: ~4 MiB/s, so the transfer spans the broker's absence and the
            # master's liveness limit (5 s) several times over.
            expected = t0 + got / (4 << 20)
            if expected > time.monotonic():
                time.sleep(expected - time.monotonic())
        conn.close()
        reply = ftp.voidresp()
        assert killed_at is not None
        assert time.monotonic() - killed_at > 6, "the transfer must outlast the liveness limit"
        assert reply.startswith("226"), reply
        assert got == len(data)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        ftp.voidcmd("NOOP")
