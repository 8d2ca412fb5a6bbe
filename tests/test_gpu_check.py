"""benchmarks/gpu_check.py runs end to end at a tiny shape on CPU, so the prepared GPU check is known
to work before a GPU machine's few minutes are spent on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_a_tiny_shape(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--shape", "tiny", "--json", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["attention"] == "xla" and report["decode"]["new_tokens"] == 4 * 16
    assert report["decode"]["rows_differing"] == 0  # fp32 on CPU: the same greedy tokens as transformers
    assert report["update"]["tokens"] == 4 * 128 and report["update"]["mfu"] is None  # no peak for a CPU
    assert "decode: ours" in result.stdout and "update:" in result.stdout
