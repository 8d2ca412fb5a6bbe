"""The embedded default: SSP on a generated micro world, small enough for a 2-core CPU.

A tiny policy of the production decoder class is first warm-started by SFT on deliberately
imperfect demonstrations (the stand-in for an instruct model; see ssp_jax/worlds/warmstart). Self-play
then trains it with no gold question at all: the proposer builds questions from the answer list,
the RAG check gates them, and the solver learns from them. Held-out EM (greedy, the world's test
split, which no SSP step or demonstration ever sees) is reported before and after.

Sizes differ from SSP.md's defaults where the CPU budget demands it (short prompts, one passage
per search, one distractor block). Parts of the game differ too. The RAG check's reader plays the
solver, searching only the proposer's documents, instead of reading them all in one step, which a
2-layer policy cannot do (it answers 8% of correct proposers' questions that way). The answer list
keeps only its 2- and 3-search answers (and so do the proposer demos), the proposer samples at 0.5
instead of SSP.md's 1.0, and the run is 20 steps; the comments below say what each change measured.
"""

from ssp_jax.config import base_config

PROPOSER = """\
Write a question whose only answer is {answer}, built backwards with {num_searches} searches. \
Use <search> query </search>; end with <question> ... </question>, naming neither the answer nor \
the entities in between.
Examples:
{examples}"""
SOLVER = """\
Answer the question. Search with <search> query </search>; answer with <answer> ... </answer>.
Question: {question}"""
READER = """\
{documents}
Question: {question}
Answer:"""


def get_config():
    config = base_config()
    config.data.source = "microworld"
    config.data.microworld.details_per_passage = 1
    # Answers of 2 and 3 searches only: with 1-search answers in the list, most questions that pass
    # the RAG check are single-hop, and those teach the solver no depth.
    config.data.search_turns = (2, 3)
    config.prompts.proposer, config.prompts.solver, config.prompts.reader = PROPOSER, SOLVER, READER
    config.model.init.update(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=32)
    # The solver demos write their plan ("Find the birthplace of X, then the country.") and 55% of
    # the multi-hop ones answer right after the first search: a consistent early-answer habit that the plan
    # contradicts in words, which RL can unlearn where the plan says to go on. No reader demos: the
    # RAG check's reader plays the solver (`rag_reader="search"` below). Proposer demos cover only the
    # answers the game uses, two chains each (the 450 answers of 2 and 3 searches): with 1-search demos
    # in the mix, whose questions name their last search, the proposer of one seed in three named an
    # entity it had searched in 7 of its 8 valid questions (of 384): 1-hop questions, which taught no depth.
    config.model.warm_start.update(enabled=True, noise=0.05, num_solver=3000, num_proposer=450, num_reader=0,
                                   passage_repeats=2, reader_distractors=1, solver_thoughts="plan",
                                   solver_noise=0.55, solver_flaws=("early_answer",), proposer_chains=2,
                                   proposer_search_turns=config.data.search_turns)
    config.model.sft.update(steps=1500, batch_size=16, lr=3e-3, warmup_steps=30,
                            length_buckets=(128, 256, 384, 512, 640))
    # Few proposals pass the RAG check here, so the pool is small: one pool question refills at most
    # one slot per step, or the solver overfits it (a pool of 1 filling all 16 groups took held-out
    # EM from 0.19 to 0.09).
    # The proposer samples at 0.5 (the solver at 1.0): it copies names more reliably, so about twice
    # as many of its questions pass. Its PPO ratio and KL still use untempered log-probs
    # (off_policy_sampling: known, and how the README's results were measured).
    # s as the mean solver reward (a spammed answer counts 0.25, not 1): how the README's results were
    # measured; the library default, "solved", is the reference's count.
    config.selfplay.update(batch_size=16, solver_samples=4, num_distractor_blocks=1, reader_max_tokens=12,
                           num_examples=2, pool_max_repeats=1, rag_reader="search", proposer_temperature=0.5,
                           solve_rate="mean_reward", off_policy_sampling=True)
    config.rollout.update(topk=1, max_turns=4, max_prompt_tokens=384, max_response_tokens=384)
    config.engine.update(num_slots=64, max_cache_len=768, prefill_buckets=(128, 256, 384),
                         extend_buckets=(64, 128), extend_group=16, decode_steps=16)
    # 1e-4, not 3e-4: at 3e-4 the solver's 1-hop answers drift (dev 1-hop EM fell 12-23 points in every
    # seed) while it learns to search deeper.
    # A token-mean over each mini-batch and no proposer loss scale: how the README's results were
    # measured (the library defaults, seq_mean_token_mean and 0.4, are the reference's).
    config.rl.update(lr=1e-4, warmup_steps=1, behaviour_logprobs="engine", loss_aggregation="token_mean",
                     proposer_loss_scale=1.0)
    config.rl.length_buckets = (256, 384, 512, 768)
    # 20 steps: dev EM peaked there (the mean gain of 3 seeds was +12.5 / +19.0 / +16.5 points after
    # 10 / 20 / 30 steps); later steps trade 1-hop answers for depth.
    config.train.update(steps=20, save_every=10, eval_every=0, eval_at_ends=True)
    return config
