"""TensorBoard event files on any `tempo_jax.train.storage` path: write scalars, read them back,
and drop the steps a resumed run writes again. No TensorFlow, tensorboardX or protobuf runtime:
the few fields a scalar needs are encoded here (tensorboardX imported torch, ~2 s of CPU at every
process start).

Format. An event file is a TFRecord stream: per record a little-endian uint64 length, the masked
CRC-32C of those 8 bytes, the record and its masked CRC-32C. Each record is a serialized
`tensorflow.Event` protobuf, of which these fields are written and read:

    Event:          wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
                    summary = 5 (Summary)
    Summary:        value = 1 (repeated Summary.Value)
    Summary.Value:  tag = 1 (string), simple_value = 2 (float)

The first event of a file carries file_version "brain.Event:2"; every scalar is an event of its
own (as tensorboardX writes them), so a torn tail loses one scalar. A record torn by a crash
(short, or with a wrong CRC) ends the readable part of a file; unknown fields are skipped.

Resume: TensorBoard's own way to hide the steps a restarted run repeats is a
`SessionLog.START` event, which only some readers honour. `purge_after` instead rewrites the
earlier event files without the summaries of steps past the restored one, so every reader sees
one value per step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Mapping

from tempo_jax.train import storage

EVENT_FILE_GLOB = "events.out.tfevents.*"
FILE_VERSION = "brain.Event:2"
_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
# protobuf wire types
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`: crc32c(b"123456789") = 0xE3069283."""
    crc, table = 0xFFFFFFFF, _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: the CRC rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format: the four encodings the Event fields use ----------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # an int64 below 0 is its 64-bit two's complement (10 bytes)
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == _BYTES:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialized message: a varint as an
    int, fixed64 / fixed32 as their 8 / 4 bytes, length-delimited as its bytes."""
    sizes = {_FIXED64: 8, _FIXED32: 4}
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        wire = key & 7
        if wire == _VARINT:
            value, pos = _read_varint(message, pos)
        elif wire in sizes or wire == _BYTES:
            size, pos = (sizes[wire], pos) if wire in sizes else _read_varint(message, pos)
            value, pos = message[pos : pos + size], pos + size
            if pos > len(message):
                raise ValueError("truncated protobuf field")
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, wire, value


def _float32(value: float) -> bytes:
    try:
        return _FLOAT.pack(value)
    except OverflowError:  # finite but beyond float32: infinite, as a float32 cast makes it
        return _FLOAT.pack(math.copysign(math.inf, value))


@dataclasses.dataclass
class Event:
    """The fields of one `tensorflow.Event` that scalars use.

    Attributes:
      wall_time: seconds since the epoch.
      step: the global step.
      file_version: set on a file's first event only.
      summary: (tag, simple_value) pairs; None when the event has no summary.
    """

    wall_time: float = 0.0
    step: int = 0
    file_version: str = ""
    summary: list[tuple[str, float]] | None = None

    def encode(self) -> bytes:
        out = _field(1, _FIXED64, _DOUBLE.pack(self.wall_time))
        if self.step:
            out += _field(2, _VARINT, _varint(self.step))
        if self.file_version:
            out += _field(3, _BYTES, self.file_version.encode("utf-8"))
        if self.summary is not None:
            values = (_summary_value(tag, value) for tag, value in self.summary)
            out += _field(5, _BYTES, b"".join(_field(1, _BYTES, v) for v in values))
        return out

    @classmethod
    def decode(cls, record: bytes) -> Event:
        """Raises ValueError for a record that is not a well-formed message."""
        event = cls()
        for number, wire, value in _fields(record):
            if (number, wire) == (1, _FIXED64):
                (event.wall_time,) = _DOUBLE.unpack(value)
            elif (number, wire) == (2, _VARINT):
                event.step = value - (1 << 64) if value >> 63 else value
            elif (number, wire) == (3, _BYTES):
                event.file_version = value.decode("utf-8")
            elif (number, wire) == (5, _BYTES):  # repeated occurrences merge: values append
                event.summary = (event.summary or []) + _decode_summary(value)
        return event


def _summary_value(tag: str, value: float) -> bytes:
    return _field(1, _BYTES, tag.encode("utf-8")) + _field(2, _FIXED32, _float32(value))


def _decode_summary(summary: bytes) -> list[tuple[str, float]]:
    """(tag, simple_value) of the values of a Summary that hold a simple_value."""
    out = []
    for number, wire, value in _fields(summary):
        if (number, wire) != (1, _BYTES):
            continue
        tag, scalar = "", None
        for field, field_wire, field_value in _fields(value):
            if (field, field_wire) == (1, _BYTES):
                tag = field_value.decode("utf-8")
            elif (field, field_wire) == (2, _FIXED32):
                (scalar,) = _FLOAT.unpack(field_value)
        if scalar is not None:
            out.append((tag, scalar))
    return out


# --- TFRecord framing ---------------------------------------------------------------------------


def parse_records(data: bytes) -> list[bytes]:
    """The intact records of a TFRecord stream, up to the first torn or corrupt one."""
    out, pos = [], 0
    while pos + _HEADER.size + _CRC.size <= len(data):
        header = data[pos : pos + _HEADER.size]
        (length,) = _HEADER.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, pos + _HEADER.size)
        start = pos + _HEADER.size + _CRC.size
        end = start + length
        if header_crc != masked_crc32c(header) or end + _CRC.size > len(data):
            break
        (data_crc,) = _CRC.unpack_from(data, end)
        if data_crc != masked_crc32c(data[start:end]):
            break
        out.append(data[start:end])
        pos = end + _CRC.size
    return out


def frame_records(records: list[bytes]) -> bytes:
    """A TFRecord stream holding `records`."""
    parts = []
    for record in records:
        header = _HEADER.pack(len(record))
        parts += [header, _CRC.pack(masked_crc32c(header))]
        parts += [record, _CRC.pack(masked_crc32c(record))]
    return b"".join(parts)


# --- files --------------------------------------------------------------------------------------


class EventFileWriter:
    """A new event file under `logdir` (a local directory or a bucket): its version event at
    creation, then scalars appended durably at each `add_scalars` (see `storage.append`)."""

    def __init__(self, logdir: storage.PathLike):
        # A unique suffix: a resumed run must never reopen (and truncate) an earlier file whose
        # name has the same second and host.
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        self.path = f"{storage.absolute(logdir)}/{name}"
        self._append([Event(wall_time=time.time(), file_version=FILE_VERSION)])

    def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event per scalar (NaN and inf written as such)."""
        now = time.time()
        self._append([Event(now, step, summary=[item]) for item in scalars.items()])

    def _append(self, events: list[Event]) -> None:
        storage.append(self.path, frame_records([event.encode() for event in events]))


def event_paths(logdir: storage.PathLike) -> list[str]:
    """The event files directly under `logdir`, in name (= creation time) order."""
    directory = storage.path(logdir)
    if not directory.exists():
        return []
    return sorted(str(p) for p in directory.glob(EVENT_FILE_GLOB))


def read_events(path: storage.PathLike) -> list[Event]:
    """The intact events of one event file."""
    return [Event.decode(r) for r in parse_records(storage.path(path).read_bytes())]


def scalars(logdir: storage.PathLike) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` over every event file of `logdir`, in step order (a step
    written twice appears twice)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in event_paths(logdir):
        for event in read_events(path):
            for tag, value in event.summary or ():
                out.setdefault(tag, []).append((event.step, value))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in out.items()}


def purge_after(logdir: storage.PathLike, step: int) -> int:
    """Rewrites the event files of `logdir` without the summaries of steps after `step` (and
    without a torn tail); returns how many events were dropped."""
    dropped = 0
    for path in event_paths(logdir):
        data = storage.path(path).read_bytes()
        records = parse_records(data)
        kept = []
        for record in records:
            event = Event.decode(record)
            if event.summary is not None and event.step > step:
                continue
            kept.append(record)
        if len(kept) != len(records) or len(frame_records(records)) != len(data):
            dropped += len(records) - len(kept)
            storage.write_atomic(path, frame_records(kept))
    return dropped
