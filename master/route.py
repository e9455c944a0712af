"""A session's data route: where its next data connection comes from (pure data).

One field of the session (`route`) holds exactly one DataRoute; master.passive makes every
change to it. The master's own PASV listener, while no connection has come to it, is
pyftpdlib's `_dtp_acceptor` (pyftpdlib owns that object). A RETR/STOR/APPE/STOU takes the
route as a Route.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

from master.slaves import LentPort

if TYPE_CHECKING:
    from master.relay import Relay


@dataclass(slots=True)
class SlaveListener:
    """A listener on a slave for this session's next transfer (PRET, then PASV/EPSV)."""

    slave: str
    xfer_id: int
    extmode: bool
    port: int = 0
    lent: LentPort | None = None
    """A pooled listener lent by the registry: no Listen was sent, the 227 went out at once."""


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No PORT/EPRT stored, no listener of ours lent or waited for."""


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """PORT/EPRT: the slave (or, for a listing, the master) connects to the client here."""
    addr: tuple[str, int]


@dataclass(frozen=True, slots=True)
class AwaitingSlave:
    """PASV/EPSV after PRET: Listen sent to the slave, the 227/229 is owed."""
    listener: SlaveListener


@dataclass(frozen=True, slots=True)
class OnSlave:
    """PASV/EPSV after PRET answered with the slave's address: the client connects there."""
    listener: SlaveListener


@dataclass(frozen=True, slots=True)
class MasterAccepted:
    """The client connected to the master's own PASV listener before saying what for."""
    sock: socket.socket


@dataclass(frozen=True, slots=True)
class RelayWaiting:
    """A relayed transfer waits for the client's connection to the master's listener."""
    relay: Relay


DataRoute = Union[NoRoute, ClientAddress, AwaitingSlave, OnSlave, MasterAccepted, RelayWaiting]
NO_ROUTE = NoRoute()


@dataclass(slots=True)
class Route:
    """A data route taken by RETR/STOR/APPE/STOU (take_route)."""

    kind: Literal["port", "slave", "relay"]
    addr: tuple[str, int] | None = None
    """PORT/EPRT: the client's address, for the slave to connect to."""
    slave: str | None = None
    """PRET+PASV: the slave listening for the client."""
    xfer_id: int | None = None
    lent: LentPort | None = None
    """PRET+PASV on a pooled listener of the slave (else one opened by Listen)."""
    sock: socket.socket | None = None
    """Relay: the client's connection, if it came before the command."""
