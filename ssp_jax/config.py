"""The base config every `configs/*.py` file starts from (ml_collections, MaxText-style base + overrides).

Sections mirror the layers of the package: `model` (what policy to load), `mesh` and
`sharding_rules` (how to lay it out), `engine`, `rollout` and `reader_engine` (sampling), `retrieval`, `data` (the
answer list), `selfplay` (the game), `rl` (the update) and `train` (the loop). Every default of
SSP.md is a field here; each section is validated by the typed dataclass it feeds
(`EngineConfig`, `RolloutConfig`, `SelfPlayConfig`, `RLConfig`), which names a bad field.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig
from ssp_jax.data.microworld import WorldConfig
from ssp_jax.data.wiki_offline import WikiOfflineConfig
from ssp_jax.engine.engine import EngineConfig
from ssp_jax.models.sharding import DEFAULT_RULES
from ssp_jax.rl.config import RLConfig
from ssp_jax.selfplay.judge import JudgeConfig
from ssp_jax.selfplay.step import SelfPlayConfig
from ssp_jax.warmstart.build import WarmStartConfig
from ssp_jax.warmstart.sft import SFTConfig


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # TPU slice to compile the update, reference log-probs and decode step for at start-up, e.g.
    # "v5p:4x4x4" (ssp_jax/aot.py; needs libtpu, requirements-tpu.txt): a config that would not fit
    # its chips' HBM fails before any weight is loaded. Empty = skip the check.
    config.aot_topology = ""
    config.model = ml_collections.ConfigDict(dict(
        hf_path="",  # local HF checkpoint dir (config.json + safetensors); empty = random `init`
        tokenizer_path="",  # tokenizer.json or its dir; empty = the checkpoint dir
        dtype="float32",  # compute dtype: float32 | bfloat16
        param_dtype="float32",  # storage dtype of the policy weights
        remat=False,  # rematerialise each decoder layer in the backward pass
        seed=0,  # seed of the random `init` checkpoint
        # HF config.json fields of the random model written to <workdir>/random_init when hf_path is empty.
        init=dict(model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  max_position_embeddings=4096, architectures=["Qwen2ForCausalLM"]),
        # Micro world and wiki rehearsal: SFT the `init` shape on demonstrations first (the instruct-model analogue).
        warm_start=dataclasses.asdict(WarmStartConfig()),
        sft=dataclasses.asdict(SFTConfig()),
    ))
    config.chat_template = "chatml"  # chatml (Qwen) | llama3
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: the remaining devices
    config.sharding_rules = DEFAULT_RULES  # logical axis -> mesh axis (or axes, or None)
    config.engine = ml_collections.ConfigDict(dataclasses.asdict(EngineConfig(
        num_slots=256, max_cache_len=4096 + 8192, prefill_buckets=(256, 512, 1024, 2048, 4096),
        extend_buckets=(128, 256, 512, 1024), extend_group=16, decode_steps=16)))
    config.rollout = ml_collections.ConfigDict(dataclasses.asdict(RolloutConfig()))
    # The reading RAG reader's own engine (selfplay.rag_reader="read"): prompts up to
    # selfplay.reader_max_prompt_tokens (12,288 for five blocks of 2-4 searches at top-3) and
    # reader_max_tokens new tokens; its KV cache per slot matches the rollout engine's.
    config.reader_engine = ml_collections.ConfigDict(dataclasses.asdict(EngineConfig(
        num_slots=256, max_cache_len=12288 + 128, prefill_buckets=(1024, 2048, 4096, 8192, 12288),
        extend_buckets=(128,), extend_group=16, decode_steps=16)))
    config.retrieval = ml_collections.ConfigDict(dict(
        index="",  # directory written by python -m ssp_jax.retrieval.build (in-process retrieval)
        url="",  # or a Search-R1-compatible service, e.g. http://host:8000/retrieve
        timeout_s=30.0,
    ))
    config.data = ml_collections.ConfigDict(dict(
        # "files": answers + retrieval.index/url below; "microworld": generated in the workdir;
        # "wiki_offline": the wiki rehearsal's real Wikipedia passages and answer list, built in the workdir
        source="files",
        answers="",  # jsonl: {"ground_truth": str | [str], "search_turns": int, "examples": [str]}, or as released
        # by SSP (sys_question_example: one string of questions; search_turns as a digit string)
        shuffle_seed=0,
        search_turns=(),  # keep only answers with these search_turns, e.g. (2, 3); empty = all
        microworld=dataclasses.asdict(WorldConfig()),  # the generated world, when source="microworld"
        wiki_offline=dataclasses.asdict(WikiOfflineConfig()),  # when source="wiki_offline"
        eval_questions="",  # FlashRAG-style QA jsonl for evaluation; microworld: the split below
        eval_split="test",  # microworld held-out split evaluated: "dev" for tuning, "test" for reporting
        eval_limit=500,  # questions per periodic evaluation (fixed-seed subsample)
    ))
    config.selfplay = ml_collections.ConfigDict(dataclasses.asdict(SelfPlayConfig()))
    config.selfplay.reader_path = ""  # frozen reader HF checkpoint; empty = the current policy
    # Optional, yet overridable from the command line (a plain None field is not).
    config.selfplay.proposer_temperature = ml_collections.FieldReference(None, field_type=float)
    config.prompts = ml_collections.ConfigDict(dataclasses.asdict(PromptTemplates()))
    config.judge = ml_collections.ConfigDict(dataclasses.asdict(JudgeConfig()))  # eval's optional LLM judge
    config.rl = ml_collections.ConfigDict(dataclasses.asdict(RLConfig()))
    config.rl.length_buckets = (1024, 2048, 4096, 8192, 12288)  # padded RL sequence lengths
    config.train = ml_collections.ConfigDict(dict(
        steps=200,
        save_every=10,  # checkpoint every N steps (and on SIGTERM)
        max_to_keep=3,
        eval_every=0,  # greedy solver EM/F1 every N steps (and at the end); 0 = never
        eval_at_ends=False,  # greedy eval before the first and after the last step, then summary.json/.png
    ))
    return config
