"""Builds a policy client from a config string, the way every stage names its policy."""

from __future__ import annotations

import os

from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK, Policy

REMOTE_PREFIX = "openai:"  # a policy spec naming an OpenAI-compatible server: openai:<base_url>#<model name>


def in_process(spec: str) -> bool:
  """Whether `spec` names a HF directory served by the in-process sampler (not a remote server)."""
  return not spec.startswith(REMOTE_PREFIX)


def resolve_path(path: str, workdir: str) -> str:
  """Paths in stage configs are relative to --workdir; absolute paths stay as they are."""
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def weights_fingerprint(spec: str, workdir: str) -> str | None:
  """The fingerprint of an in-process policy's weights (stage_settings.hf_dir_fingerprint); None for a server,
  whose weights a stage cannot see (its spec string is the setting)."""
  from leafe_jax import stage_settings

  return stage_settings.hf_dir_fingerprint(resolve_path(spec, workdir)) if in_process(spec) else None


def make_policy(spec: str, workdir: str, *, max_cache_len: int = 4096, mesh_shape: tuple[int, ...] = (),
                dtype: str = "float32", field: str = "policy", prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> Policy:
  """`spec` is a HF directory (relative to `workdir` or absolute) or `openai:<base_url>#<model name>`.

  For a HF directory, `mesh_shape` (data, fsdp, tensor; one -1 = the remaining devices; empty = one device)
  places the in-process sampler's parameters by their logical axes and its rows over data x fsdp; `dtype` is
  the parameters' and compute dtype; `prefill_chunk`: prompt positions per prefill step (policy.base). `field` is
  the config section named in errors.
  """
  if not in_process(spec):
    from leafe_jax.policy.openai_policy import OpenAIPolicy

    base_url, sep, model = spec.removeprefix(REMOTE_PREFIX).partition("#")
    if not sep or not model:
      raise ValueError(f"policy spec {spec!r}: expected 'openai:<base_url>#<model name>'")
    return OpenAIPolicy(base_url, model)
  hf_dir = resolve_path(spec, workdir)
  if not os.path.exists(os.path.join(hf_dir, "config.json")):
    raise FileNotFoundError(f"policy {spec!r}: {hf_dir} has no config.json (expected a HF model directory)")
  import jax
  import jax.numpy as jnp

  from leafe_jax import parallel
  from leafe_jax.policy.jax_policy import JaxPolicy

  mesh = None
  if mesh_shape:
    shape = parallel.resolve_mesh_shape(tuple(mesh_shape), jax.device_count(), field=f"{field}_mesh")
    mesh = parallel.make_mesh(shape)
  return JaxPolicy(hf_dir, mesh=mesh, dtype=jnp.dtype(dtype), max_cache_len=max_cache_len,
                   prefill_chunk=prefill_chunk)
