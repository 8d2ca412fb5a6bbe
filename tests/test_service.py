"""The Search-R1-compatible HTTP service and its client, on loopback only: exact response schema,
every 4xx case (the server keeps serving), and client retry / back-off / give-up."""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from ssp_jax.retrieval.base import Passage, RetrieverError
from ssp_jax.retrieval.batcher import SearchBatcher
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.build import build
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.remote import RemoteRetriever
from ssp_jax.retrieval.service import RetrievalService, ServiceLimits

TOPICS = ["penicillin antibiotic Fleming", "coral reef Queensland", "volcano lava eruption", "chess king board",
          "honeybee nectar hive", "Saturn rings planet", "jazz New Orleans", "Everest Himalaya summit"]
LIMITS = ServiceLimits(default_topk=3, max_topk=5, max_queries=4, max_body_bytes=2048, read_timeout=2.0)


def write_topics(path: Path) -> Path:
    lines = [json.dumps({"id": f"p{i}", "contents": f'"Topic {i}"\nA passage about {topic}.'})
             for i, topic in enumerate(TOPICS)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def bm25(tmp_path_factory: pytest.TempPathFactory) -> BM25Retriever:
    root = tmp_path_factory.mktemp("service")
    return BM25Retriever.build(Corpus.prepare(write_topics(root / "c.jsonl"), root / "tfds"))


@pytest.fixture(scope="module")
def service(bm25: BM25Retriever) -> Iterator[RetrievalService]:
    with RetrievalService(bm25, limits=LIMITS, info={"kind": "bm25", "num_passages": len(TOPICS)}) as running:
        assert running.url.startswith("http://127.0.0.1:")
        yield running


def test_retrieve_with_scores_has_search_r1_schema(service: RetrievalService, bm25: BM25Retriever) -> None:
    queries = ["who found penicillin", "rings of saturn"]
    response = requests.post(f"{service.url}/retrieve", json={"queries": queries, "topk": 2, "return_scores": True},
                             timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    expected = [[{"document": {"id": p.id, "contents": p.contents}, "score": p.score} for p in hits]
                for hits in bm25.search(queries, 2)]
    assert response.json() == {"result": expected}
    assert [hits[0]["document"]["id"] for hits in response.json()["result"]] == ["p0", "p5"]


def test_retrieve_without_scores_and_default_topk(service: RetrievalService, bm25: BM25Retriever) -> None:
    expected = [[{"id": p.id, "contents": p.contents} for p in bm25.search(["lava"], 3)[0]]]
    for payload in ({"queries": ["lava"]}, {"queries": ["lava"], "topk": None, "return_scores": False},
                    {"queries": ["lava"], "topk": 0}):
        response = requests.post(f"{service.url}/retrieve", json=payload, timeout=10)
        assert response.status_code == 200 and response.json() == {"result": expected}
    empty = requests.post(f"{service.url}/retrieve", json={"queries": []}, timeout=10)
    assert empty.json() == {"result": []}


def test_status(service: RetrievalService) -> None:
    response = requests.get(f"{service.url}/status", timeout=10)
    assert response.status_code == 200
    status = response.json()
    batches = status.pop("batches")
    assert status == {"status": "ok", "kind": "bm25", "num_passages": len(TOPICS),
                      "limits": {"default_topk": 3, "max_topk": 5, "max_queries": 4, "max_body_bytes": 2048,
                                 "read_timeout": 2.0, "backlog": 1024, "max_batch_queries": 1024,
                                 "max_discard_bytes": 64 << 20}}
    assert set(batches) == {"requests", "queries", "calls", "largest_call"}
    assert batches["calls"] <= batches["requests"]


BAD_REQUESTS = [
    ("malformed JSON", {"data": b'{"queries": ['}, 400),
    ("not UTF-8", {"data": b'\xff\xfe\x00{'}, 400),
    ("not an object", {"json": ["a", "b"]}, 422),
    ("missing queries", {"json": {"topk": 3}}, 422),
    ("queries a string", {"json": {"queries": "penicillin"}}, 422),
    ("queries not strings", {"json": {"queries": ["ok", 3]}}, 422),
    ("topk a string", {"json": {"queries": ["a"], "topk": "3"}}, 422),
    ("topk a bool", {"json": {"queries": ["a"], "topk": True}}, 422),
    ("topk negative", {"json": {"queries": ["a"], "topk": -1}}, 422),
    ("huge topk", {"json": {"queries": ["a"], "topk": 10**12}}, 422),
    ("too many queries", {"json": {"queries": ["a"] * 5}}, 422),
    ("return_scores a string", {"json": {"queries": ["a"], "return_scores": "yes"}}, 422),
    ("oversized body", {"json": {"queries": ["x" * 3000]}}, 413),
]


@pytest.mark.parametrize("case,kwargs,status", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_4xx_and_server_keeps_serving(service: RetrievalService, case: str, kwargs: dict,
                                                       status: int) -> None:
    response = requests.post(f"{service.url}/retrieve", timeout=10, **kwargs)
    assert response.status_code == status, case
    assert isinstance(response.json()["detail"], str)
    ok = requests.post(f"{service.url}/retrieve", json={"queries": ["chess"], "topk": 1}, timeout=10)
    assert ok.status_code == 200 and ok.json()["result"][0][0]["id"] == "p3"


def test_routes_and_missing_length(service: RetrievalService) -> None:
    assert requests.post(f"{service.url}/search", json={"queries": ["a"]}, timeout=10).status_code == 404
    assert requests.get(f"{service.url}/nothing", timeout=10).status_code == 404
    host, port = service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/retrieve")
    conn.endheaders()  # no Content-Length
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["detail"]
    conn.close()


def test_concurrent_requests(service: RetrievalService) -> None:
    def ask(i: int) -> str:
        payload = {"queries": [TOPICS[i % len(TOPICS)]], "topk": 1}
        return requests.post(f"{service.url}/retrieve", json=payload, timeout=10).json()["result"][0][0]["id"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, range(32))) == [f"p{i % len(TOPICS)}" for i in range(32)]


def test_remote_retriever_equals_in_process(service: RetrievalService, bm25: BM25Retriever) -> None:
    queries = ["nectar", "Himalaya summit", "jazz"]
    assert RemoteRetriever(f"{service.url}/retrieve").search(queries, 4) == bm25.search(queries, 4)
    assert RemoteRetriever(f"{service.url}/retrieve").search([], 4) == []


class FlakyProxy:
    """A real loopback server: the first `failures` POSTs get 503 (after `delay` s), later ones are
    relayed to `target`. Counts the calls it received."""

    def __init__(self, target: str, failures: int, delay: float = 0.0) -> None:
        self.calls = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.calls += 1
                time.sleep(delay)
                if proxy.calls <= failures:
                    status, payload = 503, b'{"detail": "warming up"}'
                else:
                    request = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(request, timeout=10) as response:
                            status, payload = response.status, response.read()
                    except urllib.error.HTTPError as e:
                        status, payload = e.code, e.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/retrieve"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_client_retries_with_backoff(service: RetrievalService, bm25: BM25Retriever) -> None:
    proxy = FlakyProxy(f"{service.url}/retrieve", failures=2)
    try:
        start = time.monotonic()
        client = RemoteRetriever(proxy.url, retries=3, backoff=0.05)
        assert client.search(["coral reef"], 2) == bm25.search(["coral reef"], 2)
        assert proxy.calls == 3 and time.monotonic() - start >= 0.05 + 0.1  # waited 0.05, then 0.1
    finally:
        proxy.close()

    proxy = FlakyProxy(f"{service.url}/retrieve", failures=2)
    try:
        with pytest.raises(RetrieverError, match="2 tries.*503"):
            RemoteRetriever(proxy.url, retries=1, backoff=0.01).search(["coral reef"], 2)
        assert proxy.calls == 2
    finally:
        proxy.close()


def test_client_does_not_retry_client_errors(service: RetrievalService) -> None:
    proxy = FlakyProxy(f"{service.url}/retrieve", failures=0)
    try:
        with pytest.raises(RetrieverError, match="HTTP 422.*topk"):
            RemoteRetriever(proxy.url, retries=3, backoff=0.01).search(["a"], 50)  # above max_topk
        assert proxy.calls == 1
    finally:
        proxy.close()


def test_client_times_out_and_retries(service: RetrievalService) -> None:
    proxy = FlakyProxy(f"{service.url}/retrieve", failures=0, delay=1.0)
    try:
        start = time.monotonic()
        with pytest.raises(RetrieverError, match="2 tries.*timed out"):
            RemoteRetriever(proxy.url, timeout=0.2, retries=1, backoff=0.01).search(["a"], 1)
        assert proxy.calls == 2 and time.monotonic() - start < 1.0
    finally:
        proxy.close()


def free_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_gives_up_on_closed_port() -> None:
    url = f"http://127.0.0.1:{free_port()}/retrieve"  # nothing listens there
    with pytest.raises(RetrieverError, match="3 tries.*(refused|Errno)"):
        RemoteRetriever(url, timeout=1.0, retries=2, backoff=0.01).search(["a"], 3)


@pytest.mark.slow
def test_cli_serves_a_built_index_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    assert build(write_topics(tmp_path / "c.jsonl"), tmp_path / "index", kind="bm25", progress=False)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ssp_jax.retrieval.service", "--index", str(tmp_path / "index"),
                               "--port", str(port), "--topk", "2"], cwd=Path(__file__).parents[1],
                              stderr=subprocess.PIPE, text=True)
    try:
        client = RemoteRetriever(f"http://127.0.0.1:{port}/retrieve", timeout=5.0, retries=60, backoff=0.5,
                                 max_backoff=0.5)  # polls for up to ~30 s while the process starts
        assert client.search(["honeybee hive"], 2)[0][0].id == "p4"
        status = requests.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        assert (status["kind"], status["num_passages"], status["limits"]["default_topk"]) == ("bm25", 8, 2)
    finally:
        server.terminate()  # SIGTERM: a normal stop
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr and "SIGTERM: shutting down" in stderr, stderr


def test_oversized_body_gets_a_readable_413(service: RetrievalService) -> None:
    """A body far past the socket buffers: the server reads and drops it, so the client still gets
    the 413 (closing with unread data resets the connection: a broken pipe mid-send)."""
    host, port = service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # the stdlib client RemoteRetriever uses
    conn.request("POST", "/retrieve", body=b"x" * (4 << 20), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 413 and "exceeds the 2048-byte limit" in json.loads(response.read())["detail"]
    conn.close()


def test_200_concurrent_clients_are_all_served(service: RetrievalService) -> None:
    """Every client connects at once: the listen backlog must hold them (it held 5)."""
    start = threading.Barrier(200)

    def ask(i: int) -> str:
        payload = json.dumps({"queries": [TOPICS[i % len(TOPICS)]], "topk": 1}).encode()
        start.wait()
        with socket.create_connection(service.url.removeprefix("http://").split(":"), timeout=30) as conn:
            conn.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
            reply = b"".join(iter(lambda: conn.recv(65536), b""))
        return json.loads(reply.split(b"\r\n\r\n", 1)[1])["result"][0][0]["id"]

    with ThreadPoolExecutor(200) as pool:
        assert list(pool.map(ask, range(200))) == [f"p{i % len(TOPICS)}" for i in range(200)]


class SlowRetriever:
    """Counts calls and takes `delay` seconds per call, as a dense encoder would."""

    def __init__(self, inner: BM25Retriever, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, []

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self.calls.append((len(queries), k))
        time.sleep(self.delay)
        if "boom" in queries:
            raise RuntimeError("encoder failed")
        return self.inner.search(queries, k)


def test_batcher_merges_waiting_requests_into_one_call(bm25: BM25Retriever) -> None:
    slow = SlowRetriever(bm25, delay=0.3)
    batcher = SearchBatcher(slow, max_batch_queries=64)
    requests_ = [([TOPICS[i % 8], TOPICS[(i + 3) % 8]], 1 + i % 2) for i in range(16)]
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda r: batcher.search(*r), requests_))
    finally:
        batcher.close()
    assert results == [bm25.search(queries, k) for queries, k in requests_]  # each its own k, in order
    assert len(slow.calls) <= 4, slow.calls  # one per k while the first call ran, not 16
    assert batcher.stats.requests == 16 and batcher.stats.queries == 32 and batcher.stats.calls == len(slow.calls)


def test_batcher_caps_a_call_and_fails_only_that_call(bm25: BM25Retriever) -> None:
    slow = SlowRetriever(bm25, delay=0.3)
    batcher = SearchBatcher(slow, max_batch_queries=3)
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(batcher.search, ["jazz"], 1)  # keeps the worker busy while the others queue
            time.sleep(0.1)
            fits = pool.submit(batcher.search, ["chess", "lava"], 1)
            time.sleep(0.05)
            overflow = pool.submit(batcher.search, ["boom", "lava"], 1)  # 2 + 2 > 3: the next call
            assert first.result() == bm25.search(["jazz"], 1)
            assert fits.result() == bm25.search(["chess", "lava"], 1)
            with pytest.raises(RuntimeError, match="encoder failed"):
                overflow.result()
        assert slow.calls == [(1, 1), (2, 1), (2, 1)]
        assert batcher.search(["chess"], 1) == bm25.search(["chess"], 1)  # the worker survived the failure
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.search(["chess"], 1)
