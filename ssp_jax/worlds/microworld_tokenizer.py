"""A BPE tokenizer for the micro world, trained with `tokenizers` on the world's own text.

Two choices make it suit a tiny policy:
- Names are fed to the trainer syllable by syllable ("Zor-vak"), so it never sees a whole name
  as one word and learns no token for it: a name encodes as about one piece per syllable (2-5
  pieces, mostly 2-3) while ordinary words merge whole. Copying a name is then a skill over
  shared syllable tokens that transfers to unseen entities, instead of one embedding per name
  that only trains when that entity is sampled.
- The SSP tags are *added tokens* (not special, so decoding keeps them): each is one id in any
  context, so `tokenizer.encode("</search>")`, which the engine matches as a stop sequence, is
  exactly what the model emits. "Doc" only matches as a whole word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import AddedToken

from ssp_jax.tokenizer import Tokenizer, format_passages
from ssp_jax.worlds.microworld import World
from ssp_jax.worlds.microworld_text import ASK, PHRASE

CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # special; ChatML as in Qwen2.5
SSP_TAGS = ("<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
            "<answer>", "</answer>", "<question>", "</question>")
# The retrieved-document header `Doc i (Title: ...)`; the space is part of the token, so the
# header is three tokens ("Doc", " i", " (Title:").
FORMAT_TOKENS = ("Doc", " (Title:")


def training_texts(world: World, extra_texts: Iterable[str] = ()) -> Iterable[str]:
    """Passages (as the `Doc i (Title: ...)` blocks the policy reads), question templates (both
    styles, slots removed) and example questions, with every invented name split into syllables
    by hyphens, plus `extra_texts` (e.g. the role prompts)."""
    syllables = {"".join(e.syllables).capitalize(): "-".join(e.syllables).capitalize() for e in world.entities}
    names = re.compile(r"\b(" + "|".join(sorted(syllables, key=len, reverse=True)) + r")\b")

    def split_names(text: str) -> str:
        return names.sub(lambda m: syllables[m.group(1)], text)

    passages = [(e.name, p["contents"].split("\n", 1)[1]) for e, p in zip(world.entities, world.passages())]
    for start in range(0, len(passages), 3):
        yield split_names(format_passages(passages[start:start + 3]) + "\n\n")
    for templates in (ASK, PHRASE):
        for by_relation in templates.values():
            for variants in by_relation.values():
                yield from (v.replace("{x}", "") for v in variants)
    for question in world.example_questions(300):
        yield split_names(question.question)
    yield from extra_texts


def train_tokenizer(world: World, extra_tokens: Sequence[str] = (), *, extra_texts: Iterable[str] = (),
                    vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE over `training_texts`; eos = `<|im_end|>` and pad = `<|endoftext|>`, as in
    Qwen2.5-Instruct. `extra_tokens` become added tokens like the SSP tags."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHAT_TOKENS),
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tokenizer.train_from_iterator(training_texts(world, extra_texts), trainer)
    # Added after training, so their ids follow the BPE vocabulary and never collide with it.
    tokenizer.add_tokens([AddedToken(t, single_word=t.isalpha(), normalized=False)
                          for t in (*SSP_TAGS, *FORMAT_TOKENS, *extra_tokens)])
    return Tokenizer(tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
