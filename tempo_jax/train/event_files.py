"""TensorBoard event files on any `tempo_jax.train.storage` path: read them, drop the steps a
resumed run writes again, and let tensorboardX write them to a bucket.

An event file is a TFRecord stream: per record a little-endian uint64 length, the masked CRC-32C
of those 8 bytes, the serialized `Event` proto and its masked CRC-32C. A record torn by a crash
(short, or with a wrong CRC) ends the readable part of a file.

Resume: TensorBoard's own way to hide the steps a restarted run repeats is a
`SessionLog.START` event, which only some readers honour. `purge_after` instead rewrites the
earlier event files without the summaries of steps past the restored one, so every reader sees
one value per step.
"""

from __future__ import annotations

import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c, register_writer_factory

from tempo_jax.train import storage

EVENT_FILE_GLOB = "events.out.tfevents.*"
_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")


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


def event_paths(logdir: storage.PathLike) -> list[str]:
    """The event files directly under `logdir`, in name (= creation time) order."""
    directory = storage.path(logdir)
    if not directory.exists():
        return []
    return sorted(str(p) for p in directory.glob(EVENT_FILE_GLOB))


def read_events(path: storage.PathLike) -> list[event_pb2.Event]:
    """The intact events of one event file."""
    events = []
    for record in parse_records(storage.path(path).read_bytes()):
        event = event_pb2.Event()
        event.ParseFromString(record)
        events.append(event)
    return events


def scalars(logdir: storage.PathLike) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` over every event file of `logdir`, in step order (a step
    written twice appears twice)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in event_paths(logdir):
        for event in read_events(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
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
            event = event_pb2.Event()
            event.ParseFromString(record)
            if event.HasField("summary") and event.step > step:
                continue
            kept.append(record)
        if len(kept) != len(records) or len(frame_records(records)) != len(data):
            dropped += len(records) - len(kept)
            storage.write_atomic(path, frame_records(kept))
    return dropped


class _ObjectRecordFile:
    """A file-like sink for tensorboardX on an object store: keeps the whole event file in
    memory and rewrites the object on every flush (objects cannot be appended to)."""

    def __init__(self, path: str):
        self.path = path
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        self._data += data

    def flush(self) -> None:
        storage.write_atomic(self.path, bytes(self._data))

    def close(self) -> None:
        self.flush()


class _ObjectRecordFileFactory:
    def open(self, path: str) -> _ObjectRecordFile:
        return _ObjectRecordFile(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores have no directories


def register_remote_writer() -> None:
    """Routes tensorboardX's `gs://` event files through `storage` (replacing its own writer,
    which needs the google-cloud-storage client and its credentials set up separately)."""
    register_writer_factory("gs", _ObjectRecordFileFactory())
