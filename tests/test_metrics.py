"""Metrics land in JSONL and in TensorBoard event files readable without TensorFlow."""

import math
import struct

from tensorboardX.proto import event_pb2

from ssp_jax.metrics import MetricsWriter, read_metrics


def read_events(directory) -> list[event_pb2.Event]:
    """Parse TFRecord framing (u64 length, u32 crc, data, u32 crc) of every event file."""
    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_jsonl_and_tensorboard_scalars(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write(1, {"solver/reward": 0.5, "loss": float("nan")})
    writer.write(2, {"solver/reward": 0.75, "loss": 1.25})
    writer.write(2, {"solver/reward": 0.8, "loss": 1.0})  # a resumed run rewrites step 2
    writer.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] is None and records[1] == {"step": 2, "solver/reward": 0.8, "loss": 1.0}
    scalars = [(e.step, v.tag, v.simple_value) for e in read_events(tmp_path / "tensorboard")
               for v in e.summary.value]
    assert (1, "solver/reward", 0.5) in scalars and (2, "loss", 1.25) in scalars
    assert not any(tag == "loss" and step == 1 for step, tag, _ in scalars)  # NaN not logged
    assert all(math.isfinite(value) for _, _, value in scalars)
