"""Static shapes for XLA: the bucket a length pads to, and how many devices share a batch's rows.

Every compiled function (prefill, extend, the learner's passes, SFT, scoring) sees padded shapes from
a few fixed buckets, so it compiles a few times rather than once per length; and a batch's rows must
split evenly over the mesh axes the "batch" rule names. One definition each, used everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jax.sharding import Mesh

from ssp_jax.models.sharding import DEFAULT_RULES, Rules, logical_to_spec


def bucket_for(length: int, buckets: Sequence[int], what: str = "sequence") -> int:
    """The smallest bucket >= length; an error names `what` and the largest bucket if none fits."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    raise ValueError(f"{what} of {length} tokens exceeds the largest length bucket {max(buckets)}")


def batch_shards(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> int:
    """Devices a batch's rows are split over: the product of the mesh axes the "batch" rule maps to
    (1 without a mesh). Row counts are padded to a multiple of it."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), rules)[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
    return math.prod(mesh.shape[a] for a in axes)
