"""The Llama tensor layout (llama, qwen2, qwen3): HF safetensors names <-> our parameter tree.

HF stores projections as torch Linear weights [out, in]; we store Flax kernels [in, ...] with heads split out
([embed, heads, head_dim] for q/k/v, [heads, head_dim, embed] for o), so each entry carries both converters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from leafe_jax.models.config import ModelConfig


class TensorMap(NamedTuple):
  """One parameter: its HF name and shape, its path in our (unrolled) tree, and the converters both ways."""

  hf_name: str
  path: tuple[str, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]  # must return a view where possible (tensors are memory-mapped)
  to_hf: Callable[[np.ndarray], np.ndarray]
  hf_shape: tuple[int, ...]


def _same(x: np.ndarray) -> np.ndarray:
  return x


def llama_tensor_maps(config: ModelConfig) -> list[TensorMap]:
  """Every tensor of a Llama-layout checkpoint; q/k/v biases and q/k norms when the config has them."""
  d, n, k, h, f, v = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim, config.d_ff,
                      config.vocab_size)
  out = [TensorMap("model.embed_tokens.weight", ("embed_tokens", "embedding"), _same, _same, (v, d)),
         TensorMap("model.norm.weight", ("norm", "scale"), _same, _same, (d,))]
  if not config.tie_embeddings:
    out.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), np.transpose, np.transpose, (v, d)))
  for i in range(config.num_layers):
    hf, layer = f"model.layers.{i}.", f"layers_{i}"
    for name, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
      out.append(TensorMap(f"{hf}self_attn.{name}.weight", (layer, "self_attn", name, "kernel"),
                           lambda w, heads=heads: w.T.reshape(d, heads, h),
                           lambda x, heads=heads: x.reshape(d, heads * h).T, (heads * h, d)))
      if config.qkv_bias:
        out.append(TensorMap(f"{hf}self_attn.{name}.bias", (layer, "self_attn", name, "bias"),
                             lambda b, heads=heads: b.reshape(heads, h), lambda x: x.reshape(-1), (heads * h,)))
    out.append(TensorMap(f"{hf}self_attn.o_proj.weight", (layer, "self_attn", "o_proj", "kernel"),
                         lambda w: w.T.reshape(n, h, d), lambda x: x.reshape(n * h, d).T, (d, n * h)))
    if config.o_bias:
      out.append(TensorMap(f"{hf}self_attn.o_proj.bias", (layer, "self_attn", "o_proj", "bias"), _same, _same,
                           (d,)))
    if config.qk_norm:
      for name in ("q_norm", "k_norm"):
        out.append(TensorMap(f"{hf}self_attn.{name}.weight", (layer, "self_attn", name, "scale"), _same, _same,
                             (h,)))
    for name, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
      out.append(TensorMap(f"{hf}mlp.{name}.weight", (layer, "mlp", name, "kernel"), np.transpose, np.transpose,
                           shape))
    for name in ("input_layernorm", "post_attention_layernorm"):
      out.append(TensorMap(f"{hf}{name}.weight", (layer, name, "scale"), _same, _same, (d,)))
  return out
