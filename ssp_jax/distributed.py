"""Multi-process (multi-host) JAX: joining the run, host values <-> global arrays, barriers.

Every process runs the same program (one controller per host, SPMD). Host-side bookkeeping
(rollout state, parsing, rewards) is duplicated on every process with the same seeds, so every
process holds the same full host value of each batch. The one costly host job, retrieval, is split
by process index (`process_slice`, `gather_objects`; see ssp_jax/retrieval/sharded.py), and files
only process 0 may touch are read there and shared (`leader_value`). `global_array` turns such a value
into a global `jax.Array` (each device takes its own slice) after checking, by checksum, that
the processes really agree; `host_value` brings a global array back whole to every process.
Small host inputs (scalars, one prompt) may go to `jit` as they are: JAX treats an uncommitted
input as replicated, with the same value on every process. With one process everything here
is a plain device_put / np.asarray / no-op.
"""

from __future__ import annotations

import logging
import os
import pickle
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

T = TypeVar("T")


def initialize(requested: bool = False, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process run when asked: the flag, any explicit setting, or JAX_COORDINATOR_ADDRESS.

    Must run before any other JAX call. Settings left None are auto-detected by
    `jax.distributed.initialize` (Cloud TPU, SLURM, ...). Returns whether it initialized.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if not (requested or any(v is not None for v in explicit) or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    logging.info("process %d of %d: %d local of %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True


def is_leader() -> bool:
    """Process 0: the one that writes metrics and builds the shared workdir files."""
    return jax.process_index() == 0


def global_array(value: Any, sharding: Sharding) -> jax.Array:
    """`value` placed with `sharding`. A host value must be the same on every process (checked).

    Unlike `jax.device_put`, which checks a multi-process host value by gathering all of it, this
    compares a 4-byte checksum and then lets each device copy only its own slice.
    """
    if jax.process_count() == 1 or (isinstance(value, jax.Array) and not value.is_fully_addressable):
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    check_same(host, "a host value for a global array")
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


def put_global(tree: Any, shardings: Any) -> Any:
    """`global_array` over a pytree; `shardings` is a tree prefix of `tree` (like `jax.device_put`)."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: global_array(x, s), sub), shardings, tree)


def host_value(x: Any) -> np.ndarray:
    """The full value of `x` on this process: read locally when possible, else gathered from all."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def check_same(host: np.ndarray, what: str) -> None:
    """Fail loudly if processes hold different values: duplicated host work has diverged."""
    digest = np.array([zlib.crc32(np.ascontiguousarray(host).tobytes()), host.size % 2**32], np.uint32)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    if not (digests == digests[0]).all():
        raise RuntimeError(f"{what} of shape {host.shape} differs between processes (checksums {digests[:, 0]}); "
                           "host-side work must be deterministic and identical on every process")


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any: keeps per-process events (SIGTERM) in step."""
    if jax.process_count() == 1:
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.array(flag))).any())


def process_slice(n: int) -> slice:
    """This process's contiguous share of `n` items; shares differ in size by at most one."""
    index, count = jax.process_index(), jax.process_count()
    return slice(n * index // count, n * (index + 1) // count)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable `obj`, in process order, on every process (a collective: all
    processes must call it at the same point)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)  # [max bytes]
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max bytes]
    return [pickle.loads(row[:size].tobytes()) for row, size in zip(rows, sizes)]


def leader_value(compute: Callable[[], T]) -> T:
    """`compute()` run on process 0 only, its result delivered to every process; an exception it
    raises is raised on every process, so none is left waiting in a later collective. For files
    only the leader reads or writes (an eval's output dir), which need not be shared."""
    if jax.process_count() == 1:
        return compute()
    outcome: tuple[bool, Any] | None = None
    if is_leader():
        try:
            outcome = (True, compute())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            outcome = (False, e)
    ok, value = gather_objects(outcome)[0]
    if not ok:
        raise value
    return value


def leader_first(build: Callable[[], T], name: str) -> T:
    """Run a cached build on process 0, then on the others, which find its result in the shared
    workdir: generated data, a random init or a warm start are written once instead of raced."""
    if jax.process_count() == 1:
        return build()
    if is_leader():
        result = build()
    multihost_utils.sync_global_devices(f"ssp_jax: {name} built")
    if not is_leader():
        result = build()
    return result
