"""Role prompts: every field lands in the text, the reader ends with `Answer:`, swaps are checked."""

import dataclasses

import pytest

from ssp_jax.agent.prompts import (
    DEFAULT_TEMPLATES,
    NO_EXAMPLES,
    PromptTemplates,
    canonical_answer,
    proposer_prompt,
    reader_prompt,
    solver_prompt,
    template_fields,
)
from ssp_jax.tokenizer import get_chat_template

EXAMPLES = ["Which river flows through the capital of Eldoria?", "Who designed the tower in Vantor?"]


def test_proposer_prompt_shows_answer_search_count_examples_and_tags():
    text = proposer_prompt("Ada Lovelace", 3, EXAMPLES)
    assert "Target answer: Ada Lovelace\n" in text
    assert "Number of searches to make: 3\n" in text and "exactly 3 searches" in text
    assert text.endswith("\n- Which river flows through the capital of Eldoria?\n- Who designed the tower in Vantor?")
    for marker in ("<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
                   "<question>", "</question>"):
        assert marker in text


@pytest.mark.parametrize("answer", [["Augusta Ada King", "Ada Lovelace"], ("Augusta Ada King", "Ada Lovelace")])
def test_proposer_prompt_shows_only_the_first_of_a_gold_list(answer):
    text = proposer_prompt(answer, 2, EXAMPLES)
    assert "Target answer: Augusta Ada King\n" in text and "Lovelace" not in text


def test_proposer_prompt_without_examples_says_so():
    assert proposer_prompt("Paris", 2, []).endswith(":\n" + NO_EXAMPLES)


@pytest.mark.parametrize("answer", [[], [3]])
def test_bad_gold_for_the_proposer_raises(answer):
    with pytest.raises(ValueError, match="gold answer"):
        proposer_prompt(answer, 2, EXAMPLES)


def test_proposer_needs_at_least_one_search():
    with pytest.raises(ValueError, match="num_searches"):
        proposer_prompt("Paris", 0, EXAMPLES)


def test_canonical_answer():
    assert canonical_answer("Paris") == "Paris"
    assert canonical_answer(["Paris", "City of Light"]) == "Paris"


def test_solver_prompt_has_search_r1_instructions_and_the_question_last():
    text = solver_prompt("Who founded Acme?")
    assert text.endswith("\n\nQuestion: Who founded Acme?")
    for marker in ("<think>", "<search>", "</search>", "<information>", "<answer>", "</answer>"):
        assert marker in text


def test_reader_prompt_ends_with_a_literal_answer_cue():
    docs = "Doc 1 (Title: Acme)\nAcme was founded by Ada."
    text = reader_prompt(docs, "Who founded Acme?")
    assert text.endswith("Documents:\n" + docs + "\n\nQuestion: Who founded Acme?\nAnswer:")


def test_reader_prompt_renders_as_the_last_user_message():
    text = reader_prompt("Doc 1 (Title: A)\nx", "q?")
    rendered = get_chat_template("chatml").render([{"role": "user", "content": text}], add_generation_prompt=True)
    assert rendered.endswith("q?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def test_braces_in_values_are_kept_literally():
    assert solver_prompt("What is {x}?").endswith("Question: What is {x}?")
    assert "Target answer: {0}\n" in proposer_prompt("{0}", 2, ["{answer}"])


def test_default_templates_use_exactly_their_fields():
    assert template_fields(DEFAULT_TEMPLATES.proposer) == {"answer", "num_searches", "examples"}
    assert template_fields(DEFAULT_TEMPLATES.solver) == {"question"}
    assert template_fields(DEFAULT_TEMPLATES.reader) == {"documents", "question"}


def test_swapped_templates_are_used():
    templates = PromptTemplates(solver="Q: {question}", reader="{documents}|{question}|Answer:")
    assert solver_prompt("Who?", templates) == "Q: Who?"
    assert reader_prompt("D", "Q", templates) == "D|Q|Answer:"
    assert proposer_prompt("Paris", 2, [], templates) == proposer_prompt("Paris", 2, [])


@pytest.mark.parametrize("overrides, role", [
    (dict(solver="Q: {query}"), "solver"),
    (dict(solver="no fields"), "solver"),
    (dict(reader="{documents} Answer:"), "reader"),
    (dict(proposer="{answer} {num_searches} {examples} {extra}"), "proposer"),
    (dict(solver="Q: {}"), "solver"),
])
def test_templates_with_wrong_fields_fail_naming_the_role(overrides, role):
    with pytest.raises(ValueError, match=f"prompt template '{role}'"):
        PromptTemplates(**overrides)


def test_templates_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_TEMPLATES.solver = "Q: {question}"
