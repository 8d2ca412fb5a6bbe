"""Why trajectories ended, counted per role, and a warning naming the budget to raise.

A trajectory that runs into a limit is not an error the rollout raises: it is scored like any
other. A RAG reader whose prompt is too long answers nothing, so the question silently counts as
invalid; a solver cut off by its token budget earns 0. So every finish reason of every role
(proposer, solver, reader) goes to metrics.jsonl as a share, zero shares included, and when a
reason other than a stop string or EOS passes `selfplay.finish_warning_share` a warning says
which setting to raise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from ssp_jax.agent import trajectory as tj

NATURAL = (tj.FINISH_ANSWER, tj.FINISH_EOS)  # the policy stopped on its own
ROLES = ("proposer", "solver", "reader")
# The setting that limits each reason, for rollouts that search (rollout.*) and for the tool-less
# RAG reader (selfplay.reader_*); None: not a budget.
_ROLLOUT_LIMITS = {
    tj.FINISH_LENGTH: "rollout.max_response_tokens (with engine.max_cache_len and the largest engine.extend_buckets)",
    tj.FINISH_PROMPT_TOO_LONG: "rollout.max_prompt_tokens (with the largest engine.prefill_buckets)",
    tj.FINISH_MAX_TURNS: "rollout.max_turns",
}
_READER_LIMITS = {
    tj.FINISH_LENGTH: "selfplay.reader_max_tokens",
    tj.FINISH_PROMPT_TOO_LONG: "selfplay.reader_max_prompt_tokens (with reader_engine.prefill_buckets and "
                               "reader_engine.max_cache_len)",
}
_NOT_A_BUDGET = {
    tj.FINISH_RETRIEVER_ERROR: "the retriever failed after its retries (check retrieval.url or retrieval.index; "
                               "rollout.retrieval_attempts)",
    tj.FINISH_NO_QUERY: "the policy wrote <search> with no parsable query",
}


def finish_shares(role: str, trajectories: Sequence[tj.Trajectory]) -> dict[str, float]:
    """`<role>/finish_<reason>`: the share of `trajectories` that ended so, for every reason."""
    counts = Counter(t.finish_reason for t in trajectories)
    unknown = set(counts) - set(tj.FINISH_REASONS)
    if unknown:
        raise ValueError(f"unknown finish reasons {sorted(unknown)}; known: {tj.FINISH_REASONS}")
    return {f"{role}/finish_{reason}": counts[reason] / max(len(trajectories), 1) for reason in tj.FINISH_REASONS}


def finish_warnings(metrics: Mapping[str, float], threshold: float, *, reader_reads: bool) -> list[str]:
    """One message per (role, reason) whose share passes `threshold`, naming what limits it.

    `reader_reads`: the RAG reader is the tool-less reading one (its own budgets), not the solver-like
    searching reader (the rollout's budgets).
    """
    messages = []
    for role in ROLES:
        limits = _READER_LIMITS if role == "reader" and reader_reads else _ROLLOUT_LIMITS
        for reason in tj.FINISH_REASONS:
            share = metrics.get(f"{role}/finish_{reason}", 0.0)
            if reason in NATURAL or share <= threshold:
                continue
            limit = limits.get(reason)
            why = f"raise {limit}" if limit else _NOT_A_BUDGET.get(reason, f"{reason} is not expected here")
            messages.append(f"{share:.0%} of {role} trajectories ended with '{reason}' (warning share "
                            f"{threshold:.0%}): {why}")
    return messages
