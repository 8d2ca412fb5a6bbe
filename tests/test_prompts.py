"""Role prompts: every field lands in the text, the reader ends with `Answer:`, swaps are checked."""

import dataclasses
import sys
from pathlib import Path

import pytest

from ssp_jax.agent.prompts import (
    DEFAULT_TEMPLATES,
    NO_EXAMPLES,
    PromptTemplates,
    canonical_answer,
    proposer_messages,
    proposer_prompt,
    reader_messages,
    reader_prompt,
    solver_messages,
    solver_prompt,
    template_fields,
)
from ssp_jax.config import load_config
from ssp_jax.tokenizer import get_chat_template

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import qwen2_5_7b_reference  # noqa: E402

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
    with pytest.raises(ValueError, match=f"prompt templates '{role}'"):
        PromptTemplates(**overrides)


def test_templates_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_TEMPLATES.solver = "Q: {question}"


def test_a_template_can_be_read_from_a_file(tmp_path):
    (tmp_path / "solver.txt").write_text("Solve: {question}\n", encoding="utf-8")
    templates = PromptTemplates(solver=f"file:{tmp_path / 'solver.txt'}")
    assert templates.solver == "Solve: {question}\n" and solver_prompt("Who?", templates) == "Solve: Who?\n"
    with pytest.raises(ValueError, match=r"prompts.reader='file:.*missing.txt': .*missing.txt is not a file"):
        PromptTemplates(reader=f"file:{tmp_path / 'missing.txt'}")
    (tmp_path / "bad.txt").write_text("{documents}", encoding="utf-8")  # the question is missing
    with pytest.raises(ValueError, match=r"'reader' and 'reader_system' must use the fields \['documents', "
                                         r"'question'\] between them, found \['documents'\] and \[\]"):
        PromptTemplates(reader=f"file:{tmp_path / 'bad.txt'}")


def test_a_role_may_split_its_fields_between_system_and_user_messages():
    templates = PromptTemplates(proposer_system="Examples:\n{examples}", proposer="Answer {answer} in {num_searches}.")
    assert proposer_messages("Paris", 2, EXAMPLES[:1], templates) == [
        {"role": "system", "content": f"Examples:\n- {EXAMPLES[0]}"},
        {"role": "user", "content": "Answer Paris in 2."}]
    assert solver_messages("Who?") == [{"role": "user", "content": solver_prompt("Who?")}]  # no system message
    with pytest.raises(ValueError, match="'solver' and 'solver_system'"):
        PromptTemplates(solver_system="{question} {extra}")
    with pytest.raises(ValueError, match="'proposer' and 'proposer_system'"):  # {examples} is in neither
        PromptTemplates(proposer="Answer {answer} in {num_searches}.")


def test_the_reference_prompt_files_drop_in():
    """configs/qwen2_5_7b_reference.py reads every role's two messages from configs/prompts/reference,
    and each lands where the reference puts it."""
    config = load_config(qwen2_5_7b_reference.get_config())
    templates = config.prompts
    proposer = proposer_messages("Marie Curie", 3, EXAMPLES, templates)
    assert [m["role"] for m in proposer] == ["system", "user"]
    system = proposer[0]["content"]
    assert system.startswith("You are an expert question creator.") and f"- {EXAMPLES[1]}" in system
    assert proposer[1]["content"].startswith("The answer I provided is: Marie Curie\nYou need to create a question "
                                             "that requires 3 searches.")
    solver = solver_messages("Who?", templates)
    assert solver[0] == {"role": "system", "content": "You are a helpful and harmless assistant."}
    assert solver[1]["content"].startswith("Answer the given question.") and solver[1]["content"].endswith(
        "Question: Who?")
    reader = reader_messages("Doc 1 (Title: X)\ntext", "Who?", templates)
    assert reader[0]["content"] == "You are a helpful assistant."
    assert "Materials: Doc 1 (Title: X)\ntext\n Question: Who?" in reader[1]["content"]
    assert 'respond only with "Correct" or "Wrong"' in templates.judge
    assert config.chat_template.endswith("prompts/reference/chat_template.jinja")
    assert (config.reader.chat_template, config.judge.chat_template) == ("chatml", "chatml")
