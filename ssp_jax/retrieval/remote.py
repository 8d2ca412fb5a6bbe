"""`Retriever` client for a Search-R1-compatible HTTP service (ours, or Search-R1's own server).

Training calls it in the rollout loop, so a flaky service must not kill a run: connection errors,
timeouts and 408/429/5xx replies are retried with exponential back-off; other 4xx replies (our
request is wrong) and malformed responses fail at once. Either way the caller sees `RetrieverError`.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from ssp_jax.retrieval.base import Passage, RetrieverError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _Transient(Exception):
    """A failure worth another try."""


class RemoteRetriever:
    """POSTs `{"queries", "topk", "return_scores": true}` to `url` (the /retrieve endpoint)."""

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 30.0) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}")
        self.url, self.timeout, self.retries = url, timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if not queries:
            return []
        body = json.dumps({"queries": list(queries), "topk": k, "return_scores": True}).encode()
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                logging.warning("retrieval at %s failed (%s); retry %d/%d in %.2fs",
                                self.url, error, attempt, self.retries, delay)
                time.sleep(delay)
            try:
                return self._parse(self._post(body), len(queries))
            except _Transient as e:
                error = e
        raise RetrieverError(f"{self.url}: no answer after {self.retries + 1} tries; last error: {error}")

    def _post(self, body: bytes) -> Any:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace")
            if e.code in RETRY_STATUS:
                raise _Transient(f"HTTP {e.code}: {detail}") from None
            raise RetrieverError(f"{self.url}: HTTP {e.code}: {detail}") from None
        except (http.client.HTTPException, OSError) as e:  # URLError (refused, unreachable), timeouts, resets
            raise _Transient(f"{type(e).__name__}: {e}") from None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise RetrieverError(f"{self.url}: response is not JSON: {e}") from None

    def _parse(self, payload: Any, num_queries: int) -> list[list[Passage]]:
        """Both Search-R1 shapes: hits `{"document": {...}, "score"}` or bare documents (score 0)."""
        try:
            result = payload["result"]
            if len(result) != num_queries:
                raise ValueError(f"{len(result)} result lists for {num_queries} queries")
            out = []
            for hits in result:
                row = []
                for hit in hits:
                    doc, score = (hit["document"], hit["score"]) if "document" in hit else (hit, 0.0)
                    if not isinstance(doc["contents"], str):
                        raise ValueError("'contents' is not a string")
                    row.append(Passage(id=str(doc.get("id", "")), contents=doc["contents"], score=float(score)))
                out.append(row)
            return out
        except (KeyError, TypeError, ValueError) as e:
            raise RetrieverError(f"{self.url}: unexpected response ({type(e).__name__}: {e})") from None
