"""Build (once) and cache a warm-start policy: the analogue of an instruct model.

The micro world's: a tokenizer trained on the world, a fresh decoder of the configured shape, SFT on
deliberately imperfect demonstrations of every role plus passage reading, exported as an HF
checkpoint under the workdir. Demonstrations come from example-style chains only: no SSP step and
no warm-start sequence ever sees a held-out question. The wiki rehearsal's
(`wiki_warm_start_checkpoint`): the real Qwen2.5 vocabulary and format demonstrations over real
passages. Both train and export through `sft_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from ssp_jax.bpe_ranks import VOCABULARIES, build_tokenizer
from ssp_jax.data.wiki_offline import WikiOfflineConfig, cloze_questions, passages, sample_articles
from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import decoder_config_from_hf, export_hf_decoder
from ssp_jax.retrieval.base import Passage, Retriever
from ssp_jax.tokenizer import Tokenizer
from ssp_jax.worlds.microworld import World
from ssp_jax.worlds.microworld_tokenizer import train_tokenizer
from ssp_jax.worlds.warmstart.demos import (
    NUM_EXAMPLES,
    PROPOSER_THOUGHTS,
    SOLVER_FLAWS,
    SOLVER_THOUGHTS,
    Demo,
    DemoFormat,
    build_demos,
)
from ssp_jax.worlds.warmstart.sft import SFTConfig, sft
from ssp_jax.worlds.warmstart.wiki_demos import wiki_demos


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """The micro world's instruct-model analogue: how many demonstrations of each role to write and how
    flawed they are, before the SFT that teaches the format a real instruct checkpoint already knows."""

    enabled: bool = False
    noise: float = 0.4  # share of deliberately flawed proposer demonstrations
    solver_noise: float = 0.4  # share of flawed solver demonstrations, of the kinds below
    solver_flaws: tuple[str, ...] = SOLVER_FLAWS  # drawn uniformly; repeat a kind to weight it
    solver_thoughts: str = "hop"  # what a solver demo writes before each search (`find_thought`)
    proposer_thoughts: str = "goal"  # "quote": copy the sentence naming the next entity first (`quote`)
    num_solver: int = 600
    num_proposer: int = 300  # answers with proposer demos (at most those with an example chain)
    proposer_chains: int = 1  # proposer demos per answer, each with its own chain
    # Only answers of these search counts get proposer demos (empty = all); set it to the run's
    # data.search_turns so the proposer is shown the game it will play. A 1-search demo asks about
    # the entity it searched last, which a 2-search one must not name.
    proposer_search_turns: tuple[int, ...] = ()
    num_reader: int = 300
    passage_repeats: int = 1
    reader_distractors: int = 4  # unrelated passages among the gold ones in a reader demo
    reading_worlds: int = 0  # other generated worlds whose passages teach reading rather than memorising
    vocab_size: int = 2048  # of the world's BPE tokenizer (the model's embedding is padded to x64)
    # The wiki rehearsal's real vocabulary ("qwen2.5" or "llama3", ssp_jax/bpe_ranks.py); the micro
    # world trains its own BPE instead. For data.source="wiki_offline", num_solver, num_proposer,
    # num_reader and reader_distractors apply; the other fields shape the micro world's demos.
    vocabulary: str = "qwen2.5"

    def __post_init__(self) -> None:
        if self.solver_thoughts not in SOLVER_THOUGHTS:
            raise ValueError(f"model.warm_start.solver_thoughts must be one of {SOLVER_THOUGHTS}, "
                             f"got {self.solver_thoughts!r}")
        if self.proposer_thoughts not in PROPOSER_THOUGHTS:
            raise ValueError(f"model.warm_start.proposer_thoughts must be one of {PROPOSER_THOUGHTS}, "
                             f"got {self.proposer_thoughts!r}")
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"model.warm_start.vocabulary={self.vocabulary!r}; known: {sorted(VOCABULARIES)}")
        if self.proposer_chains < 1:
            raise ValueError(f"model.warm_start.proposer_chains must be >= 1, got {self.proposer_chains}")


def warm_start_demos(world: World, retriever: Retriever, config: WarmStartConfig, *, fmt: DemoFormat,
                     num_examples: int = NUM_EXAMPLES, seed: int = 0) -> tuple[Tokenizer, list[Demo]]:
    """The world's tokenizer and the SFT demonstrations of `config` (no training)."""
    templates = fmt.templates
    tokenizer = train_tokenizer(world, extra_texts=(templates.proposer, templates.solver, templates.reader),
                                vocab_size=config.vocab_size)
    demos = build_demos(world, tokenizer, fmt, retriever, seed=seed, noise=config.noise,
                        solver_noise=config.solver_noise, solver_flaws=config.solver_flaws,
                        solver_thoughts=config.solver_thoughts, proposer_thoughts=config.proposer_thoughts,
                        num_solver=config.num_solver, num_proposer=config.num_proposer,
                        proposer_chains=config.proposer_chains,
                        proposer_search_turns=config.proposer_search_turns, num_reader=config.num_reader,
                        passage_repeats=config.passage_repeats, num_examples=num_examples,
                        reader_distractors=config.reader_distractors,
                        reading_worlds=[World(dataclasses.replace(world.config,
                                                                  seed=world.config.seed + 1000 * (i + 1)))
                                        for i in range(config.reading_worlds)])
    return tokenizer, demos


def warm_start_checkpoint(out_dir: str | Path, world: World, retriever: Retriever, init: dict[str, Any],
                          config: WarmStartConfig, sft_config: SFTConfig, *, fmt: DemoFormat,
                          num_examples: int = NUM_EXAMPLES, seed: int = 0, progress: bool = True) -> Path:
    """The micro world's cached checkpoint directory; built on first use."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer, demos = warm_start_demos(world, retriever, config, fmt=fmt, num_examples=num_examples, seed=seed)
    return sft_checkpoint(out_dir, tokenizer, demos, init, sft_config, seed=seed, progress=progress)


def wiki_warm_start_checkpoint(out_dir: str | Path, data: WikiOfflineConfig, answers: str | Path,
                               retriever: Retriever, init: dict[str, Any], config: WarmStartConfig,
                               sft_config: SFTConfig, *, fmt: DemoFormat, seed: int = 0, progress: bool = True) -> Path:
    """The wiki rehearsal's cached checkpoint: the real `config.vocabulary` tokenizer, SFT on
    demonstrations over the rehearsal's passages (searched with `retriever`) and answer list."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    articles = sample_articles(data)
    corpus = [Passage(str(i), f'"{title}"\n{text}')
              for i, (title, text) in enumerate(passages(articles, data.passage_words))]
    with Path(answers).open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    tokenizer = build_tokenizer(VOCABULARIES[config.vocabulary])
    demos = wiki_demos(articles, corpus, records, cloze_questions(articles), tokenizer, fmt, retriever,
                       num_solver=config.num_solver, num_proposer=config.num_proposer, num_reader=config.num_reader,
                       seed=seed, reader_distractors=config.reader_distractors)
    return sft_checkpoint(out_dir, tokenizer, demos, init, sft_config, seed=seed, progress=progress)


def sft_checkpoint(out_dir: str | Path, tokenizer: Tokenizer, demos: Sequence[Demo], init: dict[str, Any],
                   sft_config: SFTConfig, *, seed: int = 0, progress: bool = True) -> Path:
    """A fresh decoder of shape `init`, SFT-trained on `demos`, exported with `tokenizer` as an HF
    checkpoint (written aside, then renamed into place). Its embedding covers the tokenizer,
    padded to a multiple of 64, or `init`'s larger vocab_size (Qwen2.5's 151,936 rows)."""
    out_dir = Path(out_dir)
    vocab = max(-(-tokenizer.vocab_size // 64) * 64, int(init.get("vocab_size", 0)))
    hf_config = {**init, "vocab_size": vocab, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    model = Decoder(decoder_config_from_hf(hf_config, source="config model.init"), rngs=nnx.Rngs(seed))
    sft(model, [d.tokens for d in demos], [d.loss_mask for d in demos], sft_config, progress=progress)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save(staging)
    export_hf_decoder(model, staging, hf_config=hf_config)
    staging.rename(out_dir)
    return out_dir
