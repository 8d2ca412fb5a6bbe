"""`ruff check` is clean: the configuration in pyproject.toml (pyflakes, pycodestyle, import order,
bugbear) holds for the package, the tests, the benchmarks and the configs. `mypy` is clean on the
typed core that pyproject.toml's [tool.mypy] lists."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_ruff_is_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow  # about 12 s without a .mypy_cache
def test_mypy_is_clean_on_the_core() -> None:
    # Under a second with a warm .mypy_cache; about 12 s cold on 2 cores.
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
