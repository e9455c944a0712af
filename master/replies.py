"""FTP replies about what a path names, and the metadata failure, defined once.

RFC 959 4.2 and RFC 3659 7.2.1: 501 is for a syntax error in the parameters only; a path
that names nothing, names the wrong type, or may not be used by this user is 550. The one
exception is RFC 3659's own: MLSD of a path that exists but is not a directory is 501.
"""

from __future__ import annotations

from master.vpath import Entry

NO_SUCH_FILE = "550 No such file or directory."
IS_A_DIRECTORY = "550 Is a directory, not a file."
NOT_A_DIRECTORY = "550 Not a directory."
MLSD_OF_A_FILE = "501 Not a directory: MLSD lists directories (use MLST for a file)."
NO_PERMISSION = "550 Not enough privileges."
INVALID_PATH = "501 Invalid path."
CANNOT_REMOVE_ROOT = "550 Can't remove root directory."
FILE_NAME_NOT_ALLOWED = "553 File name not allowed."
METADATA_FAILED = "451 Requested action aborted: local error: metadata store failed."


# ---------------------------------------------------------------- hostile input (master.guard)

LINE_BREAK_IN_COMMAND = "501 Syntax error in parameters: CR, LF or NUL not allowed in a command."
COMMAND_NOT_UNDERSTOOD = "500 Command not understood."
BAD_BYTES_IN_NAME = "553 File name not allowed: control characters or invalid UTF-8."
BAD_BYTES_IN_ARGUMENT = "501 Syntax error in parameters: control characters or invalid UTF-8."
LOGIN_BANNED = "530 Too many failed logins from your address; try again later."
LOGIN_TIMED_OUT = "421 Login timed out; closing control connection."


TYPE_A_REFUSALS = {
    # RFC 3659 4.2: a size not available in the current TYPE gets 550. Counting the bytes a
    # TYPE A transfer would send means reading the whole file on its slave.
    "SIZE": "550 SIZE not allowed in ASCII mode: the converted size is not known without "
            "reading the whole file; use TYPE I.",
    # RFC 3659 5: a REST marker counts the octets of the transfer in the current TYPE; in TYPE A
    # that offset has no fixed place in the stored file. 501 as in pyftpdlib (RFC 959 REST).
    "REST": "501 Resuming transfers not allowed in ASCII mode: an offset in the converted "
            "stream is no offset in the stored file; use TYPE I.",
    # XCRC (no RFC) covers the stored bytes, which differ from what TYPE A transfers: 550 as SIZE.
    "XCRC": "550 XCRC not allowed in ASCII mode: the CRC covers the stored bytes, not the "
            "converted ones; use TYPE I.",
}


def type_a_refusal(command: str, current_type: str) -> str:
    """The reply refusing SIZE, REST or XCRC in TYPE A (pyftpdlib's "a"), or "" to go ahead."""
    return TYPE_A_REFUSALS.get(command, "") if current_type == "a" else ""


def not_a_file(entry: Entry | None) -> str:
    """Why a command that needs a regular file (RETR, SIZE, XCRC) cannot use `entry`."""
    return NO_SUCH_FILE if entry is None else IS_A_DIRECTORY


def not_a_directory(entry: Entry | None, command: str) -> str:
    """Why a command that needs a directory (CWD, MLSD) cannot use `entry`."""
    if entry is None:
        return NO_SUCH_FILE
    return MLSD_OF_A_FILE if command == "MLSD" else NOT_A_DIRECTORY


# ---------------------------------------------------------------- data connections (RFC 959 425)

NO_DATA_ROUTE = "425 Use PORT/EPRT or PASV/EPSV first."
TRANSFER_IN_PROGRESS = "425 A data transfer is already in progress."
TOO_MANY_CONNECTIONS = "425 Too many connections. Can't open data channel."
PASV_CANCELLED = "425 Passive mode cancelled by ABOR."
LISTING_NEEDS_MASTER_ROUTE = ("425 The data connection was prepared on a storage slave; send "
                              "PASV/EPSV without PRET (or PRET LIST) for listings.")
EPSV_CANNOT_REACH_SLAVE = ("425 EPSV cannot reach the storage slave from here: use PASV after "
                           "PRET, or PORT/EPRT.")
ROUTE_SLAVE_OFFLINE = "425 Can't open data connection: its slave went offline."
ROUTE_SLAVE_RESTARTED = "425 Can't open data connection: its slave restarted; send PASV again."
ROUTE_SLAVE_LACKS_FILE = ("425 Can't open data connection: the PRET'd slave does not hold this "
                          "file; send PRET with this command and path first.")


def foreign_data_connection(ip: str, port: int) -> str:
    return f"425 Rejected data connection from foreign address {ip}:{port}."


def slave_listen_failed(reason: str) -> str:
    return f"425 Can't open passive connection on the storage slave: {reason}."


def route_rule_refusal(rule: str) -> str:
    """PRET placed the listener for another path, and the path rules exclude this one."""
    return (f"425 Can't open data connection: the PRET'd slave may not serve this path ({rule}); "
            "send PRET with this command and path first.")


def relay_refused(kind: str) -> str:
    """passive_without_pret = "refuse"."""
    return (f"425 Passive mode without PRET is not supported here: send PRET {kind} <path> "
            "before PASV/EPSV, or use PORT/EPRT.")


def too_many_relays(kind: str) -> str:
    return (f"425 Can't open data connection: too many relayed transfers; use PRET {kind} <path> "
            "before PASV/EPSV, or PORT/EPRT.")


# ---------------------------------------------------------------- slaves (RFC 959 450/452)

FILE_SLAVES_BUSY = "450 file unavailable: its slaves are too busy, try again later."
FILE_SLAVE_OFFLINE = "450 file unavailable: its slave is offline."
NO_SLAVE_ONLINE = "450 no storage slave is online, try again later."
NO_SLAVE_ROOM = "452 no storage slave has room for this upload right now."
APPE_AFTER_REST = "450 Can't APPE while REST request is pending."
STOU_AFTER_REST = "450 Can't STOU while REST request is pending."
NO_UNIQUE_NAME = "450 No usable unique file name found."


# ---------------------------------------------------------------- FTPS (RFC 4217, RFC 2228)

TLS_AUTH_OK = "234 AUTH TLS successful: negotiate TLS now."
TLS_ALREADY = "503 The control connection already uses TLS."
TLS_AUTH_OFF = "534 TLS is switched off on this server (master.tls_control = \"off\")."
PBSZ_BEFORE_AUTH = "503 PBSZ needs AUTH TLS first."
PBSZ_SYNTAX = "501 Syntax: PBSZ <SP> 0."
PBSZ_OK = "200 PBSZ=0"
PROT_BEFORE_AUTH = "503 PROT needs AUTH TLS first."
PROT_BEFORE_PBSZ = "503 PROT needs PBSZ first."
PROT_C_OK = "200 Protection level set to Clear."
PROT_P_OK = "200 Protection level set to Private: data connections use TLS."
TLS_PROT_P_OFF = "534 PROT P refused: TLS data connections are switched off for this user."
TLS_CONTROL_REQUIRED = "530 TLS required: send AUTH TLS before USER and PASS."
TLS_CONTROL_OFF = "530 This user logs in without TLS on the control connection."
TLS_DATA_REQUIRED = "521 Data connections must be encrypted here: send PROT P first."
TLS_DATA_OFF = "521 Data connections are not encrypted for this user: send PROT C first."


def _word(text: str) -> str:
    """A client's word, safe to echo in a reply (letters, digits, '-' and '_', at most 16)."""
    return "".join(c for c in text if c.isascii() and (c.isalnum() or c in "-_"))[:16]


def auth_unsupported(mechanism: str) -> str:
    return f"504 AUTH {_word(mechanism)} not supported: use AUTH TLS."


def prot_unsupported(level: str) -> str:
    return f"536 PROT {level} not supported: use PROT C or PROT P."


def prot_unknown(level: str) -> str:
    return f"504 PROT {_word(level)} not understood: use PROT C or PROT P."
