"""Retrieval split by process index: in a multi-host run each host searches only its share of a
batch's queries (with its own in-process index shard of the work, or its own connection to a
shared service), and the results are gathered so every host again holds all of them.

The rest of the rollout stays duplicated host work (ssp_jax/distributed.py); with one process
this wrapper is a plain pass-through.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ssp_jax.distributed import gather_objects, process_slice
from ssp_jax.retrieval.base import Passage, Retriever, RetrieverError


class ProcessShardedRetriever:
    """A `Retriever` whose every batch is split into contiguous per-process slices."""

    def __init__(self, inner: Retriever) -> None:
        self.inner = inner

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if jax.process_count() == 1:
            return self.inner.search(queries, k)
        part = list(queries[process_slice(len(queries))])
        local: tuple[bool, list[list[Passage]] | str]
        try:  # a failure must reach every process, or the others would wait in the gather forever
            results = self.inner.search(part, k) if part else []
            if len(results) != len(part):
                raise RetrieverError(f"returned {len(results)} result lists for {len(part)} queries")
            local = (True, results)
        except Exception as e:  # noqa: BLE001 - reported on every process below
            local = (False, f"process {jax.process_index()}: {type(e).__name__}: {e}")
        outcomes = gather_objects(local)
        errors = [str(value) for ok, value in outcomes if not ok]
        if errors:
            raise RetrieverError("; ".join(errors))
        return [passages for _, value in outcomes for passages in value]
