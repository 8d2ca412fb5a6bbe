"""The before / after summary: EM by hop count from per-question records, curves from metrics."""

import json

from ssp_jax.report import by_hops, summarize_run, write_summary


def record(em: float, hops: int, searches: int = 1) -> dict:
    return {"em": em, "hops": hops, "searches": searches}


def test_by_hops_and_gain(tmp_path):
    before = [record(1, 1), record(0, 1), record(0, 2), record(0, 3)]
    after = [record(1, 1, 1), record(1, 1, 1), record(1, 2, 2), record(0, 3, 3)]
    assert by_hops(before) == {"all": 0.25, "1hop": 0.5, "2hop": 0.0, "3hop": 0.0}
    history = [{"step": 1, "solver/reward": 0.25, "selfplay/valid_rate": 0.5},
               {"step": 2, "solver/reward": 0.75, "selfplay/valid_rate": None}]
    summary = summarize_run(before, after, history)
    assert summary["em_gain"] == {"all": 0.5, "1hop": 0.5, "2hop": 1.0, "3hop": 0.0}
    assert (summary["searches_before"], summary["searches_after"], summary["steps"]) == (1.0, 1.75, 2)
    assert summary["curves"]["solver/reward"] == [(1, 0.25), (2, 0.75)]
    assert summary["mean_valid_rate"] == 0.5 and summary["mean_rag_pass_rate"] is None
    json_path, png_path = write_summary(tmp_path, summary)
    assert json.loads(json_path.read_text())["em_after"]["2hop"] == 1.0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
