"""Data routes: PRET, PASV/EPSV (on a slave or on the master), lazy PORT/EPRT, and the
master's own data connections for LIST/NLST/MLSD.

Owns the session's pending data route (a stored PORT address, a listener opened on a
slave after PRET, or the master's own PassiveDTP and the client connection it accepted)
and hands it to the transfer that consumes it. A PASV/EPSV after PRET RETR/STOR gets its
227/229 only when the slave answers Listening; the handler queues pipelined commands
meanwhile. Never moves file bytes itself.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import TYPE_CHECKING, Any, assert_never

from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP, PassiveDTP

from common import messages as m
from master import choice, replies
from master.addresses import client_ip
from master.answers import SlaveAnswer, why
from master.route import (
    NO_ROUTE,
    AwaitingSlave,
    ClientAddress,
    DataRoute,
    MasterAccepted,
    NoRoute,
    OnSlave,
    RelayWaiting,
    Route,
    SlaveListener,
)
from master.slaves import LentPort

if TYPE_CHECKING:
    from master.cluster import Cluster
    from master.relay import Relay
    from master.session import Session

log = logging.getLogger(__name__)

TRANSFER_CMDS = frozenset({"RETR", "STOR", "APPE", "STOU"})
LISTING_CMDS = frozenset({"LIST", "NLST", "MLSD"})


# ---------------------------------------------------------------- pure helpers

def parse_pret(arg: str) -> tuple[str, str] | str:
    """PRET's argument -> (command, its argument), or the error reply."""
    parts = arg.strip().split(" ", 1)
    cmd = parts[0].upper()
    if not cmd:
        return "501 Syntax error: PRET needs a command."
    if cmd not in TRANSFER_CMDS | LISTING_CMDS:
        return f"504 PRET not supported for {cmd}."
    return cmd, parts[1] if len(parts) > 1 else ""


def pasv_reply(host: str, port: int, extmode: bool) -> str:
    if extmode:
        return f"229 Entering extended passive mode (|||{port}|)."
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"227 Entering passive mode ({host.replace('.', ',')},{port // 256},{port % 256})."


def foreign_port_refusal(remote_ip: str, ip: str, port: int, permit_foreign: bool,
                         permit_privileged: bool) -> str:
    """pyftpdlib's PORT/EPRT checks (RFC 2577 bounce protection), or "" when allowed."""
    if remote_ip.startswith("::ffff:"):
        remote_ip = remote_ip[7:]
    if not permit_foreign and ip != remote_ip:
        return f"501 Rejected data connection to foreign address {ip}:{port}."
    if not permit_privileged and port < 1024:
        return f'501 PORT against the privileged port "{port}" refused.'
    return ""


# ---------------------------------------------------------------- master-side data connections

class LazyActiveDTP(ActiveDTP):
    """ActiveDTP created only once a listing is queued: no "200" on connect, and no
    handle_write() after handle_connect(), which would re-arm the fd the DTPHandler now owns."""

    def handle_connect(self) -> None:
        self.del_channel()
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()
        h = self.cmd_channel
        if not h.connected:
            self.close()
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err)
        h._dtp_connector = None
        handler = h.dtp_handler(self.socket, h)
        h.data_channel = handler
        h._on_dtp_connection()

    def handle_write(self) -> None:
        pass


class ParkingPassiveDTP(PassiveDTP):
    """The master's own passive listener. An accepted connection is handed to a waiting
    listing or relay, or parked until the next command says what it is for."""

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        h = self.cmd_channel
        if not h.connected:
            sock.close()
            self.close()
            return
        if h.remote_ip != addr[0] and not h.permit_foreign_addresses:
            sock.close()
            h.respond_w_warning(replies.foreign_data_connection(addr[0], addr[1]))
            return  # keep listening: the client may still connect from the right address
        self.close()
        if h._dtp_acceptor is self:
            h._dtp_acceptor = None
        route = h.route
        if isinstance(route, RelayWaiting):
            h.route = NO_ROUTE
            route.relay.set_client(sock)
        elif h._out_dtp_queue is not None or h._in_dtp_queue is not None:
            _attach_data_socket(h, sock)
        else:
            set_route(h, MasterAccepted(sock))

    def handle_timeout(self) -> None:
        h = self.cmd_channel
        route = h.route
        if isinstance(route, RelayWaiting):
            h.route = NO_ROUTE
            self.close()
            route.relay.client_failed("the client did not open the data connection")
            return
        super().handle_timeout()


def _attach_data_socket(h: Session, sock: socket.socket) -> None:
    handler = h.dtp_handler(sock, h)
    if handler.connected:
        h.data_channel = handler
        h._on_dtp_connection()


# ---------------------------------------------------------------- commands

def pret(h: Session, arg: str) -> None:
    parsed = parse_pret(arg)
    if isinstance(parsed, str):
        h.respond(parsed)
        return
    h.pret = parsed
    h.respond(f"200 OK, next: PASV or EPSV for {parsed[0]}.")


def make_epasv(h: Session, extmode: bool, stock: Any) -> None:
    """PASV/EPSV: on the slave chosen for a PRET'd transfer, else on the master (`stock`)."""
    clear_route(h)
    pret_cmd = h.pret
    h.pret = None
    if pret_cmd is None or pret_cmd[0] not in TRANSFER_CMDS:
        stock(extmode)
        return
    kind, arg = pret_cmd
    path = h.fs.ftp2fs(arg) if arg else h.fs.cwd
    if arg and not h.fs.validpath(path):
        h.respond(replies.INVALID_PATH)
        return
    slave, why = choice.plan(h.cluster, kind, path, h._restart_position, h.fs.lookup(path),
                             h.allo_size)
    if slave is None:
        h.respond(why)
        return
    info = h.cluster.registry.slaves.get(slave)
    data_host = info.data_host if info is not None else ""
    local_ip = h.socket.getsockname()[0]
    if extmode and data_host != local_ip:
        # EPSV (RFC 2428) carries no address: the client will connect to the master's.
        if h.cluster.config.passive_without_pret == "relay":
            stock(extmode)
        else:
            h.respond(replies.EPSV_CANNOT_REACH_SLAVE)
        return
    lent = h.cluster.registry.lend_port(slave)
    if lent is not None:
        # The slave keeps this listener open: no Listen round trip, the route (and the
        # client's address) reaches the slave with the transfer's start.
        set_route(h, OnSlave(SlaveListener(slave, h.cluster.link.new_xfer_id(), extmode,
                                           lent.port, lent)))
        h.respond(pasv_reply(data_host, lent.port, extmode))
        return
    listener = SlaveListener(slave, h.cluster.link.new_xfer_id(), extmode)
    set_route(h, AwaitingSlave(listener))
    h.begin_deferred()
    cmd = m.Listen(req_id=0, xfer_id=listener.xfer_id, allowed_ip=client_ip(str(h.remote_ip)))
    h.cluster.link.request(slave, cmd, functools.partial(_on_listening, h, listener))


def _on_listening(h: Session, listener: SlaveListener, reply: SlaveAnswer) -> None:
    route = h.route
    if h._closed or not (isinstance(route, AwaitingSlave) and route.listener is listener):
        if isinstance(reply, m.Listening):
            h.cluster.link.notify(listener.slave, m.Abort(req_id=0, xfer_id=listener.xfer_id))
        return
    h.route = NO_ROUTE
    if isinstance(reply, m.Listening):
        listener.port = reply.port
        h.route = OnSlave(listener)
        info = h.cluster.registry.slaves.get(listener.slave)
        host = info.data_host if info is not None else h.socket.getsockname()[0]
        h.respond(pasv_reply(host, reply.port, listener.extmode))
    else:
        reason = why(reply)
        h.respond(replies.slave_listen_failed(reason))
    h.end_deferred()


def cancel_pending_listen(h: Session) -> None:
    """ABOR while a PASV waits for its slave: PASV still gets its (negative) reply."""
    route = h.route
    if not isinstance(route, AwaitingSlave):
        return
    h.route = NO_ROUTE
    h.cluster.link.notify(route.listener.slave, m.Abort(req_id=0, xfer_id=route.listener.xfer_id))
    h.respond(replies.PASV_CANCELLED)
    h.end_deferred()


def make_eport(h: Session, ip: str, port: int) -> None:
    """PORT/EPRT: keep pyftpdlib's checks, but only store the address (RETR/STOR give it to
    the slave; a listing connects lazily)."""
    refusal = foreign_port_refusal(str(h.remote_ip), ip, port, h.permit_foreign_addresses,
                                   h.permit_privileged_ports)
    if refusal:
        h.respond_w_warning(refusal)
        return
    clear_route(h)
    h.route = ClientAddress((ip, port))
    h.respond("200 PORT command successful.")


def set_route(h: Session, route: DataRoute) -> None:
    """Replace the session's data route, letting go of what the old one held."""
    old, h.route = h.route, route
    if old is route:
        return
    match old:
        case OnSlave(listener=listener):
            if listener.lent is not None:
                give_back_port(h.cluster, listener.lent, clear=True)
            else:
                h.cluster.link.notify(listener.slave, m.Abort(req_id=0, xfer_id=listener.xfer_id))
        case AwaitingSlave(listener=listener):
            h.cluster.link.notify(listener.slave, m.Abort(req_id=0, xfer_id=listener.xfer_id))
        case MasterAccepted(sock=sock):
            _close(sock)
        case NoRoute() | ClientAddress() | RelayWaiting():
            pass
        case _:
            assert_never(old)


def drop_stored_route(h: Session) -> bool:
    """Forget a stored PORT address, slave listener or parked connection (ABOR); True if any.
    A PASV still waiting for its slave keeps waiting (cancel_pending_listen ends it)."""
    if isinstance(h.route, (ClientAddress, OnSlave, MasterAccepted)):
        set_route(h, NO_ROUTE)
        return True
    return False


def give_back_port(cluster: Cluster, lent: LentPort, clear: bool) -> None:
    """Return a lent pooled port to the registry. `clear`: the client may have connected to
    it without a transfer taking the connection (or the slave's side is unknown), so the
    slave closes what waits there first (ClearPort) and the port is lent again only once
    it has (master.link retries dirty ports)."""
    if clear:
        cluster.registry.soil_port(lent)
    else:
        cluster.registry.return_port(lent)  # may turn dirty after all (SlaveInfo.reclear)
    cluster.link.clear_pool_ports(lent.slave)


def clear_route(h: Session) -> None:
    """Forget every pending data route (a new PORT/PASV replaces the previous one)."""
    h._shutdown_connecting_dtp()
    if h.data_channel is not None:
        h.data_channel.close()
        h.data_channel = None
    if isinstance(h.route, RelayWaiting):
        h.route = NO_ROUTE
    drop_stored_route(h)


def take_route(h: Session) -> Route | str:
    """Consume the session's data route for RETR/STOR/APPE/STOU, or the reply if none."""
    route = h.route
    if h.data_channel is not None:  # one transfer at a time on a control connection
        return replies.TRANSFER_IN_PROGRESS
    match route:
        case OnSlave(listener=listener):
            h.route = NO_ROUTE
            return Route("slave", slave=listener.slave, xfer_id=listener.xfer_id, lent=listener.lent)
        case ClientAddress(addr=addr):
            h.route = NO_ROUTE
            return Route("port", addr=addr)
        case MasterAccepted(sock=sock):
            h.route = NO_ROUTE
            return Route("relay", sock=sock)
        case _ if h._dtp_acceptor is not None:
            return Route("relay")
    return replies.NO_DATA_ROUTE


def attach_relay(h: Session, route: Route, relay: Relay) -> None:
    """Give a relayed transfer the client's connection, now or once it comes."""
    if route.sock is not None:
        sock, route.sock = route.sock, None
        relay.set_client(sock)
    else:
        set_route(h, RelayWaiting(relay))


def release_route(h: Session, route: Route) -> None:
    """A route taken but not used (the command failed): let its listener or socket go."""
    if route.kind == "slave" and route.lent is not None:
        give_back_port(h.cluster, route.lent, clear=True)
    elif route.kind == "slave" and route.slave is not None and route.xfer_id is not None:
        h.cluster.link.notify(route.slave, m.Abort(req_id=0, xfer_id=route.xfer_id))
    elif route.kind == "relay":
        h._shutdown_connecting_dtp()
        if route.sock is not None:
            _close(route.sock)
            route.sock = None


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def listing(h: Session, stock: Any, path: str) -> Any:
    """LIST/NLST/MLSD over the master's own data connection."""
    if isinstance(h.route, OnSlave):
        clear_route(h)
        h.respond(replies.LISTING_NEEDS_MASTER_ROUTE)
        return None
    if not isinstance(h.route, (ClientAddress, MasterAccepted)) and h._dtp_acceptor is None \
            and h.data_channel is None:
        h.respond(replies.NO_DATA_ROUTE)
        return None
    result = stock(path)
    if h._out_dtp_queue is None:
        return result  # refused (550/501): keep the route for the next command
    route = h.route
    if isinstance(route, ClientAddress):
        h.route = NO_ROUTE
        if not h.server._accept_new_cons():
            h._out_dtp_queue = None
            h.respond(replies.TOO_MANY_CONNECTIONS)
            return None
        h._dtp_connector = LazyActiveDTP(*route.addr, h)
    elif isinstance(route, MasterAccepted):
        h.route = NO_ROUTE
        _attach_data_socket(h, route.sock)
    return result
