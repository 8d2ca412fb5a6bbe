"""`benchmarks/microworld_bottlenecks.classify`: where a solver trajectory left its gold chain,
against hand-made search records."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "microworld_bottlenecks.py"
spec = importlib.util.spec_from_file_location("microworld_bottlenecks", PATH)
bottlenecks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bottlenecks)


@pytest.mark.parametrize("got, correct, mode", [
    (["a", "b"], True, "correct"),
    (["x"], True, "correct"),  # a right answer counts whatever the searches were
    (["a", "b"], False, "read_wrong"),
    (["a", "b", "b"], False, "read_wrong"),  # searched the chain, then again
    (["a"], False, "stopped_early"),
    ([], False, "stopped_early"),
    (["x", "b"], False, "off_chain_at_hop1"),
    (["a", "a"], False, "off_chain_at_hop2"),  # the first query repeated
    (["a", None], False, "off_chain_at_hop2"),  # a search that returned nothing
])
def test_classify(got, correct, mode):
    assert bottlenecks.classify(["a", "b"], got, correct) == mode
