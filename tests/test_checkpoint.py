"""Checkpoints restore sharded arrays and host state exactly; damaged ones are named in one line,
and a resume falls back past them (or, from an explicit step, fails)."""

import json
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ssp_jax.checkpoint import FILE_LIST, Checkpointer, CheckpointError, abstract_like
from ssp_jax.models.sharding import MeshConfig, make_mesh


def test_round_trip_keeps_values_and_shardings(tmp_path):
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    sharding = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    arrays = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), sharding), "count": jnp.array(7)}
    host = {"pool": [{"question": "q", "gold": ["a", "b"]}], "step": 3}
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, jax.tree.map(lambda x, step=step: x + step, arrays), {**host, "step": step})
    assert ckpt.latest_step() == 3
    restored, restored_host = ckpt.restore(3, abstract_like(arrays))
    np.testing.assert_array_equal(restored["w"], arrays["w"] + 3)
    assert restored["w"].sharding == sharding and restored_host == {**host, "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]  # max_to_keep


def test_corrupt_checkpoint_names_the_step_in_one_line(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, {"w": jnp.ones(4)}, {"step": 5})
    for path in (tmp_path / "5" / "arrays").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    where = re.escape(f"checkpoint step 5 in {tmp_path}/5")
    with pytest.raises(CheckpointError, match=rf"^{where} is damaged: file arrays/\S+ has 7 bytes, \d+ were saved$"):
        Checkpointer(tmp_path).restore(5, abstract_like({"w": jnp.ones(4)}))


ARRAYS = {"w": jnp.arange(4096.0), "b": jnp.ones(3)}


def save_steps(directory, steps=(1, 2)):
    ckpt = Checkpointer(directory)
    for step in steps:
        ckpt.save(step, jax.tree.map(lambda x, step=step: x + step, ARRAYS), {"step": step})
    ckpt.close()


def truncate_largest(step_dir):
    """Damage as a full disk or an interrupted copy does: the largest data file loses its tail."""
    files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file() and "d" in p.relative_to(step_dir).parts]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])
    return largest


def scramble_in_place(step_dir):
    """Same-size garbage in every data file, and no file list (as a checkpoint of older code has):
    only the restore itself can find this damage."""
    (step_dir / FILE_LIST).unlink()
    for path in (step_dir / "arrays").rglob("*"):
        if path.is_file() and "d" in path.relative_to(step_dir).parts:
            path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and len(message) < 800
    assert "TensorStore" not in message and "tensorstore_spec" not in message  # no spec dump
    return message


@pytest.mark.parametrize("damage", [truncate_largest, scramble_in_place])
def test_damaged_latest_step_falls_back_to_the_previous_one_loudly(tmp_path, caplog, damage):
    save_steps(tmp_path)
    damage(tmp_path / "2")
    ckpt = Checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING):
        resumed = ckpt.resume(abstract_like(ARRAYS))
    assert (resumed.step, resumed.damaged, resumed.host) == (1, [2], {"step": 1})
    np.testing.assert_array_equal(resumed.arrays["w"], ARRAYS["w"] + 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"checkpoint step 2 in {tmp_path}/2 is damaged") for m in warnings), warnings
    assert any("RESUMING FROM AN EARLIER CHECKPOINT: step 1" in m and "[2]" in m for m in warnings), warnings
    # The damaged step is set aside, not deleted, so the run saves step 2 afresh (orbax would skip it).
    assert (tmp_path / "2.damaged").is_dir() and ckpt.all_steps() == [1]
    ckpt.save(2, jax.tree.map(lambda x: x + 20, ARRAYS), {"step": 2})
    arrays, host = Checkpointer(tmp_path).restore(2, abstract_like(ARRAYS))
    assert host == {"step": 2} and float(arrays["b"][0]) == 21.0


def test_damaged_step_message_is_one_line_naming_the_step_and_the_file(tmp_path):
    save_steps(tmp_path)
    name = str(truncate_largest(tmp_path / "2").relative_to(tmp_path / "2"))
    size = json.loads((tmp_path / "2" / FILE_LIST).read_text())[name]
    with pytest.raises(CheckpointError) as error:
        Checkpointer(tmp_path).restore(2, abstract_like(ARRAYS))
    assert one_line(error) == (f"checkpoint step 2 in {tmp_path}/2 is damaged: file {name} has 100 bytes, "
                               f"{size} were saved")
    scramble_in_place(tmp_path / "1")
    with pytest.raises(CheckpointError) as error:
        Checkpointer(tmp_path).restore(1, abstract_like(ARRAYS))
    assert one_line(error).startswith(f"checkpoint step 1 in {tmp_path}/1 is damaged or unreadable: ")
    assert error.value.__cause__ is not None  # the full chain stays available


def test_resume_from_an_earlier_step_sets_the_newer_ones_aside(tmp_path):
    save_steps(tmp_path, (1, 2, 3))
    ckpt = Checkpointer(tmp_path)
    resumed = ckpt.resume(abstract_like(ARRAYS), resume_from=1)
    assert (resumed.step, resumed.damaged, resumed.superseded) == (1, [], [2, 3])
    assert ckpt.all_steps() == [1] and (tmp_path / "2.superseded").is_dir() and (tmp_path / "3.superseded").is_dir()


def test_resume_from_a_damaged_or_missing_step_fails_listing_the_steps(tmp_path):
    save_steps(tmp_path)
    truncate_largest(tmp_path / "2")
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError) as error:
        ckpt.resume(abstract_like(ARRAYS), resume_from=2)
    assert one_line(error).startswith(f"checkpoint step 2 in {tmp_path}/2 is damaged: file arrays/")
    assert str(error.value).endswith("; steps there: 1, 2")
    missing = re.escape(f"checkpoint step 7 not found in {tmp_path}; steps there: 1, 2")
    with pytest.raises(CheckpointError, match=rf"^{missing}$"):
        ckpt.resume(abstract_like(ARRAYS), resume_from=7)
    assert ckpt.all_steps() == [1, 2]  # nothing was set aside


def test_no_intact_step_fails_in_one_line(tmp_path):
    save_steps(tmp_path)
    truncate_largest(tmp_path / "2")
    scramble_in_place(tmp_path / "1")
    with pytest.raises(CheckpointError) as error:
        Checkpointer(tmp_path).resume(abstract_like(ARRAYS))
    message = one_line(error)
    assert message.startswith(f"no intact checkpoint in {tmp_path}: step 2 is damaged: file arrays/")
    assert "; step 1 is damaged or unreadable: " in message
    assert message.endswith("; move the directory aside to start over")
    assert Checkpointer(tmp_path).all_steps() == [1, 2]  # nothing was set aside


def test_no_checkpoint_resumes_nothing(tmp_path):
    assert Checkpointer(tmp_path).resume(abstract_like(ARRAYS)) is None
