"""Test-wide setup: 8 fake CPU devices for sharding tests (must be set before jax is imported)."""

import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:  # keep the shell's other XLA flags
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# transformers must never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent compilation cache for the whole run, shared by the xdist workers (they inherit this process's
# environment) and by the subprocesses the tests launch, unless a config names a cache of its own: the many tests
# that build the same tiny models and steps compile each program once. Every program is cached (JAX skips those
# under 1 s by default, which is nearly all of them here). The folder is the run's own and is removed at its end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="leafe_jax-tests-jit-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
  if _OWN_CACHE:  # only the process that made it (xdist's controller; its workers inherit the variable)
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
