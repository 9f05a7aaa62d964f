"""Decoder building blocks: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.models.config import ModelConfig

# Additive mask value: finite, so fully masked rows (left padding) give finite garbage instead of NaN.
_MASKED = -1e30


def _init(names: tuple[str | None, ...], stddev: float = 0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


class RMSNorm(nn.Module):
  """RMSNorm computed in float32, as the HF reference does; output in the compute dtype."""

  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * normed).astype(self.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies, with Llama-3.1 `llama3` scaling when configured (same formula as transformers)."""
  dim = config.head_dim
  # Bit-for-bit what transformers computes: torch evaluates `float ** float32_tensor` in double precision and
  # rounds to float32, then takes the float32 reciprocal.
  exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  inv_freq = np.float32(1.0) / (np.float64(config.rope_theta) ** exponents.astype(np.float64)).astype(np.float32)
  scaling = config.rope_scaling_dict
  if not scaling:
    return inv_freq.astype(np.float32)
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return inv_freq.astype(np.float32)
  if rope_type != "llama3":
    raise ValueError(f"rope_scaling type {rope_type!r} is not supported (supported: default, llama3)")
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_len = scaling["original_max_position_embeddings"]
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq_F: np.ndarray) -> jax.Array:
  """Rotary embedding in the rotate-half convention of the HF checkpoints."""
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_F)
  angles_BxTxH = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)
  cos, sin = jnp.cos(angles_BxTxH)[:, :, None, :], jnp.sin(angles_BxTxH)[:, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxNxH.dtype)


# `flat_tokens`: projections take activations as [tokens, features] (batch and time merged), not [B, T, D].
# The parameters are the same; the weight gradient is then one plain matmul contracting one dimension, which
# XLA:CPU runs about twice as fast as a dot_general contracting (batch, time) (measured on the SFT step).


def _attend(q_BxTxKxGxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, dtype) -> jax.Array:
  """Masked softmax attention of grouped queries over shared keys/values; scores and softmax in float32."""
  scores_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32) / math.sqrt(q_BxTxKxGxH.shape[-1])
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, _MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, v_BxSxKxH)


class Attention(nn.Module):
  """Grouped-query attention with an optional KV cache `kv`, returned updated as the second output.

  `kv` is None (no cache), this layer's cache (k, v, each [B, S, K, H]; under nn.scan), or the whole stacked
  cache and this layer's index (k, v, each [layers, B, S, K, H], layer): the new tokens go in at `write_index`.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv, write_index):
    cfg = self.config
    dense = lambda features, names, name, bias: nn.DenseGeneral(
        features, axis=-1, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(names), bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
        name=name)
    b, t, _ = x_BxTxD.shape
    x_LxD = x_BxTxD.reshape(b * t, -1)  # projections on [tokens, D]: see `flat_tokens`
    q_BxTxNxH = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "head_dim"), "q_proj",
                      cfg.qkv_bias)(x_LxD).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k_BxTxKxH = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "k_proj",
                      cfg.qkv_bias)(x_LxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v_BxTxKxH = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "v_proj",
                      cfg.qkv_bias)(x_LxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      q_BxTxNxH = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name="q_norm")(q_BxTxNxH)
      k_BxTxKxH = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name="k_norm")(k_BxTxKxH)
    inv_freq = rope_inv_freq(cfg)
    q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, inv_freq)
    k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, inv_freq)
    if kv is not None and len(kv) == 3:
      # The whole stacked cache [layers, B, S, K, H] and this layer's index: write only the new tokens into it
      # (in place inside the decode loop) and read this layer's slice; see Decoder.
      cache_k_LxBxSxKxH, cache_v_LxBxSxKxH, layer = kv
      start = (layer, 0, write_index, 0, 0)
      cache_k_LxBxSxKxH = jax.lax.dynamic_update_slice(
          cache_k_LxBxSxKxH, k_BxTxKxH[None].astype(cache_k_LxBxSxKxH.dtype), start)
      cache_v_LxBxSxKxH = jax.lax.dynamic_update_slice(
          cache_v_LxBxSxKxH, v_BxTxKxH[None].astype(cache_v_LxBxSxKxH.dtype), start)
      k_BxSxKxH, v_BxSxKxH = cache_k_LxBxSxKxH[layer], cache_v_LxBxSxKxH[layer]
      new_kv = (cache_k_LxBxSxKxH, cache_v_LxBxSxKxH, layer)
    elif kv is not None:
      cache_k, cache_v = kv
      k_BxSxKxH = jax.lax.dynamic_update_slice(cache_k, k_BxTxKxH.astype(cache_k.dtype), (0, write_index, 0, 0))
      v_BxSxKxH = jax.lax.dynamic_update_slice(cache_v, v_BxTxKxH.astype(cache_v.dtype), (0, write_index, 0, 0))
      new_kv = (k_BxSxKxH, v_BxSxKxH)
    else:
      k_BxSxKxH, v_BxSxKxH, new_kv = k_BxTxKxH, v_BxTxKxH, None
    n, h = q_BxTxNxH.shape[2:]
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, cfg.num_kv_heads, n // cfg.num_kv_heads, h)
    k_BxSxKxH = k_BxSxKxH.astype(q_BxTxNxH.dtype)
    v_BxSxKxH = v_BxSxKxH.astype(cfg.compute_dtype)
    block = cfg.attention_block if kv is None and cfg.attention_block else t
    # Without a cache, query i never sees a key after i: a block of queries needs the keys up to its end only.
    # (With a cache the key slots do not line up with the queries, so the row is one block.)
    outs = []
    for start in range(0, t, block):
      end = min(start + block, t)
      keys = end if kv is None else k_BxSxKxH.shape[1]
      outs.append(_attend(q_BxTxKxGxH[:, start:end], k_BxSxKxH[:, :keys], v_BxSxKxH[:, :keys],
                          mask_BxTxS[:, start:end, :keys], cfg.compute_dtype))
    out_BxTxKxGxH = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    out_LxNxH = out_BxTxKxGxH.reshape(b * t, n, h)
    out_LxD = nn.DenseGeneral(
        cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(("heads", "head_dim", "embed")), name="o_proj")(out_LxNxH)
    return out_LxD.reshape(b, t, cfg.d_model), new_kv


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config
    dense = lambda features, names, name: nn.Dense(
        features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(names), name=name)
    x_LxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])  # see `flat_tokens`
    gate_LxF = dense(cfg.d_ff, ("embed", "mlp"), "gate_proj")(x_LxD)
    up_LxF = dense(cfg.d_ff, ("embed", "mlp"), "up_proj")(x_LxD)
    out_LxD = dense(cfg.d_model, ("mlp", "embed"), "down_proj")(nn.silu(gate_LxF) * up_LxF)
    return out_LxD.reshape(x_BxTxD.shape)


class Block(nn.Module):
  """One pre-norm decoder layer. Returns (x, new_kv) so it can run under nn.scan."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv, write_index):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name=name)
    attn_out, new_kv = Attention(cfg, name="self_attn")(norm("input_layernorm")(x_BxTxD), positions_BxT,
                                                       mask_BxTxS, kv, write_index)
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x_BxTxD))
    return x_BxTxD, new_kv
