"""Train-state checkpoints with orbax: device arrays (sharded) plus a JSON record of host state.

A checkpoint is committed atomically by orbax, so a run killed mid-save (SIGKILL, preemption)
leaves the previous checkpoint intact and resumes from it. Host state (question pool, data
position, RNG seeds, step) is JSON so it stays readable and versionable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, *, max_to_keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, arrays: Any, host: dict[str, Any]) -> None:
        """Save and wait for the commit: the caller may be about to exit (SIGTERM)."""
        self._manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                         host=ocp.args.JsonSave(host)))
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_arrays: Any) -> tuple[Any, dict[str, Any]]:
        """Restore into the shardings of `abstract_arrays` (a pytree of jax.ShapeDtypeStruct)."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(abstract_arrays), host=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for missing/corrupt files
            raise ValueError(f"{self.directory / str(step)}: checkpoint cannot be restored ({type(e).__name__}: "
                             f"{e}); move it aside to resume from an earlier step") from e
        return restored["arrays"], restored["host"]

    def restore_subtree(self, step: int, abstract_arrays: Any) -> Any:
        """Restore only the arrays in `abstract_arrays`, a subtree of the saved one (e.g. the policy
        for evaluation), so the optimizer state is never read. Use a fresh Checkpointer: orbax binds
        one handler per item, and `save` / `restore` bind another."""
        placement = ocp.checkpoint_utils.construct_restore_args(abstract_arrays)  # the shardings to restore into
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                arrays=ocp.args.PyTreeRestore(abstract_arrays, partial_restore=True, restore_args=placement)))
        except Exception as e:  # orbax raises many types for missing/corrupt files
            raise ValueError(f"{self.directory / str(step)}: checkpoint cannot be restored ({type(e).__name__}: "
                             f"{e})") from e
        return restored["arrays"]

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with the shardings of a live pytree, for `restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
