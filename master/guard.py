"""**pure** What the master refuses from a client before any command runs: the bytes a
command line may carry, and the addresses whose logins failed too often.

Command lines (pyftpdlib splits them at CRLF only, so a bare CR or LF or a NUL can sit inside
one; `decode` keeps invalid UTF-8 visible as lone surrogates instead of pyftpdlib's U+FFFD):

- CR, LF or NUL anywhere in a line: 501, for every command (a line break in a reply would let
  the client read a forged reply; RFC 959 4.2 501, syntax error in parameters);
- a command word that is not printable ASCII: 500, without echoing it;
- a control character (C0 0x00-0x1F, DEL 0x7F, C1 U+0080-U+009F) or invalid UTF-8 in the
  argument of a command that carries a name (PATH_COMMANDS): 553 (RFC 959 "file name not
  allowed"), for lookups as for creations, since no stored name can hold one; in any other
  command's argument (USER, PASS, OPTS, ...): 501.

No reply echoes the refused bytes. Failed logins: `FailedLogins`, a bounded table given the time.
"""

from __future__ import annotations

import collections
import ipaddress
import re

from master import replies
from master.vpath import CONTROL_CHARACTERS

TELNET_PREFIXED = ("ABOR", "STAT", "QUIT")
"""Commands some clients prefix with Telnet IP/Synch bytes (pyftpdlib matches their last 4
characters): the prefix is dropped before the line is checked."""

PATH_COMMANDS = frozenset({
    "APPE", "CDUP", "CWD", "DELE", "LIST", "MDTM", "MFMT", "MKD", "MLSD", "MLST", "NLST",
    "RETR", "RMD", "RNFR", "RNTO", "SITE CHMOD", "SIZE", "STAT", "STOR", "STOU", "XCUP",
    "XCWD", "XMKD", "XRMD",
    # the master's own commands with a path
    "PRET", "XCRC", "SITE SLAVESELECT",
})
"""Commands whose argument names a file or directory: a bad byte there is 553."""

_LINE_BREAKS = re.compile("[\r\n\x00]")
_BAD_IN_NAME = re.compile(f"[{CONTROL_CHARACTERS}\ud800-\udfff]")
_COMMAND_WORD = re.compile("[\x21-\x7e]*")


def decode(raw: bytes) -> str:
    """A command line as text: UTF-8, with invalid bytes kept as lone surrogates (so the
    check below sees them, and two different invalid names never become one)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def without_telnet_prefix(line: str, cmd: str) -> tuple[str, str]:
    """(line, cmd) with the bytes before a Telnet-prefixed ABOR/STAT/QUIT dropped."""
    if len(cmd) > 4 and cmd[-4:] in TELNET_PREFIXED and not _COMMAND_WORD.fullmatch(cmd):
        cut = len(cmd) - 4
        return line[cut:], cmd[cut:]
    return line, cmd


def refusal(cmd: str, arg: str) -> str:
    """The reply refusing command `cmd` (pyftpdlib's upper-cased first word) with argument
    `arg`, or "" to go ahead."""
    if _LINE_BREAKS.search(cmd) or _LINE_BREAKS.search(arg):
        return replies.LINE_BREAK_IN_COMMAND
    if not _COMMAND_WORD.fullmatch(cmd):
        return replies.COMMAND_NOT_UNDERSTOOD
    if not _BAD_IN_NAME.search(arg):
        return ""
    key = f"SITE {arg.split(' ')[0].upper()}" if cmd == "SITE" else cmd
    return replies.BAD_BYTES_IN_NAME if key in PATH_COMMANDS else replies.BAD_BYTES_IN_ARGUMENT


def shown(text: str) -> str:
    """`text` safe for a log line or a reply: control characters and invalid UTF-8 escaped."""
    return _BAD_IN_NAME.sub(lambda m: ascii(m.group())[1:-1], text)


def one_line(reply: str) -> str:
    """A reply line as sent: whatever its text came from (a slave's error, a name stored
    before these checks), a CR, LF or other control character in it is escaped, so the
    client never reads a second, forged reply line."""
    return shown(reply) if _BAD_IN_NAME.search(reply) else reply


# ---------------------------------------------------------------- failed logins

def source_key(ip: str) -> str:
    """Whose failures count together: an IPv4 address, or an IPv6 address's /64 (one host
    usually holds a whole /64); an IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedLogins:
    """Failed logins per source across connections: `limit` failures within `window`
    seconds ban the source for `ban` seconds. Given the time, never reading the clock.

    Bounded: at most `capacity` sources with failures and `capacity` bans are kept; past
    that the oldest go first (a flood of addresses evicts the flood's own entries).
    `limit` 0 switches it off.
    """

    def __init__(self, limit: int, window: float, ban: float, capacity: int = 4096) -> None:
        self.limit = limit
        self.window = window
        self.ban = ban
        self.capacity = capacity
        self._failures: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        """Failure times within the window, least recently failed source first."""
        self._bans: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Ban end per source, in the order the bans began (so also the order they end)."""

    def banned(self, source: str, now: float) -> bool:
        """Whether logins from `source` are refused at `now`."""
        self._prune(now)
        return source in self._bans

    def failed(self, source: str, now: float) -> bool:
        """Count one failed login; True when it begins a ban (log that once)."""
        if self.limit <= 0:
            return False
        self._prune(now)
        if source in self._bans:
            return False
        times = self._failures.pop(source, None)
        if times is None:
            times = collections.deque(maxlen=self.limit)
        times.append(now)
        if len(times) >= self.limit and now - times[0] <= self.window:
            self._bans[source] = now + self.ban
            while len(self._bans) > self.capacity:
                self._bans.popitem(last=False)
            return True
        self._failures[source] = times
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)
        return False

    def sizes(self) -> tuple[int, int]:
        """(sources with failures, bans) held now."""
        return len(self._failures), len(self._bans)

    def _prune(self, now: float) -> None:
        while self._bans:
            source, until = next(iter(self._bans.items()))
            if until > now:
                break
            del self._bans[source]
        while self._failures:
            source, times = next(iter(self._failures.items()))
            if times[-1] > now - self.window:
                break
            del self._failures[source]
