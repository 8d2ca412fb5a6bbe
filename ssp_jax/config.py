"""The one config tree: typed sections, the ml_collections base every `configs/*.py` starts from, and
`load_config`, which turns a config file's ConfigDict (plus command-line overrides) into `Config`.

Each section is a frozen dataclass owned by the layer that reads it (`ModelConfig` by the models,
`EngineConfig` by the engine, `SelfPlayConfig` by the game, `RLConfig` by the learner, ...); the few
that only the entry points read (`DataConfig`, `RetrievalConfig`, `TrainConfig`) live here. Their
defaults are SSP.md's and are written once, on the dataclasses: `base_config()` is derived from
`Config()`. A bad value fails in `load_config`, naming `config.<section>.<field>` and what was
expected, before anything expensive runs. gin is kept for one job: binding the registered losses
and advantage estimators in sweep files.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig
from ssp_jax.data.wiki_offline import WikiOfflineConfig
from ssp_jax.engine.api import EngineConfig
from ssp_jax.models.policy import FrozenModelConfig, ModelConfig
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig
from ssp_jax.projection import ProjectionConfig
from ssp_jax.rl.config import RLConfig
from ssp_jax.selfplay.judge import JudgeConfig
from ssp_jax.selfplay.step import SelfPlayConfig
from ssp_jax.worlds.microworld import WorldConfig
from ssp_jax.worlds.warmstart.build import WarmStartConfig
from ssp_jax.worlds.warmstart.sft import SFTConfig

DATA_SOURCES = ("files", "microworld", "wiki_offline")
EVAL_SPLITS = ("dev", "test")


class ConfigError(ValueError):
    """A bad config value, found before any expensive work; the message names the field
    (`config.<section>.<field>`) in one line, which the CLIs print alone."""


@dataclasses.dataclass(frozen=True)
class ModelSection(ModelConfig):
    """`config.model`: the policy to load, plus how the built-in worlds make one when no checkpoint
    is named (SFT of the `init` shape on demonstrations: the instruct-model analogue)."""

    warm_start: WarmStartConfig = WarmStartConfig()
    sft: SFTConfig = SFTConfig()


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """`config.retrieval`: an in-process index or a Search-R1-compatible service (exactly one)."""

    index: str = ""  # directory written by python -m ssp_jax.retrieval.build (in-process retrieval)
    url: str = ""  # or a service, e.g. http://host:8000/retrieve
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"retrieval.timeout_s must be > 0, got {self.timeout_s}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: where the answer list (and the eval questions) come from."""

    # "files": answers + retrieval.index/url; "microworld": generated in the workdir; "wiki_offline":
    # the wiki rehearsal's real Wikipedia passages and answer list, built in the workdir.
    source: str = "files"
    # jsonl: {"ground_truth": str | [str], "search_turns": int, "examples": [str]}, or as released by
    # SSP (sys_question_example: one string of questions; search_turns as a digit string).
    answers: str = ""
    shuffle_seed: int = 0
    search_turns: tuple[int, ...] = ()  # keep only answers with these search_turns, e.g. (2, 3); () = all
    microworld: WorldConfig = WorldConfig()  # the generated world, when source="microworld"
    wiki_offline: WikiOfflineConfig = WikiOfflineConfig()  # when source="wiki_offline"
    eval_questions: str = ""  # FlashRAG-style QA jsonl for evaluation; microworld: the split below
    eval_split: str = "test"  # microworld held-out split evaluated: "dev" for tuning, "test" for reporting
    eval_limit: int = 500  # questions per periodic evaluation (fixed-seed subsample)

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data.source={self.source!r}; expected one of {DATA_SOURCES}")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"data.eval_split={self.eval_split!r}; expected one of {EVAL_SPLITS}")
        if self.eval_limit < 1:
            raise ValueError(f"data.eval_limit must be >= 1, got {self.eval_limit}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train`: the loop's length, checkpoints and evaluations."""

    steps: int = 200
    save_every: int = 10  # checkpoint every N steps (and on SIGTERM)
    max_to_keep: int = 3
    eval_every: int = 0  # greedy solver EM/F1 every N steps (and at the end); 0 = never
    eval_at_ends: bool = False  # greedy eval before the first and after the last step, then summary.json/.png

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("save_every", "max_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


def _rollout_engine() -> EngineConfig:
    return EngineConfig(num_slots=256, max_cache_len=4096 + 8192, prefill_buckets=(256, 512, 1024, 2048, 4096),
                        extend_buckets=(128, 256, 512, 1024), extend_group=16, decode_steps=16)


def _reader_engine() -> EngineConfig:
    # The reading RAG reader's own engine (selfplay.rag_reader="read"): prompts up to
    # selfplay.reader_max_prompt_tokens (12,288 for five blocks of 2-4 searches at top-3) and
    # reader_max_tokens new tokens; its KV cache per slot matches the rollout engine's.
    return EngineConfig(num_slots=256, max_cache_len=12288 + 128, prefill_buckets=(1024, 2048, 4096, 8192, 12288),
                        extend_buckets=(128,), extend_group=16, decode_steps=16)


def _judge_engine() -> EngineConfig:
    # The judge's own engine: one greedy turn of judge.max_tokens over a short prompt (the question,
    # the gold answers and one prediction), so a small cache per slot.
    return EngineConfig(num_slots=256, max_cache_len=1024 + 64, prefill_buckets=(256, 512, 1024),
                        extend_buckets=(128,), extend_group=16, decode_steps=8)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every section of a run, typed. Sections mirror the layers: `model` (what policy to load),
    `mesh` and `sharding_rules` (how to lay it out), `engine`, `rollout`, `reader_engine` and
    `judge_engine` (sampling), `retrieval`, `data` (the answer list), `selfplay` (the game),
    `reader` (a frozen RAG reader), `prompts`, `judge` (the optional LLM judge of training and
    eval), `rl` (the update), `train` (the loop) and `projection` (the workload the step-time
    projection assumes)."""

    seed: int = 0
    # TPU slice to compile the update, reference log-probs and decode step for at start-up, e.g.
    # "v5p:4x4x4" (ssp_jax/aot.py; needs libtpu, requirements-tpu.txt): a config that would not fit
    # its chips' HBM fails before any weight is loaded. Empty = skip the check.
    aot_topology: str = ""
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    chat_template: str = "chatml"  # chatml (Qwen) | llama3 | <path>.jinja (a Hugging Face Jinja template)
    mesh: MeshConfig = MeshConfig()  # fsdp=-1: the remaining devices
    sharding_rules: tuple[tuple[Any, ...], ...] = DEFAULT_RULES  # logical axis -> mesh axis (or axes, or None)
    engine: EngineConfig = dataclasses.field(default_factory=_rollout_engine)
    rollout: RolloutConfig = RolloutConfig()
    reader_engine: EngineConfig = dataclasses.field(default_factory=_reader_engine)
    retrieval: RetrievalConfig = RetrievalConfig()
    data: DataConfig = DataConfig()
    selfplay: SelfPlayConfig = SelfPlayConfig()
    reader: FrozenModelConfig = FrozenModelConfig()  # the RAG check's frozen reader; no path = the current policy
    prompts: PromptTemplates = PromptTemplates()
    judge: JudgeConfig = JudgeConfig()
    judge_engine: EngineConfig = dataclasses.field(default_factory=_judge_engine)
    rl: RLConfig = RLConfig()
    train: TrainConfig = TrainConfig()
    projection: ProjectionConfig = ProjectionConfig()  # the workload `python -m ssp_jax.aot --project` assumes


def base_config() -> ml_collections.ConfigDict:
    """`Config()`'s defaults as a ConfigDict, for a config file to adjust and `--config.x.y=v` to
    override. An optional field (None by default) is a typed FieldReference, so the command line
    can set it."""
    return _to_config_dict(Config())


def load_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Config:
    """The typed, validated `Config` of a config file's ConfigDict; a missing section or field
    keeps its default. Raises ConfigError naming `config.<section>.<field>`: an unknown field (with
    the near names), a value of the wrong type, or one its section rejects."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return _build(Config, values, "config")


def override_error(path: str, config: ml_collections.ConfigDict) -> str | None:
    """Why `--config.<path>` names no field of `config`, or None if it does: the section that
    lacks it and its near names (ml_collections would end in a bare `AttributeError`)."""
    node: Any = config
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict):
            return None  # inside a leaf value (e.g. a tuple): ml_collections' own parser reports it
        if part not in node:
            return _unknown("config." + ".".join(parts[:depth]) if depth else "config", part, list(node.keys()))
        node = node[part]
    return None


def _unknown(section: str, name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"{section} has no field {name!r}{hint} (fields: {', '.join(sorted(known))})"


def _to_config_dict(obj: Any) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(type(obj))
    section = ml_collections.ConfigDict()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            section[field.name] = _to_config_dict(value)
        elif isinstance(value, dict):
            section[field.name] = ml_collections.ConfigDict(value)
        elif value is None:
            inner = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
            section[field.name] = ml_collections.FieldReference(None, field_type=inner[0])
        else:
            section[field.name] = value
    return section


def _build(cls: type, values: Mapping[str, Any], path: str) -> Any:
    """`cls(**values)`, recursing into dataclass-typed fields and checking each value's type."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}={values!r}: expected a section of {cls.__name__}'s fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            raise ConfigError(_unknown(path, name, list(fields)))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(typing.cast(type, hint), value, f"{path}.{name}")  # a hint is a class
        else:
            kwargs[name] = _checked(value, hint, f"{path}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e


def _checked(value: Any, hint: Any, path: str) -> Any:
    """`value` as `hint` expects it (lists become tuples), or ConfigError naming the field."""
    if hint is Any:
        return tuple(_checked(v, Any, path) for v in value) if isinstance(value, list) else value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _checked(value, next(a for a in args if a is not type(None)), path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r}: expected a tuple")
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_checked(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r}: expected a mapping")
        return dict(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected and (not isinstance(value, expected) or (hint is not bool and isinstance(value, bool))):
        raise ConfigError(f"{path}={value!r}: expected {hint.__name__}")
    return float(value) if hint is float else value
