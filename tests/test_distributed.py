"""Multi-process runs: two processes on 127.0.0.1 (2 CPU devices each) behave exactly like one
process with the same 4 global devices. Run as a script, this file is the rollout worker."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import search_world as world
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from test_eval_cli import LIMIT, SHARD, write_benchmarks
from test_eval_cli import tiny_config as eval_config
from test_evaluate import BareTemplate

from ssp_jax.agent.rollout import RolloutConfig, RolloutRequest, RolloutRunner, text_stops
from ssp_jax.config import load_config
from ssp_jax.distributed import (
    any_process,
    gather_objects,
    global_array,
    host_value,
    initialize,
    leader_first,
    leader_value,
    process_slice,
)
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.engine.sampling import SamplingParams
from ssp_jax.eval import run_eval
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.models.sharding import MeshConfig, make_mesh
from ssp_jax.retrieval.base import RetrieverError
from ssp_jax.retrieval.sharded import ProcessShardedRetriever
from ssp_jax.tokenizer import CHAT_TEMPLATES, Tokenizer

REPO = Path(__file__).resolve().parents[1]
# configs/tiny.py made small; fsdp spans the two processes, tensor stays within each.
OVERRIDES = {"selfplay.batch_size": 2, "rollout.max_response_tokens": 24, "train.steps": 2,
             "mesh.fsdp": 2, "mesh.tensor": 2, "train.eval_every": 2, "data.eval_limit": 4}
MESH = {"data": 1, "fsdp": 2, "tensor": 2}
VOLATILE = ("time/", "throughput/")  # wall-clock metrics differ between runs
TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], devices: int) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def launch_pair(command: list[str]) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    return [launch(command + [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"], 2)
            for i in range(2)]


def finish(processes: list[subprocess.Popen]) -> None:
    """Wait for all; on any failure or timeout kill the rest and show the failing stderr."""
    deadline = time.time() + TIMEOUT_S
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=max(deadline - time.time(), 1))
            assert process.returncode == 0, stderr[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def train_command(workdir: Path) -> list[str]:
    return (["-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"), "--workdir", str(workdir)]
            + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def stable_metrics(workdir: Path) -> list[dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def test_one_process_needs_no_cluster(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert not initialize()  # no flag, no settings: a plain single-process run
    mesh = make_mesh(MeshConfig(**MESH))
    value = np.arange(8, dtype=np.float32).reshape(4, 2)
    placed = global_array(value, NamedSharding(mesh, PartitionSpec(("data", "fsdp"), "tensor")))
    assert placed.sharding.spec == PartitionSpec(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(host_value(placed), value)
    assert any_process(True) and not any_process(False)
    assert leader_first(lambda: "built", "test") == "built"
    assert gather_objects({"a": 1}) == [{"a": 1}] and leader_value(lambda: 7) == 7
    assert process_slice(5) == slice(0, 5)


@pytest.mark.slow
def test_two_processes_train_like_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    finish([launch(train_command(single), 4)] + launch_pair(train_command(multi)))

    reference, distributed = stable_metrics(single), stable_metrics(multi)
    assert [r["step"] for r in distributed] == [1, 2]  # one line per step: only process 0 writes
    assert "eval/em" in distributed[-1] and "solver/grad_norm" in distributed[-1]
    for got, want in zip(distributed, reference):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-3, abs=1e-8)  # all-reduce order differs (gloo vs in-process)
    assert (multi / "checkpoints" / "2" / "commit_success.txt").exists()  # orbax, all processes saving


def rollouts(out: Path) -> list[dict]:
    """Sampled multi-turn rollouts of the tiny searcher on a 2x2 mesh (searches, extends, slot reuse)."""
    mesh = make_mesh(MeshConfig(**MESH))
    model, _ = load_hf_decoder(world.ASSET, mesh=mesh)
    tokenizer = Tokenizer.load(world.ASSET)
    config = RolloutConfig(topk=1, retrieval_backoff_s=0.0)
    engine = Engine(model, EngineConfig(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                                        extend_group=2, decode_steps=8),
                    stops=text_stops(tokenizer, config.stop_strings, model.cfg.vocab_size), eos_ids=[tokenizer.eos_id],
                    mesh=mesh)
    requests = [RolloutRequest(tokenizer.encode(world.prompt_text(key)), num_samples=2, seed=5,
                               sampling=SamplingParams(temperature=1.0)) for key in world.KEYS[:6]]
    trajs = RolloutRunner(engine, tokenizer, world.ScriptedRetriever(), config).run(nnx.state(model), requests)
    result = [{"tokens": t.tokens, "logprobs": t.logprobs, "queries": t.queries, "finish": t.finish_reason}
              for t in trajs]
    out.with_name(f"{out.name}.{jax.process_index()}").write_text(json.dumps(result))
    return result


@pytest.mark.slow
def test_two_processes_roll_out_like_one_process(tmp_path):
    pair = launch_pair([__file__, "rollouts", str(tmp_path / "rollouts")])
    try:
        reference = rollouts(tmp_path / "reference")  # meanwhile, on 4 of this process's 8 devices
    finally:
        finish(pair)
    per_process = [json.loads((tmp_path / f"rollouts.{i}").read_text()) for i in range(2)]
    assert per_process[0] == per_process[1]  # every process holds the same (gathered) trajectories
    for i in range(2):
        assert "differs between processes" in (tmp_path / f"divergence.{i}").read_text()
        assert "process 1: ConnectionError: scripted outage" in (tmp_path / f"outage.{i}").read_text()
    assert sum(len(r["queries"]) for r in reference) >= 6  # searches and extends really happened
    for got, want in zip(per_process[0], reference, strict=True):
        assert (got["tokens"], got["queries"], got["finish"]) == (want["tokens"], want["queries"], want["finish"])
        assert got["logprobs"] == pytest.approx(want["logprobs"], abs=1e-5)


def evaluation(out: Path) -> dict:
    """`run_eval` of the tiny searcher over the benchmark files beside `out`, on a 2x2 mesh; also
    how many queries this process searched itself. Needs the "bare" chat template registered."""
    config = eval_config()
    config.mesh.update(MESH)
    retriever = world.ScriptedRetriever()
    specs = sorted(str(p) for p in out.parent.glob("*.jsonl"))
    table = run_eval(load_config(config), world.ASSET, specs, out, limit=LIMIT, shard_size=SHARD, retriever=retriever)
    result = {"table": table, "searched": sum(len(call) for call in retriever.calls)}
    out.with_name(f"{out.name}.{jax.process_index()}.json").write_text(json.dumps(result))
    return result


@pytest.mark.slow
def test_two_processes_evaluate_like_one_process_and_split_retrieval(tmp_path, monkeypatch):
    monkeypatch.setitem(CHAT_TEMPLATES, "bare", BareTemplate)
    write_benchmarks(tmp_path)
    command = [__file__, "evaluation", str(tmp_path / "multi")]
    pair = launch_pair(command)  # each process gets its own --out: only process 0 may touch it
    try:
        reference = evaluation(tmp_path / "single")
    finally:
        finish(pair)
    per_process = [json.loads((tmp_path / f"multi.{i}.json").read_text()) for i in range(2)]
    assert per_process[0]["table"] == per_process[1]["table"] == reference["table"]
    searched = [p["searched"] for p in per_process]
    assert min(searched) > 0 and sum(searched) == reference["searched"]  # each searched its share only
    assert json.loads((tmp_path / "multi" / "results.json").read_text()) == reference["table"]
    assert sorted(p.name for p in (tmp_path / "multi" / "alpha").iterdir()) == ["shard_00000.jsonl",
                                                                                "shard_00001.jsonl"]

    (tmp_path / "multi" / "alpha" / "shard_00001.jsonl").unlink()  # resume: only the leader reads the shards
    finish(launch_pair(command))
    assert json.loads((tmp_path / "multi.1.json").read_text())["table"] == reference["table"]
    assert json.loads((tmp_path / "multi.0.json").read_text())["searched"] < per_process[0]["searched"]


def worker(argv: list[str]) -> None:
    """One process of the pair: `test_distributed.py rollouts|evaluation OUT --coordinator_address=..
    --num_processes=2 --process_id=i`."""
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[2:])
    initialize(coordinator_address=flags["coordinator_address"], num_processes=int(flags["num_processes"]),
               process_id=int(flags["process_id"]))
    out = Path(argv[1])
    if argv[0] == "evaluation":
        CHAT_TEMPLATES["bare"] = BareTemplate
        evaluation(out)
        return
    rollouts(out)
    try:  # host work that diverged between processes must not silently become one global array
        global_array(np.array([jax.process_index()]), NamedSharding(make_mesh(MeshConfig(**MESH)), PartitionSpec()))
    except RuntimeError as e:
        out.with_name(f"divergence.{jax.process_index()}").write_text(str(e))
    failing = world.ScriptedRetriever(always_fail=jax.process_index() == 1)  # an outage on one host only
    try:  # reaches every process, instead of leaving process 0 waiting for process 1's results
        ProcessShardedRetriever(failing).search(["a", "b"], 1)
    except RetrieverError as e:
        out.with_name(f"outage.{jax.process_index()}").write_text(str(e))


if __name__ == "__main__":
    worker(sys.argv[1:])
