"""Indexes behind one `Retriever` interface: exact (JAX) vs numpy, ScaNN recall vs exact, BM25, and
the build command end to end with the real MiniLM encoder, resumed after an interruption."""

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from ssp_jax.models.encoder import TextEncoder, minilm_path
from ssp_jax.models.sharding import MeshConfig, make_mesh
from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.build import main as build_main
from ssp_jax.retrieval.calibrate import RecallCheck, calibrate_width, gap_bound
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.embeddings import EmbeddingStore
from ssp_jax.retrieval.exact import ExactIndex
from ssp_jax.retrieval.index import DenseRetriever, load_retriever, read_manifest
from ssp_jax.retrieval.scann_index import ScannIndex


def clustered(num: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres (corpus-like), plus 256 queries from the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # [c, d]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(n: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)  # [n, d]

    return sample(num), sample(256)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_exact_equals_numpy_brute_force() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3001, 48)).astype(np.float32)
    queries = rng.standard_normal((13, 48)).astype(np.float32)
    all_scores = queries @ vectors.T  # [q, n]
    truth = np.argsort(-all_scores, axis=1, kind="stable")[:, :10]
    index = ExactIndex(vectors, chunk_size=256)  # 12 chunks, the last one padded
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(all_scores, truth, axis=1), rtol=1e-5, atol=1e-5)
    scores, ids = ExactIndex(vectors[:5]).search(queries[:2], 10)  # k > n: every row once
    assert ids.shape == (2, 5) and sorted(ids[0]) == [0, 1, 2, 3, 4] and np.isfinite(scores).all()


def test_exact_sharded_equals_single_device(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2999, 32)).astype(np.float32)
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    single = ExactIndex(vectors, chunk_size=128)
    sharded = ExactIndex(vectors, chunk_size=128, mesh=make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    for k in (1, 7, 50):
        s1, i1 = single.search(queries, k)
        s8, i8 = sharded.search(queries, k)
        np.testing.assert_array_equal(i1, i8)
        np.testing.assert_allclose(s1, s8, rtol=1e-6)
    single.save(tmp_path / "exact")
    loaded_scores, loaded_ids = ExactIndex.load(tmp_path / "exact").search(queries, 50)
    np.testing.assert_array_equal(loaded_ids, i1)
    np.testing.assert_allclose(loaded_scores, s1)


@pytest.mark.slow
def test_scann_recall_against_exact(tmp_path: Path) -> None:
    vectors, queries = clustered(20_000, 384, clusters=50, seed=0)
    truth_scores, truth = ExactIndex(vectors).search(queries, 10)
    index = ScannIndex.build(vectors)
    assert not index.brute_force and index.config.num_leaves == 141
    scores, ids = index.search(queries, 10)
    assert recall(ids, truth) >= 0.95
    hit = ids == truth  # reordering rescored the candidates exactly
    np.testing.assert_allclose(scores[hit], truth_scores[hit], atol=1e-5)

    index.save(tmp_path / "scann")
    loaded = ScannIndex.load(tmp_path / "scann")
    assert loaded.config == index.config
    loaded_scores, loaded_ids = loaded.search(queries, 10)
    np.testing.assert_array_equal(loaded_ids, ids)
    np.testing.assert_allclose(loaded_scores, scores)


def test_scann_small_corpus_is_brute_force() -> None:
    vectors, queries = clustered(500, 64, clusters=5, seed=2)
    index = ScannIndex.build(vectors)
    assert index.brute_force
    np.testing.assert_array_equal(index.search(queries, 10)[1], ExactIndex(vectors).search(queries, 10)[1])


COMMON = "The river town has a market, a bridge and an old church near the harbour."
PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, finished in 1889."),
    ("Photosynthesis", "Plants turn sunlight, water and carbon dioxide into glucose and oxygen by photosynthesis."),
    ("Mount Everest", "Mount Everest in the Himalayas is the highest mountain above sea level."),
    ("Jazz", "Jazz is a music genre that began in New Orleans with blues and ragtime roots."),
    ("Penicillin", "Alexander Fleming discovered penicillin, the first antibiotic, in 1928."),
    ("Great Barrier Reef", "The Great Barrier Reef off Queensland, Australia, is the largest coral reef system."),
    ("Chess", "Chess is a board game for two players; each starts with sixteen pieces including a king."),
    ("Volcano", "A volcano is an opening in the crust through which lava, ash and gases erupt."),
    ("Honeybee", "Honeybees collect nectar from flowers and make honey in hives of wax comb."),
    ("Saturn", "Saturn is the sixth planet from the Sun and is famous for its bright rings of ice."),
] + [(f"Town {i}", COMMON) for i in range(20)]


def write_jsonl(path: Path) -> None:
    lines = [json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) for i, (title, text) in enumerate(PASSAGES)]
    lines.insert(5, "not json")  # skipped and reported; row ids stay dense
    path.write_text("\n".join(lines) + "\n")


def test_bm25_finds_rare_words(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl")
    corpus = Corpus.prepare(tmp_path / "c.jsonl", tmp_path / "tfds")
    bm25 = BM25Retriever.build(corpus, chunk_size=7)  # vocabulary grown over several chunks
    queries = ["who discovered penicillin antibiotic", "coral reef queensland", "the a of"]
    hits = bm25.search(queries, 3)
    assert [h[0].title for h in hits[:2]] == ["Penicillin", "Great Barrier Reef"]
    assert hits[0][0].score > hits[0][1].score and len(hits[2]) == 3
    bm25.save(tmp_path / "bm25")
    assert BM25Retriever.load(tmp_path / "bm25", corpus).search(queries, 3) == hits
    assert len(bm25.search(["penicillin"], 1000)[0]) == len(PASSAGES)


@pytest.mark.slow
def test_build_command_resumes_and_serves_minilm(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl")
    out = tmp_path / "index"
    args = ["--corpus", str(tmp_path / "c.jsonl"), "--encoder", "minilm", "--out", str(out),
            "--chunk-rows", "8", "--batch-size", "16", "--no-progress"]
    assert build_main([*args, "--index", "exact", "--max-chunks", "2"]) == 0  # "interrupted" after 2 chunks
    store = EmbeddingStore.open(out / "embeddings")
    assert store.num_chunks == 4 and store.pending() == [2, 3]
    assert not (out / "retriever.json").exists()
    first = store.path(0).stat().st_mtime_ns

    assert build_main([*args, "--index", "exact"]) == 0  # resumes
    assert store.pending() == [] and store.path(0).stat().st_mtime_ns == first
    manifest = read_manifest(out)
    assert (manifest.kind, manifest.num_passages, manifest.corpus) == ("exact", len(PASSAGES), "corpus")

    exact = load_retriever(out)
    assert isinstance(exact, DenseRetriever)
    corpus = exact.corpus
    np.testing.assert_allclose(  # resumed chunks equal a one-shot encoding
        store.load(), exact.encoder.encode_passages([p.contents for p in corpus.get_batch(range(len(corpus)))]),
        atol=1e-5)
    queries = ["Which tower stands in Paris?", "Who found the first antibiotic?", "planet with rings"]
    hits = exact.search(queries, 3)
    assert [h[0].title for h in hits] == ["Eiffel Tower", "Penicillin", "Saturn"]
    assert all(h[0].score > h[1].score > h[2].score for h in hits)

    assert build_main([*args, "--index", "scann"]) == 0  # reuses the embeddings
    scann = load_retriever(out, encoder=exact.encoder)
    assert [[p.id for p in h] for h in scann.search(queries, 3)] == [[p.id for p in h] for h in hits]

    assert build_main(["--corpus", str(out / "corpus"), "--out", str(tmp_path / "bm25"), "--index", "bm25",
                       "--no-progress"]) == 0  # a prepared TFDS corpus used in place
    assert read_manifest(tmp_path / "bm25").corpus == str((out / "corpus").resolve())
    assert load_retriever(tmp_path / "bm25").search(["Fleming penicillin"], 1)[0][0].title == "Penicillin"


@pytest.mark.slow
def test_build_counts_truncated_passages_and_reuses_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A passage over the encoder's max length is counted in the log and the manifest; a second dense
    index of the same encoder and corpus links the first one's embeddings instead of encoding again."""
    write_jsonl(tmp_path / "c.jsonl")
    common = ["--corpus", str(tmp_path / "c.jsonl"), "--encoder", "minilm", "--max-length", "20",
              "--chunk-rows", "8", "--no-progress"]
    with caplog.at_level("INFO"):
        assert build_main([*common, "--index", "exact", "--out", str(tmp_path / "exact")]) == 0
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    expected = sum(len(tokenizer.encode(f'"{t}"\n{x}').ids) > 20 for t, x in PASSAGES)
    assert 0 < expected < len(PASSAGES)
    assert read_manifest(tmp_path / "exact").truncated_passages == expected
    assert f"{expected} of {len(PASSAGES)} passages" in caplog.text and \
        "longer than the encoder's 20 tokens" in caplog.text

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was encoded again")

    monkeypatch.setattr(TextEncoder, "encode_passages", no_encoding)
    assert build_main([*common, "--index", "scann", "--out", str(tmp_path / "scann"),
                       "--embeddings-from", str(tmp_path / "exact")]) == 0
    source, linked = (EmbeddingStore.open(tmp_path / d / "embeddings") for d in ("exact", "scann"))
    assert all(source.path(c).stat().st_ino == linked.path(c).stat().st_ino for c in range(source.num_chunks))
    manifest = read_manifest(tmp_path / "scann")
    assert manifest.truncated_passages == expected and manifest.scann_recall["met"]
    queries = ["Which tower stands in Paris?", "Who found the first antibiotic?"]
    exact, scann = load_retriever(tmp_path / "exact"), load_retriever(tmp_path / "scann")
    assert [[p.id for p in h] for h in scann.search(queries, 3)] == \
        [[p.id for p in h] for h in exact.search(queries, 3)]

    other = [*common[:4], "--max-length", "24", *common[6:]]  # another encoder setting: not the same embeddings
    with pytest.raises(ValueError, match="--embeddings-from .*exact: its embeddings were made with"):
        build_main([*other, "--index", "scann", "--out", str(tmp_path / "other"),
                    "--embeddings-from", str(tmp_path / "exact")])
    with pytest.raises(FileNotFoundError, match="--embeddings-from .*: no embeddings there"):
        build_main([*common, "--index", "scann", "--out", str(tmp_path / "none"), "--embeddings-from", str(tmp_path)])


class IdRows:
    """`n` passages whose text is their row id, for a stand-in encoder that knows the vectors."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_batch(self, rows: np.ndarray) -> list[Passage]:
        return [Passage(str(r), f'"Title"\np{r}') for r in np.asarray(rows).reshape(-1)]


class NoisyEncoder:
    """Query "p{row}" -> that row's vector plus noise: the source passage is near, not exactly there."""

    def __init__(self, vectors: np.ndarray, noise: float) -> None:
        self.vectors, self.noise = vectors, noise

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        rows = [int(t[1:]) for t in texts]
        noise = np.stack([np.random.default_rng(r).standard_normal(self.vectors.shape[1]) for r in rows])
        x = self.vectors[rows] + self.noise * noise.astype(np.float32)  # [q, d], the same for the same text
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_scann_width_is_calibrated_to_exact_recall(tmp_path: Path) -> None:
    """The size-only width (8 of 77 leaves) loses 18 points of recall@10 on these queries; the build's
    check widens the search to the fewest leaves whose gap to exact search, plus two standard errors,
    fits 1 point, and saves it."""
    vectors, _ = clustered(6000, 32, clusters=6000, seed=0)
    index = ScannIndex.build(vectors)
    assert (index.config.num_leaves, index.config.leaves_to_search) == (77, 8)
    check = RecallCheck(sample=500, tolerance=0.01)

    fixed = calibrate_width(index, vectors, NoisyEncoder(vectors, 0.15), IdRows(6000), check, tune=False)
    assert list(fixed.tried) == [8] and not fixed.met and fixed.scann_recall < fixed.exact_recall - 0.1

    report = calibrate_width(index, vectors, NoisyEncoder(vectors, 0.15), IdRows(6000), check)
    assert report.met and report.sample == 500
    assert report.exact_recall - report.scann_recall <= report.gap_bound <= 0.01
    width = report.leaves_to_search
    index.set_leaves_to_search(width - 1)
    assert not calibrate_width(index, vectors, NoisyEncoder(vectors, 0.15), IdRows(6000), check, tune=False).met
    assert f"searching {report.leaves_to_search} of 77 leaves" in report.summary()
    index.set_leaves_to_search(width)
    index.save(tmp_path / "scann")
    assert ScannIndex.load(tmp_path / "scann").config.leaves_to_search == width
    with pytest.raises(ValueError, match=r"leaves_to_search must be in \[1, 77\]"):
        index.set_leaves_to_search(78)


def test_gap_bound_by_hand() -> None:
    exact = np.array([1, 1, 1, 1, 0, 0, 1, 1], bool)
    scann = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)  # one lost, one gained: gap 0
    # differences [0, 0, 1, 0, 0, -1, 0, 0]: mean 0, mean square 2/8, SE sqrt(0.25 / 8)
    assert gap_bound(exact, scann) == pytest.approx(2 * np.sqrt(0.25 / 8))
    assert gap_bound(exact, exact) == 0.0
    assert gap_bound(exact, np.zeros(8, bool), z=0.0) == pytest.approx(6 / 8)
