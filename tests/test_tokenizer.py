"""Tests for ssp_jax.tokenizer: loading, chat-template parity with HF Jinja, SSP trajectory format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ssp_jax.tokenizer import (
    CHAT_TEMPLATES,
    QWEN25_DEFAULT_SYSTEM,
    ChatMLTemplate,
    ChatTemplate,
    JinjaChatTemplate,
    Llama3Template,
    Tokenizer,
    format_passages,
    get_chat_template,
    information_block,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CORPUS = [
    "Hello world! The search engine returns documents about the world.",
    "<think>I need to find who wrote the novel.</think><search>author of the novel</search>",
    "<answer>Paris</answer> is the capital of France, a country in Europe.",
    "Doc 1 (Title: France)\nFrance is a country. Doc 2 (Title: Paris)\nParis is a city.",
    "You are a helpful assistant. Answer the question using the information given.",
]

# Qwen2.5-Instruct's published chat template, with only the tool-calling branches removed.
QWEN25_JINJA = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Meta-Llama-3-8B-Instruct's published chat template, verbatim (it has no tool-calling branches).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Who wrote Hamlet?"}],
    "multi_turn": [
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "<answer>Shakespeare</answer>"},
        {"role": "user", "content": "  And when?\n"},
    ],
    "with_system": [
        {"role": "system", "content": "Answer briefly.\n"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": " Paris "},
        {"role": "user", "content": "And of Italy?"},
    ],
}


@pytest.fixture(scope="module")
def raw_tokenizer() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def _copy(raw: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_str(raw.to_str())


@pytest.fixture
def tok(raw_tokenizer: tokenizers.Tokenizer) -> Tokenizer:
    return Tokenizer(_copy(raw_tokenizer), eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _save(raw: tokenizers.Tokenizer, directory: Path, **configs: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    for stem, content in configs.items():
        (directory / f"{stem}.json").write_text(json.dumps(content))
    return directory


# --- Tokenizer ------------------------------------------------------------------------------------


def test_load_directory_round_trip(raw_tokenizer: tokenizers.Tokenizer, tmp_path: Path) -> None:
    eos = {"content": "<|im_end|>", "lstrip": False, "rstrip": False, "special": True}
    config = {"eos_token": eos, "pad_token": "<|endoftext|>", "bos_token": None}
    _save(raw_tokenizer, tmp_path, tokenizer_config=config)
    tok = Tokenizer.load(tmp_path)

    assert tok.eos_id == raw_tokenizer.token_to_id("<|im_end|>") is not None
    assert tok.pad_id == raw_tokenizer.token_to_id("<|endoftext|>") != tok.eos_id
    assert tok.bos_id is None
    assert tok.vocab_size == raw_tokenizer.get_vocab_size(with_added_tokens=True) > len(SPECIAL_TOKENS)
    assert tok.token_to_id("<|eot_id|>") == raw_tokenizer.token_to_id("<|eot_id|>")
    assert tok.token_to_id("<|not_a_token|>") is None

    text = "Hello world! <search>capital of France</search>\n  naïve café 東京\t"
    assert tok.decode(tok.encode(text)) == text
    chat = "<|im_start|>user\nHello<|im_end|>\n"
    ids = tok.encode(chat)
    assert ids[0] == tok.token_to_id("<|im_start|>") and tok.eos_id in ids
    assert tok.decode(ids) == chat
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHello\n"


def test_load_file_path_special_tokens_map_overrides(raw_tokenizer: tokenizers.Tokenizer, tmp_path: Path) -> None:
    _save(
        raw_tokenizer,
        tmp_path,
        tokenizer_config={"eos_token": "<|endoftext|>"},
        special_tokens_map={"eos_token": {"content": "<|eot_id|>"}, "bos_token": "<|begin_of_text|>"},
    )
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.eos_id == raw_tokenizer.token_to_id("<|eot_id|>")
    assert tok.pad_id == tok.eos_id  # no pad token anywhere: falls back to eos
    assert tok.bos_id == raw_tokenizer.token_to_id("<|begin_of_text|>")

    explicit = Tokenizer.load(tmp_path, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    assert explicit.eos_id == raw_tokenizer.token_to_id("<|im_end|>")
    assert explicit.pad_id == raw_tokenizer.token_to_id("<|endoftext|>")


def test_in_memory_construction_validates_tokens(raw_tokenizer: tokenizers.Tokenizer) -> None:
    tok = Tokenizer(_copy(raw_tokenizer), eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (
        raw_tokenizer.token_to_id("<|eot_id|>"),
        raw_tokenizer.token_to_id("<|eot_id|>"),
        raw_tokenizer.token_to_id("<|begin_of_text|>"),
    )
    with pytest.raises(ValueError, match=re.escape("'<|missing|>' is not in the tokenizer vocabulary")):
        Tokenizer(_copy(raw_tokenizer), eos_token="<|missing|>")


def test_load_errors_name_the_path(raw_tokenizer: tokenizers.Tokenizer, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*tokenizer\.json"):
        Tokenizer.load(missing)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*tokenizer\.json"):
        Tokenizer.load(empty_dir)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ValueError, match=r"broken/tokenizer\.json: malformed JSON"):
        Tokenizer.load(broken)
    (broken / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match=r"broken/tokenizer\.json: not a valid"):
        Tokenizer.load(broken)

    bad_config = _save(raw_tokenizer, tmp_path / "bad_config")
    (bad_config / "tokenizer_config.json").write_text("{eos_token: nope}")
    with pytest.raises(ValueError, match=r"bad_config/tokenizer_config\.json: malformed JSON"):
        Tokenizer.load(bad_config)

    no_eos = _save(raw_tokenizer, tmp_path / "no_eos", tokenizer_config={"pad_token": "<|endoftext|>"})
    with pytest.raises(ValueError, match="no eos_token") as error:
        Tokenizer.load(no_eos)
    # It says how to fix it: the argument, and the special tokens to choose from.
    assert "eos_token=..." in str(error.value) and "'<|im_end|>'" in str(error.value)


# --- Chat templates -------------------------------------------------------------------------------


def _hf(raw: tokenizers.Tokenizer, jinja: str) -> PreTrainedTokenizerFast:
    hf = PreTrainedTokenizerFast(tokenizer_object=_copy(raw), bos_token="<|begin_of_text|>")
    hf.chat_template = jinja
    return hf


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize(
    ("template", "jinja"),
    [(ChatMLTemplate(default_system=QWEN25_DEFAULT_SYSTEM), QWEN25_JINJA), (Llama3Template(), LLAMA3_JINJA)],
    ids=["chatml", "llama3"],
)
def test_template_matches_hf_jinja(
    raw_tokenizer: tokenizers.Tokenizer,
    tok: Tokenizer,
    template: ChatTemplate,
    jinja: str,
    conversation: str,
    add_generation_prompt: bool,
) -> None:
    messages = CONVERSATIONS[conversation]
    hf = _hf(raw_tokenizer, jinja)
    kwargs = {"add_generation_prompt": add_generation_prompt}
    expected = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    assert template.render(messages, add_generation_prompt) == expected
    expected_ids = hf.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]
    assert template.render_ids(tok, messages, add_generation_prompt) == expected_ids


def test_chatml_without_default_system_inserts_none() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert get_chat_template("chatml").render(messages, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    llama3 = get_chat_template("llama3", default_system="Be brief.")
    assert llama3.render(messages, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


def test_template_registry_and_validation(tok: Tokenizer) -> None:
    assert set(CHAT_TEMPLATES) == {"chatml", "llama3"}
    assert get_chat_template("chatml").end_of_turn == "<|im_end|>"
    assert get_chat_template("llama3").end_of_turn == "<|eot_id|>"
    for name in CHAT_TEMPLATES:
        assert tok.token_to_id(get_chat_template(name).end_of_turn) is not None
    with pytest.raises(ValueError, match="unknown chat template"):
        get_chat_template("vicuna")
    with pytest.raises(ValueError, match="unsupported role"):
        get_chat_template("chatml").render([{"role": "tool", "content": "x"}], add_generation_prompt=True)
    with pytest.raises(ValueError, match="empty"):
        get_chat_template("llama3").render([], add_generation_prompt=True)


# --- SSP continuous-text format -------------------------------------------------------------------


def test_information_block_two_passages() -> None:
    passages = [("France", "France is a country in Europe."), ("Paris", "Paris is its capital.\nIt is large.")]
    assert information_block(passages) == (
        "\n<information>\n"
        "Doc 1 (Title: France)\nFrance is a country in Europe.\n\n"
        "Doc 2 (Title: Paris)\nParis is its capital.\nIt is large."
        "</information>\n\n"
    )
    assert format_passages(passages[:1]) == "Doc 1 (Title: France)\nFrance is a country in Europe."
    assert format_passages([]) == ""


# --- Hugging Face Jinja chat templates ------------------------------------------------------------

REFERENCE_TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "reference" / "chat_template.jinja"


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("jinja", [QWEN25_JINJA, LLAMA3_JINJA], ids=["qwen2.5", "llama3"])
def test_jinja_template_renders_what_transformers_renders(
    raw_tokenizer: tokenizers.Tokenizer, jinja: str, conversation: str, add_generation_prompt: bool
) -> None:
    """Ids through the tokenizer's own bos/eos tokens, as `apply_chat_template` passes them."""
    messages = CONVERSATIONS[conversation]
    tok = Tokenizer(_copy(raw_tokenizer), eos_token="<|im_end|>", bos_token="<|begin_of_text|>")
    expected = _hf(raw_tokenizer, jinja).apply_chat_template(messages, tokenize=True,
                                                             add_generation_prompt=add_generation_prompt)
    assert JinjaChatTemplate(jinja).render_ids(tok, messages, add_generation_prompt) == expected["input_ids"]


def test_jinja_template_from_a_file_finds_its_end_of_turn(tmp_path: Path, qwen_tokenizer: Tokenizer) -> None:
    """Qwen2.5's published template, as a file: the same prompt ids as the built-in chatml on the
    real Qwen2.5 vocabulary, and `<|im_end|>` (one special token) closes an assistant turn."""
    path = tmp_path / "qwen2.5.jinja"
    path.write_text(QWEN25_JINJA, encoding="utf-8")
    template = get_chat_template(str(path))
    assert template.end_of_turn == "<|im_end|>" and qwen_tokenizer.token_to_id("<|im_end|>") == 151645
    for messages in CONVERSATIONS.values():
        assert template.render_ids(qwen_tokenizer, messages) == ChatMLTemplate(
            default_system=QWEN25_DEFAULT_SYSTEM).render_ids(qwen_tokenizer, messages)


def test_reference_template_boundaries_on_the_real_qwen_vocabulary(qwen_tokenizer: Tokenizer) -> None:
    """The reference's template opens every turn with `<|im_start|>` (one special token) and closes
    none: a prompt ends with the assistant header's ids, no `<|im_end|>` appears, and only the
    tokenizer's EOS ends a turn."""
    template = get_chat_template(str(REFERENCE_TEMPLATE))
    messages = [{"role": "system", "content": "You are a helpful and harmless assistant."},
                {"role": "user", "content": "Answer the given question. Question: Who wrote Hamlet?"}]
    ids = template.render_ids(qwen_tokenizer, messages)
    start, end = qwen_tokenizer.token_to_id("<|im_start|>"), qwen_tokenizer.token_to_id("<|im_end|>")
    assert ids.count(start) == 3 and end not in ids
    assert ids[-3:] == qwen_tokenizer.encode("<|im_start|>assistant\n") == [start, 77091, 198]
    assert qwen_tokenizer.decode(ids) == ("<|im_start|>system\nYou are a helpful and harmless assistant."
                                          "<|im_start|>user\nAnswer the given question. Question: Who wrote Hamlet?"
                                          "<|im_start|>assistant\n")
    assert template.end_of_turn == ""
    with pytest.raises(ValueError, match="unsupported role 'tool_result'"):
        template.render([{"role": "tool_result", "content": "x"}], add_generation_prompt=False)


def test_bad_jinja_templates_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"chat template '.*missing.jinja' is not a file"):
        get_chat_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(ValueError, match=r"chat template broken.jinja: line 1: "):
        JinjaChatTemplate("{% for m in messages %}{{ m['content'] }}", origin="broken.jinja")
    with pytest.raises(ValueError, match="does not write an assistant message's content"):
        JinjaChatTemplate("{{ messages[0]['content'] }}")
    with pytest.raises(ValueError, match="chat template strict.jinja: users only"):  # the template's own refusal
        JinjaChatTemplate("{{ raise_exception('users only') }}", origin="strict.jinja")
