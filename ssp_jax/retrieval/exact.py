"""Exact maximum-inner-product search in JAX: the ground truth for recall, and the index for small corpora.

The corpus matrix lives on device as [shards * chunks, chunk, dim], its rows split over every
device of the mesh. A jit'd `lax.scan` scores one fixed-shape [chunk, dim] block at a time and keeps
a running top-k, so memory stays O(queries x chunk) whatever the corpus size; padding rows score
-inf. Each device returns its own top-k and one final `lax.top_k` merges them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssp_jax.models.sharding import MESH_AXES, MeshConfig, make_mesh
from ssp_jax.retrieval.base import check_vector_query
from ssp_jax.retrieval.embeddings import EmbeddingStore

DEFAULT_CHUNK = 16384
_SAVE_CHUNK = 1 << 16
SearchFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class ExactIndex:
    """Brute-force top-k by inner product over `vectors` [n, dim] (float32 scores, int64 row ids)."""

    def __init__(self, vectors: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK, mesh: Mesh | None = None,
                 dtype: str = "float32") -> None:
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"vectors must be a non-empty [n, dim] array, got shape {vectors.shape}")
        if len(vectors) >= 2**31:
            raise ValueError(f"{len(vectors)} rows do not fit int32 row ids")
        self.num_rows, self.dim = vectors.shape
        self._mesh = mesh if mesh is not None else make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
        shards = self._mesh.size
        per_shard = -(-self.num_rows // shards)
        self._chunk = min(chunk_size, -(-per_shard // 8) * 8)
        self._chunks_per_shard = -(-per_shard // self._chunk)
        shape = (shards * self._chunks_per_shard, self._chunk, self.dim)
        store_dtype = jnp.dtype(dtype)

        def block(index: tuple[slice, ...] | None) -> np.ndarray:
            """This device's chunks, zero-padded past the last row (each device gets only its slice)."""
            assert index is not None  # jax's callback type allows None; make_array_from_callback never passes it
            start, stop, _ = index[0].indices(shape[0])
            lo, hi = start * self._chunk, stop * self._chunk
            out = np.zeros((hi - lo, self.dim), store_dtype)  # [rows, d]
            rows = vectors[lo:min(hi, self.num_rows)]
            out[:len(rows)] = rows
            return out.reshape(stop - start, self._chunk, self.dim)

        self._db = jax.make_array_from_callback(shape, NamedSharding(self._mesh, P(MESH_AXES)), block)
        self._search_fns: dict[int, SearchFn] = {}

    @classmethod
    def load(cls, directory: str | Path, *, chunk_size: int = DEFAULT_CHUNK, mesh: Mesh | None = None,
             dtype: str = "float32") -> ExactIndex:
        """From an `EmbeddingStore` directory (the build's embeddings, or `save` output)."""
        return cls(EmbeddingStore.open(directory).load(), chunk_size=chunk_size, mesh=mesh, dtype=dtype)

    def save(self, directory: str | Path) -> None:
        vectors = np.asarray(self._db, np.float32).reshape(-1, self.dim)[:self.num_rows]  # [n, d]
        store = EmbeddingStore(directory, num_rows=self.num_rows, dim=self.dim,
                               chunk_size=min(self.num_rows, _SAVE_CHUNK))
        for chunk in range(store.num_chunks):
            rows = store.rows(chunk)
            store.write(chunk, vectors[rows.start:rows.stop])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-min(k, n) (scores [q, k] float32, row ids [q, k] int64), best first."""
        queries, k = check_vector_query(queries, self.dim, k, self.num_rows)
        num = len(queries)
        if not num:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        padded = np.zeros((max(8, 1 << (num - 1).bit_length()), self.dim), np.float32)  # [q_bucket, d]
        padded[:num] = queries
        if k not in self._search_fns:
            self._search_fns[k] = self._compile(k)
        scores, ids = self._search_fns[k](jnp.asarray(padded), self._db)
        return np.asarray(scores)[:num], np.asarray(ids)[:num].astype(np.int64)

    def _compile(self, k: int) -> SearchFn:
        n, chunk = self.num_rows, self._chunk
        rows_per_shard = self._chunks_per_shard * chunk
        chunk_k = min(k, chunk)

        def local_top_k(queries: jax.Array, db: jax.Array) -> tuple[jax.Array, jax.Array]:
            # queries [q, d] (replicated), db [chunks, chunk, d] (this device's rows)
            shard = lax.axis_index(MESH_AXES)
            num_q = queries.shape[0]
            queries = queries.astype(db.dtype)

            def step(carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, jax.Array]
                     ) -> tuple[tuple[jax.Array, jax.Array], None]:
                best_scores, best_ids = carry  # [q, k]
                block, c = xs  # [chunk, d], []
                scores = lax.dot_general(queries, block, (((1,), (1,)), ((), ())),
                                         precision=lax.Precision.HIGHEST,
                                         preferred_element_type=jnp.float32)  # [q, chunk]
                rows = shard * rows_per_shard + c * chunk + jnp.arange(chunk, dtype=jnp.int32)  # [chunk]
                scores = jnp.where(rows[None, :] < n, scores, -jnp.inf)
                top_scores, top_pos = lax.top_k(scores, chunk_k)  # [q, chunk_k]
                cand_scores = jnp.concatenate([best_scores, top_scores], axis=1)  # [q, k + chunk_k]
                cand_ids = jnp.concatenate([best_ids, rows[top_pos]], axis=1)
                best_scores, pos = lax.top_k(cand_scores, k)  # [q, k]
                return (best_scores, jnp.take_along_axis(cand_ids, pos, axis=1)), None

            init = (jnp.full((num_q, k), -jnp.inf, jnp.float32), jnp.full((num_q, k), -1, jnp.int32))
            init = lax.pcast(init, MESH_AXES, to="varying")  # the carry differs per device
            (scores, ids), _ = lax.scan(step, init, (db, jnp.arange(db.shape[0])))
            return scores[None], ids[None]  # [1, q, k]

        per_shard = jax.shard_map(local_top_k, mesh=self._mesh, in_specs=(P(), P(MESH_AXES)),
                                  out_specs=(P(MESH_AXES), P(MESH_AXES)))

        def search(queries: jax.Array, db: jax.Array) -> tuple[jax.Array, jax.Array]:
            scores, ids = per_shard(queries, db)  # [shards, q, k]
            num_q = queries.shape[0]
            scores = scores.transpose(1, 0, 2).reshape(num_q, -1)  # [q, shards * k], shard-major
            ids = ids.transpose(1, 0, 2).reshape(num_q, -1)
            top_scores, pos = lax.top_k(scores, k)  # [q, k]
            return top_scores, jnp.take_along_axis(ids, pos, axis=1)

        return jax.jit(search)
