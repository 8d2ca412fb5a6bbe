"""Train-state checkpoints with orbax: device arrays (sharded) plus a JSON record of host state.

A checkpoint is committed atomically by orbax, so a run killed mid-save (SIGKILL, preemption)
leaves the previous checkpoint intact and resumes from it. Host state (question pool, data
position, RNG seeds, step) is JSON so it stays readable and versionable.

Each step's directory also lists its files and their sizes (`FILE_LIST`), checked before a
restore: a checkpoint damaged later (a truncated copy, a full disk, a lost file) is named in one
line without orbax reading it. Other damage is found by the restore itself. `resume` falls back
from a damaged latest step to the newest intact one, setting the damaged steps aside.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ssp_jax.distributed import any_process, is_leader

FILE_LIST = "ssp_files.json"  # {relative path: size in bytes} of a step's files, written after its commit
REASON_CHARS = 300  # an underlying error is cut to this many characters in the one-line message


class CheckpointError(ValueError):
    """A checkpoint that cannot be used. The message is one line naming the step and its directory
    (the CLIs print it alone); the underlying error, when there is one, is its `__cause__`."""


@dataclasses.dataclass
class Resumed:
    """What `Checkpointer.resume` restored, and the later steps it set aside."""

    step: int
    arrays: Any
    host: dict[str, Any]
    damaged: list[int]  # newer steps that could not be restored, moved to <step>.damaged
    superseded: list[int]  # newer intact steps moved to <step>.superseded (an explicit `resume_from`)


class Checkpointer:
    """Saves and restores the train state (sharded arrays through orbax, host state as JSON), and picks
    the step to resume from: the newest intact one, or an explicit `resume_from`, never silently a
    damaged one."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, arrays: Any, host: dict[str, Any]) -> None:
        """Save and wait for the commit: the caller may be about to exit (SIGTERM)."""
        saved = self._manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                                 host=ocp.args.JsonSave(host)))
        self._manager.wait_until_finished()
        if not saved:  # orbax skips a step at or below its latest one
            logging.warning("checkpoint step %d NOT saved: %s already holds step %s", step, self.directory,
                            self.latest_step())
        elif is_leader():
            self._write_file_list(step)

    def restore(self, step: int, abstract_arrays: Any) -> tuple[Any, dict[str, Any]]:
        """Restore into the shardings of `abstract_arrays` (a pytree of jax.ShapeDtypeStruct).
        A missing or damaged step raises `CheckpointError`."""
        restored = self._restore(step, ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract_arrays), host=ocp.args.JsonRestore()))
        return restored["arrays"], restored["host"]

    def restore_subtree(self, step: int, abstract_arrays: Any) -> Any:
        """Restore only the arrays in `abstract_arrays`, a subtree of the saved one (e.g. the policy
        for evaluation), so the optimizer state is never read. Use a fresh Checkpointer: orbax binds
        one handler per item, and `save` / `restore` bind another."""
        placement = ocp.checkpoint_utils.construct_restore_args(abstract_arrays)  # the shardings to restore into
        restored = self._restore(step, ocp.args.Composite(
            arrays=ocp.args.PyTreeRestore(abstract_arrays, partial_restore=True, restore_args=placement)))
        return restored["arrays"]

    def require_step(self, step: int) -> None:
        """Fail, listing the steps there are, unless `step` is a committed checkpoint here."""
        if step not in self.all_steps():
            raise CheckpointError(f"checkpoint step {step} not found in {self.directory}; "
                                  f"steps there: {self._steps_text()}")

    def check_step(self, step: int) -> None:
        """`require_step`, and fail if a file of the step is missing or has another size than saved:
        the checks that need no restore, so a bad `resume_from` stops a run before it builds anything."""
        self.require_step(step)
        self._check_files(step, hint=f"; steps there: {self._steps_text()}")

    def resume(self, abstract_arrays: Any, resume_from: int | None = None) -> Resumed | None:
        """Restore the step to resume from: `resume_from` when given (failing if it is missing or
        damaged), else the latest intact step, warning about each newer damaged one. Steps newer
        than the restored one are renamed aside, so that the run saves them afresh (orbax skips a
        save at or below its latest step). None when there is no checkpoint (and no `resume_from`)."""
        steps = self.all_steps()
        if resume_from is not None:
            self.check_step(resume_from)
            try:
                arrays, host = self.restore(resume_from, abstract_arrays)
            except CheckpointError as e:
                raise CheckpointError(f"{e}; steps there: {self._steps_text()}") from e.__cause__
            later = [s for s in steps if s > resume_from]
            self._set_aside(later, "superseded")
            return Resumed(resume_from, arrays, host, damaged=[], superseded=later)
        failures: list[CheckpointError] = []
        for step in reversed(steps):
            try:
                arrays, host = self.restore(step, abstract_arrays)
            except CheckpointError as e:
                logging.warning("%s", e)
                failures.append(e)
                continue
            damaged = [s for s in steps if s > step]
            if damaged:
                logging.warning("RESUMING FROM AN EARLIER CHECKPOINT: step %d in %s is intact, newer step(s) %s are "
                                "damaged and are moved aside to <step>.damaged; the steps after %d will be trained "
                                "again", step, self.directory, damaged, step)
            self._set_aside(damaged, "damaged")
            return Resumed(step, arrays, host, damaged=damaged, superseded=[])
        if failures:
            raise CheckpointError(f"no intact checkpoint in {self.directory}: "
                                  + "; ".join(_without_directory(str(e), self.directory) for e in failures)
                                  + "; move the directory aside to start over") from failures[0].__cause__
        return None

    def close(self) -> None:
        self._manager.close()

    # -- internals --------------------------------------------------------------------------------

    def _restore(self, step: int, args: Any) -> Any:
        self.require_step(step)
        self._check_files(step)
        where = f"checkpoint step {step} in {self.step_dir(step)}"
        error: Exception | None = None
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:  # orbax and tensorstore raise many types for missing or corrupt files
            error = e
        # Every process must agree (one may read only intact shards while another hits the damage),
        # so that they all restore, or all skip, the same step.
        if any_process(error is not None):
            if error is None:
                raise CheckpointError(f"{where} cannot be restored on another process")
            logging.debug("%s: the full error", where, exc_info=error)
            raise CheckpointError(f"{where} is damaged or unreadable: {_reason(error, self.step_dir(step))}") from error
        return restored

    def _write_file_list(self, step: int) -> None:
        """Record the sizes of the step's files (atomically, beside what orbax committed)."""
        root = self.step_dir(step)
        files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
                 if p.is_file() and p.name != FILE_LIST}
        tmp = root / f"{FILE_LIST}.tmp"
        tmp.write_text(json.dumps(files, indent=0, sort_keys=True))
        os.replace(tmp, root / FILE_LIST)

    def _check_files(self, step: int, hint: str = "") -> None:
        problem = self._file_list_problem(step)
        if any_process(problem is not None):  # every process agrees, as for a restore
            raise CheckpointError(f"checkpoint step {step} in {self.step_dir(step)} is damaged: "
                                  f"{problem or 'a file is missing or resized on another process'}{hint}")

    def _file_list_problem(self, step: int) -> str | None:
        """The first listed file that is missing or has another size. A step saved without the list
        (by older code, or killed between commit and list) is left to the restore to judge."""
        root = self.step_dir(step)
        if not (root / FILE_LIST).is_file():
            return None
        try:
            files = json.loads((root / FILE_LIST).read_text())
        except (OSError, ValueError) as e:
            return f"its file list {FILE_LIST} is unreadable ({type(e).__name__})"
        for name, size in files.items():
            if not (root / name).is_file():
                return f"file {name} is missing"
            actual = (root / name).stat().st_size
            if actual != size:
                return f"file {name} has {actual} bytes, {size} were saved"
        return None

    def _set_aside(self, steps: list[int], label: str) -> None:
        """Rename each step's directory to <step>.<label> (which orbax does not read as a step)."""
        if not steps:
            return
        if is_leader():
            for step in steps:
                target, n = self.directory / f"{step}.{label}", 1
                while target.exists():
                    n += 1
                    target = self.directory / f"{step}.{label}-{n}"
                self.step_dir(step).rename(target)
                logging.warning("checkpoint step %d moved aside to %s (delete it when no longer needed)", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("ssp_jax: checkpoints moved aside")
        self._manager.reload()

    def _steps_text(self) -> str:
        steps = self.all_steps()
        return ", ".join(map(str, steps)) if steps else "none"


def _reason(error: BaseException, directory: Path) -> str:
    """One line on what went wrong: the root cause's first line (tensorstore names the array and
    the file it could not read), without orbax's TensorStore spec dumps, paths relative to the step's
    `directory`, and cut in the middle to `REASON_CHARS`."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    root = chain[-1]
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"\s*(See full TensorStore details|\[tensorstore_spec).*", "", text)
    text = re.sub(r'Error opening "\w+" driver: ', "", text).replace(f"{directory}/", "")
    arrays = [m for e in chain for m in re.findall(r"'path': '([^'/][^']*?)/?'", str(e))]  # relative kvstore paths
    if arrays and arrays[-1] not in text:
        text += f" (array {arrays[-1]})"
    text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    if len(text) > REASON_CHARS:
        head = REASON_CHARS // 3
        text = f"{text[:head]} ... {text[len(text) - (REASON_CHARS - head - 5):]}"
    return text


def _without_directory(message: str, directory: Path) -> str:
    """'checkpoint step 2 in /ckpt/2 is ...' -> 'step 2 is ...', for a list under one directory."""
    return re.sub(rf"^checkpoint (step \d+) in {re.escape(str(directory))}/\d+ ", r"\1 ", message)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with the shardings of a live pytree, for `restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
