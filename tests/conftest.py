"""Test-wide setup: 8 fake CPU devices for sharding tests (must be set before jax is imported)."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:  # keep the shell's other XLA flags
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# transformers must never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
  """A persistent XLA compilation cache, one folder per xdist worker: the stage tests (GRPO, train, resume) run
  the same programs several times, each run a fresh jit. Set through jax.config, not the environment, so the
  subprocesses that tests launch compile for themselves: their writes cannot race this worker's reads."""
  import tempfile

  import jax

  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  config._xla_cache_dir = tempfile.mkdtemp(prefix=f"leafe_jax_test_xla_cache_{worker}_")
  jax.config.update("jax_compilation_cache_dir", config._xla_cache_dir)
  # Programs that compile in under this many seconds are not worth a disk entry (default 1 s).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


def pytest_unconfigure(config):
  import shutil

  shutil.rmtree(getattr(config, "_xla_cache_dir", ""), ignore_errors=True)
