"""Embedded default until the trainer lands: a tiny random Qwen2-shaped policy, FSDP over all devices."""

from ssp_jax.config import base_config


def get_config():
    return base_config()
