"""launch/sweep.py: a gin sweep file expands into one training command per grid point."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "launch"))
import sweep  # noqa: E402


def test_distractor_sweep_expands_to_the_papers_ablation(tmp_path):
    commands = sweep.expand(REPO / "configs/sweeps/distractor_blocks.gin", tmp_path, ["--config.train.steps=0"])
    assert [c[c.index("--workdir") + 1] for c in commands] == [
        str(tmp_path / "distractor_blocks" / f"num_distractor_blocks={n}") for n in (0, 1, 4, 7)]
    assert [c[-2] for c in commands] == [f"--config.selfplay.num_distractor_blocks={n}" for n in (0, 1, 4, 7)]


@pytest.mark.slow
def test_grid_with_gin_bindings_runs(tmp_path):
    commands = sweep.expand(REPO / "configs/sweeps/rag_gate_and_reward_shape.gin", tmp_path,
                            ["--config.train.steps=0"])
    assert len(commands) == 4 and all("--gin_bindings=grpo.eps = 1e-06" in c for c in commands)
    assert "--config.selfplay.rag_check=false" in commands[-1]
    result = subprocess.run(commands[-1], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "already at step 0 of 0" in result.stdout


def test_empty_axes_are_rejected(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text('sweep.base_config = "configs/tiny.py"\nsweep.axes = {}\n')
    with pytest.raises(ValueError, match="sweep.axes is empty"):
        sweep.expand(bad, tmp_path)
