"""`DocumentSet`: the in-memory retriever of the RAG check's searching reader."""

import pytest

from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.document_set import DocumentSet

ORVSEK = Passage("1", '"Orvsek"\nOrvsek is situated in Gilvel. People born in Orvsek include Yalbri.')
GILVEL = Passage("2", '"Gilvel"\nThe cities of Gilvel include Orvsek and Rokgru. Rokgru is the capital.')
YALBRI = Passage("3", '"Yalbri"\nYalbri is a painter, born in Orvsek.')


def test_the_entity_s_own_passage_ranks_first():
    """Every passage mentions Orvsek, but only one is titled so: the title counts double."""
    docs = DocumentSet([GILVEL, YALBRI, ORVSEK])
    assert [p.id for p in docs.search(["Orvsek"], 3)[0]] == ["1", "2", "3"]  # ties keep the given order
    assert docs.search(["Yalbri", "Rokgru capital", "where is Gilvel"], 1) == [[YALBRI], [GILVEL], [GILVEL]]


def test_scores_are_idf_weighted_overlap_by_hand():
    docs = DocumentSet([ORVSEK, GILVEL, YALBRI])
    # "orvsek" is in all 3 passages: idf = log(1 + 3/3); "painter" only in Yalbri's: log(1 + 3/1).
    idf_all, idf_one = pytest.approx(0.6931, abs=1e-4), 1.3863
    assert docs.score("orvsek", 0) == pytest.approx(3 * 0.6931, abs=1e-3)  # in text and title
    assert docs.score("orvsek", 1) == idf_all
    assert docs.score("Painter, Orvsek!", 2) == pytest.approx(idf_one + 0.6931, abs=1e-3)
    assert docs.score("unknown words", 0) == 0.0


def test_duplicates_are_dropped_and_k_is_clipped():
    docs = DocumentSet([ORVSEK, GILVEL, ORVSEK])
    assert docs.passages == [ORVSEK, GILVEL]
    assert docs.search(["nothing matches"], 5) == [[ORVSEK, GILVEL]]
    with pytest.raises(ValueError, match="k must be positive"):
        docs.search(["Orvsek"], 0)
