"""Device mesh and logical-axis sharding rules (MaxText style).

Parameters carry logical axis names (`embed`, `heads`, `mlp`, ...) as `logical_axes` metadata; input
batches use `batch` / `length`; activations inside the model use `activation_*` names, pinned with
`constrain` under `activation_sharding`. A rules table, kept in config, maps each logical name to a
mesh axis (or a tuple of them, or None = replicated). Changing the parallelism layout is a config edit.

Why activations need their own rules: with weights sharded by `embed` over `fsdp`, XLA's propagation
alone carries that layout into the residual stream, so every device gathers the whole batch and
all-reduces partial sums of every activation over `fsdp`. Pinning `[batch, length, embed]` to batch
over (`data`, `fsdp`) at the block boundaries keeps each device on its own rows: the weights are
gathered instead, and the gradients reduce-scattered (tests/test_activation_sharding.py reads the
compiled program to check it).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ssp_jax.distributed import global_array, put_global

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis / axes / None. FSDP shards the embed dimension of every weight; tensor
# parallelism shards heads, MLP and vocabulary (Megatron layout); batch spans data x fsdp.
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("cache_length", None),
    # Activations: rows over the batch axes, Megatron tensor parallelism on heads / MLP / vocabulary,
    # the residual stream replicated over `tensor`.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes. One size may be -1: it takes all devices the others leave. Explicit sizes
    whose product is below the device count use the first devices (e.g. a 1-device debug run)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh sizes (data, fsdp, tensor)={tuple(sizes)}: use positive ints and at most one -1")
        if -1 in sizes:
            known = math.prod(s for s in sizes if s != -1)
            if num_devices % known:
                raise ValueError(f"mesh sizes {tuple(sizes)} do not divide the {num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) > num_devices:
            raise ValueError(
                f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs {math.prod(sizes)} "
                f"devices but {num_devices} are available")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axis types.

    Auto (not jax 0.10's Explicit default of `jax.make_mesh`) lets XLA propagate shardings through
    matmuls over sharded contracting dimensions without per-op output annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.shape(len(devices))
    used = np.array(devices[:math.prod(shape)]).reshape(shape)
    return Mesh(used, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], rules: Rules, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec.

    A mesh axis is used at most once per array (first come, first served). With `shape` and `mesh`,
    a dimension the mesh axes do not divide is replicated instead (e.g. 2 KV heads on tensor=4).
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
        target = table[name]
        mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        if shape is not None and mesh is not None and mesh_axes:
            size = math.prod(mesh.shape[a] for a in mesh_axes)
            if shape[dim] % size:
                logging.info("replicating logical axis %r (size %d) over %s (size %d): not divisible",
                             name, shape[dim], mesh_axes, size)
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
    return PartitionSpec(*spec)


_ACTIVATIONS: contextvars.ContextVar[tuple[Mesh, Rules, bool] | None] = contextvars.ContextVar("activations",
                                                                                          default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules, *, pin: bool = True) -> Iterator[None]:
    """While tracing inside this block, `constrain` pins activations to `rules` on `mesh`; with no
    mesh (one device) it changes nothing. Enter it around the traced body of a jitted function.
    With `pin=False` nothing is pinned, and kernels that run per device (Pallas, under
    `shard_map`) still learn the mesh and its platform from `activation_context`."""
    token = _ACTIVATIONS.set(None if mesh is None else (mesh, rules, pin))
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def activation_context() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the enclosing `activation_sharding`, or None outside one."""
    context = _ACTIVATIONS.get()
    return None if context is None else context[:2]


def traced_with_activation_sharding(fn: Callable[..., Any], mesh: Mesh | None, rules: Rules, *,
                                    pin: bool = True) -> Callable[..., Any]:
    """`fn`, traced under `activation_sharding(mesh, rules, pin=pin)`: wrap a function before `jax.jit`."""

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding(mesh, rules, pin=pin):
            return fn(*args, **kwargs)

    return traced


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint from its logical `axes` (one name per dimension), under the
    enclosing `activation_sharding`; unchanged outside one. A dimension the mesh axes do not divide
    is left replicated, as for parameters."""
    context = _ACTIVATIONS.get()
    if context is None or not context[2]:
        return x
    mesh, rules, _ = context
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules, x.shape, mesh)))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedSharding for every Variable in `state` (concrete or abstract), from its `logical_axes`."""

    def one(var: nnx.Variable) -> NamedSharding:
        value = var.get_value()
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            return NamedSharding(mesh, PartitionSpec())
        if len(axes) != len(value.shape):
            raise ValueError(f"logical_axes {axes} do not match shape {value.shape}")
        return NamedSharding(mesh, logical_to_spec(axes, rules, value.shape, mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Place an existing model's variables on the mesh according to the rules (in place). On a
    multi-process mesh every process must hold the same (host-local) model."""
    state = nnx.state(model)
    nnx.update(model, put_global(state, state_shardings(state, mesh, rules)))
    return model


def create_sharded(init_fn: Any, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Build `init_fn()` directly into its shardings: no device ever holds the full model."""
    abstract = nnx.eval_shape(init_fn)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(init_fn())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of a [batch, length, ...] array: batch split by the rules, the rest replicated."""
    axes = ("batch", "length") + (None,) * (ndim - 2) if ndim >= 2 else ("batch",)
    return NamedSharding(mesh, logical_to_spec(axes[:ndim], rules))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules) -> Any:
    """Put every array of a pytree batch on the mesh, split along its leading (batch) dimension.
    On a multi-process mesh a host array must be the whole batch, the same on every process."""
    return jax.tree.map(lambda x: global_array(x, batch_sharding(mesh, rules, np.ndim(x))), batch)
