"""ModelConfig: the one description of a decoder that every family maps its HF config onto."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLS = ("auto", "dense", "rowwise")
# Supported rope_scaling types -> the keys each needs.
ROPE_TYPES = {
    "default": (),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer (Llama / Qwen2 / Qwen3 layout).

  `dtype` is the compute dtype (activations, matmuls); `param_dtype` the dtype parameters are stored in.
  `rope_scaling` is None or a tuple of (key, value) pairs (hashable, so the config can be a static argument);
  a dict is accepted and converted.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  family: str = "llama"
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  o_bias: bool = False  # a bias on the attention output projection (Llama / Qwen3 `attention_bias`; not Qwen2)
  qk_norm: bool = False
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  # Without a KV cache (training, teacher forcing) causal attention runs in query blocks of this many tokens,
  # each against the keys up to its own end: the blocks above the diagonal are never computed (about half the
  # score matrix for long rows) and each block's scores stay small. 0 = one block (the whole row). With a KV cache
  # a prefill's queries run in blocks of this many too, each against the whole cache.
  attention_block: int = 128
  # How causal attention without a cache is computed (models/attention.py): "dense" (batched; accelerators),
  # "rowwise" (a row at a time with a recomputing backward; cache-friendly on CPU), "auto" (rowwise on a CPU
  # backend, dense otherwise). Same values either way; with a KV cache attention is always dense.
  attention_impl: str = "auto"

  def __post_init__(self):
    if isinstance(self.rope_scaling, Mapping):
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig: head_dim={self.head_dim} must be even for RoPE")
    scaling = self.rope_scaling_dict
    if scaling:
      rope_type = scaling.get("rope_type", scaling.get("type", "default"))
      if rope_type not in ROPE_TYPES:
        raise ValueError(f"ModelConfig: rope_scaling type {rope_type!r} is not supported "
                         f"(supported: {', '.join(ROPE_TYPES)})")
      missing = [key for key in ROPE_TYPES[rope_type] if key not in scaling]
      if missing:
        raise ValueError(f"ModelConfig: rope_scaling of type {rope_type!r} lacks {missing}")
    if self.attention_block < 0:
      raise ValueError(f"ModelConfig: attention_block must be >= 0, got {self.attention_block}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig: attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig: remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def resolved_attention_impl(self) -> str:
    """"dense" or "rowwise": what `attention_impl` means on the backend jax runs on now."""
    if self.attention_impl != "auto":
      return self.attention_impl
    return "rowwise" if jax.default_backend() == "cpu" else "dense"

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None
