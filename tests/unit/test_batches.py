"""Guarded partition records on record batches built byte for byte: a batch that cannot be decoded stops
its partition at that batch (records before it handed on, the position kept there, the guard told why),
and committed reads still skip aborted transactions and control records."""

from __future__ import annotations

import asyncio
import struct

from aiokafka.consumer.fetcher import READ_COMMITTED
from aiokafka.errors import UnsupportedCodecError
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streamrec.stream_processor.batches import (
    CODEC_UNAVAILABLE,
    UNDECODABLE_BATCH,
    GuardedPartitionRecords,
    PartitionGuard,
    classify,
)

TP = TopicPartition("events", 0)
_CRC_AT = 17  # base offset (8), length (4), leader epoch (4), magic (1): the CRC, then what it covers
_ATTRIBUTES_AT = 21
_CONTROL = 0x20


def batch(
    base: int,
    values: list[bytes],
    producer_id: int = -1,
    transactional: bool = False,
    control: bool = False,
    key: bytes = b"k",
) -> bytes:
    epoch = 0 if producer_id >= 0 else -1
    builder = DefaultRecordBatchBuilder(2, 0, int(transactional), producer_id, epoch, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000, key=key, value=value, headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base)
    if control:
        attributes = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)[0] | _CONTROL
        struct.pack_into(">h", raw, _ATTRIBUTES_AT, attributes)
        struct.pack_into(">I", raw, _CRC_AT, crc32c(bytes(raw[_ATTRIBUTES_AT:])))
    return bytes(raw)


class Seen:
    def __init__(self) -> None:
        self.changes: dict[str, int] = {}
        self.paused: list[TopicPartition] = []

    def guard(self) -> PartitionGuard:
        guard = PartitionGuard(lambda condition, n: self.changes.__setitem__(condition, n), retry_s=60)
        guard.attach(self.paused.append, lambda tp: None)
        return guard


def read(guard: PartitionGuard, raw: bytes, fetch_offset: int = 0, aborted=None) -> tuple[list[bytes], int]:
    cls = type("Guarded", (GuardedPartitionRecords,), {"guard": guard})

    async def run() -> tuple[list[bytes], int]:
        records = cls(TP, MemoryRecords(raw), aborted, fetch_offset, None, None, True, READ_COMMITTED)
        return [r.value for r in records], records.next_fetch_offset

    return asyncio.run(run())


def test_a_corrupt_batch_stops_its_partition_there_and_the_records_before_it_go_on() -> None:
    good = batch(0, [b"a", b"b"])
    corrupt = bytearray(batch(2, [b"c", b"d"]))
    corrupt[-1] ^= 0xFF  # its CRC no longer matches
    after = batch(4, [b"e"])
    seen = Seen()
    guard = seen.guard()
    values, position = read(guard, good + bytes(corrupt) + after)
    assert values == [b"a", b"b"]
    assert position == 2, "the position stays at the corrupt batch: nothing after it is skipped"
    (blocked,) = guard.blocked()
    assert (blocked.offset, blocked.fault.condition) == (2, UNDECODABLE_BATCH)
    assert "CRC" in blocked.fault.cause
    assert seen.paused == [TP] and seen.changes[UNDECODABLE_BATCH] == 1

    # fetched again from there and decoded (the batch was whole this time): the partition goes on
    values, position = read(guard, batch(2, [b"c", b"d"]) + after, fetch_offset=2)
    assert values == [b"c", b"d", b"e"] and position == 5
    assert guard.blocked() == [] and seen.changes[UNDECODABLE_BATCH] == 0


def test_a_missing_codec_library_is_named_and_told_apart_from_a_corrupt_batch() -> None:
    fault = classify(UnsupportedCodecError("Libraries for lz4 compression codec not found"))
    assert fault.condition == CODEC_UNAVAILABLE and "lz4" in fault.cause
    assert classify(UnsupportedCodecError("Unknown compression codec 0x05")).condition == UNDECODABLE_BATCH


def test_committed_reads_skip_an_aborted_transaction_and_control_records() -> None:
    aborted = batch(0, [b"aborted-1", b"aborted-2"], producer_id=7, transactional=True)
    # a control record whose key says abort (version 0, type 0)
    abort_marker = batch(2, [b""], producer_id=7, transactional=True, control=True, key=b"\0\0\0\0")
    committed = batch(3, [b"plain"])
    raw = aborted + abort_marker + committed
    seen = Seen()
    values, position = read(seen.guard(), raw, aborted=[(7, 0)])
    assert values == [b"plain"] and position == 4
    assert seen.paused == []
