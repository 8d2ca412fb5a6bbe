"""The wiki rehearsal's warm-start demos: real passages, spelled by the real Qwen2.5 BPE the way the
rollout will meet them, and an SFT that trains only where it must (same loss, less work)."""

import numpy as np
import pytest
from flax import nnx

from ssp_jax.agent.prompts import DEFAULT_TEMPLATES
from ssp_jax.agent.tags import all_tags
from ssp_jax.data.wiki_offline import WikiOfflineConfig, answer_records, cloze_questions, passages, sample_articles
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.decoder import Decoder, DecoderConfig
from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.document_set import DocumentSet
from ssp_jax.selfplay.filters import check_proposal
from ssp_jax.tokenizer import INFORMATION_OPEN, ChatMLTemplate
from ssp_jax.worlds.warmstart.demos import DemoFormat
from ssp_jax.worlds.warmstart.sft import SFTConfig, sft
from ssp_jax.worlds.warmstart.wiki_demos import wiki_demos


@pytest.fixture(scope="module")
def demos(qwen_tokenizer):
    articles = sample_articles(WikiOfflineConfig(max_articles=600, seed=1))
    corpus = [Passage(str(i), f'"{t}"\n{x}') for i, (t, x) in enumerate(passages(articles))]
    questions = cloze_questions(articles)
    records = answer_records(articles, questions, num_examples=3, seed=1)
    fmt = DemoFormat(ChatMLTemplate(), DEFAULT_TEMPLATES, topk=3)
    made = wiki_demos(articles, corpus, records, questions, qwen_tokenizer, fmt, DocumentSet(corpus),
                      num_solver=20, num_proposer=20, num_reader=10, seed=0)
    return made, records


def test_every_role_is_spelled_as_the_rollout_will_meet_it(demos, qwen_tokenizer):
    made, _ = demos
    assert {d.role for d in made} == {"solver", "proposer", "reader"} and len(made) == 50
    stops = StopAutomaton.for_strings(("</search>", "</answer>"), qwen_tokenizer.token_bytes(),
                                      qwen_tokenizer.vocab_size)
    end = qwen_tokenizer.token_to_id("<|im_end|>")
    for demo in made:
        assert demo.prompt_ids[-3:] == qwen_tokenizer.encode("<|im_start|>assistant\n")
        trained = [ids for ids, on in demo.spans if on]
        assert trained[-1][-1] == end  # each demo ends its turn
        for ids, on in demo.spans:
            text = qwen_tokenizer.decode(ids)
            if not on:  # a retrieved block: never trained, and starts as the rollout's does
                assert text.startswith(INFORMATION_OPEN) and "</search>" not in text
            elif "</search>" in text:  # the stop fires on this span's last token, spelled 'Ġ</' 'search' '>'
                assert text.endswith(" </search>") and stops.run(ids) == (len(ids) - 1, 0)
                assert qwen_tokenizer.encode(" </search>") == ids[-3:]
        if demo.role == "solver":
            assert stops.run([t for ids in trained for t in ids])[1] in (0, 1)


def test_proposer_demos_pass_the_rule_filter(demos, qwen_tokenizer):
    made, records = demos
    proposers = [d for d in made if d.role == "proposer"]
    golds = {r["ground_truth"] for r in records}
    passed = 0
    for demo in proposers:
        text = qwen_tokenizer.decode([t for ids, _ in demo.spans for t in ids], skip_special_tokens=True)
        written = qwen_tokenizer.decode([t for ids, on in demo.spans if on for t in ids], skip_special_tokens=True)
        queries = all_tags(written, "search")
        assert queries[0] in golds  # the first search is the answer
        passed += check_proposal(text, queries, queries[0]).valid
    assert passed >= 0.9 * len(proposers)


@pytest.mark.slow
def test_sft_on_trained_positions_only_is_the_same_loss():
    cfg = DecoderConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                        num_kv_heads=1, head_dim=16)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 300, n).tolist() for n in rng.integers(20, 100, 12)]
    masks = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs]
    losses = [sft(Decoder(cfg, rngs=nnx.Rngs(0)), seqs, masks, SFTConfig(
        steps=5, batch_size=4, warmup_steps=1, length_buckets=(128,), trained_positions_only=sparse), progress=False)
        for sparse in (False, True)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
