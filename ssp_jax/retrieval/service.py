"""Search-R1-compatible retrieval over HTTP (stdlib `ThreadingHTTPServer`: no extra dependency).

    POST /retrieve {"queries": [str, ...], "topk": int, "return_scores": bool}
      return_scores true:  {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}
      return_scores false: {"result": [[{"id", "contents"}, ...], ...]}
    GET /status -> {"status": "ok", ...}

Fields, defaults and shapes follow Search-R1's `retrieval_server.py`: `topk` missing, null or 0 means
the server's default, `return_scores` defaults to false. A bad request gets a 4xx with FastAPI's
error shape `{"detail": message}` and the server keeps serving; an oversized body is read and dropped so
the client gets its 413 rather than a broken pipe. Concurrent requests are merged into one retriever
call (`batcher.py`), and the listen backlog holds `ServiceLimits.backlog` connections. SIGTERM (or
Ctrl-C) stops the server cleanly: it stops accepting, answers the searches already queued and exits 0.

    python -m ssp_jax.retrieval.service --index /data/wiki-e5 --port 8000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ssp_jax.retrieval.base import Passage, Retriever
from ssp_jax.retrieval.batcher import SearchBatcher
from ssp_jax.retrieval.index import load_retriever, read_manifest

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts and how it queues: bounds on a request (top-k, queries, body size, read
    time), so a bad client gets a 4xx instead of exhausting the server, plus the backlog and batching."""

    default_topk: int = 3  # SSP.md §5: top-3
    max_topk: int = 100
    max_queries: int = 512
    max_body_bytes: int = 1 << 20
    read_timeout: float = 30.0  # seconds a client may take to send its request
    backlog: int = 1024  # pending connections the kernel queues (capped by net.core.somaxconn)
    max_batch_queries: int = 1024  # queries merged into one retriever call
    max_discard_bytes: int = 64 << 20  # an oversized body is read and dropped up to this size


class RequestError(Exception):
    """A client error: HTTP `status` with `message` as the JSON `detail`."""

    def __init__(self, status: int, message: str, *, unread: int = 0) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.unread = unread  # body bytes still on the socket, read and dropped after the reply


def parse_request(body: bytes, limits: ServiceLimits) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) of a /retrieve body, or RequestError."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {e}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f"body must be a JSON object, got {type(payload).__name__}")
    if "queries" not in payload:
        raise RequestError(422, "missing field 'queries'")
    queries = payload["queries"]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(422, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise RequestError(422, f"too many queries: {len(queries)} > {limits.max_queries}")
    topk = payload.get("topk")
    if isinstance(topk, bool) or not isinstance(topk, (int, type(None))):
        raise RequestError(422, f"'topk' must be an integer, got {json.dumps(topk)}")
    if not topk:
        topk = limits.default_topk
    if not 1 <= topk <= limits.max_topk:
        raise RequestError(422, f"'topk' must be in [1, {limits.max_topk}], got {topk}")
    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(422, f"'return_scores' must be a boolean, got {json.dumps(return_scores)}")
    return queries, topk, return_scores


def format_result(results: Sequence[Sequence[Passage]], return_scores: bool) -> dict[str, Any]:
    def doc(p: Passage) -> dict[str, str]:
        return {"id": p.id, "contents": p.contents}

    if return_scores:
        return {"result": [[{"document": doc(p), "score": p.score} for p in hits] for hits in results]}
    return {"result": [[doc(p) for p in hits] for hits in results]}


class RetrievalService:
    """An HTTP front end for any `Retriever`; `start()` serves from a background thread."""

    def __init__(self, retriever: Retriever, *, host: str = LOOPBACK, port: int = 0,
                 limits: ServiceLimits = ServiceLimits(), info: Mapping[str, Any] | None = None) -> None:
        self.retriever, self.limits = retriever, limits
        self._info = dict(info or {})
        self._batcher = SearchBatcher(retriever, max_batch_queries=limits.max_batch_queries)
        self._server = _Server((host, port), _Handler, bind_and_activate=False)
        self._server.request_queue_size = limits.backlog  # listen(backlog) reads it in server_activate
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            self._batcher.close()
            raise
        self._server.service = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        return self._batcher.search(queries, k)

    def status(self) -> dict[str, Any]:
        return {"status": "ok", **self._info, "limits": dataclasses.asdict(self.limits),
                "batches": dataclasses.asdict(self._batcher.stats)}

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def start(self) -> RetrievalService:
        self._thread = threading.Thread(target=self.serve_forever, name="retrieval-service", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting connections, then answer the searches already queued."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._batcher.close()

    def __enter__(self) -> RetrievalService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: RetrievalService
    server_address: tuple[str, int]  # an AF_INET socket's (host, port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: every reply carries Content-Length
    # The reply goes out as two writes (headers, body); with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers, about 40 ms on Linux: 44 ms per one-query BM25 request.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # Applied to the socket by super().setup(); typeshed declares it a ClassVar, but a per-instance value works.
        self.timeout = self.server.service.limits.read_timeout  # type: ignore[misc]
        super().setup()

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/status":
            return self._reply(404, {"detail": f"no route GET {self.path}"})
        self._reply(200, self.server.service.status())

    def do_POST(self) -> None:
        service = self.server.service
        try:
            body = self._read_body(service.limits.max_body_bytes)
            if self.path.split("?")[0] != "/retrieve":
                raise RequestError(404, f"no route POST {self.path}")
            queries, topk, return_scores = parse_request(body, service.limits)
        except RequestError as e:
            self._reply(e.status, {"detail": e.message})
            return self._discard(e.unread)
        try:
            results = service.search(queries, topk)
        except Exception as e:  # the retriever's failure is the server's, not the client's
            logging.exception("retrieval failed for %d queries", len(queries))
            return self._reply(500, {"detail": f"retrieval failed: {type(e).__name__}: {e}"})
        self._reply(200, format_result(results, return_scores))

    def _read_body(self, max_bytes: int) -> bytes:
        """The request body; on any error the connection is closed (an unread body would be taken
        for the next request)."""
        close_after = self.close_connection
        self.close_connection = True
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "send the body with Content-Length (no chunked transfer encoding)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "Content-Length required")
        if not length.isdigit():
            raise RequestError(400, f"bad Content-Length {length!r}")
        if int(length) > max_bytes:
            raise RequestError(413, f"body of {length} bytes exceeds the {max_bytes}-byte limit", unread=int(length))
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            raise RequestError(408, "timed out reading the request body") from None
        if len(body) != int(length):
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        self.close_connection = close_after
        return body

    def _discard(self, num_bytes: int) -> None:
        """Read and drop an unread body (the connection closes after): closing with unread data makes
        the kernel reset the connection, so a client still sending would see a broken pipe, not the reply."""
        left = min(num_bytes, self.server.service.limits.max_discard_bytes)
        try:
            while left > 0 and (chunk := self.rfile.read1(min(left, 1 << 16))):
                left -= len(chunk)
        except OSError:  # timeout or reset: the client gave up, nothing left to protect
            pass

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logging.debug("%s %s", self.address_string(), format % args)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssp_jax.retrieval.service", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="directory written by python -m ssp_jax.retrieval.build")
    p.add_argument("--host", default=LOOPBACK, help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--topk", type=int, default=ServiceLimits.default_topk, help="default when a request omits topk")
    p.add_argument("--max-topk", type=int, default=ServiceLimits.max_topk)
    p.add_argument("--max-queries", type=int, default=ServiceLimits.max_queries)
    p.add_argument("--max-body-bytes", type=int, default=ServiceLimits.max_body_bytes)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    manifest = read_manifest(args.index)
    limits = ServiceLimits(default_topk=args.topk, max_topk=args.max_topk, max_queries=args.max_queries,
                           max_body_bytes=args.max_body_bytes)
    retriever = load_retriever(args.index)
    retriever.search(["warm-up"], limits.default_topk)  # compile the query path before the first client
    service = RetrievalService(retriever, host=args.host, port=args.port, limits=limits,
                               info={"index": str(args.index), "kind": manifest.kind,
                                     "num_passages": manifest.num_passages})
    if args.host != LOOPBACK:
        logging.warning("listening on %s: reachable beyond this machine, with no authentication", args.host)
    logging.info("serving %s (%s, %d passages) at %s/retrieve", args.index, manifest.kind,
                 manifest.num_passages, service.url)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.serve_forever()
    except _Stop as stop:
        logging.info("%s: shutting down", stop)
    finally:
        service.close()
    logging.info("stopped")
    return 0


class _Stop(Exception):
    """A stop signal (SIGTERM, SIGINT): a normal shutdown, not a crash."""


def _stop(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once
    raise _Stop(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
