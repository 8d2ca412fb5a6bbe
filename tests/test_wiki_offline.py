"""The wiki rehearsal's data from real Wikipedia lead paragraphs: passages, links, cloze questions,
and an answer list in the SSP release's format that the project's own reader accepts."""

import json

import pytest

from ssp_jax.data.answers import load_answers
from ssp_jax.data.wiki_offline import (
    Article,
    Mention,
    WikiOfflineConfig,
    answer_records,
    cloze_question,
    cloze_questions,
    lead_articles,
    mentions,
    passages,
    sample_articles,
    write_corpus,
)
from ssp_jax.retrieval.base import split_search_r1_contents

ARTICLES = [
    Article("2001: A Space Odyssey", "2001: A Space Odyssey is a 1968 film directed by Stanley Kubrick. "
            "It was shot in England.", "1968 film by Stanley Kubrick", "Arts"),
    Article("Stanley Kubrick", "Stanley Kubrick was an American filmmaker. He lived in England.",
            "American filmmaker (1928–1999)", "People"),
    Article("England", "England is a country. Its capital is London, near Central Park Lane.",
            "Country within the United Kingdom", "Geography"),
    Article("Park", "A park is an area of land.", "Area of land for recreation", "Everyday life"),
]


def test_real_articles_load():
    articles = lead_articles()
    assert len(articles) > 9900 and all(a.title and a.text.strip() for a in articles)
    assert len(lead_articles("fr-fr")) > 5000
    with pytest.raises(ValueError, match="language 'de-de'"):
        lead_articles("de-de")


def test_passages_are_100_word_windows_in_search_r1_format(tmp_path):
    long = Article("Long", " ".join(f"w{i}" for i in range(250)), "", "")
    cut = passages([long, ARTICLES[1]], words=100)
    assert [len(text.split()) for _, text in cut] == [100, 100, 50, 10]
    assert cut[1] == ("Long", " ".join(f"w{i}" for i in range(100, 200)))
    path = write_corpus([long], tmp_path / "corpus.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["0", "1", "2"]
    assert split_search_r1_contents(lines[2]["contents"]) == ("Long", " ".join(f"w{i}" for i in range(200, 250)))


def test_mentions_are_whole_names():
    found = {(m.source, m.target) for m in mentions(ARTICLES)}
    # "Park" inside "Central Park Lane" is not the article Park; an article never links itself.
    assert found == {(0, 1), (0, 2), (1, 2)}


def test_cloze_questions_ask_for_the_target_and_name_the_source():
    lowercase = frozenset({"country", "area"})
    kubrick = cloze_question(ARTICLES, Mention(0, 1, "2001: A Space Odyssey is a 1968 film directed by Stanley "
                                                   "Kubrick."), lowercase)
    assert kubrick == "2001: A Space Odyssey is a 1968 film directed by which American filmmaker (1928–1999)?"
    england = cloze_question(ARTICLES, Mention(1, 2, "He lived in England."), lowercase)
    assert england == "Stanley Kubrick lived in which country within the United Kingdom?"  # pronoun -> source
    twice = Mention(1, 2, "England and England.")
    assert cloze_question(ARTICLES, twice, lowercase) is None


def test_answer_records_read_back_in_the_release_format(tmp_path):
    articles = sample_articles(WikiOfflineConfig(max_articles=1500, seed=0))
    questions = cloze_questions(articles)
    records = answer_records(articles, questions, num_examples=3, seed=0)
    assert len(records) == len(questions) > 100
    assert {r["search_turns"] for r in records} == {"1", "2", "3"}
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = load_answers(path)
    assert len(loaded) == len(records)
    for record, answer in zip(records, loaded):
        assert answer.gold == record["ground_truth"] and len(answer.examples) == 3
        assert all(answer.gold not in example for example in answer.examples)
        assert not any(e.startswith("Question") for e in answer.examples)  # the release's labels removed
