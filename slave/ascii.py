"""TYPE A (ASCII) line-ending conversion of a transfer's bytes, as pure functions over chunks.

The slave stores files with the local (POSIX) line ending LF; in TYPE A the data connection
carries CRLF. Both directions follow pyftpdlib's own semantics (DTPHandler and FileProducer
`_posix_ascii_data_wrapper`), independent of where the stream is cut into chunks:

- receiving (STOR/APPE/STOU): every CRLF becomes LF; a lone CR is kept, except one at the
  very end of the upload, which is dropped (pyftpdlib holds a trailing CR back waiting for
  an LF, and never writes it when the stream ends);
- sending (RETR): every LF not preceded by a CR becomes CRLF; an existing CRLF and a lone
  CR are sent as they are.

A CR/LF pair split across two chunks is one pair: the caller carries one bool between
chunks. Owns no I/O; the worker threads in slave.transfers call these per buffer.
"""

from __future__ import annotations

CR = b"\r"
LF = b"\n"
CRLF = b"\r\n"


def decode_chunk(chunk: bytes | bytearray | memoryview, held_cr: bool) -> tuple[bytes, bool]:
    """Received TYPE A bytes -> bytes to store. `held_cr`: the previous chunk ended with a CR
    that was held back (not yet returned). Returns (bytes to write, held_cr for the next
    chunk); at the end of the stream a still-held CR is dropped, as pyftpdlib does."""
    data = bytes(chunk)
    if held_cr:
        data = CR + data
    if data.endswith(CR):
        return data[:-1].replace(CRLF, LF), True
    return data.replace(CRLF, LF), False


def encode_chunk(chunk: bytes | bytearray | memoryview, after_cr: bool) -> tuple[bytes, bool]:
    """Stored bytes -> TYPE A bytes to send. `after_cr`: the previous chunk of the file ended
    with a CR (so an LF starting this one is already the second half of a CRLF). Returns
    (bytes to send, after_cr for the next chunk)."""
    data = bytes(chunk)
    if not data:
        return b"", after_cr
    ends_cr = data.endswith(CR)
    head = b""
    if after_cr and data.startswith(LF):
        head, data = LF, data[1:]
    # CRLF -> LF, then every LF -> CRLF: an LF gets a CR unless it already had one, and a
    # lone CR (not followed by LF) is untouched by either pass.
    return head + data.replace(CRLF, LF).replace(LF, CRLF), ends_cr


def decode(data: bytes) -> bytes:
    """A whole received stream at once (tests, small inputs)."""
    out, _held = decode_chunk(data, False)
    return out


def encode(data: bytes) -> bytes:
    """A whole file at once (tests, small inputs)."""
    out, _after = encode_chunk(data, False)
    return out
