"""The short wiki rehearsal end to end (`benchmarks/wiki_rehearsal.py --short`): the real Qwen2.5
BPE, real Wikipedia passages and the paper's lengths through `python -m ssp_jax.train`. It takes
about 15 minutes on 2 cores, too long for CI, so it is deselected unless asked for:
`python -m pytest -m rehearsal`. docs/research-log/2026-12-04-wiki_rehearsal.md has the full run's figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.rehearsal
@pytest.mark.slow
def test_short_rehearsal_passes_its_checks(tmp_path):
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user runs it (conftest sets 8 fake ones)
    result = subprocess.run([sys.executable, "-m", "benchmarks.wiki_rehearsal", "--workdir", str(tmp_path), "--short"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAIL" not in result.stdout and result.stdout.count("PASS") == 4
