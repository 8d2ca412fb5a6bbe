"""What every entry point shares, in one place: the common flags (`--config`, `--checkpoint`, the
multi-host ones), the typed config they read (`config_from_flags`), flag parsing that explains a bad
override, one-line errors, and the builders of a run's parts (mesh, engine, retriever, the policy of
a checkpoint). Only the entry points (train, eval, serve, export, score, aot) import it, and none of
them imports another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from absl import app, flags
from flax import nnx
from jax.sharding import Mesh
from ml_collections import config_flags

from ssp_jax.agent.rollout import RolloutConfig, RolloutRunner, text_stops
from ssp_jax.checkpoint import Checkpointer, CheckpointError, abstract_like
from ssp_jax.config import Config, ConfigError, RetrievalConfig, load_config, override_error
from ssp_jax.distributed import initialize
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.policy import (
    FrozenModelConfig,
    Policy,
    frozen_checkpoints,
    load_frozen,
    load_policy,
    load_role_model,
)
from ssp_jax.models.sharding import Rules, make_mesh
from ssp_jax.retrieval.base import Retriever
from ssp_jax.retrieval.index import load_retriever
from ssp_jax.retrieval.remote import RemoteRetriever
from ssp_jax.selfplay.judge import Judge
from ssp_jax.tokenizer import TOKENIZER_FILE, get_chat_template

CONFIG = config_flags.DEFINE_config_file("config", None, "path to a configs/*.py file", lock_config=True)
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF checkpoint dir, or orbax <workdir>/checkpoints[/<step>]")
MULTIHOST = flags.DEFINE_bool("multihost", False, "join a multi-process run (jax.distributed.initialize(); "
                               "the cluster is auto-detected on Cloud TPU)")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (it, --num_processes or --process_id imply --multihost)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-process run")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")

HF_FILES = "config.json, model.safetensors (or model.safetensors.index.json and its shards)"


def config_from_flags() -> Config:
    """The typed config of `--config` and its `--config.<section>.<field>=` overrides."""
    return load_config(CONFIG.value)


def config_name() -> str:
    """The `--config` file's stem, e.g. "microworld" (a run's default workdir name)."""
    return Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (pass as `app.run(main, flags_parser=parse_flags)`). An override that
    names no config field, e.g. `--config.rl.nonexistent=1`, exits with one line naming the section
    that lacks it and its near names; ml_collections alone ends in a bare `AttributeError`."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):
        for message in _override_errors(argv):
            sys.exit(f"ssp_jax.{Path(argv[0]).stem}: error: {message}")
        raise


def _override_errors(argv: list[str]) -> Iterator[str]:
    """`--config.<path>: <why>` for each override in `argv` that names no field of its config file."""
    args = [a for a in argv[1:] if a != "--"]
    path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    if path is None and "--config" in args[:-1]:
        path = args[args.index("--config") + 1]
    if path is None:
        return
    file, *config_args = path.split(":", 1)  # "config.py:arg" passes arg to get_config, as ml_collections does
    spec = importlib.util.spec_from_file_location("ssp_config_file", file)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*config_args)
    for arg in args:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if (why := override_error(field, config)) is not None:
                yield f"--config.{field}: {why}"


def check_hf_dir(field: str, path: str, *, tokenizer: bool) -> None:
    """`path` (the value of config `field`) is a Hugging Face model directory: config.json, the
    safetensors weights (every shard its index lists) and, when `tokenizer`, tokenizer.json."""
    directory = Path(path)
    expected = f"expected a Hugging Face model directory holding {HF_FILES}"
    expected += f", {TOKENIZER_FILE}" if tokenizer else ""
    if not directory.is_dir():
        raise ConfigError(f"{field}={path!r} is not a directory; {expected}")
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{field}={path!r}: {index.name} is not a safetensors index ({e!r})") from e
        missing += [shard for shard in shards if not (directory / shard).is_file()]
    elif not (directory / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json)")
    if tokenizer and not (directory / TOKENIZER_FILE).is_file():
        missing.append(f"{TOKENIZER_FILE} (or set config.model.tokenizer_path)")
    if missing:
        raise ConfigError(f"{field}={path!r} lacks {', '.join(missing)}; {expected}")


@contextlib.contextmanager
def one_line_errors(program: str) -> Iterator[None]:
    """A config or checkpoint error ends the program with its one-line message alone (exit status
    1), not a traceback; `--verbosity=1` logs the full chain of the underlying error."""
    try:
        yield
    except (ConfigError, CheckpointError) as e:
        logging.debug("%s failed", program, exc_info=e)
        raise SystemExit(f"{program}: error: {e}") from None


def make_retriever(config: RetrievalConfig, index_dir: str) -> Retriever:
    """The in-process index at `index_dir`, or the remote service at `config.url`."""
    if bool(config.url) == bool(index_dir):
        raise ConfigError("config.retrieval: set exactly one of `index` (a build directory) or `url`")
    if config.url:
        return RemoteRetriever(config.url, timeout=config.timeout_s)
    return load_retriever(index_dir)


def mesh_and_rules(config: Config) -> tuple[Mesh, Rules]:
    """The device mesh of `config.mesh` and the logical-axis rules of `config.sharding_rules`."""
    return make_mesh(config.mesh), config.sharding_rules


def make_engine(policy: Policy, chat_template: str, engine_cfg: EngineConfig, rollout_cfg: RolloutConfig, *,
                mesh: Mesh | None, rules: Rules, stops: StopAutomaton | None = None) -> Engine:
    """The sampling engine of `policy`, stopping at the rollout's stop strings, EOS and end of turn.

    `stops`: another engine's automaton for the same policy and stop strings, reused (building one
    over a 152k vocabulary takes about a second)."""
    tokenizer = policy.tokenizer
    closing = get_chat_template(chat_template).end_of_turn
    end_of_turn = tokenizer.token_to_id(closing) if closing else None
    eos = sorted({tokenizer.eos_id} | ({end_of_turn} if end_of_turn is not None else set()))
    if stops is None:
        stops = text_stops(tokenizer, rollout_cfg.stop_strings, policy.model.cfg.vocab_size)
    return Engine(policy.model, engine_cfg, stops=stops, eos_ids=eos, mesh=mesh, rules=rules)


def check_tokenizer_path(field: str, path: str) -> None:
    """`path` (the value of config `field`) is a tokenizer.json or a directory holding one."""
    if not Path(path).is_file() and not (Path(path) / TOKENIZER_FILE).is_file():
        raise ConfigError(f"{field}={path!r} is neither a {TOKENIZER_FILE} file nor a directory holding one")


def check_role_model(section: str, role: FrozenModelConfig) -> None:
    """A frozen reader's or judge's checkpoint (`config.<section>.path`), tokenizer and chat
    template exist."""
    check_hf_dir(f"config.{section}.path", role.path, tokenizer=not role.tokenizer_path)
    if role.tokenizer_path:
        check_tokenizer_path(f"config.{section}.tokenizer_path", role.tokenizer_path)
    if role.chat_template:
        try:
            get_chat_template(role.chat_template)
        except ValueError as e:
            raise ConfigError(f"config.{section}.chat_template: {e}") from e


def load_role_models(config: Config, roles: Sequence[str], *, mesh: Mesh, rules: Rules) -> dict[str, Policy]:
    """The frozen models of `roles` ("reader", "judge") that the config names, each on the policy's
    mesh; a checkpoint and tokenizer named by both (the paper's 32B reader and judge) load once."""
    models: dict[str, Policy] = {}
    for names, role in frozen_checkpoints({name: getattr(config, name) for name in roles}).items():
        models |= dict.fromkeys(names.split("+"), load_role_model(config.model, role, mesh=mesh, rules=rules))
    return models


def make_judge(config: Config, policy: Policy, *, mesh: Mesh, rules: Rules) -> Judge:
    """The LLM judge of `config.judge` on its loaded model: one tool-less greedy turn per miss, on
    `config.judge_engine`, in the judge's own tokenizer and chat template."""
    template, engine_cfg = config.judge.chat_template or config.chat_template, config.judge_engine
    prompt_budget = min(max(engine_cfg.prefill_buckets), engine_cfg.max_cache_len - config.judge.max_tokens)
    reply_cfg = dataclasses.replace(config.rollout, max_turns=1, max_response_tokens=config.judge.max_tokens,
                                    max_prompt_tokens=prompt_budget)
    engine = make_engine(policy, template, engine_cfg, reply_cfg, mesh=mesh, rules=rules)
    return Judge(RolloutRunner(engine, policy.tokenizer, None, reply_cfg), get_chat_template(template),
                 nnx.state(policy.model, nnx.Param), config.prompts)


def load_eval_policy(config: Config, checkpoint: Path, *, mesh: Mesh, rules: Rules) -> Policy:
    """The policy at an HF checkpoint dir, or `config.model` with the policy weights of an orbax one."""
    if (checkpoint / "config.json").is_file():
        return load_frozen(config.model, checkpoint, mesh=mesh, rules=rules)
    directory, step = _orbax_step(checkpoint)
    # The run's workdir, so a random-init model shape is the one training wrote there.
    policy = load_policy(config.model, mesh=mesh, rules=rules, workdir=directory.parent)
    params = nnx.state(policy.model, nnx.Param)
    tree = Checkpointer(directory).restore_subtree(step, {"policy": abstract_like(nnx.to_pure_dict(params))})
    nnx.replace_by_pure_dict(params, tree["policy"])
    nnx.update(policy.model, params)
    return policy


def _orbax_step(checkpoint: Path) -> tuple[Path, int]:
    """(checkpoint manager dir, step): a step's dir, or the latest step of a manager dir."""
    if checkpoint.name.isdigit():
        return checkpoint.parent, int(checkpoint.name)
    step = Checkpointer(checkpoint).latest_step() if checkpoint.is_dir() else None
    if step is None:
        raise CheckpointError(f"{checkpoint}: neither an HF checkpoint (config.json) nor an orbax checkpoint dir")
    return checkpoint, step


def join_cluster() -> bool:
    """`initialize` from the multi-host flags above (eval's main shares them); before any JAX call."""
    return initialize(MULTIHOST.value, COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
