"""The smallest end-to-end run: a tiny random Qwen2-shaped policy playing SSP on a generated micro
world with a BM25 index, without a warm start. It exercises every part of the loop (rollouts, RAG
check, rewards, both updates, checkpoints) in about a minute; a random policy cannot write valid
questions, so rewards stay near zero. The embedded default that learns is configs/microworld.py."""

from ssp_jax.config import base_config


def get_config():
    config = base_config()
    config.train.steps = 2
    config.train.save_every = 1
    config.data.source = "microworld"
    config.selfplay.batch_size = 4
    config.selfplay.solver_samples = 2
    config.selfplay.num_distractor_blocks = 1
    config.selfplay.reader_max_tokens = 16
    config.rollout.max_turns = 2
    config.rollout.topk = 1
    config.rollout.max_prompt_tokens = 2048
    config.rollout.max_response_tokens = 48
    config.engine.num_slots = 8
    config.engine.max_cache_len = 2048 + 64
    config.engine.prefill_buckets = (1024, 2048)
    config.engine.extend_buckets = (1024,)
    config.engine.extend_group = 4
    config.engine.decode_steps = 16
    config.selfplay.reader_max_prompt_tokens = 2048
    config.reader_engine.update(num_slots=8, max_cache_len=2048 + 64, prefill_buckets=(1024, 2048),
                                extend_buckets=(64,), extend_group=4, decode_steps=16)
    config.rl.lr = 1e-4
    config.rl.warmup_steps = 1
    config.rl.length_buckets = (512, 1024, 2048 + 64)
    return config
