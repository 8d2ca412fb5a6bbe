"""Stop strings matched on decoded text: the automaton by hand, against brute force, on the real
Qwen2.5 and Llama-3 BPE in every context a model writes a tag, and inside the compiled engine."""

import numpy as np
import pytest
from conftest import QWEN_VOCAB as FULL_VOCAB

from ssp_jax.engine.engine import STOP_BUDGET, STOP_SEQUENCE, Engine, EngineConfig
from ssp_jax.engine.sampling import GREEDY
from ssp_jax.engine.stops import NO_STOP, StopAutomaton

TAGS = ("</search>", "</answer>")


def first_stop(token_bytes, ids, stops) -> tuple[int, int]:
    """Brute force: (token position, stop index) where a stop string first appears in the decoded
    bytes (at the earliest end byte; the lowest index among stops ending there), else (-1, NO_STOP)."""
    text, encoded = b"", [s.encode() for s in stops]
    for position, token in enumerate(ids):
        start, text = len(text), text + token_bytes[token]
        for end in range(start + 1, len(text) + 1):
            hits = [i for i, s in enumerate(encoded) if len(s) <= end and text[end - len(s):end] == s]
            if hits:
                return position, hits[0]
    return -1, NO_STOP


def test_hand_computed_toy_vocabulary():
    vocab = [b"<", b"/", b"s", b"</", b"s>", b">\n\n", b"x</s>y", b"", b"a"]
    stops = StopAutomaton.for_strings(["</s>", "s>x"], vocab, vocab_size=12)
    assert stops.vocab_size == 12 and stops.strings == ("</s>", "s>x")
    assert stops.run([0, 1, 2, 5]) == (3, 0)  # '<' '/' 's' '>\n\n': the last token completes it mid-token
    assert stops.run([3, 4]) == (1, 0)  # '</' 's>'
    assert stops.run([6]) == (0, 0)  # inside one token, with text on both sides
    assert stops.run([3, 7, 4]) == (2, 0)  # a special (empty) token in between is skipped, as decoding skips it
    assert stops.run([3, 8, 4]) == (-1, NO_STOP)  # 'a' breaks the match
    assert stops.run([2, 5, 10]) == (-1, NO_STOP)  # 's' '>\n\n': no 's>x'; id 10 is past the tokenizer: empty
    assert stops.run([4, 6]) == (1, 1)  # 's>' then 'x...': 's>x' ends one byte into token 6, before '</s>'


def test_automaton_agrees_with_brute_force_on_random_token_soups():
    rng = np.random.default_rng(0)
    alphabet = b"</sarch>\n x"
    vocab = [bytes(rng.choice(list(alphabet), rng.integers(1, 5))) for _ in range(60)] + [b""]
    stops = ["</search>", "</s>", "ch>\n", ">"]
    for subset in (stops[:1], stops[:2], stops[:3], stops):
        automaton = StopAutomaton.for_strings(subset, vocab, len(vocab))
        for _ in range(300):
            ids = rng.integers(0, len(vocab), rng.integers(1, 40)).tolist()
            assert automaton.run(ids) == first_stop(vocab, ids, subset), (subset, ids)


def test_token_sequences_match_ids_exactly():
    stops = StopAutomaton.for_token_sequences([[5, 6, 7], [6, 6]], vocab_size=10)
    assert stops.run([1, 5, 6, 7]) == (3, 0)
    assert stops.run([5, 6, 6]) == (2, 1)
    assert stops.run([5, 6, 8, 7]) == (-1, NO_STOP)
    with pytest.raises(ValueError, match="empty"):
        StopAutomaton.for_token_sequences([[]], vocab_size=10)


# Every context in which a model writes a closing tag: (text before the tag, text after it).
CONTEXTS = {
    "bare": ("<search>", ""),
    "after a space": ("<search> who founded Acme ", ""),
    "one newline after": ("<search> who founded Acme ", "\n"),
    "two newlines after": ("<think>find it</think>\n<search> who founded Acme ", "\n\n"),
    "start of the turn": ("", "\n"),
    "before end of turn": ("<answer> Paris ", "<|im_end|>"),
    "after text, no space": ("the answer is Paris", "."),
    "after a newline": ("<answer>\nParis\n", "\n\nDone"),
    "after an information block": ("\n<information>\nDoc 1 (Title: Acme)\nAcme was founded.</information>\n\n"
                                   "<think>next</think>\n<search> founder of Acme ", " \n"),
}


@pytest.fixture(scope="module")
def tag_stops(real_tokenizer):
    """Family -> (tokenizer, its token bytes, the automaton of TAGS), built once."""
    def build(family):
        tokenizer = real_tokenizer(family)
        table = tokenizer.token_bytes()
        return tokenizer, table, StopAutomaton.for_strings(TAGS, table, tokenizer.vocab_size)
    return {family: build(family) for family in ("qwen2.5", "llama3")}


@pytest.mark.parametrize("family", ["qwen2.5", "llama3"])
@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("tag", TAGS)
def test_tags_stop_in_every_context_on_real_bpe(family, context, tag, tag_stops):
    tokenizer, table, stops = tag_stops[family]
    before, after = CONTEXTS[context]
    ids = tokenizer.encode(before + tag + after)
    position, index = stops.run(ids)
    assert (position, index) == first_stop(table, ids, TAGS)
    assert index == TAGS.index(tag)
    assert tokenizer.decode(ids[:position + 1]).startswith(before + tag)  # the completing token, not later
    assert tag not in tokenizer.decode(ids[:position])


def test_token_level_matching_missed_what_a_model_writes(qwen_tokenizer):
    """The finding this replaces: the tag's own ids, matched as a sequence, never fire on the way
    the prompt's own format spells it (a space before the tag, newlines merged after it)."""
    tokenizer = qwen_tokenizer
    old = StopAutomaton.for_token_sequences([tokenizer.encode(t) for t in TAGS], tokenizer.vocab_size)
    new = StopAutomaton.for_strings(TAGS, tokenizer.token_bytes(), tokenizer.vocab_size)
    ids = tokenizer.encode("<think>find it</think>\n<search> who founded Acme </search>\n\n")
    assert old.run(ids) == (-1, NO_STOP)
    assert new.run(ids) == (len(ids) - 1, 0)
    ids = tokenizer.encode("<answer> Paris </answer>")
    assert old.run(ids) == (-1, NO_STOP) and new.run(ids) == (len(ids) - 1, 1)


# --- inside the compiled engine, over the full Qwen2.5 vocabulary -------------------------------------

CONFIG = EngineConfig(num_slots=2, max_cache_len=96, prefill_buckets=(16,), extend_buckets=(32,), extend_group=1,
                      decode_steps=4)


def greedy(engine, params, prompt, budget, extend=None):
    """Greedy tokens of slot 0 until it stops: (tokens, stop reason, stop index); with `extend`, the
    first `budget` tokens are generated, the span appended, then generation goes on."""
    state = engine.insert(engine.prefill(params, prompt), engine.init_decode_state(), 0, seed=0,
                          sampling=GREEDY, budget=budget)
    tokens = []
    for phase in ([None, extend] if extend is not None else [None]):
        if phase is not None:
            state = engine.extend(params, state, [0], [phase], [budget])
        while bool(state.active[0]):
            state, out = engine.generate(params, state)
            tokens += np.asarray(out.tokens)[np.asarray(out.emitted)[:, 0], 0].tolist()
    return tokens, int(state.stop_reason[0]), int(state.stop_index[0])


def valid_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8") or None
    except UnicodeDecodeError:
        return None


@pytest.mark.slow
def test_engine_stops_at_the_token_that_completes_the_text(random_qwen, qwen_tokenizer):
    """A stop string cut from the model's own greedy text across token boundaries, ending one byte
    into a token: the engine must stop exactly at that token, with the right stop index."""
    model, params = random_qwen
    table = qwen_tokenizer.token_bytes() + [b""] * (FULL_VOCAB - qwen_tokenizer.vocab_size)
    prompt = qwen_tokenizer.encode("Doc 1 (Title: Acme)\nAcme was founded")
    free, _, _ = greedy(Engine(model, CONFIG), params, prompt, budget=24)
    stop = None
    for end in range(3, len(free)):  # the first window [end-2, end] that ends inside token `end`
        if len(table[free[end]]) >= 2 and (text := valid_text(b"".join(table[t] for t in free[end - 2:end])
                                                              + table[free[end]][:1])):
            if first_stop(table, free, ["zzz-never", text])[0] == end:
                stop = text
                break
    assert stop is not None, "no usable window in the greedy text"
    engine = Engine(model, CONFIG, stops=StopAutomaton.for_strings(["zzz-never", stop], table, FULL_VOCAB))
    tokens, reason, index = greedy(engine, params, prompt, budget=24)
    assert tokens == free[:end + 1] and (reason, index) == (STOP_SEQUENCE, 1)


@pytest.mark.slow
def test_prompt_and_extended_text_never_complete_a_stop(random_qwen, qwen_tokenizer):
    """Only sampled tokens advance the automaton: a stop string that would end one byte into the
    first generated token, but starts in the prompt (or in a retrieved `extend` span, e.g. a
    passage quoting `</search>`), must not fire."""
    model, params = random_qwen
    table = qwen_tokenizer.token_bytes() + [b""] * (FULL_VOCAB - qwen_tokenizer.vocab_size)
    prompt = qwen_tokenizer.encode("Search for it: <search> Acme </search")
    passage = qwen_tokenizer.encode("\n<information>\nDoc 1 (Title: Tags)\nclose it with </search> or </search")
    plain = Engine(model, CONFIG)
    free, _, _ = greedy(plain, params, prompt, budget=6)
    after, _, _ = greedy(plain, params, prompt, budget=6, extend=passage)
    crossing = [text for text in (valid_text(table[prompt[-1]] + table[free[0]][:1]),
                                  valid_text(table[passage[-1]] + table[after[6]][:1]), "</search>") if text]
    generated = b"".join(table[t] for t in after)
    crossing = [c for c in crossing if c.encode() not in generated]  # it must not also occur later
    assert "</search>" in crossing and len(crossing) >= 2
    engine = Engine(model, CONFIG, stops=StopAutomaton.for_strings(crossing, table, FULL_VOCAB))
    assert greedy(engine, params, prompt, budget=6)[:2] == (free, STOP_BUDGET)
    assert greedy(engine, params, prompt, budget=6, extend=passage)[:2] == (after, STOP_BUDGET)


def test_engine_rejects_an_automaton_of_another_vocabulary(random_qwen):
    model, _ = random_qwen
    with pytest.raises(ValueError, match="vocab_size=151936"):
        Engine(model, CONFIG, stops=StopAutomaton.for_token_sequences([[1]], vocab_size=1000))
