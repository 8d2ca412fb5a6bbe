"""The retrieval contract: Search-R1 `contents` parsing and `Passage`."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ssp_jax.retrieval.base import Passage, split_search_r1_contents


def test_split_search_r1_contents() -> None:
    assert split_search_r1_contents('"Paris"\nParis is the capital.\nSecond line.') == (
        "Paris",
        "Paris is the capital.\nSecond line.",
    )
    assert split_search_r1_contents('"Paris" is the capital.') == ("", '"Paris" is the capital.')
    assert split_search_r1_contents("Paris\nParis is the capital.") == ("Paris", "Paris is the capital.")
    assert split_search_r1_contents('"A "quoted" title"\ntext') == ('A "quoted" title', "text")
    assert split_search_r1_contents('"\ntext') == ('"', "text")
    assert split_search_r1_contents("") == ("", "")


@settings(max_examples=50, deadline=None)
@given(
    title=st.text().filter(lambda t: "\n" not in t and t == t.strip()),
    text=st.text(),
)
def test_split_search_r1_contents_inverts_corpus_format(title: str, text: str) -> None:
    assert split_search_r1_contents(f'"{title}"\n{text}') == (title, text)


def test_passage_exposes_title_and_text() -> None:
    passage = Passage(id="7", contents='"Vantor Bridge"\nThe bridge spans the Elm.', score=0.5)
    assert (passage.title, passage.text) == ("Vantor Bridge", "The bridge spans the Elm.")
