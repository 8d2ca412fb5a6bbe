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

from ssp_jax.retrieval.base import RetrieverError
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
    assert response.json() == {"status": "ok", "kind": "bm25", "num_passages": len(TOPICS),
                               "limits": {"default_topk": 3, "max_topk": 5, "max_queries": 4,
                                          "max_body_bytes": 2048, "read_timeout": 2.0}}


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


def test_cli_serves_a_built_index(tmp_path: Path) -> None:
    assert build(write_topics(tmp_path / "c.jsonl"), tmp_path / "index", kind="bm25", progress=False)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ssp_jax.retrieval.service", "--index", str(tmp_path / "index"),
                               "--port", str(port), "--topk", "2"], cwd=Path(__file__).parents[1])
    try:
        client = RemoteRetriever(f"http://127.0.0.1:{port}/retrieve", timeout=5.0, retries=60, backoff=0.5,
                                 max_backoff=0.5)  # polls for up to ~30 s while the process starts
        assert client.search(["honeybee hive"], 2)[0][0].id == "p4"
        status = requests.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        assert (status["kind"], status["num_passages"], status["limits"]["default_topk"]) == ("bm25", 8, 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
