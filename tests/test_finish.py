"""Finish reasons counted per role, and the warning that names the budget to raise."""

import pytest

from ssp_jax.agent import trajectory as tj
from ssp_jax.selfplay.finish import finish_shares, finish_warnings


def ended(*reasons):
    return [tj.Trajectory(0, i, [1], finish_reason=r) for i, r in enumerate(reasons)]


def test_every_reason_is_reported_zeros_included():
    shares = finish_shares("solver", ended("answer", "answer", "length", "eos"))
    assert shares == {"solver/finish_answer": 0.5, "solver/finish_eos": 0.25, "solver/finish_length": 0.25,
                      "solver/finish_prompt_too_long": 0.0, "solver/finish_max_turns": 0.0,
                      "solver/finish_no_query": 0.0, "solver/finish_retriever_error": 0.0}
    assert set(finish_shares("reader", [])) == {f"reader/finish_{r}" for r in tj.FINISH_REASONS}
    with pytest.raises(ValueError, match="unknown finish reasons"):
        finish_shares("solver", ended("exploded"))


def test_warnings_name_the_budget_of_each_role():
    metrics = {"proposer/finish_length": 0.2, "proposer/finish_answer": 0.8, "solver/finish_max_turns": 0.04,
               "solver/finish_eos": 0.96, "reader/finish_prompt_too_long": 0.5, "reader/finish_length": 0.5,
               "solver/finish_retriever_error": 0.3}
    messages = finish_warnings(metrics, 0.05, reader_reads=True)
    assert len(messages) == 4  # solver max_turns (4%) is under the share; stops and EOS never warn
    assert messages[0].startswith("20% of proposer trajectories ended with 'length'")
    assert "raise rollout.max_response_tokens" in messages[0]
    assert "retriever failed" in messages[1]
    assert "raise selfplay.reader_max_tokens" in messages[2]
    assert "raise selfplay.reader_max_prompt_tokens" in messages[3]
    searching = finish_warnings(metrics, 0.05, reader_reads=False)  # the searching reader uses the rollout's
    assert "raise rollout.max_response_tokens" in searching[2] and "raise rollout.max_prompt_tokens" in searching[3]
    assert finish_warnings(metrics, 1.0, reader_reads=True) == []


def test_generated_spans_are_the_runs_the_policy_wrote():
    traj = tj.Trajectory(0, 0, [1])
    traj.append_generated([5, 6], [0.0, 0.0])
    traj.append_tool([7, 8, 9], "q", [])
    traj.append_generated([10], [0.0])
    assert traj.generated_spans() == [[5, 6], [10]]
    assert tj.Trajectory(0, 0, [1]).generated_spans() == []
