"""Framing: every frame list is [PROTOCOL_TAG, body]; one decoder per direction.

Nothing else in the code encodes or decodes wire messages.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

import msgspec

from common import messages as m

PROTOCOL_TAG = b"FC1"
STATS_TOPIC_PREFIX = b"stats."

_encoder = msgspec.msgpack.Encoder()

SLAVE_TO_BROKER = msgspec.msgpack.Decoder(m.SlaveToBroker)
BROKER_TO_SLAVE = msgspec.msgpack.Decoder(m.BrokerToSlave)
MASTER_TO_BROKER = msgspec.msgpack.Decoder(m.MasterToBroker)
BROKER_TO_MASTER = msgspec.msgpack.Decoder(m.BrokerToMaster)
STATS = msgspec.msgpack.Decoder(m.SlaveStats)


class BadFrame(Exception):
    """A frame list that is not a valid message for this direction (wrong tag, shape or body)."""


T = TypeVar("T")


def encode(msg: m.Message) -> list[bytes]:
    """Frames for one message: [PROTOCOL_TAG, body]."""
    return [PROTOCOL_TAG, _encoder.encode(msg)]


def decode(frames: Sequence[bytes | Any], decoder: msgspec.msgpack.Decoder[T]) -> T:
    """Decode [PROTOCOL_TAG, body] with `decoder`; raises BadFrame on anything else."""
    if len(frames) != 2:
        raise BadFrame(f"expected 2 frames, got {len(frames)}")
    tag, body = bytes(frames[0]), bytes(frames[1])
    if tag != PROTOCOL_TAG:
        raise BadFrame(f"bad protocol tag {tag[:16]!r}")
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadFrame(str(exc)) from exc


def stats_topic(slave_name: str) -> bytes:
    return STATS_TOPIC_PREFIX + slave_name.encode()


def encode_stats(stats: m.SlaveStats) -> list[bytes]:
    """Frames for the stats feed: [topic, PROTOCOL_TAG, body]."""
    return [stats_topic(stats.name), *encode(stats)]


def decode_stats(frames: Sequence[bytes | Any]) -> m.SlaveStats:
    """Decode [topic, PROTOCOL_TAG, body]; raises BadFrame."""
    if len(frames) != 3:
        raise BadFrame(f"expected 3 stats frames, got {len(frames)}")
    stats: m.SlaveStats = decode(frames[1:], STATS)
    if bytes(frames[0]) != stats_topic(stats.name):
        raise BadFrame("stats topic does not match the slave name")
    return stats
