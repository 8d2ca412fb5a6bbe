"""The base config every `configs/*.py` file starts from (ml_collections, MaxText-style base + overrides).

Sections mirror the layers of the package: `model` (what policy to load), `mesh` and
`sharding_rules` (how to lay it out). Later sections (engine, retrieval, selfplay, rl) are added by
the issues that build those layers; every default of SSP.md becomes a field here.
"""

from __future__ import annotations

import ml_collections

from ssp_jax.models.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
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
    ))
    config.chat_template = "chatml"  # chatml (Qwen) | llama3
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: the remaining devices
    config.sharding_rules = DEFAULT_RULES  # logical axis -> mesh axis (or axes, or None)
    return config
