"""The Colab demo notebook executes end to end (a shortened micro-world run) and the run writes
its before / after summary; so neither the notebook nor the demo flow can rot."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
# A few seconds of each phase: tiny warm start, 6 held-out questions, 2 SSP steps.
SHORT = ["--config.model.sft.steps=3", "--config.model.sft.warmup_steps=1", "--config.model.sft.batch_size=4",
         "--config.model.warm_start.num_solver=8",
         "--config.model.warm_start.num_proposer=4", "--config.model.warm_start.num_reader=4",
         "--config.model.warm_start.passage_repeats=0", "--config.data.eval_limit=6", "--config.train.steps=2",
         "--config.selfplay.batch_size=2", "--config.selfplay.solver_samples=2", "--config.engine.num_slots=8",
         "--config.rollout.max_turns=2"]


@pytest.mark.slow
def test_notebook_runs_the_demo_and_writes_the_summary(tmp_path, monkeypatch):
    workdir = tmp_path / "demo"
    monkeypatch.setenv("SSP_JAX_ROOT", str(REPO))
    monkeypatch.setenv("SSP_DEMO_WORKDIR", str(workdir))
    monkeypatch.setenv("SSP_DEMO_OVERRIDES", " ".join(SHORT))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")  # the demo's own default
    notebook = nbformat.read(REPO / "notebooks" / "ssp_colab.ipynb", as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   ).execute()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["questions"] == 6 and summary["steps"] == 2
    assert set(summary["em_before"]) == set(summary["em_after"]) and "all" in summary["em_after"]
    assert 0.0 <= summary["em_after"]["all"] <= 1.0
    assert [step for step, _ in summary["curves"]["solver/reward"]] == [1, 2]
    assert (workdir / "summary.png").stat().st_size > 0
    assert len((workdir / "eval_before.jsonl").read_text().splitlines()) == 6
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "backend: cpu" in outputs and "python -m ssp_jax.train --config configs/qwen2_5_7b.py" in outputs
