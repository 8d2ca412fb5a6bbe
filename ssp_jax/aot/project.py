"""The step-time projection: compile every program one SSP step runs and price it.

`python -m ssp_jax.aot --config X --topology T --project` (see `ssp_jax.projection` for the
arithmetic and its assumptions). Per-layer costs come from 1- and 2-layer compiles, extrapolated
to the model's depth, so it runs on a CPU host in minutes.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import jax.numpy as jnp

from ssp_jax.aot import Plan, abstract_batch, model_config, tpu_topology_devices
from ssp_jax.config import Config
from ssp_jax.engine.api import EngineConfig
from ssp_jax.engine.engine import Engine
from ssp_jax.models.attention import resolve_backend
from ssp_jax.models.decode_attention import DECODE_BLOCKS
from ssp_jax.models.shapes import bucket_for
from ssp_jax.models.sharding import activation_sharding
from ssp_jax.projection import CHIP_SPECS, Call, Cost, Projection
from ssp_jax.rl.update import LearnerSteps


def _program_costs(config: Config, topology: str, layers: int) -> dict[str, tuple[str, Cost]]:
    """Every program one SSP step runs, compiled with the model cut to `layers` layers and without
    loops over what a step repeats (one decode step per call, the vocabulary projection unchunked),
    so XLA's cost analysis counts one call: name -> (shape, cost per device of one call)."""
    plan = Plan(config, topology, None, layers=layers)
    work, rl, selfplay = config.projection, config.rl, config.selfplay
    costs: dict[str, tuple[str, Cost]] = {}

    def add(name: str, shape: str, lowered: jax.stages.Lowered) -> None:
        start = time.perf_counter()
        compiled = lowered.compile()
        costs[name] = (shape, Cost.of(compiled.cost_analysis(), compiled.as_text()))
        logging.info("aot: compiled %s (%s, %d layers) in %.1f s", name, shape, layers, time.perf_counter() - start)

    engines = [("rollout", config.engine, work.prompt_tokens)]
    if selfplay.rag_reader == "read":
        engines.append(("reader", config.reader_engine, work.prompt_tokens + work.retrieved_tokens))
    ragged = decode_is_ragged(plan)
    for phase, cfg, prompt in engines:
        engine = plan.engine(dataclasses.replace(cfg, decode_steps=1))

        def over(length: int, cfg: EngineConfig = cfg) -> Engine:
            """The engine cut to a `length`-position cache (a decode step priced at that length)."""
            return plan.engine(dataclasses.replace(cfg, decode_steps=1, max_cache_len=length, decode_windows=(),
                                                   prefill_buckets=(length,), extend_buckets=(length,)))

        bucket = bucket_for(prompt, cfg.prefill_buckets, f"the projected {phase} prompt")
        add(f"{phase}/prefill", f"1x{bucket}", engine.lower_prefill(plan.rollout_params, bucket))
        window = work.decode_window if phase == "rollout" else 0
        if ragged:
            # The ragged kernel reads what each slot holds, so a step costs what a cache of the mean
            # held length costs (rounded up to the kernel's 512-position blocks).
            held = work.mean_context if phase == "rollout" else prompt
            length = -(-held // DECODE_BLOCKS[0]) * DECODE_BLOCKS[0]
            small = over(length)
            add(f"{phase}/decode", f"{cfg.num_slots} slots x {length} held",
                small.lower_generate(plan.rollout_params, small.abstract_decode_state()))
        elif window:
            # A windowed `generate` copies the window out of the cache and back once per call of
            # `decode_steps` steps. The step itself is priced on a cache of the window's length; the
            # copy is what the one-step windowed program costs beyond that step.
            small = over(window)
            add(f"{phase}/decode", f"{cfg.num_slots} slots x {window}",
                small.lower_generate(plan.rollout_params, small.abstract_decode_state()))
            add(f"{phase}/window", f"{window} of {cfg.max_cache_len}, in and out",
                engine.lower_generate(plan.rollout_params, engine.abstract_decode_state(), window))
            shape, whole = costs[f"{phase}/window"]
            costs[f"{phase}/window"] = (shape, whole.minus(costs[f"{phase}/decode"][1]))
        else:
            add(f"{phase}/decode", f"{cfg.num_slots} slots x {cfg.max_cache_len}",
                engine.lower_generate(plan.rollout_params, engine.abstract_decode_state()))
        if phase == "rollout":
            span = bucket_for(-(-work.retrieved_tokens // work.turns), cfg.extend_buckets, "the projected tool output")
            add("rollout/extend", f"{cfg.extend_group}x{span}",
                engine.lower_extend(plan.rollout_params, engine.abstract_decode_state(), span))
    steps = LearnerSteps(plan.model, plan.optimizer, dataclasses.replace(rl, logprob_chunk=0), mesh=plan.mesh,
                         rules=plan.rules)
    for _, _, micro_rows, width in _training_batches(config, plan):
        micro = abstract_batch(micro_rows, width, plan.mesh, plan.rules)
        shape = f"{micro_rows}x{width}"
        if f"training/logprobs {shape}" not in costs:
            add(f"training/logprobs {shape}", shape, steps.logprobs.lower(plan.params, micro.tokens,
                                                                         micro.attention_mask))
            add(f"training/accumulate {shape}", shape,
                steps.accumulate.lower(plan.params, plan.carry(micro), micro, micro.advantages,  # row weights
                                       jnp.float32(1)))
    add("training/apply", "optimizer step", steps.apply.lower(plan.state, *plan.carry(micro)))
    return costs


def decode_is_ragged(plan: Plan) -> bool:
    """Whether the plan's decode steps run the ragged kernel (`attention` resolving to `splash` on
    the plan's devices), which reads each slot's cache only as far as it is filled."""
    with activation_sharding(plan.mesh, plan.rules, pin=False):
        return resolve_backend(plan.model_cfg.attention) == "splash"


def _training_batches(config: Config, plan: Plan) -> list[tuple[int, int, int, int]]:
    """(rows, mini-batches, micro-batch rows, width) of the proposer's and the solver's update, with
    rows of the projected mean length."""
    rl, selfplay = config.rl, config.selfplay
    width = bucket_for(config.projection.total_tokens, rl.length_buckets, "the projected trajectory")
    out = []
    for trajectories, minis in ((selfplay.batch_size, rl.proposer_mini_batches),
                                (selfplay.batch_size * selfplay.solver_samples, rl.solver_mini_batches)):
        rows = plan.padded_rows(trajectories, minis)
        out.append((rows, minis, rl.micro_batch_size or rows // minis, width))
    return out


def project(config: Config, topology: str) -> Projection:
    """One SSP step of `config` on `topology`, projected from its programs' compiled costs at 1 and
    2 layers, extrapolated to the model's depth (`ssp_jax.projection` has the arithmetic)."""
    layers = model_config(config).num_layers
    one, two = (_program_costs(config, topology, n) for n in (1, 2))
    devices = tpu_topology_devices(topology)
    kind = devices[0].device_kind
    if kind not in CHIP_SPECS:
        raise ValueError(f"no peak FLOP/s and bandwidths known for device kind {kind!r}; known: {sorted(CHIP_SPECS)}")
    work, rl, selfplay, engine = config.projection, config.rl, config.selfplay, config.engine
    plan_rows = Plan(config, topology, None, layers=1)
    questions, solvers = selfplay.batch_size, selfplay.batch_size * selfplay.solver_samples
    trajectories = questions + solvers  # one proposer trajectory per answer
    waves = -(-questions // engine.num_slots) + -(-solvers // engine.num_slots)
    counts: dict[str, float] = {
        "rollout/prefill": questions + questions,  # the proposer prompts, then one per question (shared)
        "rollout/extend": -(-trajectories * work.turns // engine.extend_group),
        "rollout/decode": waves * work.generated_tokens,
    }
    ragged = decode_is_ragged(plan_rows)
    if work.decode_window and not ragged:
        counts["rollout/window"] = -(-waves * work.generated_tokens // engine.decode_steps)
    if selfplay.rag_reader == "read":
        counts["reader/prefill"] = questions
        counts["reader/decode"] = -(-questions // config.reader_engine.num_slots) * selfplay.reader_max_tokens
    passes = 2 if rl.behaviour_logprobs == "recompute" else 1
    batches = _training_batches(config, plan_rows)
    for rows, minis, micro_rows, width in batches:
        shape = f"{micro_rows}x{width}"
        for name, n in ((f"training/logprobs {shape}", passes * rows // micro_rows),
                        (f"training/accumulate {shape}", rl.ppo_epochs * rows // micro_rows)):
            counts[name] = counts.get(name, 0) + n
        counts["training/apply"] = counts.get("training/apply", 0) + rl.ppo_epochs * minis
    calls = tuple(Call(phase=key.split("/")[0], name=key.split("/")[1].split(" ")[0], shape=one[key][0],
                       count=count, cost=Cost.extrapolate(one[key][1], two[key][1], layers))
                  for key, count in counts.items())
    mesh = " ".join(f"{k}={v}" for k, v in plan_rows.mesh.shape.items())
    chip = CHIP_SPECS[kind]
    assumptions = (
        f"workload per trajectory (config.projection): {work.prompt_tokens} prompt + {work.generated_tokens} "
        f"generated + {work.retrieved_tokens} retrieved tokens over {work.turns} tool calls",
        f"{questions} proposer + {solvers} solver trajectories; {engine.num_slots} slots stay full, each "
        f"wave of slots lasting {work.generated_tokens} decode steps ({waves} waves)",
        f"prefill: one per proposer prompt and one per question (its {selfplay.solver_samples} solver samples "
        "share it); extend: one per tool call, "
        f"{engine.extend_group} slots per call, spans of {-(-work.retrieved_tokens // work.turns)} tokens",
        (f"decode runs the ragged kernel (model.attention={plan_rows.model_cfg.attention!r}), which reads each "
         f"slot's cache as far as it is filled: a step is priced on a cache of the mean held length, "
         f"{work.mean_context} tokens (prompt + half of the generated and retrieved tokens), rounded up to "
         f"{DECODE_BLOCKS[0]}" if ragged else
         f"decode attends over a {work.decode_window}-position window of the {engine.max_cache_len}-token cache "
         "(config.projection.decode_window: every slot in the batch holds fewer tokens), copied out and back "
         f"once per generate call of {engine.decode_steps} steps" if work.decode_window else
         f"decode attends over the whole {engine.max_cache_len}-token cache (a batch's window is its longest "
         "slot's; config.projection.decode_window assumes a smaller one)"),
        ("RAG check: the reader prefills the question with the proposer's documents and decodes "
         f"{selfplay.reader_max_tokens} tokens" if selfplay.rag_reader == "read" else
         f"RAG check: selfplay.rag_reader={selfplay.rag_reader!r} runs no reader program"),
        *(["the reader's programs are priced with the policy's shape: config.reader.path's own shape is not "
           "priced (the fit check counts its weights and compiles its decode step)"] if config.reader.path else []),
        *(["the judge's calls (config.judge) are not priced: one short greedy turn per answer exact match "
           "rejects"] if config.judge.path else []),
        f"training rows of the mean length: every micro-batch pads to the {batches[0][3]}-token bucket; "
        "log-prob passes over every row: " + ("behaviour and reference" if passes == 2 else
                                              "reference only (behaviour log-probs from the engine)"),
        f"chip {kind}: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, HBM {chip.hbm_bandwidth / 1e9:.0f} GB/s, "
        f"ICI {chip.ici_bandwidth / 1e9:.0f} GB/s per chip; {len(devices)} devices, mesh {mesh}",
        f"each call takes max(FLOPs / peak, HBM bytes / bandwidth, ICI bytes / bandwidth) / {work.efficiency} "
        "(collectives overlapped with compute; the largest array of each collective counts once)",
        "phases run one after another: no overlap of rollout and training; host and retrieval time excluded",
    )
    return Projection(topology=topology, device_kind=kind, devices_per_chip=plan_rows.devices_per_chip,
                      layers=layers, calls=calls, assumptions=assumptions, efficiency=work.efficiency)
