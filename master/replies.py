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
FILE_NAME_NOT_ALLOWED = "553 File name not allowed."
METADATA_FAILED = "451 Requested action aborted: local error: metadata store failed."


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
