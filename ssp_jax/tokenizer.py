"""Tokenizer, chat templates and the SSP continuous-text trajectory format (SSP.md section 1).

Runtime code depends only on the `tokenizers` library, and on `jinja2` for a Hugging Face Jinja chat
template read from a file; the named chat templates are rendered in plain Python (tests check them,
and the Jinja renderer, against the published templates through `transformers`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tokenizers

TOKENIZER_FILE = "tokenizer.json"
# Read in this order; a later file overrides an earlier one, as Hugging Face does.
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
INFORMATION_OPEN = "\n<information>\n"
INFORMATION_CLOSE = "</information>\n\n"

Message = Mapping[str, str]  # {"role": ..., "content": ...}


def _parse_json(path: Path, text: str) -> Any:
    """Parse JSON, naming the file on failure so a broken checkpoint directory is easy to find."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e


def _token_string(value: Any) -> str | None:
    """HF configs store a special token as a string, as an AddedToken dict with "content", or null."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens_from_configs(directory: Path) -> dict[str, str]:
    """Collect eos/pad/bos token strings from the HF config files present in `directory`."""
    found: dict[str, str] = {}
    for name in SPECIAL_TOKEN_FILES:
        path = directory / name
        if not path.is_file():
            continue
        config = _parse_json(path, path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a JSON object")
        for key in ("eos_token", "pad_token", "bos_token"):
            token = _token_string(config.get(key))
            if token is not None:
                found[key] = token
    return found


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet of byte-level `tokenizer.json` vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special-token ids the rollout and the loss need."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        eos_token: str,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ) -> None:
        """Build from an in-memory tokenizer; each given special token must be in its vocabulary."""
        self._tokenizer = tokenizer
        self.eos_token: str = eos_token
        self.pad_token: str = eos_token if pad_token is None else pad_token
        self.bos_token: str | None = bos_token
        self.eos_id: int = self._require_id(self.eos_token, "eos")
        self.pad_id: int = self._require_id(self.pad_token, "pad")
        self.bos_id: int | None = None if bos_token is None else self._require_id(bos_token, "bos")

    def _require_id(self, token: str, role: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{role} token {token!r} is not in the tokenizer vocabulary")
        return token_id

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ) -> Tokenizer:
        """Load `tokenizer.json` (a file, or a directory holding one) as HF checkpoints ship it.

        Special tokens come from `tokenizer_config.json` / `special_tokens_map.json` next to the file;
        explicit arguments override them. pad falls back to eos; bos may stay unset (Qwen has none).
        """
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"{path}: expected a {TOKENIZER_FILE} file or a directory containing {TOKENIZER_FILE}"
            )
        text = file.read_text(encoding="utf-8")
        _parse_json(file, text)
        try:
            tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(f"{file}: not a valid {TOKENIZER_FILE} ({e})") from e
        found = _special_tokens_from_configs(file.parent)
        eos = eos_token or found.get("eos_token")
        if eos is None:  # a bare tokenizer.json, e.g. one converted from tiktoken ranks
            specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
            raise ValueError(
                f"{file.parent}: no eos_token in {' or '.join(SPECIAL_TOKEN_FILES)}; pass "
                f"Tokenizer.load(..., eos_token=...) naming the model's end-of-sequence token, one of its special "
                f"tokens {specials[:8]}{' ...' if len(specials) > 8 else ''} (Qwen2.5: '<|endoftext|>' for a "
                "base model, '<|im_end|>' for Instruct)"
            )
        return cls(
            tokenizer,
            eos_token=eos,
            pad_token=pad_token or found.get("pad_token"),
            bos_token=bos_token or found.get("bos_token"),
        )

    @classmethod
    def byte_level(cls, special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                   ) -> Tokenizer:
        """A merge-free byte-level BPE (256 byte tokens + `special_tokens`; eos = the first one).

        It needs no training data, so a randomly initialised checkpoint can ship a real tokenizer.
        """
        alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
        model = tokenizers.models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[])
        tokenizer = tokenizers.Tokenizer(model)
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        tokenizer.add_special_tokens(list(special_tokens))
        return cls(tokenizer, eos_token=special_tokens[0])

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` and a `tokenizer_config.json` naming the special tokens, as HF does."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(directory / TOKENIZER_FILE))
        config = {"eos_token": self.eos_token, "pad_token": self.pad_token, "bos_token": self.bos_token}
        (directory / SPECIAL_TOKEN_FILES[0]).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return directory

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. `<|im_end|>`) map to their ids.

        `add_special_tokens` defaults to False because rendered chat text already holds any BOS.
        """
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each id contributes to `decode(ids, skip_special_tokens=True)`, by id.

        Stop strings are matched on these (`ssp_jax.engine.stops`). Special tokens contribute
        nothing; other added tokens their content. A byte-level vocabulary maps back exactly, partial
        UTF-8 characters included; any other decoder falls back to decoding each id alone, which is
        exact for ASCII stop strings (a partial character decodes to U+FFFD, never to ASCII).
        """
        added = self._tokenizer.get_added_tokens_decoder()
        byte_level = isinstance(self._tokenizer.decoder, tokenizers.decoders.ByteLevel)
        to_byte = {ch: b for b, ch in byte_level_alphabet().items()}
        out = []
        for i in range(self.vocab_size):
            if i in added:
                out.append(b"" if added[i].special else added[i].content.encode("utf-8"))
            elif byte_level:
                out.append(bytes(to_byte[ch] for ch in self._tokenizer.id_to_token(i)))
            else:
                out.append(self._tokenizer.decode([i]).encode("utf-8"))
        return out

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary incl. added tokens; a model's embedding table may be padded larger."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


class ChatTemplate(ABC):
    """A chat format rendered in Python, byte-identical to the model's published HF template.

    `default_system`: a system message inserted when the conversation does not start with one.
    None (the default) inserts nothing; pass `QWEN25_DEFAULT_SYSTEM` to reproduce Qwen2.5's template.
    """

    name: ClassVar[str]
    end_of_turn: str  # the token string that closes an assistant turn
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})

    def __init__(self, default_system: str | None = None) -> None:
        self.default_system = default_system

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The prompt text; with `add_generation_prompt` it ends with the open assistant header."""
        return self._render(self._checked(messages), add_generation_prompt)

    def _checked(self, messages: Sequence[Message]) -> Sequence[Message]:
        """`messages` with the default system message, if any; an empty conversation or an unknown
        role is refused."""
        if not messages:
            raise ValueError("cannot render an empty conversation")
        for message in messages:
            if message["role"] not in self.roles:
                raise ValueError(f"{self.name}: unsupported role {message['role']!r}")
        if self.default_system is not None and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.default_system}, *messages]
        return messages

    def render_ids(
        self, tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `render(...)`; no extra special tokens are added on top of the text."""
        return tokenizer.encode(self.render(messages, add_generation_prompt))

    @abstractmethod
    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str: ...


class ChatMLTemplate(ChatTemplate):
    """Qwen2.5's ChatML; content is kept verbatim (the Qwen template does not trim it)."""

    name = "chatml"
    end_of_turn = "<|im_end|>"

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class Llama3Template(ChatTemplate):
    """Plain Llama-3 Instruct format (content trimmed, as its template's `| trim` does).

    Llama-3.1's HF template also writes "Cutting Knowledge Date..." system lines; we deliberately
    do not, so prompts stay the same across 3.0 and 3.1 checkpoints.
    """

    name = "llama3"
    end_of_turn = "<|eot_id|>"

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        turns = "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            for m in messages
        )
        header = "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
        return "<|begin_of_text|>" + turns + header


class JinjaChatTemplate(ChatTemplate):
    """A Hugging Face chat template in Jinja (a `tokenizer_config.json`'s `chat_template`, saved as a
    `.jinja` file), rendered as transformers' `apply_chat_template` renders it: sandboxed, with
    `trim_blocks` and `lstrip_blocks`, given `messages`, `add_generation_prompt` and the tokenizer's
    `bos_token` and `eos_token`. A reference's custom template thus drops in unchanged. Its
    end-of-turn token is what the template writes right after an assistant message's content (none
    when it writes nothing there, as the reference's template does: the tokenizer's EOS ends a turn)."""

    name = "jinja"
    _PROBE = "\x00ssp-end-of-turn-probe\x00"

    def __init__(self, source: str, origin: str = "<string>", default_system: str | None = None) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        super().__init__(default_system)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template {origin}: {message}")

        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat template {origin}: line {e.lineno}: {e.message}") from e
        self.origin = origin
        closed = self._jinja([{"role": "user", "content": "hi"}, {"role": "assistant", "content": self._PROBE}],
                             False, {})
        if self._PROBE not in closed:
            raise ValueError(f"chat template {origin}: does not write an assistant message's content")
        # Nothing after the content (the reference's template): the tokenizer's EOS alone ends a turn.
        after = closed.split(self._PROBE, 1)[1].split()
        self.end_of_turn = after[0] if after else ""

    def _jinja(self, messages: Sequence[Message], add_generation_prompt: bool, special: Mapping[str, str]) -> str:
        return self._template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                     **{"bos_token": "", "eos_token": "", **special})

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return self._jinja(messages, add_generation_prompt, {})

    def render_ids(
        self, tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """As `ChatTemplate.render_ids`, with `bos_token` and `eos_token` set to the tokenizer's
        (`render` leaves them empty: it knows no tokenizer)."""
        special = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token}
        return tokenizer.encode(self._jinja(self._checked(messages), add_generation_prompt, special))


CHAT_TEMPLATES: dict[str, type[ChatTemplate]] = {t.name: t for t in (ChatMLTemplate, Llama3Template)}
JINJA_SUFFIX = ".jinja"


def get_chat_template(name: str, default_system: str | None = None) -> ChatTemplate:
    """Select a template by config name ("chatml" for Qwen, "llama3" for Llama-3), or load a
    Hugging Face Jinja template from a `.jinja` file."""
    if name.endswith(JINJA_SUFFIX):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"chat template {name!r} is not a file (a {JINJA_SUFFIX} name is read as a Jinja "
                             f"chat template); or name one of {sorted(CHAT_TEMPLATES)}")
        return JinjaChatTemplate(path.read_text(encoding="utf-8"), origin=name, default_system=default_system)
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(CHAT_TEMPLATES)}, or a path to a "
                         f"Hugging Face Jinja template ending in {JINJA_SUFFIX}")
    return CHAT_TEMPLATES[name](default_system=default_system)


def format_passages(passages: Sequence[tuple[str, str]]) -> str:
    """`Doc i (Title: <title>)\\n<text>` per (title, text) passage, numbered from 1, joined by blank lines."""
    return "\n\n".join(
        f"Doc {i} (Title: {title})\n{text}" for i, (title, text) in enumerate(passages, start=1)
    )


def information_block(passages: Sequence[tuple[str, str]]) -> str:
    """The retrieval result appended after `</search>`, exactly as SSP.md section 1 specifies."""
    return INFORMATION_OPEN + format_passages(passages) + INFORMATION_CLOSE
