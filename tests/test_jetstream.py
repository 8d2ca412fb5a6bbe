"""The JetStream adapter: google-jetstream 0.2.2's orchestrator and gRPC server, started by
`ssp_jax.serve.serve` on a 2-device mesh, answer concurrent requests for the tiny searcher with
exactly the tokens our engine generates for them itself.

JetStream lives in its own environment (requirements-jetstream.txt, with TensorFlow). Set
SSP_JETSTREAM_PYTHON to that environment's python (`.ci/run` does), or this test is skipped. Run as a
script with that python, this file is the server and its gRPC client; a subprocess also keeps
JetStream's habit of killing its process on a thread error away from pytest."""

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import search_world as world

REPO = Path(__file__).resolve().parents[1]
JETSTREAM_PYTHON = os.environ.get("SSP_JETSTREAM_PYTHON", "")
KEYS = world.KEYS[:6]  # 6 requests for the tiny config's 4 slots: slots are freed and reused
MAX_NEW = 40


def reference() -> list[list[int]]:
    """Our engine's greedy tokens per prompt, one slot at a time, EOS dropped (JetStream drops it)."""
    from flax import nnx
    from test_eval_cli import tiny_config

    from ssp_jax.agent.rollout import RolloutConfig
    from ssp_jax.config import load_config
    from ssp_jax.engine.sampling import GREEDY
    from ssp_jax.models.policy import Policy
    from ssp_jax.wiring import make_engine

    config = load_config(tiny_config())
    model, tokenizer = world.trained_searcher()
    engine = make_engine(Policy(model, tokenizer, {}, world.ASSET), "chatml", config.engine, RolloutConfig(),
                         mesh=None, rules=config.sharding_rules)
    params = nnx.state(model, nnx.Param)
    outputs = []
    for key in KEYS:
        state = engine.insert(engine.prefill(params, tokenizer.encode(world.prompt_text(key))),
                              engine.init_decode_state(), 0, seed=0, sampling=GREEDY, budget=MAX_NEW)
        tokens: list[int] = []
        while True:
            state, out = engine.generate(params, state)
            emitted = np.asarray(out.emitted)[:, 0]  # [decode_steps]
            tokens += np.asarray(out.tokens)[:, 0][emitted].tolist()
            if not emitted.all():
                break
        outputs.append([t for t in tokens if t not in engine.eos_ids])
    return outputs


@pytest.mark.skipif(not JETSTREAM_PYTHON, reason="set SSP_JETSTREAM_PYTHON to a python with requirements-jetstream.txt")
def test_jetstream_server_serves_what_our_engine_generates(tmp_path):
    out = tmp_path / "served.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    result = subprocess.run([JETSTREAM_PYTHON, __file__, str(out)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and out.is_file(), result.stderr[-4000:]
    served, scann_error = json.loads(out.read_text())
    assert "needs an environment without TensorFlow" in scann_error  # a clear error, not an undefined symbol
    expected = reference()
    assert [s["ids"] for s in served] == expected
    assert all(expected) and sum(map(len, expected)) > len(KEYS)  # real generations, not empty replies
    tokenizer = world.trained_searcher()[1]
    assert [s["text"] for s in served] == [tokenizer.decode(ids) for ids in expected]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def query(port: int) -> list[dict]:
    """All requests at once over gRPC; each reply's streamed token ids and text."""
    import grpc
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc

    async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
        stub = jetstream_pb2_grpc.OrchestratorStub(channel)
        assert (await stub.HealthCheck(jetstream_pb2.HealthCheckRequest())).is_live

        async def one(key: str) -> dict:
            request = jetstream_pb2.DecodeRequest(
                text_content=jetstream_pb2.DecodeRequest.TextContent(text=world.prompt_text(key)), max_tokens=MAX_NEW)
            ids, text = [], []
            async for response in stub.Decode(request):
                sample = response.stream_content.samples[0]
                ids += list(sample.token_ids)
                text.append(sample.text)
            return {"ids": ids, "text": "".join(text)}

        return list(await asyncio.gather(*(one(key) for key in KEYS)))


def main(out: Path) -> None:
    """Serve the tiny searcher (raw text prompts, greedy) and query it; also record what building a
    ScaNN index says in this env, where TensorFlow is importable."""
    from test_eval_cli import tiny_config
    from test_evaluate import BareTemplate

    from ssp_jax.config import load_config
    from ssp_jax.retrieval.scann_index import ScannIndex
    from ssp_jax.serve import serve
    from ssp_jax.tokenizer import CHAT_TEMPLATES

    try:
        ScannIndex.build(np.ones((4, 2), np.float32))
        scann_error = ""
    except ImportError as e:
        scann_error = str(e)
    CHAT_TEMPLATES["bare"] = BareTemplate
    port = free_port()
    server = serve(load_config(tiny_config()), world.ASSET, port, max_new_tokens=MAX_NEW, chat=False)
    try:
        out.write_text(json.dumps([asyncio.run(query(port)), scann_error]))
    finally:
        server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
