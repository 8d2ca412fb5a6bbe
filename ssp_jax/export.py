"""Export a trained policy as a Hugging Face checkpoint, for serving or for `transformers`:

    python -m ssp_jax.export --config configs/<x>.py --checkpoint <workdir>/checkpoints --hf_out DIR

`--checkpoint` takes what `python -m ssp_jax.eval` takes (an orbax `checkpoints[/<step>]` dir of a
training run, or an HF dir); the output is config.json + safetensors shards + tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from ssp_jax.config import Config
from ssp_jax.models.hf_import import export_hf_decoder
from ssp_jax.wiring import CHECKPOINT, config_from_flags, load_eval_policy, mesh_and_rules, one_line_errors, parse_flags

_HF_OUT = flags.DEFINE_string("hf_out", None, "output HF checkpoint directory")


def export_policy(config: Config, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """The policy at `checkpoint` (under `config.model`'s shape) written as an HF checkpoint."""
    mesh, rules = mesh_and_rules(config)
    policy = load_eval_policy(config, Path(checkpoint), mesh=mesh, rules=rules)
    return export_hf_decoder(policy.model, out_dir, hf_config=policy.hf_config, tokenizer_dir=policy.checkpoint_dir)


def main(argv: list[str]) -> None:
    del argv
    with one_line_errors("ssp_jax.export"):
        out = export_policy(config_from_flags(), CHECKPOINT.value, _HF_OUT.value)
    print(f"exported {CHECKPOINT.value} to {out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "checkpoint", "hf_out"])
    app.run(main, flags_parser=parse_flags)
