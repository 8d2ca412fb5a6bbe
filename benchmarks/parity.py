"""Measured logit differences: ours vs transformers, and 8-device sharded vs single device.

Tests assert the thresholds (1e-4, 1e-5); this prints the actual figures for docs/performance.md / issue notes.
`python benchmarks/parity.py` (uses the tiny random models of tests/conftest.py; 8 fake CPU devices).
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402  (sets XLA_FLAGS for 8 devices before jax is imported)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from ssp_jax.models.hf_import import load_hf_decoder  # noqa: E402
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig, make_mesh, shard_batch  # noqa: E402


def main() -> None:
    tokens, mask, positions = conftest.padded_batch()
    real = mask.astype(bool)
    forward = nnx.jit(lambda m, t, p, a: m.logits(m(t, p, a)[0]))
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    # The mesh's batch axes need 4 rows: repeat the first one.
    batch = shard_batch({k: np.concatenate([v, v[:1]]) for k, v in dict(t=tokens, m=mask, p=positions).items()},
                        mesh, DEFAULT_RULES)
    print("| family | tied | max abs logit | vs transformers (fp32) | fsdp=4 x tensor=2 vs 1 device |")
    print("|---|---|---|---|---|")
    for family, tied in [("qwen2", True), ("qwen2", False), ("qwen3", False), ("qwen3", True), ("llama", False)]:
        reference = conftest.build_hf_model(family, tied)
        with tempfile.TemporaryDirectory() as path:
            reference.save_pretrained(path)
            single, _ = load_hf_decoder(path)
            sharded, _ = load_hf_decoder(path, mesh=mesh)
        with torch.no_grad():
            ref = reference(input_ids=torch.tensor(tokens).long(), attention_mask=torch.tensor(mask).long(),
                            position_ids=torch.tensor(positions).long()).logits.numpy()
        ours = np.asarray(forward(single, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)))
        spread = np.asarray(forward(sharded, batch["t"], batch["p"], batch["m"]))[:3]
        print(f"| {family} | {tied} | {np.abs(ref).max():.2f} | {np.abs(ours - ref)[real].max():.1e} "
              f"| {np.abs(spread - ours)[real].max():.1e} |")


if __name__ == "__main__":
    main()
