"""Decoder building blocks: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.models import attention
from leafe_jax.models.config import ModelConfig


def _init(names: tuple[str | None, ...], stddev: float = 0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _as_bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if _is_half(x.dtype) else x


def _is_half(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


# bf16 data movement: XLA:CPU has no bf16 dynamic-update-slice or gather and upcasts their operands to f32, i.e.
# converts the whole KV cache (or embedding table) twice per decoded token. Moving the same 16 bits as integers
# does none of that; on TPU/GPU the bitcasts are free.


def update_slice(buffer: jax.Array, update: jax.Array, start: tuple) -> jax.Array:
  """`lax.dynamic_update_slice(buffer, update.astype(buffer.dtype), start)`, bf16 moved as 16-bit integers."""
  out = jax.lax.dynamic_update_slice(_as_bits(buffer), _as_bits(update.astype(buffer.dtype)), start)
  return jax.lax.bitcast_convert_type(out, buffer.dtype) if _is_half(buffer.dtype) else out


def take_rows(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
  """`table[ids]` (an embedding lookup), bf16 moved as 16-bit integers."""
  rows = jnp.take(_as_bits(table_VxD), ids, axis=0)
  return jax.lax.bitcast_convert_type(rows, table_VxD.dtype) if _is_half(table_VxD.dtype) else rows


def dot_general_f32(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` accumulating in float32, whatever the operand dtype (the result stays float32).

  For bf16 operands this is what TPU/GPU matrix units do anyway, and it is the form XLA:CPU runs natively
  (measured 3x faster than fp32): a dot with a bf16 result is rewritten to fp32 operands there, converting every
  weight on every call.
  """
  del preferred_element_type
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32)


def dot_general_f32_accumulate(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`dot_general_f32`, result cast back to the operands' dtype (the projections' dot)."""
  del preferred_element_type
  return dot_general_f32(lhs, rhs, dimension_numbers, precision).astype(jnp.result_type(lhs, rhs))


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


def _rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@jax.custom_vjp
def _rotate(x_BxTxNxH: jax.Array, cos_BxTx1xH: jax.Array, sin_BxTx1xH: jax.Array) -> jax.Array:
  x = x_BxTxNxH.astype(jnp.float32)
  return (x * cos_BxTx1xH + _rotate_half(x) * sin_BxTx1xH).astype(x_BxTxNxH.dtype)


def _rotate_fwd(x, cos, sin):
  return _rotate(x, cos, sin), (cos, sin)


def _rotate_bwd(residuals, g):
  # A rotation's transpose is the rotation by the opposite angle. Autodiff of the slices and concatenation
  # instead builds pads and a transposed copy per q/k tensor, which cost XLA:CPU more than the attention dots.
  cos, sin = residuals
  return _rotate(g, cos, -sin), None, None


_rotate.defvjp(_rotate_fwd, _rotate_bwd)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq_F: np.ndarray) -> jax.Array:
  """Rotary embedding in the rotate-half convention of the HF checkpoints."""
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_F)
  angles_BxTxH = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)
  cos, sin = jnp.cos(angles_BxTxH)[:, :, None, :], jnp.sin(angles_BxTxH)[:, :, None, :]
  return _rotate(x_BxTxNxH, cos, sin)


# `flat_tokens`: projections take activations as [tokens, features] (batch and time merged), not [B, T, D].
# The parameters are the same; the weight gradient is then one plain matmul contracting one dimension, which
# XLA:CPU runs about twice as fast as a dot_general contracting (batch, time) (measured on the SFT step).


class Attention(nn.Module):
  """Grouped-query attention with an optional KV cache `kv`, returned updated as the second output.

  `kv` is None (no cache) or this layer's cache (k, v, each [B, K, S, H]): the new tokens go in at
  `write_index` and the updated pair is returned. `empty_cache`: the cache holds no token yet (a prefill at
  index 0), so the new tokens attend to each other only, as without a cache, not to all S slots of which all but
  the first T are empty (half a bucketed prefill's attention work, and the causal path skips future keys too).
  """

  config: ModelConfig
  empty_cache: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask: attention.Mask, kv, write_index):
    cfg = self.config
    dense = lambda features, names, name, bias: nn.DenseGeneral(
        features, axis=-1, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(names), bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
        dot_general=dot_general_f32_accumulate, name=name)
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
    n, h = q_BxTxNxH.shape[2:]
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, cfg.num_kv_heads, n // cfg.num_kv_heads, h)
    if kv is None:
      out_BxTxKxGxH = attention.causal_attention(
          cfg.resolved_attention_impl, q_BxTxKxGxH, k_BxTxKxH.astype(q_BxTxNxH.dtype),
          v_BxTxKxH.astype(cfg.compute_dtype), mask, cfg.attention_block or t, cfg.compute_dtype)
      new_kv = None
    else:
      # The cache is head-major, [.., B, K, S, H]: what the score and value dots read, with no transposed copy
      # of the whole cache per decoded token.
      k_BxKxTxH, v_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)
      cache_k, cache_v = kv  # this layer's cache, [B, K, S, H] each
      k_BxKxSxH = update_slice(cache_k, k_BxKxTxH, (0, 0, write_index, 0))
      v_BxKxSxH = update_slice(cache_v, v_BxKxTxH, (0, 0, write_index, 0))
      new_kv = (k_BxKxSxH, v_BxKxSxH)
      if self.empty_cache:  # slots [0, t) of the mask are the new tokens': the no-cache causal attention
        out_BxTxKxGxH = attention.causal_attention(
            cfg.resolved_attention_impl, q_BxTxKxGxH, k_BxTxKxH.astype(q_BxTxNxH.dtype),
            v_BxTxKxH.astype(cfg.compute_dtype), mask.slice(0, t, t), cfg.attention_block or t, cfg.compute_dtype)
      else:
        # A prefill's queries in blocks (a decode step is one query): see `blocked_dense_attention`.
        out_BxTxKxGxH = attention.blocked_dense_attention(q_BxTxKxGxH, k_BxKxSxH.astype(q_BxTxNxH.dtype),
                                                          v_BxKxSxH, mask, cfg.attention_block, cfg.compute_dtype)
    out_LxNxH = out_BxTxKxGxH.reshape(b * t, n, h)
    out_LxD = nn.DenseGeneral(
        cfg.d_model, axis=(-2, -1), use_bias=cfg.o_bias, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(("heads", "head_dim", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        dot_general=dot_general_f32_accumulate, name="o_proj")(out_LxNxH)
    return out_LxD.reshape(b, t, cfg.d_model), new_kv


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config
    dense = lambda features, names, name: nn.Dense(
        features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(names), dot_general=dot_general_f32_accumulate, name=name)
    x_LxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])  # see `flat_tokens`
    gate_LxF = dense(cfg.d_ff, ("embed", "mlp"), "gate_proj")(x_LxD)
    up_LxF = dense(cfg.d_ff, ("embed", "mlp"), "up_proj")(x_LxD)
    out_LxD = dense(cfg.d_model, ("mlp", "embed"), "down_proj")(nn.silu(gate_LxF) * up_LxF)
    return out_LxD.reshape(x_BxTxD.shape)


class Block(nn.Module):
  """One pre-norm decoder layer. Returns (x, new_kv) so it can run under nn.scan."""

  config: ModelConfig
  empty_cache: bool = False  # see Attention

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask: attention.Mask, kv, write_index):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name=name)
    attn_out, new_kv = Attention(cfg, self.empty_cache, name="self_attn")(
        norm("input_layernorm")(x_BxTxD), positions_BxT, mask, kv, write_index)
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x_BxTxD))
    return x_BxTxD, new_kv
