"""Approximate maximum-inner-product search with ScaNN (numpy API, no TensorFlow).

A k-means tree partitions the corpus, anisotropic asymmetric hashing scores the rows of the searched
leaves, and the best `reorder` candidates are rescored exactly. The partitioning is sized from the
corpus size; corpora below `brute_force_below` rows skip it and score every row exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssp_jax.retrieval.base import check_vector_query

if TYPE_CHECKING:
    import scann

_CONFIG = "ssp_scann.json"


def _scann() -> Any:
    """The scann module, imported on first use: it cannot load where TensorFlow is importable (the
    JetStream serving env, requirements-jetstream.txt), which never builds or loads an index."""
    try:
        import scann  # noqa: PLC0415
    except Exception as e:  # scann raises TF's NotFoundError (undefined symbol) next to TensorFlow
        raise ImportError(f"scann could not be imported ({type(e).__name__}: {e}); it needs an environment "
                          "without TensorFlow (requirements.txt), or use an exact or BM25 index") from e
    return scann


@dataclasses.dataclass(frozen=True)
class ScannConfig:
    """Tree + AH + reorder settings. `None` fields are sized from the corpus size n by `resolve`."""

    num_leaves: int | None = None  # default: about sqrt(n)
    leaves_to_search: int | None = None  # default: 5% of the leaves, at least 8
    training_sample_size: int | None = None  # default: min(n, 250k)
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 200  # candidates rescored exactly (at least k at search time)
    brute_force_below: int = 4096

    def resolve(self, n: int) -> ScannConfig:
        leaves = self.num_leaves or max(1, round(math.sqrt(n)))
        return dataclasses.replace(
            self,
            num_leaves=leaves,
            leaves_to_search=min(leaves, self.leaves_to_search or max(8, math.ceil(0.05 * leaves))),
            training_sample_size=min(n, self.training_sample_size or 250_000),
        )


class ScannIndex:
    """Top-k by inner product (float32 scores, int64 row ids) over the vectors it was built from."""

    def __init__(self, searcher: scann.scann_ops_pybind.ScannSearcher, config: ScannConfig,
                 num_rows: int, dim: int) -> None:
        self._searcher = searcher
        self.config = config
        self.num_rows, self.dim = num_rows, dim

    @property
    def brute_force(self) -> bool:
        return self.num_rows < self.config.brute_force_below

    @classmethod
    def build(cls, vectors: np.ndarray, config: ScannConfig = ScannConfig()) -> ScannIndex:
        vectors = np.ascontiguousarray(vectors, np.float32)  # [n, d]
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"vectors must be a non-empty [n, dim] array, got shape {vectors.shape}")
        n, dim = vectors.shape
        config = config.resolve(n)
        builder = _scann().scann_ops_pybind.builder(vectors, min(10, n), "dot_product")
        if n < config.brute_force_below:
            searcher = builder.score_brute_force().build()
        else:
            searcher = (builder
                        .tree(num_leaves=config.num_leaves, num_leaves_to_search=config.leaves_to_search,
                              training_sample_size=config.training_sample_size)
                        .score_ah(config.dims_per_block,
                                  anisotropic_quantization_threshold=config.anisotropic_threshold)
                        .reorder(config.reorder)
                        .build())
        return cls(searcher, config, n, dim)

    def set_leaves_to_search(self, width: int) -> None:
        """The default search width from now on (and in `save`): the build's calibrated value."""
        if not 1 <= width <= (self.config.num_leaves or 1):
            raise ValueError(f"leaves_to_search must be in [1, {self.config.num_leaves}], got {width}")
        self.config = dataclasses.replace(self.config, leaves_to_search=width)

    def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-min(k, n) (scores [q, k], row ids [q, k]), best first; id -1 (score -inf) where the
        searched leaves held fewer rows. `leaves_to_search` overrides the configured recall / speed
        trade-off for this call."""
        queries, k = check_vector_query(queries, self.dim, k, self.num_rows)
        if not len(queries):
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if self.brute_force:
            ids, scores = self._searcher.search_batched_parallel(queries, final_num_neighbors=k)
        else:
            ids, scores = self._searcher.search_batched_parallel(
                queries, final_num_neighbors=k, pre_reorder_num_neighbors=max(self.config.reorder, k),
                leaves_to_search=leaves_to_search or self.config.leaves_to_search, batch_size=64)
        scores, ids = np.asarray(scores, np.float32), np.asarray(ids, np.int64)
        missing = np.isnan(scores)  # ScaNN pads with (id 0, NaN) when the searched leaves hold < k rows
        return np.where(missing, -np.inf, scores), np.where(missing, -1, ids)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._searcher.serialize(str(directory), relative_path=True)
        meta = {"num_rows": self.num_rows, "dim": self.dim, "config": dataclasses.asdict(self.config)}
        (directory / _CONFIG).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> ScannIndex:
        meta = json.loads((Path(directory) / _CONFIG).read_text())
        searcher = _scann().scann_ops_pybind.load_searcher(str(directory))
        return cls(searcher, ScannConfig(**meta["config"]), meta["num_rows"], meta["dim"])
