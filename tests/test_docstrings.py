"""Every public class says why it exists: a contract (`Retriever`, `Trajectory`, `RLConfig`, ...) is
read far more often than it is written, and its docstring is where a newcomer starts."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ssp_jax"


def test_every_public_class_has_a_docstring() -> None:
    missing = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
               for path in sorted(PACKAGE.rglob("*.py"))
               for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and not ast.get_docstring(node)]
    assert not missing, "public classes without a docstring:\n" + "\n".join(missing)
