"""Framing and decoding: every message round-trips through its direction's decoder, and
anything else (wrong tag, garbage, a message of another direction) is a BadFrame."""

from __future__ import annotations

import inspect
import random
import typing

import msgspec
import pytest

from common import messages as m
from common import wire
from common.wire import BadFrame

SAMPLES: list[m.Message] = [
    m.Heartbeat(),
    m.Disconnect(reason="who are you"),
    m.Bye(reason="shutdown"),
    m.Welcome(heartbeat_ms=1000, liveness=5),
    m.Listen(req_id=1, xfer_id=2, allowed_ip="127.0.0.1"),
    m.StartSend(req_id=3, xfer_id=4, path="/a/b", offset=10, connect_to=("127.0.0.1", 5000)),
    m.StartSend(req_id=3, xfer_id=4, path="/a/b"),
    m.StartReceive(req_id=5, xfer_id=6, path="/ü/x", offset=7, append=True),
    m.StartSend(req_id=3, xfer_id=4, path="/t.txt", ascii=True),
    m.StartReceive(req_id=5, xfer_id=6, path="/t.txt", ascii=True),
    m.Abort(req_id=7, xfer_id=8),
    m.ClearPort(req_id=7, port=40001),
    m.DoneAck(xfer_id=3, more=[4, 5]),
    m.DoneAck(xfer_id=9),
    m.Delete(req_id=10, path="/d"),
    m.Rename(req_id=11, src="/a", dst="/b"),
    m.MakeDir(req_id=12, path="/m"),
    m.RemoveDir(req_id=13, path="/m"),
    m.Checksum(req_id=14, path="/f", start=1, end=9),
    m.InventoryRequest(req_id=15, scan=2, limit=50),
    m.OpResult(req_id=16, ok=False, error="No such file", errno=2),
    m.Listening(req_id=17, xfer_id=18, port=40000),
    m.Started(req_id=19, xfer_id=20),
    m.TransferDone(xfer_id=21, ok=True, bytes=100, size=200, crc32=0xDEADBEEF, mtime_ms=5),
    m.TransferDone(xfer_id=25, ok=False, bytes=7, size=9, kept_old=True),
    m.TransferProgress(xfer_id=21, bytes=50),
    m.InventoryPage(req_id=22, scan=2, last=True, entries=[
        m.InventoryEntry(path="/d", is_dir=True, size=0, mtime_ms=1),
        m.InventoryEntry(path="/d/f", is_dir=False, size=3, mtime_ms=2)]),
    m.ChecksumResult(req_id=23, crc32=1, size=2),
    m.Hello(name="s1", incarnation="u-1", data_host="10.0.0.1", max_transfers=256,
            disk_total=10, disk_free=5),
    m.Hello(name="s1", incarnation="u-2", data_host="10.0.0.1", max_transfers=1,
            started_ns=1_700_000_000_000_000_000),
    m.MasterHello(incarnation="m-1"),
    m.ToSlave(slave="s1", cmd=m.Delete(req_id=24, path="/x")),
    m.SlaveUp(name="s1", incarnation="u-1", data_host="10.0.0.1", max_transfers=256),
    m.SlaveDown(name="s1", incarnation="u-1", reason="silent"),
    m.FromSlave(slave="s1", incarnation="u-1", msg=m.Started(req_id=1, xfer_id=2)),
    m.Undeliverable(slave="s1", req_id=25, reason="offline"),
    m.SlaveStats(name="s1", incarnation="u-1", seq=1, ts_ms=2, disk_free=3, disk_total=4,
                 load1=0.5, ncpu=2, net_tx_bps=1.5, net_rx_bps=2.5, active_up=1, active_down=0),
    m.SlaveStats(name="s1", incarnation="u-1", seq=2, ts_ms=2, disk_free=3, disk_total=4,
                 load1=0.5, ncpu=2, net_tx_bps=1.5, net_rx_bps=2.5, active_up=1, active_down=0,
                 host="box", host_net_tx_bps=7.5, host_net_rx_bps=8.0),
]

DIRECTIONS = {
    "slave_to_broker": (m.SlaveToBroker, wire.SLAVE_TO_BROKER),
    "broker_to_slave": (m.BrokerToSlave, wire.BROKER_TO_SLAVE),
    "master_to_broker": (m.MasterToBroker, wire.MASTER_TO_BROKER),
    "broker_to_master": (m.BrokerToMaster, wire.BROKER_TO_MASTER),
    "stats": (m.SlaveStats, wire.STATS),
}


def members(union: object) -> set[type]:
    return set(typing.get_args(union)) or {union}  # type: ignore[arg-type]


def all_message_types() -> set[type]:
    return {cls for _, cls in inspect.getmembers(m, inspect.isclass)
            if issubclass(cls, m.Message) and cls is not m.Message}


def test_samples_cover_every_message_type_and_every_type_has_a_direction():
    assert {type(s) for s in SAMPLES} == all_message_types()
    routed = set().union(*(members(u) for u, _ in DIRECTIONS.values()))
    # slave commands travel inside ToSlave (master -> broker) and bare (broker -> slave)
    assert all_message_types() <= routed | members(m.SlaveCommand)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_round_trip_in_its_direction(direction):
    union, decoder = DIRECTIONS[direction]
    allowed = members(union)
    checked = 0
    for sample in SAMPLES:
        frames = wire.encode(sample)
        assert frames[0] == wire.PROTOCOL_TAG and len(frames) == 2
        if type(sample) in allowed:
            assert wire.decode(frames, decoder) == sample
            checked += 1
        else:
            with pytest.raises(BadFrame):
                wire.decode(frames, decoder)
    assert checked == len([s for s in SAMPLES if type(s) in allowed])


def test_frames_may_be_memoryviews_or_zmq_like_buffers():
    frames = [memoryview(f) for f in wire.encode(m.Heartbeat())]
    assert wire.decode(frames, wire.BROKER_TO_SLAVE) == m.Heartbeat()


@pytest.mark.parametrize("tag", [b"FC0", b"FC2", b"", b"fc1", b"FC1\x00"])
def test_wrong_protocol_tag(tag):
    with pytest.raises(BadFrame, match="tag"):
        wire.decode([tag, wire.encode(m.Heartbeat())[1]], wire.BROKER_TO_SLAVE)


@pytest.mark.parametrize("frames", [
    [], [wire.PROTOCOL_TAG], [wire.PROTOCOL_TAG, b"", b""], [b"garbage"],
    [wire.PROTOCOL_TAG, b""], [wire.PROTOCOL_TAG, b"\xc1"], [wire.PROTOCOL_TAG, b"not msgpack"],
    [wire.PROTOCOL_TAG, msgspec.msgpack.encode({"t": "Nope"})],
    [wire.PROTOCOL_TAG, msgspec.msgpack.encode({"t": "Listen", "req_id": "one", "xfer_id": 1,
                                                "allowed_ip": "x"})],
    [wire.PROTOCOL_TAG, msgspec.msgpack.encode({"t": "Listen"})],
    [wire.PROTOCOL_TAG, msgspec.msgpack.encode([1, 2, 3])],
])
def test_garbage_is_a_bad_frame(frames):
    for decoder in (wire.SLAVE_TO_BROKER, wire.BROKER_TO_SLAVE, wire.MASTER_TO_BROKER,
                    wire.BROKER_TO_MASTER, wire.STATS):
        with pytest.raises(BadFrame):
            wire.decode(frames, decoder)


def test_a_slave_cannot_send_a_master_only_message():
    frames = wire.encode(m.ToSlave(slave="s2", cmd=m.Delete(req_id=1, path="/")))
    with pytest.raises(BadFrame):
        wire.decode(frames, wire.SLAVE_TO_BROKER)
    with pytest.raises(BadFrame):
        wire.decode(wire.encode(m.Hello(name="s", incarnation="i", data_host="h", max_transfers=1)),
                    wire.MASTER_TO_BROKER)


def test_stats_frames_carry_a_matching_topic():
    stats = next(s for s in SAMPLES if isinstance(s, m.SlaveStats))
    frames = wire.encode_stats(stats)
    assert frames[0] == b"stats.s1"
    assert wire.decode_stats(frames) == stats
    with pytest.raises(BadFrame):
        wire.decode_stats([b"stats.other", *frames[1:]])
    with pytest.raises(BadFrame):
        wire.decode_stats(frames[1:])


def test_random_bytes_never_raise_anything_but_bad_frame():
    rng = random.Random(20240601)
    decoders = [d for _, d in DIRECTIONS.values()]
    bodies = [wire.encode(s)[1] for s in SAMPLES]
    for i in range(20000):
        if i % 2:
            body = rng.randbytes(rng.randrange(0, 64))
        else:  # mutate a valid body: closer to the decoder's edge cases
            body = bytearray(rng.choice(bodies))
            for _ in range(rng.randrange(1, 4)):
                if body:
                    body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body)
        tag = wire.PROTOCOL_TAG if i % 7 else rng.randbytes(3)
        for decoder in decoders:
            try:
                wire.decode([tag, body], decoder)
            except BadFrame:
                pass
        try:
            wire.decode_stats([rng.randbytes(8), tag, body])
        except BadFrame:
            pass


def test_a_start_without_the_ascii_field_means_type_i():
    """A start from a master that predates StartSend/StartReceive.ascii decodes as TYPE I."""
    for cls in (m.StartSend, m.StartReceive):
        fields = {"t": cls.__name__, "req_id": 1, "xfer_id": 2, "path": "/f"}
        decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=m.BrokerToSlave)
        assert isinstance(decoded, cls) and decoded.ascii is False


class _SlaveStatsBeforeHostRates(m.Message, frozen=True, tag="SlaveStats"):
    """SlaveStats as it was before host_net_* (its net_* were the host's NIC counters)."""

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


def test_slave_stats_host_rates_are_compatible_both_ways():
    new = m.SlaveStats(name="s1", incarnation="u", seq=3, ts_ms=4, disk_free=5, disk_total=6, load1=0.0,
                       ncpu=1, net_tx_bps=10.0, net_rx_bps=20.0, active_up=0, active_down=1,
                       host="box", host_net_tx_bps=30.0, host_net_rx_bps=40.0)
    old_view = msgspec.msgpack.Decoder(_SlaveStatsBeforeHostRates).decode(wire.encode_stats(new)[2])
    assert (old_view.net_tx_bps, old_view.net_rx_bps) == (10.0, 20.0)  # an old consumer reads own rates
    old = _SlaveStatsBeforeHostRates(name="s1", incarnation="u", seq=3, ts_ms=4, disk_free=5, disk_total=6,
                                     load1=0.0, ncpu=1, net_tx_bps=10.0, net_rx_bps=20.0, active_up=0,
                                     active_down=1)
    decoded = wire.decode_stats([wire.stats_topic("s1"), *wire.encode(old)])
    assert decoded.host == "" and decoded.host_net_tx_bps is None and decoded.host_net_rx_bps is None
