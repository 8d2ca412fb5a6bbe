"""configs/qwen2_5_7b.py with the reference's prompts and chat template (configs/prompts/reference):
rows comparable with the paper's baselines and continual-RL results need the same prompts.

`python -m ssp_jax.train --config configs/qwen2_5_7b_reference.py --config.model.hf_path=...` (and the
other paths qwen2_5_7b.py names). The files are read when the config loads; any one of them can be
replaced with `--config.prompts.<role>=file:<path>` or inline text.
"""

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "prompts" / "reference"
ROLES = ("proposer", "solver", "reader", "judge")


def get_config():
    spec = importlib.util.spec_from_file_location("qwen2_5_7b", HERE / "qwen2_5_7b.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    config = base.get_config()
    for role in ROLES:
        config.prompts[role] = f"file:{REFERENCE / f'{role}.txt'}"
        config.prompts[f"{role}_system"] = f"file:{REFERENCE / f'{role}_system.txt'}"
    config.chat_template = str(REFERENCE / "chat_template.jinja")
    return config
