"""Every message on the wire, as frozen msgspec Structs in one tagged union per direction.

Links: slave <-> broker (DEALER/ROUTER), master <-> broker (DEALER/ROUTER), and the
stats feed (slave PUB -> broker XSUB/XPUB -> SUB). Paths on the wire are virtual,
absolute and already normalised by the master ("/dir/file"); a slave maps them under
its root. New fields get defaults and go last; field types never change.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

PROTOCOL_VERSION = 2
"""Raised when a message's meaning changes, not only its fields: the broker refuses peers of
another version with a reason. 2: DoneAck.more (a slave of version 1 would ignore the batched
acknowledgements and re-send those outcomes for ever), pooled passive ports, lazy_started."""


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=True):
    """Base of every wire message; the tag is the class name."""


# ---------------------------------------------------------------- shared

class Heartbeat(Message, frozen=True):
    """Sent by either side of a link when it has sent nothing else for a while."""


class Disconnect(Message, frozen=True):
    """The receiver is not (or no longer) registered: it must say hello again."""

    reason: str = ""


class Bye(Message, frozen=True):
    """The sender is going away on purpose."""

    reason: str = ""


class Welcome(Message, frozen=True):
    """Broker -> slave or master: registration accepted, with the heartbeat contract."""

    heartbeat_ms: int
    liveness: int


# ---------------------------------------------------------------- master -> slave commands

class Listen(Message, frozen=True):
    """Open a passive data listener for transfer `xfer_id`, accepting only `allowed_ip`."""

    req_id: int
    xfer_id: int
    allowed_ip: str


class StartSend(Message, frozen=True):
    """Send file `path` from `offset` over the data connection (RETR).

    `connect_to` set: active mode, the slave connects to that address.
    `pool_port` set: accept the connection from `allowed_ip` on that pooled listener.
    Neither: use the listener opened by Listen for the same xfer_id.
    """

    req_id: int
    xfer_id: int
    path: str
    offset: int = 0
    connect_to: tuple[str, int] | None = None
    pool_port: int = 0
    allowed_ip: str = ""
    lazy_started: bool = False
    """The master does not wait for Started: the slave may hold it back briefly and leave
    it out when the transfer ends first (its TransferDone then answers the start too)."""
    ascii: bool = False
    """The session is in TYPE A: the slave sends every LF not preceded by CR as CRLF
    (slave/ascii.py). False (TYPE I, and a master that predates the field): bytes as stored."""
    tls: bool = False
    """PROT P: the slave is the TLS server on the data connection (RFC 4217), with its own
    certificate (slave.tls_certfile), in passive and active mode; refused without one."""


class StartReceive(Message, frozen=True):
    """Receive file `path` over the data connection (STOR / APPE / REST+STOR).

    offset > 0 truncates the file to `offset` and writes from there; append writes at
    the end. The CRC32 reported at the end covers the whole file.
    """

    req_id: int
    xfer_id: int
    path: str
    offset: int = 0
    append: bool = False
    connect_to: tuple[str, int] | None = None
    pool_port: int = 0
    """As in StartSend (so are allowed_ip and lazy_started)."""
    allowed_ip: str = ""
    lazy_started: bool = False
    ascii: bool = False
    """TYPE A: the slave stores every CRLF as LF (a CR ending the upload is dropped, as in
    pyftpdlib); TransferDone's size and crc32 are those of the stored bytes."""
    tls: bool = False
    """As in StartSend."""


class ClearPort(Message, frozen=True):
    """Close every connection waiting on pooled listener `port`: the master gave up the PASV
    route it had lent the port to, and lends the port again only after the OpResult."""

    req_id: int
    port: int


class Abort(Message, frozen=True):
    """Stop transfer `xfer_id` (or close its listener); a TransferDone follows if it had started."""

    req_id: int
    xfer_id: int


class DoneAck(Message, frozen=True, kw_only=True):
    """Master has recorded TransferDone `xfer_id` (and those in `more`: acks are batched);
    the slave may forget them."""

    req_id: int = 0
    xfer_id: int
    more: list[int] = []


class Delete(Message, frozen=True):
    """Delete a file or a whole directory tree; a missing path is success."""

    req_id: int
    path: str


class Rename(Message, frozen=True):
    """Rename a file or directory tree, creating the destination's parents; missing src is success.

    `replace` False: an existing destination is an error (EEXIST) instead of being replaced
    (the rename of a merge conflict's copy never destroys a file).
    """

    req_id: int
    src: str
    dst: str
    replace: bool = True


class MakeDir(Message, frozen=True):
    req_id: int
    path: str


class RemoveDir(Message, frozen=True):
    """Remove an empty directory; a missing one is success."""

    req_id: int
    path: str


class Checksum(Message, frozen=True):
    """CRC32 of a file's bytes [start, end) (end None = to the end)."""

    req_id: int
    path: str
    start: int = 0
    end: int | None = None


class InventoryRequest(Message, frozen=True):
    """Next page of scan `scan` (a new scan id starts a fresh walk).

    `mode`: "walk" lists every directory and file under the root (pre-order);
    "summary" reports one DirSummary per directory, the root "/" included (pre-order);
    "dirs" lists the direct entries of each directory in `dirs`, in that order (a missing
    one lists nothing). `dirs` is read when the scan starts.
    """

    req_id: int
    scan: int
    limit: int = 1000
    mode: str = "walk"
    dirs: list[str] = []


SlaveCommand = Union[
    Listen, StartSend, StartReceive, ClearPort, Abort, DoneAck, Delete, Rename, MakeDir, RemoveDir,
    Checksum, InventoryRequest,
]


# ---------------------------------------------------------------- slave -> master replies

class OpResult(Message, frozen=True):
    """Generic reply to a command: ok, or the error (errno when it came from the OS)."""

    req_id: int
    ok: bool
    error: str = ""
    errno: int = 0


class Listening(Message, frozen=True):
    req_id: int
    xfer_id: int
    port: int


class Started(Message, frozen=True):
    """The file is open and the data connection is being set up (master may answer 150)."""

    req_id: int
    xfer_id: int


class TransferDone(Message, frozen=True):
    """Outcome of a transfer; re-sent by the slave until the master answers DoneAck."""

    xfer_id: int
    ok: bool
    bytes: int
    size: int
    crc32: int | None = None
    mtime_ms: int = 0
    aborted: bool = False
    error: str = ""
    errno: int = 0
    kept_old: bool = False
    """A failed overwrite: the previous file was left intact (size/mtime are its own);
    nothing of this upload was kept, so the master records nothing."""


class TransferProgress(Message, frozen=True):
    """Bytes moved so far by running transfer `xfer_id` (about once a second; a hint for
    STAT and SITE WHO, never acknowledged)."""

    xfer_id: int
    bytes: int


class InventoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    is_dir: bool
    size: int
    mtime_ms: int


class DirSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One directory of a slave: `digest` covers its direct entries (name, type, size and
    mtime_ns of files; name of subdirectories), so it changes when any of them changes."""

    path: str
    digest: int
    files: int = 0
    dirs: int = 0


class InventoryPage(Message, frozen=True):
    req_id: int
    scan: int
    entries: list[InventoryEntry]
    last: bool
    summaries: list[DirSummary] = []


class ChecksumResult(Message, frozen=True):
    req_id: int
    crc32: int
    size: int


SlaveReply = Union[OpResult, Listening, Started, TransferDone, InventoryPage, ChecksumResult,
                   TransferProgress]


# ---------------------------------------------------------------- slave <-> broker

class Hello(Message, frozen=True, kw_only=True):
    """Slave registration. A newer incarnation (one per process start) replaces the old one."""

    name: str
    incarnation: str
    proto: int = PROTOCOL_VERSION
    version: str = ""
    data_host: str
    max_transfers: int
    disk_total: int = 0
    disk_free: int = 0
    started_ns: int = 0
    """time.time_ns() at process start: of two incarnations of one name, the one with the
    greater (started_ns, incarnation) is registered and the other is told "superseded"."""
    passive_pool: list[int] = []
    """Ports of the pooled passive listeners this incarnation keeps open (see ClearPort)."""


SlaveToBroker = Union[Hello, Heartbeat, Bye, OpResult, Listening, Started, TransferDone,
                      InventoryPage, ChecksumResult, TransferProgress]
BrokerToSlave = Union[Welcome, Heartbeat, Disconnect, Listen, StartSend, StartReceive, ClearPort,
                      Abort, DoneAck, Delete, Rename, MakeDir, RemoveDir, Checksum, InventoryRequest]


# ---------------------------------------------------------------- master <-> broker

class MasterHello(Message, frozen=True):
    incarnation: str
    proto: int = PROTOCOL_VERSION


class ToSlave(Message, frozen=True):
    """Master -> broker: deliver `cmd` to slave `slave`."""

    slave: str
    cmd: SlaveCommand


class SlaveUp(Message, frozen=True):
    name: str
    incarnation: str
    data_host: str
    max_transfers: int
    disk_total: int = 0
    disk_free: int = 0
    passive_pool: list[int] = []


class SlaveDown(Message, frozen=True):
    name: str
    incarnation: str
    reason: str


class FromSlave(Message, frozen=True):
    """Broker -> master: a reply or event from slave `slave`."""

    slave: str
    incarnation: str
    msg: SlaveReply


class Undeliverable(Message, frozen=True):
    """Broker -> master: a ToSlave could not be delivered (slave offline or overloaded)."""

    slave: str
    req_id: int
    reason: str


MasterToBroker = Union[MasterHello, Heartbeat, Bye, ToSlave]
BrokerToMaster = Union[Welcome, Heartbeat, Disconnect, SlaveUp, SlaveDown, FromSlave,
                       Undeliverable]


# ---------------------------------------------------------------- stats feed

class SlaveStats(Message, frozen=True):
    """Whole snapshot published every stats interval on topic b"stats." + name.

    Rates are bytes per second over the interval since the previous snapshot. `net_tx_bps` /
    `net_rx_bps` count only this slave's own data connections (sent to / received from
    clients, the master's relay connections included), so they add up across slaves sharing
    a machine. `host_net_*` are the machine's NIC counters, the same for every slave on it
    (never to be summed): None from a slave that does not report them (older versions, whose
    net_* were these host counters)."""

    name: str
    incarnation: str
    seq: int
    ts_ms: int
    disk_free: int
    disk_total: int
    load1: float
    ncpu: int
    net_tx_bps: float
    net_rx_bps: float
    active_up: int
    active_down: int
    host: str = ""
    """The slave's machine (its host name): slaves with one host share its host_net_*."""
    host_net_tx_bps: float | None = None
    host_net_rx_bps: float | None = None


StatsMessage = SlaveStats

Direction = Literal["slave_to_broker", "broker_to_slave", "master_to_broker", "broker_to_master",
                    "stats"]
