"""Builds a policy client from a config string, the way every stage names its policy."""

from __future__ import annotations

import os

from leafe_jax.policy.base import Policy


def resolve_path(path: str, workdir: str) -> str:
  """Paths in stage configs are relative to --workdir; absolute paths stay as they are."""
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def make_policy(spec: str, workdir: str, *, max_cache_len: int = 4096) -> Policy:
  """`spec` is a HF directory (relative to `workdir` or absolute) or `openai:<base_url>#<model name>`."""
  if spec.startswith("openai:"):
    from leafe_jax.policy.openai_policy import OpenAIPolicy

    base_url, sep, model = spec.removeprefix("openai:").partition("#")
    if not sep or not model:
      raise ValueError(f"policy spec {spec!r}: expected 'openai:<base_url>#<model name>'")
    return OpenAIPolicy(base_url, model)
  hf_dir = resolve_path(spec, workdir)
  if not os.path.exists(os.path.join(hf_dir, "config.json")):
    raise FileNotFoundError(f"policy {spec!r}: {hf_dir} has no config.json (expected a HF model directory)")
  from leafe_jax.policy.jax_policy import JaxPolicy

  return JaxPolicy(hf_dir, max_cache_len=max_cache_len)
