"""TensorBoard event files written without tensorboardX: byte-equal to tensorboardX's records, and
read back by protobuf's own parser (given TensorFlow's Event / Summary field numbers) with every
tag, step and value, the non-finite ones included."""

import math
import time

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tempo_jax.train import event_files
from tempo_jax.train.event_files import Event

# tensorboardX 2.6.5's RecordWriter, writing Event(wall_time=1.5, file_version="brain.Event:2"),
# Event(wall_time=2.25, step=3, summary {value {tag: "loss" simple_value: 0.25}}) and the same
# with {tag: "x" simple_value: -inf}.
TENSORBOARDX_RECORDS = bytes.fromhex(
    "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c1a000000"
    "00000000129bd82d09000000000000024010032a0d0a0b0a046c6f7373150000803e5f0fe57e170000000000"
    "0000e7cef81e09000000000000024010032a0a0a080a017815000080ff946d8f6a"
)


def test_records_are_byte_equal_to_tensorboardx_and_decode_back():
    events = [
        Event(1.5, file_version=event_files.FILE_VERSION),
        Event(2.25, 3, summary=[("loss", 0.25)]),
        Event(2.25, 3, summary=[("x", -math.inf)]),
    ]
    assert event_files.frame_records([e.encode() for e in events]) == TENSORBOARDX_RECORDS
    decoded = [Event.decode(r) for r in event_files.parse_records(TENSORBOARDX_RECORDS)]
    assert decoded == events
    assert event_files.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def _protobuf_event_class():
    """tensorflow.Event with the fields scalars use (tensorflow/core/util/event.proto and
    framework/summary.proto field numbers), for protobuf's own parser."""
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    value = descriptor_pb2.DescriptorProto(name="Value")
    value.field.add(name="tag", number=1, type=field.TYPE_STRING, label=optional)
    value.field.add(name="simple_value", number=2, type=field.TYPE_FLOAT, label=optional)
    summary = descriptor_pb2.DescriptorProto(name="Summary", nested_type=[value])
    summary.field.add(
        name="value",
        number=1,
        type=field.TYPE_MESSAGE,
        label=repeated,
        type_name=".t.Summary.Value",
    )
    event = descriptor_pb2.DescriptorProto(name="Event")
    event.field.add(name="wall_time", number=1, type=field.TYPE_DOUBLE, label=optional)
    event.field.add(name="step", number=2, type=field.TYPE_INT64, label=optional)
    event.field.add(name="file_version", number=3, type=field.TYPE_STRING, label=optional)
    event.field.add(
        name="summary", number=5, type=field.TYPE_MESSAGE, label=optional, type_name=".t.Summary"
    )
    proto = descriptor_pb2.FileDescriptorProto(
        name="t/event.proto", package="t", syntax="proto3", message_type=[summary, event]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_a_written_file_reads_back_through_protobuf_with_non_finite_values(tmp_path):
    start = time.time()
    writer = event_files.EventFileWriter(tmp_path / "tb")
    written = {
        1: {"loss": 0.5, "eval/ü@4": -2.0},
        2: {"loss": math.nan, "grad_norm": math.inf},
        2**40: {"loss": -math.inf, "beyond_float32": 1e39},
    }
    for step, scalars in written.items():
        writer.add_scalars(step, scalars)
    (path,) = event_files.event_paths(tmp_path / "tb")
    assert path == writer.path

    proto_event = _protobuf_event_class()
    events = []
    for record in event_files.parse_records((tmp_path / "tb" / path.split("/")[-1]).read_bytes()):
        events.append(proto_event())
        events[-1].ParseFromString(record)
    assert events[0].file_version == "brain.Event:2" and not events[0].HasField("summary")
    assert all(start <= e.wall_time <= time.time() for e in events)
    read = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    expected = [(s, tag, value) for s, scalars in written.items() for tag, value in scalars.items()]
    assert len(events) == 1 + len(expected)  # one event per scalar
    assert [r[:2] for r in read] == [e[:2] for e in expected]
    by_key = {(s, tag): value for s, tag, value in read}
    assert by_key[(1, "loss")] == 0.5 and by_key[(1, "eval/ü@4")] == -2.0
    assert math.isnan(by_key[(2, "loss")]) and by_key[(2, "grad_norm")] == math.inf
    assert by_key[(2**40, "loss")] == -math.inf
    assert by_key[(2**40, "beyond_float32")] == math.inf  # as a float32 cast makes it
    # Our reader agrees with protobuf's, NaN included.
    ours = event_files.scalars(tmp_path / "tb")
    assert {(s, tag) for tag, points in ours.items() for s, _ in points} == set(by_key)
    for tag, points in ours.items():
        for s, value in points:
            assert value == by_key[(s, tag)] or math.isnan(value) and math.isnan(by_key[(s, tag)])
