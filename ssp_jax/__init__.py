"""ssp_jax: Search Self-Play in JAX."""

import importlib.util
import os


def _skip_absent_tpu() -> None:
    """Keep jax from probing libtpu on a host that has no TPU chip.

    With `libtpu` installed (requirements-test.txt has it for TPU AOT compilation), jax's default
    platform search starts the TPU plugin, which prints "Failed to find host bounds", a
    `TPU_WORKER_HOSTNAMES` error and "Unable to initialize backend 'tpu'" on every CPU process: harmless,
    but they read as failures. Without a TPU on the PCI bus (jax's own probe) and without an NVIDIA GPU,
    the search is pinned to CPU. An explicit `JAX_PLATFORMS` always wins, and AOT compilation for a
    TPU topology (`ssp_jax.aot`) still loads libtpu on demand.
    """
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    import jax  # noqa: PLC0415
    from jax._src import hardware_utils  # noqa: PLC0415  (jax is pinned; the same probe jax runs)

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0 and not hardware_utils.has_visible_nvidia_gpu():
        jax.config.update("jax_platforms", "cpu")


_skip_absent_tpu()
