"""What real clients need from the master's replies: RFC 959/3659 reply codes for paths
that name nothing or the wrong type, rclone into a directory that does not exist yet, and
RFC 3659 facts that lftp turns into real modes."""

from __future__ import annotations

import ftplib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_PASSWORD, ADMIN_USER, Cluster, open_data, upload

pytestmark = pytest.mark.integration
CLIENT_TIMEOUT_S = 90


def _reply(ftp: ftplib.FTP, command: str) -> str:
    """The first line of the reply to `command`; for LIST/NLST/MLSD/RETR, active mode."""
    verb = command.split()[0]
    try:
        if verb in ("LIST", "NLST", "MLSD", "RETR"):
            with open_data(ftp, command, "active") as conn:
                while conn.recv(65536):
                    pass
            return ftp.voidresp()
        return ftp.sendcmd(command)
    except ftplib.Error as err:
        return str(err).splitlines()[0]


# What every path a client may name gets: 550 when it names nothing or the wrong type,
# 501 only where RFC 3659 7.2.1 says so (MLSD of a file). The text must say what it is.
PATH_REPLIES = [
    ("CWD /nope", "550", "No such file"),
    ("CWD /f.txt", "550", "Not a directory"),
    ("CWD /f.txt/x", "550", ""),
    ("LIST /nope", "550", "No such file"),
    ("NLST /nope", "550", "No such file"),
    ("MLSD /nope", "550", "No such file"),
    ("MLSD /nope/deeper", "550", "No such file"),
    ("MLSD /f.txt", "501", "Not a directory"),
    ("MLST /nope", "550", "No such file"),
    ("SIZE /nope", "550", "No such file"),
    ("SIZE /d", "550", "Is a directory"),
    ("MDTM /nope", "550", ""),
    ("RETR /nope", "550", "No such file"),
    ("RETR /d", "550", "Is a directory"),
    ("DELE /nope", "550", "No such file"),
    ("DELE /d", "550", "Is a directory"),
    ("RMD /nope", "550", "No such file"),
    ("RMD /f.txt", "550", "Not a directory"),
    ("RNFR /nope", "550", "No such file"),
    ("STAT /nope", "550", "No such file"),
    ("XCRC /nope", "550", "No such file"),
    ("XCRC /d", "550", "Is a directory"),
    ("STOR /d", "550", "Is a directory"),
    ("STOR /f.txt/x", "550", "Not a directory"),
    ("STOR /nope/x", "550", "No such file"),
    ("MKD /nope/x", "550", "No such file"),
]


def test_path_reply_codes(cluster_factory) -> None:
    c = cluster_factory(slaves=1).start()
    with c.ftp() as ftp:
        ftp.mkd("/d")
        upload(ftp, "/f.txt", b"hello\n", "active")
        got = [(cmd, _reply(ftp, cmd)) for cmd, _, _ in PATH_REPLIES]
    wrong = [(cmd, reply, f"want {code} {text!r}")
             for (cmd, reply), (_, code, text) in zip(got, PATH_REPLIES)
             if not reply.startswith(code + " ") or text.lower() not in reply.lower()]
    assert wrong == []


@pytest.fixture
def rclone() -> str:
    path = shutil.which("rclone")
    if not path:
        pytest.skip("rclone is not installed (apt-get install rclone)")
    return path


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{argv[:3]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def test_rclone_copy_check_sync_into_a_new_nested_directory(cluster: Cluster, rclone: str,
                                                             tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"first line\n" * 5000)
    (source / "sub" / "b.bin").write_bytes(os.urandom(3 << 20))
    (source / "empty").write_bytes(b"")
    secret = _run([rclone, "obscure", ADMIN_PASSWORD]).strip()
    remote = (f":ftp,host=127.0.0.1,port={cluster.ftp_port},user={ADMIN_USER},"
              f"pass={secret}:rclone/new/nested")
    base = [rclone, "--config", str(tmp_path / "rclone.conf"), "--low-level-retries", "1",
            "--retries", "1"]

    _run([*base, "copy", str(source), remote])
    _run([*base, "check", "--download", str(source), remote])
    listed = _run([*base, "lsf", "-R", remote]).split()
    assert sorted(listed) == ["a.txt", "empty", "sub/", "sub/b.bin"]
    back = tmp_path / "back"
    _run([*base, "sync", remote, str(back)])
    for name in ("a.txt", "sub/b.bin", "empty"):
        assert (back / name).read_bytes() == (source / name).read_bytes(), name


def test_lftp_cls_shows_the_real_modes(cluster: Cluster) -> None:
    lftp = shutil.which("lftp")
    if not lftp:
        pytest.skip("lftp is not installed (apt-get install lftp)")
    with cluster.ftp() as ftp:
        try:
            ftp.mkd("/modes")
        except ftplib.error_perm:
            pass
        ftp.mkd("/modes/dir")
        upload(ftp, "/modes/file.txt", b"x" * 10, "active")
    out = _run([lftp, "-u", f"{ADMIN_USER},{ADMIN_PASSWORD}", "-p", str(cluster.ftp_port),
                "-e", "set cmd:fail-exit true; cls -l --user --group /modes/; quit",
                "127.0.0.1"])
    lines = sorted(line.split() for line in out.splitlines() if line.strip())
    assert [(f[0], f[1], f[-1]) for f in lines] == [
        ("-rw-r--r--", ADMIN_USER, "/modes/file.txt"),
        ("drwxr-xr-x", ADMIN_USER, "/modes/dir/"),
    ]
    # lftp cuts a group name to its 8-column field.
    assert all(len(f[2]) >= 8 and "ftpcluster".startswith(f[2]) for f in lines), lines


def test_a_second_transfer_command_while_one_runs_gets_425(cluster: Cluster) -> None:
    """A relayed RETR waits for the client's connection; a second RETR on the same session
    must not replace it (that stranded the first transfer and its relay slot)."""
    with cluster.ftp() as ftp:
        ftp.voidcmd("TYPE I")
        upload(ftp, "/second.bin", b"x" * 1000, "active")
        ftp.set_pasv(True)
        reply = ftp.sendcmd("PASV")
        assert reply.startswith("227")
        ftp.putcmd("RETR /second.bin")
        assert ftp.getresp().startswith("150")  # relayed: the client has not connected yet
        with pytest.raises(ftplib.error_temp, match="^425 A data transfer is already in progress"):
            ftp.sendcmd("RETR /second.bin")
        host, port = ftplib.parse227(reply)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert got == b"x" * 1000
        assert ftp.voidresp().startswith("226")
