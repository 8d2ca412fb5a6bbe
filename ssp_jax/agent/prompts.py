"""User-message texts for the three roles of SSP (SSP.md sections 1-2): proposer, solver, reader.

The wording is our own; the structure follows the paper. Each template is a plain `str.format`
string with named fields, and all three live in a frozen `PromptTemplates`, so a config can swap
any of them; a swapped template is checked for exactly the fields its role fills, so a typo fails
at start-up rather than mid-training. The functions return the user message only; chat rendering
is `ssp_jax.tokenizer.get_chat_template(...).render_ids(...)`.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence

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

PROPOSER_FIELDS = frozenset({"answer", "num_searches", "examples"})
SOLVER_FIELDS = frozenset({"question"})
READER_FIELDS = frozenset({"documents", "question"})
NO_EXAMPLES = "(none given)"


def template_fields(template: str) -> frozenset[str]:
    """The named fields a `str.format` template uses."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)


@dataclasses.dataclass(frozen=True)
class PromptTemplates:
    """The three role templates; a config replaces any of them by field name."""

    proposer: str = PROPOSER_TEMPLATE
    solver: str = SOLVER_TEMPLATE
    reader: str = READER_TEMPLATE

    def __post_init__(self) -> None:
        for role, required in (("proposer", PROPOSER_FIELDS), ("solver", SOLVER_FIELDS),
                               ("reader", READER_FIELDS)):
            found = template_fields(getattr(self, role))
            if found != required:
                raise ValueError(f"prompt template {role!r} must use exactly the fields "
                                 f"{sorted(required)}, found {sorted(found)}")


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


def proposer_prompt(answer: str | Sequence[str], num_searches: int, examples: Sequence[str],
                    templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """Ask for a question built backwards from `answer` through exactly `num_searches` searches."""
    if num_searches < 1:
        raise ValueError(f"num_searches must be >= 1, got {num_searches}")
    return templates.proposer.format(answer=canonical_answer(answer), num_searches=num_searches,
                                     examples=format_examples(examples))


def solver_prompt(question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """Search-R1-style instructions followed by the question."""
    return templates.solver.format(question=question)


def reader_prompt(documents: str, question: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """The RAG check's reader: answer from `documents` (already formatted) only, after `Answer:`."""
    return templates.reader.format(documents=documents, question=question)
