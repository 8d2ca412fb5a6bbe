"""Concurrent searches merged into one retriever call.

Query encoding dominates dense retrieval, and the encoder is fastest on a full batch, so the service
does not search request by request. Each request waits in a queue; one worker thread takes every
request waiting when it is free (no timer: the batch is whatever arrived during the previous search)
and searches their queries together, one call per distinct `k`. Only that thread touches the
retriever, so a device-resident index is never driven from two threads.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future

from ssp_jax.retrieval.base import Passage, Retriever


@dataclasses.dataclass
class _Request:
    queries: list[str]
    k: int
    result: Future[list[list[Passage]]] = dataclasses.field(default_factory=Future)


@dataclasses.dataclass
class BatchStats:
    """Counters since start: requests and queries served, and retriever calls made for them."""

    requests: int = 0
    queries: int = 0
    calls: int = 0
    largest_call: int = 0  # most queries in one retriever call


class SearchBatcher:
    """`search(queries, k)` from any thread; calls `retriever.search` from one worker thread with the
    queries of every request waiting, at most `max_batch_queries` per call (one request is never split)."""

    def __init__(self, retriever: Retriever, *, max_batch_queries: int = 1024) -> None:
        if max_batch_queries < 1:
            raise ValueError(f"max_batch_queries must be positive, got {max_batch_queries}")
        self.retriever, self.max_batch_queries = retriever, max_batch_queries
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._held: _Request | None = None  # taken from the queue but over the last batch's size
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="search-batcher", daemon=True)
        self._worker.start()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Top-`k` per query, as `retriever.search` gives; its exception is raised here."""
        if not queries:
            return []
        if not self._worker.is_alive():
            raise RuntimeError("the search batcher is closed")
        request = _Request(list(queries), k)
        self._queue.put(request)
        return request.result.result()

    def close(self) -> None:
        """Finish the requests already queued, then stop the worker."""
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join()

    def _next_batch(self) -> list[_Request] | None:
        """Block for one request, then take every request already waiting (None: closed)."""
        first: _Request | None
        if self._held is not None:
            first, self._held = self._held, None
        elif self._closing:
            return None
        else:
            first = self._queue.get()
        if first is None:
            return None
        batch, size = [first], len(first.queries)
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if request is None:
                self._closing = True  # serve this batch, then stop
                return batch
            if size + len(request.queries) > self.max_batch_queries:
                self._held = request  # opens the next batch
                return batch
            batch.append(request)
            size += len(request.queries)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            by_k: dict[int, list[_Request]] = defaultdict(list)
            for request in batch:
                by_k[request.k].append(request)
            for k, requests in by_k.items():
                self._search(k, requests)

    def _search(self, k: int, requests: list[_Request]) -> None:
        queries = [q for r in requests for q in r.queries]
        try:
            results = self.retriever.search(queries, k)
        except Exception as e:  # each waiting request gets the failure (HTTP 500), the worker carries on
            logging.exception("retrieval failed for %d queries from %d requests", len(queries), len(requests))
            for r in requests:
                r.result.set_exception(e)
            return
        self.stats.requests += len(requests)
        self.stats.queries += len(queries)
        self.stats.calls += 1
        self.stats.largest_call = max(self.stats.largest_call, len(queries))
        start = 0
        for r in requests:
            r.result.set_result(results[start:start + len(r.queries)])
            start += len(r.queries)
