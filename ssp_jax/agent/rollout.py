"""Multi-turn search rollouts over the engine's slots, with continuous batching.

Each loop: free slots take waiting samples (the samples of one prompt share one prefill), every
live slot decodes `decode_steps` tokens, then stopped slots are settled. A stop at `</search>`
parses the query; all such queries of the loop go to the retriever in one batch (a request may
bring its own retriever, e.g. the RAG check's document set); each slot is extended with its
`<information>` block and resumes. Any other stop, EOS, the turn limit or the
token limit ends the trajectory, and its slot is refilled on the next loop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ssp_jax.agent import trajectory as tj
from ssp_jax.agent.tags import search_query
from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.distributed import host_value
from ssp_jax.engine.api import STOP_BUDGET, STOP_EOS, STOP_SEQUENCE, DecodeState, Prefix, SlotEngine
from ssp_jax.engine.sampling import SamplingParams
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.retrieval.base import Passage, Retriever, RetrieverError
from ssp_jax.tokenizer import Tokenizer, information_block

SEARCH_STOP = "</search>"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Defaults are SSP.md section 1's."""

    max_turns: int = 10  # generation calls per trajectory
    max_prompt_tokens: int = 4096
    max_response_tokens: int = 8192  # generated + tool tokens
    topk: int = 3  # passages per search
    stop_strings: tuple[str, ...] = (SEARCH_STOP, "</answer>")
    retrieval_attempts: int = 3
    retrieval_backoff_s: float = 0.5  # doubled after each failed attempt


@dataclasses.dataclass(frozen=True)
class RolloutRequest:
    """One prompt to roll out `num_samples` times. The samples share one prefill, and each gets its own
    PRNG stream from `seed`, so a GRPO group is reproducible whatever the slot it lands in."""

    prompt_ids: list[int]
    num_samples: int = 1  # a GRPO group: the samples share one prefill
    seed: int = 0
    sampling: SamplingParams = SamplingParams()
    meta: Any = None
    retriever: Retriever | None = None  # answers this request's searches instead of the runner's


def text_stops(tokenizer: Tokenizer, stop_strings: Sequence[str], vocab_size: int) -> StopAutomaton:
    """`Engine(stops=...)` for `stop_strings`, matched on the decoded text: a real BPE spells a tag
    differently after a space or before a newline, so no single id sequence would do."""
    return StopAutomaton.for_strings(stop_strings, tokenizer.token_bytes(), vocab_size)


class RolloutRunner:
    """Drives the engine through the multi-turn tool loop: generate until a stop string, search on
    `</search>`, extend the slot with the `<information>` block, repeat. Slots are refilled as
    trajectories finish (continuous batching), so one long trajectory never idles the batch."""

    def __init__(self, engine: SlotEngine, tokenizer: Tokenizer, retriever: Retriever | None,
                 config: RolloutConfig):
        """`retriever=None` makes tool-less generation (e.g. the RAG reader): a search then ends the
        trajectory with a retriever error instead of being answered."""
        if engine.stops.strings != tuple(config.stop_strings):
            raise ValueError(f"engine stops {engine.stops.strings} differ from RolloutConfig.stop_strings "
                             f"{config.stop_strings}; build them with text_stops(tokenizer, stop_strings, vocab_size)")
        if SEARCH_STOP not in config.stop_strings:
            raise ValueError(f"RolloutConfig.stop_strings must include {SEARCH_STOP!r}")
        self.engine, self.tokenizer, self.retriever, self.config = engine, tokenizer, retriever, config

    def run(self, params: nnx.State, requests: Sequence[RolloutRequest], *, progress: bool = False,
            ) -> list[Trajectory]:
        """Roll out every sample of every request; returns trajectories in (request, sample) order."""
        engine, cfg = self.engine, self.config
        waiting = collections.deque((r, s) for r, req in enumerate(requests) for s in range(req.num_samples))
        unstarted = collections.Counter({r: req.num_samples for r, req in enumerate(requests)})
        prefixes: dict[int, Prefix] = {}
        slots: list[Trajectory | None] = [None] * engine.config.num_slots
        finished: list[Trajectory] = []
        state = engine.init_decode_state()
        bar = tqdm(total=len(waiting), desc="rollouts", disable=not progress, leave=False)

        def finish(slot: int | None, traj: Trajectory, reason: str, error: str | None = None) -> None:
            traj.finish_reason, traj.error = reason, error
            traj.response_text = self.tokenizer.decode(traj.response_ids, skip_special_tokens=True)
            finished.append(traj)
            bar.update(1)
            if slot is not None:
                slots[slot] = None

        traj: Trajectory | None
        while waiting or any(slots):
            for slot in range(len(slots)):
                while slots[slot] is None and waiting:
                    r, s = waiting.popleft()
                    req = requests[r]
                    traj = Trajectory(r, s, list(req.prompt_ids), meta=req.meta)
                    unstarted[r] -= 1
                    budget = self._budget(traj)
                    if not 0 < len(req.prompt_ids) <= cfg.max_prompt_tokens or budget <= 0:
                        finish(None, traj, tj.FINISH_PROMPT_TOO_LONG,
                               f"prompt of {len(req.prompt_ids)} tokens; limit {cfg.max_prompt_tokens} "
                               f"and {engine.config.max_cache_len - 1} cache slots")
                        continue
                    if r not in prefixes:
                        prefixes[r] = engine.prefill(params, req.prompt_ids)
                    prefix = prefixes[r] if unstarted[r] else prefixes.pop(r)
                    seed = int(np.random.SeedSequence([req.seed, s]).generate_state(1)[0])
                    state = engine.insert(prefix, state, slot, seed=seed, sampling=req.sampling, budget=budget)
                    traj.num_turns = 1
                    slots[slot] = traj
            if not any(slots):
                break
            state, out = engine.generate(params, state)
            tokens, logprobs, emitted = (host_value(x) for x in (out.tokens, out.logprobs, out.emitted))
            active, reasons, stop_index = (host_value(x) for x in (state.active, state.stop_reason, state.stop_index))
            searches: list[tuple[int, Trajectory, str]] = []
            for slot, traj in enumerate(slots):
                if traj is None:
                    continue
                rows = emitted[:, slot]
                traj.append_generated(tokens[rows, slot], logprobs[rows, slot])
                if active[slot]:
                    continue
                if reasons[slot] == STOP_EOS:
                    finish(slot, traj, tj.FINISH_EOS)
                elif reasons[slot] == STOP_BUDGET:
                    finish(slot, traj, tj.FINISH_LENGTH)
                elif reasons[slot] == STOP_SEQUENCE:
                    traj.stop_string = cfg.stop_strings[stop_index[slot]]
                    if traj.stop_string != SEARCH_STOP:
                        finish(slot, traj, tj.FINISH_ANSWER)
                    elif traj.num_turns >= cfg.max_turns:
                        finish(slot, traj, tj.FINISH_MAX_TURNS)
                    else:
                        query = search_query(self.tokenizer.decode(traj.segment_ids))
                        if query.ok:
                            assert query.content is not None  # `ok` means it has content
                            searches.append((slot, traj, query.content))
                        else:
                            finish(slot, traj, tj.FINISH_NO_QUERY, f"search query {query.reason}")
            if searches:
                state = self._search_and_extend(params, state, searches, requests, finish)
        bar.close()
        return sorted(finished, key=lambda t: (t.request_index, t.sample_index))

    def _budget(self, traj: Trajectory) -> int:
        """Tokens the slot may sample: bounded by the response limit and by the KV cache."""
        cached = len(traj.prompt_ids) + len(traj.response_ids) - 1  # all but the pending token
        return min(self.config.max_response_tokens - len(traj.response_ids),
                   self.engine.config.max_cache_len - 1 - cached)

    def _search_and_extend(self, params: nnx.State, state: DecodeState,
                           searches: list[tuple[int, Trajectory, str]], requests: Sequence[RolloutRequest],
                           finish: Callable[..., None]) -> DecodeState:
        groups: dict[int, tuple[Retriever | None, list[tuple[int, Trajectory, str]]]] = {}
        for search in searches:
            own = requests[search[1].request_index].retriever
            retriever = self.retriever if own is None else own
            groups.setdefault(id(retriever), (retriever, []))[1].append(search)
        found: list[tuple[int, Trajectory, str, list[Passage]]] = []
        for retriever, group in groups.values():  # one batched call per retriever
            try:
                results = self._search(retriever, [query for _, _, query in group])
            except RetrieverError as e:
                for slot, traj, _ in group:
                    finish(slot, traj, tj.FINISH_RETRIEVER_ERROR, str(e))
                continue
            found += [(*search, passages) for search, passages in zip(group, results)]
        ext_slots, spans, budgets = [], [], []
        for slot, traj, query, passages in sorted(found, key=lambda f: f[0]):
            ids = self.tokenizer.encode(information_block([(p.title, p.text) for p in passages]))
            cached = len(traj.prompt_ids) + len(traj.response_ids) - 1
            fits = len(ids) <= self.engine.config.extend_buckets[-1] and (
                cached + self.engine.extend_bucket(len(ids)) <= self.engine.config.max_cache_len)
            if not fits or len(traj.response_ids) + len(ids) >= self.config.max_response_tokens:
                finish(slot, traj, tj.FINISH_LENGTH, f"no room for a {len(ids)}-token information block")
                continue
            traj.append_tool(ids, query, passages)
            traj.num_turns += 1
            ext_slots.append(slot)
            spans.append(ids)
            budgets.append(self._budget(traj))
        return self.engine.extend(params, state, ext_slots, spans, budgets) if ext_slots else state

    def _search(self, retriever: Retriever | None, queries: list[str]) -> list[list[Passage]]:
        """One batched search, retried with exponential back-off; raises RetrieverError at the end."""
        if retriever is None:
            raise RetrieverError("no retriever configured (tool-less generation)")
        delay, error = self.config.retrieval_backoff_s, None
        for attempt in range(1, self.config.retrieval_attempts + 1):
            try:
                results = retriever.search(queries, self.config.topk)
                if len(results) != len(queries):
                    raise RetrieverError(f"retriever returned {len(results)} result lists for {len(queries)} queries")
                return results
            except Exception as e:  # any backend failure ends only the affected trajectories
                error = e
                logging.warning("retrieval attempt %d/%d failed: %s", attempt, self.config.retrieval_attempts, e)
                if attempt < self.config.retrieval_attempts:
                    time.sleep(delay)
                    delay *= 2
        raise RetrieverError(f"retrieval failed after {self.config.retrieval_attempts} attempts: {error}")
