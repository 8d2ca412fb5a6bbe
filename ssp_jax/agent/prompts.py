"""Prompt texts of the roles of SSP (SSP.md sections 1-2): proposer, solver, RAG reader and judge.

The default wording is our own; the structure follows the paper. Each template is a plain
`str.format` string with named fields, and all of them live in a frozen `PromptTemplates`, so a
config can swap any of them, inline or from a file (docs/reference.md shows how to use the
reference's); a swapped template is checked for exactly the fields its role fills, so a typo fails
at start-up rather than mid-training. Chat rendering is
`ssp_jax.tokenizer.get_chat_template(...).render_ids(...)`.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from pathlib import Path

PROPOSER_TEMPLATE = """\
Your task is to write a difficult quiz question that can only be solved with web searches. \
You are given its answer, and you build the question backwards, starting from that answer.

Target answer: {answer}
Number of searches to make: {num_searches}

How to proceed:
- Plan and reflect inside <think> and </think> whenever you need to.
- To look something up, write <search> your query </search>. The results will be given back to \
you between <information> and </information>.
- Begin with a search about something closely tied to the target answer. From the results, pick \
a fact that connects it to a new entity, then search for that entity, and continue the same way. \
Make exactly {num_searches} searches, each one a new link of the chain, and never reuse a query.
- Once the chain is complete, write a single question whose one and only correct answer is the \
target answer, between <question> and </question>. Solving it must require every link of the \
chain. The question must not contain the target answer, and it must not spell out the \
intermediate entities or facts you found along the way.

Example questions, to show the expected style:
{examples}"""

SOLVER_TEMPLATE = """\
Answer the question below. Do your reasoning inside <think> and </think> whenever you need to. \
If some knowledge is missing, call a search engine by writing <search> query </search>; its top \
results will be given back between <information> and </information>. You may search as often \
as you like. When you are sure, put the final answer between <answer> and </answer>, for \
example <answer> Marie Curie </answer>. Keep the answer short: only the name, date, number or \
phrase asked for, with no explanation.

Question: {question}"""

READER_TEMPLATE = """\
Answer the question using only the documents below. Reply with a short answer of a few words \
and give no explanation.

Documents:
{documents}

Question: {question}
Answer:"""

JUDGE_TEMPLATE = """\
Question: {question}
Gold answers: {golden_answers}
Predicted answer: {prediction}
Does the predicted answer mean the same as one of the gold answers? Reply with yes or no."""

ROLE_FIELDS = {"proposer": frozenset({"answer", "num_searches", "examples"}), "solver": frozenset({"question"}),
               "reader": frozenset({"documents", "question"}),
               "judge": frozenset({"question", "golden_answers", "prediction"})}
FILE_PREFIX = "file:"
NO_EXAMPLES = "(none given)"
Conversation = list[dict[str, str]]  # [{"role": ..., "content": ...}]


def template_fields(template: str) -> frozenset[str]:
    """The named fields a `str.format` template uses."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)


def read_template(name: str, value: str) -> str:
    """`value`, or the text of the file it names as `file:<path>` (UTF-8, relative to the working
    directory), so a paper's prompt files drop in without editing a config module."""
    if not value.startswith(FILE_PREFIX):
        return value
    path = Path(value.removeprefix(FILE_PREFIX))
    if not path.is_file():
        raise ValueError(f"prompts.{name}={value!r}: {path} is not a file")
    return path.read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class PromptTemplates:
    """Every role's prompt (`config.prompts`): a system message (empty = none) and a user message
    for the proposer, the solver, the RAG reader and the judge. Each is inline text or
    `file:<path>`, read when the config loads (the field then holds the text). A role's two
    templates together must use each of its fields and no other, so a typo fails at start-up
    rather than mid-training; a field may sit in either message (the reference's proposer shows its
    example questions in the system message)."""

    proposer_system: str = ""
    proposer: str = PROPOSER_TEMPLATE
    solver_system: str = ""
    solver: str = SOLVER_TEMPLATE
    reader_system: str = ""
    reader: str = READER_TEMPLATE
    judge_system: str = ""
    judge: str = JUDGE_TEMPLATE

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, read_template(field.name, getattr(self, field.name)))
        for role, required in ROLE_FIELDS.items():
            system, user = template_fields(getattr(self, f"{role}_system")), template_fields(getattr(self, role))
            if system | user != required:
                raise ValueError(f"prompt templates {role!r} and '{role}_system' must use the fields "
                                 f"{sorted(required)} between them, found {sorted(user)} and {sorted(system)}")

    def messages(self, role: str, **fields: str | int) -> Conversation:
        """`role`'s conversation: its system message when it has one, then its user message."""
        system = getattr(self, f"{role}_system")
        user = [{"role": "user", "content": getattr(self, role).format(**fields)}]
        return [{"role": "system", "content": system.format(**fields)}, *user] if system else user


DEFAULT_TEMPLATES = PromptTemplates()


def canonical_answer(answer: str | Sequence[str]) -> str:
    """The answer the proposer is shown: the string itself, or the first entry of a list.

    Answer lists (NQ, TriviaQA, ...) put the canonical name first and aliases after it; showing
    one name keeps "the unique answer" well defined, while verification still accepts any alias.
    """
    if isinstance(answer, str):
        return answer
    answers = list(answer)
    if not answers or not isinstance(answers[0], str):
        raise ValueError(f"gold answer must be a string or a non-empty list of strings, got {answer!r}")
    return answers[0]


def format_examples(examples: Sequence[str]) -> str:
    """One `- question` line per example; a visible placeholder when there are none."""
    return "\n".join(f"- {example}" for example in examples) or NO_EXAMPLES


def proposer_fields(answer: str | Sequence[str], num_searches: int, examples: Sequence[str]) -> dict[str, str | int]:
    """The proposer's fields: the canonical answer, the search count and the example questions."""
    if num_searches < 1:
        raise ValueError(f"num_searches must be >= 1, got {num_searches}")
    return dict(answer=canonical_answer(answer), num_searches=num_searches, examples=format_examples(examples))


def proposer_prompt(answer: str | Sequence[str], num_searches: int, examples: Sequence[str],
                    templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """The proposer's user message: a question built backwards from `answer` through exactly
    `num_searches` searches."""
    return templates.proposer.format(**proposer_fields(answer, num_searches, examples))


def proposer_messages(answer: str | Sequence[str], num_searches: int, examples: Sequence[str],
                      templates: PromptTemplates = DEFAULT_TEMPLATES) -> Conversation:
    """The proposer's conversation (`proposer_prompt`, after its system message if any)."""
    return templates.messages("proposer", **proposer_fields(answer, num_searches, examples))


def solver_prompt(question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """The solver's user message: Search-R1-style instructions followed by the question."""
    return templates.solver.format(question=question)


def solver_messages(question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> Conversation:
    return templates.messages("solver", question=question)


def reader_prompt(documents: str, question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """The RAG check's reader: answer from `documents` (already formatted) only, after `Answer:`."""
    return templates.reader.format(documents=documents, question=question)


def reader_messages(documents: str, question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> Conversation:
    return templates.messages("reader", documents=documents, question=question)
