"""`ruff check` is clean: the configuration in pyproject.toml (pyflakes, pycodestyle, import order,
bugbear) holds for the package, the tests, the benchmarks and the configs."""

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
