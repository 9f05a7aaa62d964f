"""The decoder: embeddings, a stack of blocks (unrolled or nn.scan), final norm, LM head; and its KV cache."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from leafe_jax.models import attention
from leafe_jax.models.config import ModelConfig
from leafe_jax.models.layers import Block, RMSNorm, _init, dot_general_f32, take_rows

_REMAT = {
    "full": None,  # save nothing, recompute the block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class KVCache:
  """Static-size KV cache. Slots [0, index) hold tokens; `valid` marks real (non-padding) slots.

  Keys and values are head-major, [B, kv_heads, S, head_dim], the layout attention reads. An unrolled model keeps
  one buffer per layer (a tuple): the decode loop then updates each in place and attention reads it as it is.
  Slicing a layer out of one stacked buffer costs XLA:CPU a copy of that layer's cache per token (measured: a
  tenth of the decode step). A model under nn.scan needs the stacked form, [layers, B, kv_heads, S, head_dim].
  """

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  valid: jax.Array  # bool [B, S]
  index: jax.Array  # int32 [] next slot to write

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]

  def repeat_rows(self, n: int) -> KVCache:
    """Each row repeated n times in place (rows i*n .. i*n+n-1 are copies of row i)."""
    repeat = lambda x: jnp.repeat(x, n, axis=x.ndim - 4)  # the batch axis of [(layers,) B, K, S, H]
    return self.replace(k=jax.tree.map(repeat, self.k), v=jax.tree.map(repeat, self.v),
                        valid=jnp.repeat(self.valid, n, axis=0))


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `batch_size` rows of up to `max_len` tokens (stacked when `config.scan_layers`)."""
  dtype = dtype or config.compute_dtype
  layer_shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
  if config.scan_layers:
    k = v = jnp.zeros((config.num_layers, *layer_shape), dtype)
  else:
    k = v = tuple(jnp.zeros(layer_shape, dtype) for _ in range(config.num_layers))
  return KVCache(k=k, v=v, valid=jnp.zeros((batch_size, max_len), bool), index=jnp.zeros((), jnp.int32))


def _attention_mask(input_ids_BxT, attention_mask_BxT, segment_ids_BxT, cache) -> tuple[attention.Mask, jax.Array]:
  """Which key slots each query may attend to (causal, padding, segments, cache), and with a cache the updated
  `valid` slots [B, S]."""
  b, t = input_ids_BxT.shape
  new_valid_BxT = jnp.ones((b, t), bool) if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
  if cache is None:
    segments = None if segment_ids_BxT is None else segment_ids_BxT.astype(jnp.int32)
    return attention.causal_mask(new_valid_BxT, segments), None
  valid_BxS = jax.lax.dynamic_update_slice(cache.valid, new_valid_BxT, (0, cache.index))
  query_slots_T = cache.index + jnp.arange(t, dtype=jnp.int32)
  return attention.Mask(query_slots_T, jnp.arange(cache.max_len, dtype=jnp.int32), valid_BxS), valid_BxS


def _segment_positions(segment_ids_BxT):
  """Index of each token within its (contiguous) segment."""
  t = segment_ids_BxT.shape[1]
  index_T = jnp.arange(t, dtype=jnp.int32)
  starts_BxT = jnp.concatenate([jnp.ones_like(segment_ids_BxT[:, :1], bool),
                                segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
  start_BxT = jax.lax.cummax(jnp.where(starts_BxT, index_T, 0), axis=1)
  return index_T - start_BxT


def _default_positions(input_ids_BxT, attention_mask_BxT, segment_ids_BxT, cache):
  """Each real token's index among its row's real tokens (cache included); padding gets position 0."""
  b, t = input_ids_BxT.shape
  if segment_ids_BxT is not None:
    return _segment_positions(segment_ids_BxT.astype(jnp.int32))
  if attention_mask_BxT is None and cache is None:
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mask = jnp.ones((b, t), jnp.int32) if attention_mask_BxT is None else attention_mask_BxT.astype(jnp.int32)
  # Count valid cache slots, not `cache.index`: left padding occupies slots but has no position.
  past = 0 if cache is None else jnp.sum(cache.valid, axis=-1, dtype=jnp.int32)[:, None]
  return jnp.maximum(past + jnp.cumsum(mask, axis=-1) - 1, 0)


class Decoder(nn.Module):
  """`apply({"params": p}, input_ids_BxT, positions=, attention_mask=, segment_ids=, cache=)` -> (logits, cache).

  positions: int32 [B, T]; default: index among the row's real tokens (per segment with `segment_ids`, counting
    valid cache slots with a cache). attention_mask: [B, T], 1 = real token. segment_ids: int32 [B, T], tokens
    attend only within equal ids, 0 = padding (training only). cache: KVCache; the T tokens are written at slots
    [index, index + T) and `valid` records `attention_mask` there. The caller sizes the cache: writing past
    `max_len` is not detected inside jit. logits_BxTxV are float32; without a cache the second output is None.
    logits_positions: int32 [B, N]: compute logits only at these positions of each row, [B, N, V] (a prefill
    needs the last one only; SFT needs those that predict a target). The LM head over every position is the
    largest matmul of a prefill and, with a 150k vocabulary, the largest tensor of a training step.
    empty_cache: static; the cache holds no token yet (index 0, the first prefill chunk): the T new tokens attend
    to each other only, not to every slot of the cache (same result, less work).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids_BxT, positions=None, attention_mask=None, segment_ids=None, cache=None,
               logits_positions=None, empty_cache: bool = False):
    cfg = self.config
    if segment_ids is not None and cache is not None:
      raise ValueError("Decoder: segment_ids (packed training rows) cannot be combined with a KV cache")
    if empty_cache and cache is None:
      raise ValueError("Decoder: empty_cache=True needs the cache it describes")
    if positions is None:
      positions = _default_positions(input_ids_BxT, attention_mask, segment_ids, cache)
    mask, valid_BxS = _attention_mask(input_ids_BxT, attention_mask, segment_ids, cache)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                     embedding_init=_init(("vocab", "embed")), name="embed_tokens")
    x_BxTxD = take_rows(embed.embedding, input_ids_BxT).astype(cfg.compute_dtype)
    block = Block
    if cfg.remat_policy != "none":
      # Inside nn.scan the loop already stops XLA from merging recomputation with the forward pass.
      block = nn.remat(Block, policy=_REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    write_index = None if cache is None else cache.index
    if cfg.scan_layers:
      kv_axis = nn.broadcast if cache is None else 0
      stack = nn.scan(
          block,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, kv_axis, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, empty_cache, name="layers")
      if cache is not None and isinstance(cache.k, tuple):
        raise ValueError("Decoder: a model under nn.scan (scan_layers=True) takes a stacked KV cache; build it "
                         "with init_cache(config, ...) of this model's config")
      kv = None if cache is None else (cache.k, cache.v)
      x_BxTxD, new_kv = stack(x_BxTxD, positions, mask, kv, write_index)
      new_k, new_v = (None, None) if cache is None else new_kv
    else:
      if cache is not None and not isinstance(cache.k, tuple):
        raise ValueError("Decoder: an unrolled model (scan_layers=False) takes a per-layer KV cache; build it "
                         "with init_cache(config, ...) of this model's config")
      new_k, new_v = [], []
      for i in range(cfg.num_layers):
        kv = None if cache is None else (cache.k[i], cache.v[i])
        x_BxTxD, layer_kv = block(cfg, empty_cache, name=f"layers_{i}")(x_BxTxD, positions, mask, kv, write_index)
        if cache is not None:
          new_k.append(layer_kv[0])
          new_v.append(layer_kv[1])
      new_k, new_v = tuple(new_k), tuple(new_v)
    if logits_positions is not None:
      x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_positions[..., None].astype(jnp.int32), axis=1)
    x_BxTxD = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name="norm")(x_BxTxD)
    b, t, d = x_BxTxD.shape
    x_LxD = x_BxTxD.reshape(b * t, d)  # [tokens, D], as in the blocks (layers.py, `flat_tokens`)
    # Logits accumulate and stay in float32 (no bf16 rounding of the logits before the softmax).
    if cfg.tie_embeddings:
      logits_LxV = dot_general_f32(x_LxD, embed.embedding.astype(cfg.compute_dtype), (((1,), (1,)), ((), ())))
    else:
      logits_LxV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                            param_dtype=cfg.weights_dtype, kernel_init=_init(("embed", "vocab")),
                            dot_general=dot_general_f32, name="lm_head")(x_LxD)
    logits_BxTxV = logits_LxV.reshape(b, t, cfg.vocab_size)
    if cache is None:
      return logits_BxTxV, None
    t = input_ids_BxT.shape[1]
    return logits_BxTxV, KVCache(k=new_k, v=new_v, valid=valid_BxS, index=cache.index + t)


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Random parameters (plain arrays, logical-axis metadata removed)."""
  boxed = Decoder(config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
  return nn.meta.unbox(boxed)


def logical_axes(config: ModelConfig) -> dict:
  """The logical axis names of every parameter (a tree of PartitionSpecs shaped like the params)."""
  boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  return nn.get_partition_spec(boxed["params"])
