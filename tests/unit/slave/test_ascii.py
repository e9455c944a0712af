"""TYPE A line-ending conversion (slave/ascii.py): tables of chunks -> stored / sent bytes."""

from __future__ import annotations

import io
import os

import pytest
from pyftpdlib.handlers.ftp.producers import FileProducer

from slave.ascii import decode, decode_chunk, encode, encode_chunk


def _receive(chunks: list[bytes]) -> bytes:
    held, out = False, b""
    for chunk in chunks:
        stored, held = decode_chunk(chunk, held)
        out += stored
    return out  # a CR still held at the end is dropped, as in pyftpdlib


def _send(chunks: list[bytes]) -> bytes:
    after_cr, out = False, b""
    for chunk in chunks:
        sent, after_cr = encode_chunk(chunk, after_cr)
        out += sent
    return out


# (received chunks, bytes stored)
RECEIVE = [
    ([b""], b""),
    ([], b""),
    ([b"a\r\nb\r\n"], b"a\nb\n"),
    ([b"a\nb\n"], b"a\nb\n"),                       # bare LF stays LF
    ([b"a\rb"], b"a\rb"),                           # lone CR inside is kept
    ([b"a\r", b"\nb"], b"a\nb"),                    # CRLF split across chunks is one CRLF
    ([b"a\r", b"", b"\nb"], b"a\nb"),               # an empty chunk between the halves
    ([b"a\r", b"b"], b"a\rb"),                      # held CR, then no LF: the CR is written
    ([b"a\r", b"\r\n"], b"a\r\n"),                  # CR, CRLF
    ([b"a\r\r", b"\n"], b"a\r\n"),
    ([b"\r", b"\r", b"\n"], b"\r\n"),
    ([b"\r\n\r\n"], b"\n\n"),
    ([b"\r\r\n\n"], b"\r\n\n"),
    ([b"abc\r"], b"abc"),                           # a CR ending the upload is dropped (pyftpdlib)
    ([b"abc", b"\r"], b"abc"),
    ([b"\n", b"\r", b"\n"], b"\n\n"),
    ([bytes(range(256))], bytes(range(256))),       # binary bytes other than CRLF pass through
    ([b"\x00\r\n\xff"], b"\x00\n\xff"),
]

# (stored chunks, bytes sent)
SEND = [
    ([b""], b""),
    ([], b""),
    ([b"a\nb\n"], b"a\r\nb\r\n"),
    ([b"a\r\nb"], b"a\r\nb"),                       # an existing CRLF is not doubled
    ([b"a\rb"], b"a\rb"),                           # lone CR unchanged
    ([b"a\r", b"\nb"], b"a\r\nb"),                  # CRLF split across chunks: no extra CR
    ([b"a\r", b"", b"\nb"], b"a\r\nb"),             # an empty chunk keeps the carried CR
    ([b"a", b"\nb"], b"a\r\nb"),                    # LF starting a chunk after a non-CR
    ([b"\n"], b"\r\n"),
    ([b"\n", b"\n"], b"\r\n\r\n"),
    ([b"\r", b"\r\n"], b"\r\r\n"),
    ([b"\r\r\n\n"], b"\r\r\n\r\n"),
    ([b"\nab\r"], b"\r\nab\r"),                     # see test_pyftpdlib_producer_quirk
    ([bytes(range(256))], bytes(range(10)) + b"\r" + bytes(range(10, 256))),
]


@pytest.mark.parametrize(("chunks", "stored"), RECEIVE)
def test_receive_table(chunks: list[bytes], stored: bytes) -> None:
    assert _receive(chunks) == stored
    assert decode(b"".join(chunks)) == stored  # the cut points never matter


@pytest.mark.parametrize(("chunks", "sent"), SEND)
def test_send_table(chunks: list[bytes], sent: bytes) -> None:
    assert _send(chunks) == sent
    assert encode(b"".join(chunks)) == sent


def test_memoryview_chunks_are_accepted() -> None:
    buf = memoryview(bytearray(b"x\r\ny\r"))
    assert decode_chunk(buf, False) == (b"x\ny", True)
    assert encode_chunk(memoryview(b"x\ny\r"), False) == (b"x\r\ny\r", True)


def _pyftpdlib_receive(chunks: list[bytes]) -> bytes:
    """pyftpdlib's DTPHandler._posix_ascii_data_wrapper, driven the way handle_read drives it."""
    from pyftpdlib.handlers import DTPHandler

    wrapper = DTPHandler.__new__(DTPHandler)
    wrapper._had_cr = False
    return b"".join(DTPHandler._posix_ascii_data_wrapper(wrapper, c) for c in chunks if c)


def _pyftpdlib_send(data: bytes, buffer_size: int) -> bytes:
    producer = FileProducer(io.BytesIO(data), "a")
    producer.buffer_size = buffer_size
    out = b""
    for _ in range(len(data) + 2):  # bounded: one more() per byte at most, then b""
        chunk = producer.more()
        if not chunk:
            return out
        out += bytes(chunk)
    raise AssertionError("producer did not end")


def test_same_as_pyftpdlib_on_random_text_and_cuts() -> None:
    rng = __import__("random").Random(9)
    for _ in range(3000):
        data = bytes(rng.choice(b"\r\nab") for _ in range(rng.randint(0, 24)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 5))))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]
        assert _receive(chunks) == _pyftpdlib_receive(chunks), chunks
        # pyftpdlib's producer cuts the file every buffer_size bytes; its quirk (below) aside,
        # the result is the same whatever the cut.
        size = rng.randint(1, 8)
        if not _producer_quirk(data, size):
            assert _send([data[i:i + size] for i in range(0, len(data), size)]) == \
                _pyftpdlib_send(data, size), (data, size)


def _producer_quirk(data: bytes, size: int) -> bool:
    """pyftpdlib's FileProducer looks at chunk[pos - 1] for an LF at pos 0, i.e. at the
    chunk's *last* byte: an LF starting a chunk that ends with CR (after a chunk not ending
    with CR) is sent bare."""
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        if chunk.startswith(b"\n") and chunk.endswith(b"\r") and data[start - 1:start] != b"\r":
            return True
    return False


def test_pyftpdlib_producer_quirk() -> None:
    """The one place we differ from pyftpdlib on purpose: its 64 KiB FileProducer chunk
    boundaries decide whether an LF gets its CR; ours never depend on where chunks are cut."""
    data = b"\nab\r"
    assert _pyftpdlib_send(data, 65536) == b"\nab\r"
    assert encode(data) == b"\r\nab\r"


def test_large_random_binary_round_trip_of_lf_text() -> None:
    lines = [os.urandom(n).replace(b"\r", b"").replace(b"\n", b"") for n in (0, 1, 70, 5000)] * 50
    text = b"\n".join(lines) + b"\n"
    wire = encode(text)
    assert wire.count(b"\r\n") == text.count(b"\n") and b"\n" not in wire.replace(b"\r\n", b"")
    assert decode(wire) == text
