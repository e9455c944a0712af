"""TYPE A against the real cluster, byte for byte against a plain pyftpdlib server.

For the same input, what the cluster stores (on the slave's disk) after a TYPE A upload and
what it sends for a TYPE A download must equal what pyftpdlib (FTPServer + DummyAuthorizer
on a tmp dir, in a thread of this process) stores and sends, in every data mode (active,
PRET+PASV direct, relay), with curl (-B) and with ftplib (raw bytes through transfercmd
after TYPE A). TYPE I stays unconverted; SIZE/REST/XCRC are refused in TYPE A.
"""

from __future__ import annotations

import ftplib
import re
import shutil
import subprocess
import threading
import zlib
from pathlib import Path
from typing import Iterator

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from tests.integration.conftest import MODES, open_data

pytestmark = pytest.mark.integration

MIB = 1 << 20
PLAIN_USER, PLAIN_PASSWORD = "plain", "plain-secret"


def _text(size: int) -> bytes:
    """Mixed line ends: CRLF, bare LF, lone CR, CR CR LF, blank lines; plus a CRLF split
    exactly on the slave's 4 MiB read boundary and pyftpdlib's 64 KiB ones, and a lone CR
    on such a boundary. Ends with a lone CR (pyftpdlib drops it on upload)."""
    unit = b"alpha beta\r\ngamma\ndelta\repsilon\r\r\nzeta\n\n\r\neta\x00\xff\r\n"
    data = bytearray((unit * (size // len(unit) + 1))[:size])
    for boundary in (64 * 1024, 4 * MIB, 2 * MIB):
        if boundary + 1 < size:
            data[boundary - 1:boundary + 1] = b"\r\n"
    if 3 * MIB + 1 < size:
        data[3 * MIB - 1:3 * MIB + 1] = b"\rx"
    data[-1:] = b"\r"
    return bytes(data)


def _producer_quirk_free(data: bytes) -> bool:
    """pyftpdlib's FileProducer (64 KiB chunks) sends an LF bare when it starts a chunk that
    ends with CR, after a chunk not ending with CR (tests/unit/slave/test_ascii.py); the
    cluster does not, so download inputs must not hit that case."""
    size = 65536
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        if chunk.startswith(b"\n") and chunk.endswith(b"\r") and data[start - 1:start] != b"\r":
            return False
    return True


UPLOAD_TEXT = _text(9 * MIB + 123)  # past 8 MiB: the slave hands the CRC32 to its helper thread
# A stored file for downloads: LF text with some CRLF and lone CR already in it.
DOWNLOAD_TEXT = _text(5 * MIB + 77)[:-1] + b"\n"
CURL_DOWNLOAD_TEXT = DOWNLOAD_TEXT[:300 * 1024 + 11] + b"\n"
assert _producer_quirk_free(DOWNLOAD_TEXT) and _producer_quirk_free(CURL_DOWNLOAD_TEXT)


# ---------------------------------------------------------------- plain pyftpdlib

class PlainServer:
    """pyftpdlib on 127.0.0.1, port 0, its own IOLoop in a thread; stop() ends it (bounded)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        authorizer = DummyAuthorizer()
        authorizer.add_user(PLAIN_USER, PLAIN_PASSWORD, str(root), perm="elradfmwMT")
        handler = type("PlainHandler", (FTPHandler,), {"authorizer": authorizer})
        self.server = FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
        self.port = self.server.address[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="plain-ftpd")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        finally:
            self.server.close_all()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "plain pyftpdlib server did not stop"

    def ftp(self) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=30)
        ftp.connect("127.0.0.1", self.port)
        ftp.login(PLAIN_USER, PLAIN_PASSWORD)
        return ftp

    @property
    def url(self) -> str:
        return f"ftp://{PLAIN_USER}:{PLAIN_PASSWORD}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainServer]:
    server = PlainServer(tmp_path_factory.mktemp("plain-ftpd"))
    try:
        (server.root / "down.txt").write_bytes(DOWNLOAD_TEXT)
        (server.root / "down-curl.txt").write_bytes(CURL_DOWNLOAD_TEXT)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stored_download(cluster) -> str:
    """DOWNLOAD_TEXT (and CURL_DOWNLOAD_TEXT) stored on the cluster unconverted (TYPE I)."""
    with cluster.ftp() as ftp:
        for path, data in (("/down.txt", DOWNLOAD_TEXT), ("/down-curl.txt", CURL_DOWNLOAD_TEXT)):
            with open_data(ftp, f"STOR {path}", "active") as conn:
                conn.sendall(data)
            ftp.voidresp()
    return "/down.txt"


# ---------------------------------------------------------------- clients

def ftplib_put(ftp: ftplib.FTP, path: str, data: bytes, mode: str, type_: str = "A") -> str:
    ftp.voidcmd(f"TYPE {type_}")
    with open_data(ftp, f"STOR {path}", mode) as conn:
        conn.sendall(data)
    return ftp.voidresp()


def ftplib_get(ftp: ftplib.FTP, path: str, mode: str, type_: str = "A") -> bytes:
    ftp.voidcmd(f"TYPE {type_}")
    parts = []
    with open_data(ftp, f"RETR {path}", mode) as conn:
        while chunk := conn.recv(MIB):  # ends at EOF; the 30 s socket timeout bounds a stall
            parts.append(chunk)
    ftp.voidresp()
    return b"".join(parts)


CURL_MODE = {
    "active": ["-P", "-"],
    "pret": ["--ftp-pret", "--no-ftp-skip-pasv-ip"],
    "relay": [],
}


def _curl() -> str:
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not installed")
    return curl


def curl_put(url: str, source: Path, mode: str, ascii: bool = True) -> None:
    args = [_curl(), "-sS", "--fail", "--max-time", "60", *CURL_MODE[mode],
            *(["-B"] if ascii else []), "-T", str(source), url]
    subprocess.run(args, check=True, timeout=90)


def curl_get(url: str, sink: Path, mode: str, ascii: bool = True) -> bytes:
    args = [_curl(), "-sS", "--fail", "--max-time", "60", *CURL_MODE[mode],
            *(["-B"] if ascii else []), "-o", str(sink), url]
    subprocess.run(args, check=True, timeout=90)
    return sink.read_bytes()


def curl_get_wire(url: str, sink: Path, mode: str) -> tuple[bytes, bytes]:
    """A TYPE A download with curl -B: (what curl wrote, the bytes it received). curl turns
    CRLF and a lone CR into LF itself, so its output alone cannot show what was sent; its
    --trace hex dump of the data connection can."""
    trace = sink.with_suffix(".trace")
    args = [_curl(), "-sS", "--fail", "--max-time", "60", *CURL_MODE[mode], "-B",
            "--trace", str(trace), "-o", str(sink), url]
    subprocess.run(args, check=True, timeout=90)
    wire, in_data = bytearray(), False
    for line in trace.read_text(errors="replace").splitlines():
        if line.startswith(("<=", "=>", "==")):
            in_data = line.startswith("<= Recv data")
        elif in_data and (match := re.match(r"[0-9a-f]{4,}: ", line)):
            wire += bytes.fromhex(line[match.end():match.end() + 48])
    return sink.read_bytes(), bytes(wire)


def stored_on_cluster(cluster, path: str) -> bytes:
    holders = cluster.holders(path)
    assert len(holders) == 1, holders
    return (cluster.slave_root(holders[0]) / path.lstrip("/")).read_bytes()


def reported(cluster, path: str) -> tuple[int, str]:
    """SIZE and XCRC (from the master's record of the slave's TransferDone), in TYPE I."""
    with cluster.ftp() as ftp:
        return ftp.size(path), ftp.sendcmd(f"XCRC {path}")


# ---------------------------------------------------------------- uploads

@pytest.fixture(scope="module")
def plain_ftplib_stored(plain: PlainServer) -> bytes:
    with plain.ftp() as ftp:
        ftplib_put(ftp, "/up-ftplib.txt", UPLOAD_TEXT, "relay")
    return (plain.root / "up-ftplib.txt").read_bytes()


@pytest.fixture(scope="module")
def plain_curl_stored(plain: PlainServer, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    source = tmp_path_factory.mktemp("curl-src") / "up.txt"
    source.write_bytes(UPLOAD_TEXT)
    curl_put(f"{plain.url}/up-curl.txt", source, "relay")
    return (plain.root / "up-curl.txt").read_bytes()


@pytest.mark.parametrize("mode", MODES)
def test_ftplib_type_a_upload_is_stored_as_pyftpdlib_stores_it(cluster, plain_ftplib_stored, mode):
    assert plain_ftplib_stored != UPLOAD_TEXT  # the reference did convert
    path = f"/up-ftplib-{mode}.txt"
    with cluster.ftp() as ftp:
        assert ftplib_put(ftp, path, UPLOAD_TEXT, mode).startswith("226")
    assert stored_on_cluster(cluster, path) == plain_ftplib_stored
    size, crc = reported(cluster, path)
    assert size == len(plain_ftplib_stored)
    assert crc == f"250 {zlib.crc32(plain_ftplib_stored):08X}"


@pytest.mark.parametrize("mode", MODES)
def test_curl_type_a_upload_is_stored_as_pyftpdlib_stores_it(cluster, plain_curl_stored, mode, tmp_path):
    source = tmp_path / "up.txt"
    source.write_bytes(UPLOAD_TEXT)
    path = f"/up-curl-{mode}.txt"
    curl_put(f"{cluster.url}{path}", source, mode)
    assert stored_on_cluster(cluster, path) == plain_curl_stored
    size, crc = reported(cluster, path)
    assert (size, crc) == (len(plain_curl_stored), f"250 {zlib.crc32(plain_curl_stored):08X}")


# ---------------------------------------------------------------- downloads

@pytest.fixture(scope="module")
def plain_ftplib_sent(plain: PlainServer) -> bytes:
    with plain.ftp() as ftp:
        return ftplib_get(ftp, "/down.txt", "relay")


@pytest.fixture(scope="module")
def plain_curl_received(plain: PlainServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return curl_get_wire(f"{plain.url}/down-curl.txt", tmp_path_factory.mktemp("curl-out") / "down.txt",
                         "relay")


@pytest.mark.parametrize("mode", MODES)
def test_ftplib_type_a_download_is_sent_as_pyftpdlib_sends_it(cluster, stored_download,
                                                              plain_ftplib_sent, mode):
    assert plain_ftplib_sent != DOWNLOAD_TEXT  # the reference did convert
    with cluster.ftp() as ftp:
        assert ftplib_get(ftp, stored_download, mode) == plain_ftplib_sent


@pytest.mark.parametrize("mode", MODES)
def test_curl_type_a_download_matches_pyftpdlib(cluster, stored_download, plain_curl_received,
                                                mode, tmp_path):
    """curl's trace is a hex dump: a smaller file than the others (its 64 KiB boundaries only)."""
    written, wire = curl_get_wire(f"{cluster.url}/down-curl.txt", tmp_path / "down.txt", mode)
    plain_written, plain_wire = plain_curl_received
    assert plain_wire != CURL_DOWNLOAD_TEXT  # the reference did convert
    assert wire == plain_wire
    assert written == plain_written


# ---------------------------------------------------------------- TYPE I unchanged

@pytest.mark.parametrize("mode", MODES)
def test_type_i_moves_the_bytes_unchanged(cluster, mode, tmp_path):
    path = f"/binary-{mode}.bin"
    with cluster.ftp() as ftp:
        assert ftplib_put(ftp, path, UPLOAD_TEXT, mode, type_="I").startswith("226")
        assert stored_on_cluster(cluster, path) == UPLOAD_TEXT
        assert ftplib_get(ftp, path, mode, type_="I") == UPLOAD_TEXT
    assert curl_get(f"{cluster.url}{path}", tmp_path / "b.bin", mode, ascii=False) == UPLOAD_TEXT
    source = tmp_path / "src.bin"
    source.write_bytes(UPLOAD_TEXT)
    curl_put(f"{cluster.url}/curl-{path[1:]}", source, mode, ascii=False)
    assert stored_on_cluster(cluster, f"/curl-{path[1:]}") == UPLOAD_TEXT


# ---------------------------------------------------------------- SIZE / REST / XCRC

def _reply(ftp: ftplib.FTP, cmd: str) -> str:
    try:
        return ftp.sendcmd(cmd)
    except ftplib.error_perm as exc:
        return str(exc)


def test_size_rest_xcrc_refused_in_type_a_like_pyftpdlib(cluster, plain, stored_download):
    with cluster.ftp() as ftp, plain.ftp() as ref:
        ftp.voidcmd("TYPE A")
        ref.voidcmd("TYPE A")
        for cmd, code in ((f"SIZE {stored_download}", "550"), ("REST 10", "501")):
            assert _reply(ftp, cmd)[:3] == _reply(ref, cmd)[:3] == code, cmd
        with pytest.raises(ftplib.error_perm, match="^550 .*ASCII"):
            ftp.sendcmd(f"XCRC {stored_download}")
        ftp.voidcmd("TYPE I")
        assert ftp.size(stored_download) == len(DOWNLOAD_TEXT)
        assert ftp.sendcmd(f"XCRC {stored_download}") == f"250 {zlib.crc32(DOWNLOAD_TEXT):08X}"


# ---------------------------------------------------------------- APPE and STOU

def _appe_and_stou(ftp: ftplib.FTP, mode: str, stem: str) -> None:
    """TYPE A: STOR part one (ending with CR), APPE part two (starting with LF), STOU both."""
    one, two = b"first\r\nsecond\r", b"\nthird\r\n\rfourth\n"
    ftplib_put(ftp, f"/{stem}.txt", one, mode)
    ftp.voidcmd("TYPE A")
    with open_data(ftp, f"APPE /{stem}.txt", mode) as conn:
        conn.sendall(two)
    ftp.voidresp()
    with open_data(ftp, "STOU", mode) as conn:
        conn.sendall(one + two)
    reply = ftp.voidresp()
    assert reply.startswith("226"), reply


@pytest.mark.parametrize("mode", ["active", "pret"])
def test_type_a_appe_and_stou_store_as_pyftpdlib(cluster, plain, mode):
    with plain.ftp() as ref:
        before = set(plain.root.iterdir())
        _appe_and_stou(ref, "relay", f"appe-{mode}")
        stou_ref = [p for p in plain.root.iterdir() if p not in before and p.name != f"appe-{mode}.txt"]
    with cluster.ftp() as ftp:
        _appe_and_stou(ftp, mode, f"appe-{mode}")
        names = ftp.nlst("/")
    assert stored_on_cluster(cluster, f"/appe-{mode}.txt") == (plain.root / f"appe-{mode}.txt").read_bytes()
    assert len(stou_ref) == 1
    ours = [n for n in names if n.startswith("ftpd.")]
    assert ours, names
    expected = stou_ref[0].read_bytes()
    assert any(stored_on_cluster(cluster, f"/{n.lstrip('/')}") == expected for n in ours)
