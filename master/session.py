"""What the command modules (master.passive, master.transfers, master.site) use of an FTP
session. master.handler's ClusterFTPHandler provides it on top of pyftpdlib's FTPHandler;
typing against this Protocol instead of the handler class keeps the imports one-way
(handler -> passive/transfers/site, never back) and shows how much of pyftpdlib's session
those modules touch.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from master.cluster import Cluster
    from master.ftpfs import FtpFilesystem
    from master.route import DataRoute
    from master.users import ClusterAuthorizer


class Session(Protocol):
    cluster: Cluster
    route: DataRoute
    pret: tuple[str, str] | None
    """PRET's command and path, for the next PASV/EPSV."""
    allo_size: int
    pending_checksum: object | None
    # pyftpdlib's own (untyped) session state
    username: Any
    fs: FtpFilesystem
    authorizer: ClusterAuthorizer
    data_channel: Any
    remote_ip: Any
    socket: socket.socket
    server: Any
    connected: bool
    permit_foreign_addresses: bool
    permit_privileged_ports: bool
    _closed: bool
    _restart_position: Any
    _dtp_acceptor: Any
    _dtp_connector: Any
    _in_dtp_queue: Any
    _out_dtp_queue: Any
    dtp_handler: Any

    # replies and the deferred-reply queue
    def respond(self, resp: str, logfun: Any = ...) -> None: ...
    def respond_w_warning(self, resp: str) -> None: ...
    def push(self, data: str) -> None: ...
    def begin_deferred(self) -> None: ...
    def end_deferred(self) -> None: ...
    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None: ...
    def log_transfer(self, cmd: str, filename: str, receive: bool, completed: bool,
                     elapsed: float, bytes: int) -> None: ...
    def on_file_sent(self, file: str) -> None: ...
    def on_file_received(self, file: str) -> None: ...

    # the transfer in progress and the TYPE/REST it was given
    def attach_transfer(self, proxy: Any) -> None: ...
    def detach_transfer(self) -> None: ...
    def current_transfer(self) -> object | None: ...
    def current_type(self) -> str: ...
    def data_tls_context(self, upload: bool) -> Any: ...
    def take_restart_position(self) -> int: ...

    # pyftpdlib's data-channel plumbing
    def _on_dtp_connection(self) -> None: ...
    def _shutdown_connecting_dtp(self) -> None: ...
