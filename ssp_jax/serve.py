"""Serve a trained policy over gRPC with JetStream: `python -m ssp_jax.serve --config configs/<x>.py
--checkpoint PATH [--port 9000]`.

Optional, in an environment of its own (JetStream 0.2.2 brings TensorFlow, next to which scann cannot
load): `python3 -m venv .venv-jetstream && .venv-jetstream/bin/pip install -e . -r requirements-jetstream.txt`.

`--checkpoint` is an HF or orbax checkpoint, as for `python -m ssp_jax.eval`. A request
(`jetstream_pb2.DecodeRequest` with `text_content`) is one user message, rendered with the config's
chat template (`--raw` sends the text as it is). Generation stops at end of turn, EOS and the
rollout's stop strings (`</search>`, `</answer>`), so a search agent's client runs the search itself
and sends the whole conversation again: JetStream session caches (`existing_prefix`) are not
supported. Our engine samples `config.engine.decode_steps` tokens per call, which JetStream reads
as speculative tokens, so a request's `max_tokens` below `--max_new_tokens` is cut at a multiple of
`decode_steps`. Single host.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import jax
from absl import app, flags
from flax import nnx
from jetstream.core import config_lib, server_lib  # noqa: I001 - after ssp_jax.engine.jetstream's jax shim

from ssp_jax.config import Config
from ssp_jax.engine.jetstream import JetStreamEngine, JetStreamTokenizer
from ssp_jax.engine.sampling import GREEDY, SamplingParams
from ssp_jax.tokenizer import get_chat_template
from ssp_jax.wiring import (
    CHECKPOINT,
    config_from_flags,
    load_eval_policy,
    make_engine,
    mesh_and_rules,
    one_line_errors,
    parse_flags,
)

_PORT = flags.DEFINE_integer("port", 9000, "gRPC port")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sampling temperature; 0 = greedy")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 512, "tokens generated per request at most")
_RAW = flags.DEFINE_bool("raw", False, "send request text to the model as it is, without the chat template")


def serve(config: Config, checkpoint: str | Path, port: int, *,
          sampling: SamplingParams = GREEDY, max_new_tokens: int = 512, chat: bool = True,
          credentials: grpc.ServerCredentials | None = None) -> server_lib.JetStreamServer:
    """Load the policy at `checkpoint` into our engine and start JetStream's server on `port`
    (it returns at once; `.stop()` it, or `.wait_for_termination()`)."""
    mesh, rules = mesh_and_rules(config)
    policy = load_eval_policy(config, Path(checkpoint), mesh=mesh, rules=rules)
    engine = make_engine(policy, config.chat_template, config.engine, config.rollout, mesh=mesh, rules=rules)
    tokenizer = JetStreamTokenizer(policy.tokenizer, engine, get_chat_template(config.chat_template) if chat else None)
    adapter = JetStreamEngine(engine, nnx.state(policy.model, nnx.Param), tokenizer, sampling=sampling,
                              max_new_tokens=max_new_tokens, seed=config.seed, tokenizer_path=policy.checkpoint_dir)
    devices = jax.devices()
    server_config = config_lib.ServerConfig(interleaved_slices=(f"{devices[0].platform}={len(devices)}",),
                                            interleaved_engine_create_fns=(lambda _devices: adapter,))
    return server_lib.run(port=port, config=server_config, devices=devices,
                          credentials=credentials or grpc.insecure_server_credentials(),
                          threads=adapter.max_concurrent_decodes)


def main(argv: list[str]) -> None:
    del argv
    checkpoint = CHECKPOINT.value
    with one_line_errors("ssp_jax.serve"):
        server = serve(config_from_flags(), checkpoint, _PORT.value,
                       sampling=SamplingParams(temperature=_TEMPERATURE.value), max_new_tokens=_MAX_NEW_TOKENS.value,
                       chat=not _RAW.value)
    print(f"serving {checkpoint} on port {_PORT.value} (JetStream gRPC); Ctrl-C to stop")
    server.wait_for_termination()


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "checkpoint"])
    app.run(main, flags_parser=parse_flags)
