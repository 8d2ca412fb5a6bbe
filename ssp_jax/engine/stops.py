"""Stop strings matched on the decoded text, whatever the tokenization, inside the compiled decode step.

A real BPE spells a tag differently by context: in the Qwen2.5 vocabulary `</search>` alone is
`'</' 'search' '>'`, but after a query it is `'Ġ</' 'search' '>ĊĊ'`, so matching one id sequence
never fires on what a model actually writes (PITFALLS, "Real tokenizers"). Instead the stop
strings become an Aho-Corasick automaton over bytes, and each vocabulary token becomes one
transition of it: from automaton state s, token t leads to `next_state[s, class[t]]` and completes
stop string `completed[s, class[t]]` (-1 = none), wherever inside the token's bytes that happens.
Tokens that act alike in every state share a class, so the tables stay small ([vocab] + [states,
classes]) and a decode step pays two gathers per slot. Shapes depend only on the stop strings and
the vocabulary, so nothing recompiles per request.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

NO_STOP = -1


def _automaton(patterns: Sequence[Sequence[int]], alphabet: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Aho-Corasick DFA: (delta [states, len(alphabet) + 1], completes [states]).

    `completes[s]` is the lowest index of a pattern that ends at state s (as a suffix of the text
    read so far), else NO_STOP. The last column is every symbol outside `alphabet`: back to state 0.
    """
    children: list[dict[int, int]] = [{}]
    ends = [NO_STOP]
    for index, pattern in enumerate(patterns):
        state = 0
        for symbol in pattern:
            if symbol not in children[state]:
                children[state][symbol] = len(children)
                children.append({})
                ends.append(NO_STOP)
            state = children[state][symbol]
        if ends[state] == NO_STOP:
            ends[state] = index
    column = {symbol: i for i, symbol in enumerate(alphabet)}
    delta = np.zeros((len(children), len(alphabet) + 1), np.int32)
    fail = [0] * len(children)
    queue: collections.deque[int] = collections.deque()
    child: int | None  # a state (None: no edge for the symbol)
    for symbol, child in children[0].items():
        delta[0, column[symbol]] = child
        queue.append(child)
    while queue:  # breadth first, so every state's failure state is complete before it is used
        state = queue.popleft()
        if ends[state] == NO_STOP:
            ends[state] = ends[fail[state]]
        for symbol in alphabet:
            child = children[state].get(symbol)
            if child is None:
                delta[state, column[symbol]] = delta[fail[state], column[symbol]]
            else:
                fail[child] = int(delta[fail[state], column[symbol]])
                delta[state, column[symbol]] = child
                queue.append(child)
    return delta, np.asarray(ends, np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class StopAutomaton:
    """What `Engine` needs to stop a slot at the token that completes a stop string.

    Build it with `for_strings` (text stops, the rollout's) or `for_token_sequences` (exact id
    sequences). `token_class` covers the model's whole embedding table: ids the tokenizer does not
    know decode to nothing, so they never advance a match.
    """

    strings: tuple[str, ...]  # what each stop index names (for token sequences, their ids as text)
    token_class: np.ndarray  # [vocab] int32
    next_state: np.ndarray  # [states, classes] int32
    completed: np.ndarray  # [states, classes] int32: stop index the token completes, NO_STOP if none

    @classmethod
    def for_strings(cls, strings: Sequence[str], token_bytes: Sequence[bytes], vocab_size: int) -> StopAutomaton:
        """Stops on the UTF-8 text the tokens decode to: `token_bytes[i]` is token i's bytes (b"" for
        special tokens, which decoding skips); ids from len(token_bytes) to `vocab_size` decode to nothing."""
        encoded = [s.encode("utf-8") for s in strings]
        return cls._compile(tuple(strings), [list(s) for s in encoded], token_bytes, vocab_size)

    @classmethod
    def for_token_sequences(cls, sequences: Sequence[Sequence[int]], vocab_size: int) -> StopAutomaton:
        """Stops on exact token-id sequences (each token one symbol)."""
        names = tuple(" ".join(map(str, s)) for s in sequences)
        return cls._compile(names, [list(s) for s in sequences], [(i,) for i in range(vocab_size)], vocab_size)

    @classmethod
    def _compile(cls, names: tuple[str, ...], patterns: list[list[int]], token_symbols: Sequence[Sequence[int]],
                 vocab_size: int) -> StopAutomaton:
        for name, pattern in zip(names, patterns):
            if not pattern:
                raise ValueError(f"stop {name!r} is empty")
        if len(token_symbols) > vocab_size:
            raise ValueError(f"{len(token_symbols)} tokens do not fit a vocabulary of {vocab_size}")
        alphabet = sorted({symbol for pattern in patterns for symbol in pattern})
        if len(alphabet) > np.iinfo(np.int16).max:
            raise ValueError(f"stops use {len(alphabet)} distinct symbols; at most 32767 are supported")
        delta, ends = _automaton(patterns, alphabet)
        num_states = len(ends)
        lengths = np.zeros(vocab_size, np.int64)
        lengths[:len(token_symbols)] = [len(s) for s in token_symbols]
        flat = np.fromiter(itertools.chain.from_iterable(token_symbols), np.int64, count=int(lengths.sum()))
        lookup = np.full(max([int(flat.max(initial=0)), *alphabet]) + 1, len(alphabet), np.int64)  # symbol -> column
        lookup[alphabet] = np.arange(len(alphabet))
        token_of = np.repeat(np.arange(vocab_size), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        columns = np.zeros((vocab_size, int(lengths.max(initial=0))), np.int16)  # [vocab, longest token]
        columns[token_of, np.arange(len(flat)) - starts] = lookup[flat]
        # Run every state over every token at once; at position j only tokens longer than j move.
        state = np.tile(np.arange(num_states, dtype=np.int32)[:, None], (1, vocab_size))  # [states, vocab]
        done = np.full((num_states, vocab_size), NO_STOP, np.int32)
        by_length = np.argsort(-lengths, kind="stable")
        for j in range(columns.shape[1]):
            rows = by_length[:int((lengths > j).sum())]
            moved = delta[state[:, rows], columns[rows, j]]  # [states, rows]
            hit = (ends[moved] != NO_STOP) & (done[:, rows] == NO_STOP)
            done[:, rows] = np.where(hit, ends[moved], done[:, rows])
            state[:, rows] = moved
        # Tokens with equal (next state, completed stop) in every state share a class: relabel state by state.
        token_class = np.zeros(vocab_size, np.int64)
        for s in range(num_states):
            key = (token_class * num_states + state[s]) * (len(patterns) + 1) + done[s] + 1
            _, token_class = np.unique(key, return_inverse=True)
        _, first = np.unique(token_class, return_index=True)  # one representative token per class
        return cls(names, token_class.astype(np.int32), state[:, first], done[:, first])

    @property
    def vocab_size(self) -> int:
        return len(self.token_class)

    def run(self, tokens: Sequence[int]) -> tuple[int, int]:
        """(position of the token that completes a stop, stop index), or (-1, NO_STOP): the engine's
        rule on the host, from state 0, for tests and for checking text a model wrote."""
        state = 0
        for position, token in enumerate(tokens):
            klass = self.token_class[token]
            if self.completed[state, klass] != NO_STOP:
                return position, int(self.completed[state, klass])
            state = int(self.next_state[state, klass])
        return -1, NO_STOP
