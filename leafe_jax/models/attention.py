"""Masked softmax attention of grouped queries (GQA), in two implementations of the same function.

Both take queries grouped by the key/value head they share, q [B, T, K, G, H] (K kv-heads, G queries per kv-head),
and a bool mask [B, T, S] of which key slots each query may see; scores and softmax are float32.

- `dense_attention`: one batched einsum pair over every row at once; used with a KV cache (decode, prefill) and
  as the "dense" training path. Keys/values come head-major, [B, K, S, H], the layout of the KV cache, so that
  decoding reads the cache without a transposed copy.
- `rowwise_causal_attention`: for a full causal forward (training, scoring) the batch rows are processed one at a
  time and each row's queries in blocks that see only the keys up to the block's end; the backward pass recomputes
  each block's probabilities from the saved softmax statistics (as flash attention does) instead of keeping them.
  Every intermediate is one row's [K, G, block, S] tile, which stays in CPU caches; the dense form streams
  [B, K, G, T, T] tensors through memory several times, which is what bounds XLA:CPU (measured 1.7× slower on the
  SFT benchmark's layer). The loop over rows is sequential, so accelerators should use the dense form.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Additive mask value: finite, so fully masked rows (left padding) give finite garbage instead of NaN.
MASKED = -1e30

IMPLEMENTATIONS = ("dense", "rowwise")


def dense_attention(q_BxTxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array, mask_BxTxS: jax.Array,
                    dtype) -> jax.Array:
  """Softmax(q k^T / sqrt(H), masked) v, returned as [B, T, K, G, H] in `dtype`."""
  scores_BxKxGxTxS = jnp.einsum("btkgh,bksh->bkgts", q_BxTxKxGxH, k_BxKxSxH,
                                preferred_element_type=jnp.float32) / math.sqrt(q_BxTxKxGxH.shape[-1])
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dtype)
  # Output head-major, then transposed: XLA:CPU has no fast kernel for the dot straight into [B, T, K, G, H].
  out_BxKxGxTxH = jnp.einsum("bkgts,bksh->bkgth", probs_BxKxGxTxS, v_BxKxSxH.astype(dtype))
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4)


def dense_causal_attention(q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                           mask_BxTxT: jax.Array, block: int, dtype) -> jax.Array:
  """`dense_attention` of T queries over the same T positions, in query blocks that skip the keys after them."""
  t = q_BxTxKxGxH.shape[1]
  k_BxKxTxH, v_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    outs.append(dense_attention(q_BxTxKxGxH[:, start:end], k_BxKxTxH[:, :, :end], v_BxKxTxH[:, :, :end],
                                mask_BxTxT[:, start:end, :end], dtype))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _block_scores(q_TxKxGxH, k_SxKxH, mask_TxS):
  scores_KxGxTxS = jnp.einsum("tkgh,skh->kgts", q_TxKxGxH, k_SxKxH,
                              preferred_element_type=jnp.float32) / math.sqrt(q_TxKxGxH.shape[-1])
  return jnp.where(mask_TxS, scores_KxGxTxS, MASKED)


def _row_forward(q_TxKxGxH, k_TxKxH, v_TxKxH, mask_TxT, block, dtype):
  """One row: output [T, K, G, H] and each query's score maximum and softmax denominator, [K, G, T] each.

  The two are kept apart, not as one log-normaliser: for a query that sees no key, max + log(sum) rounds to the
  mask value itself in float32, and the backward pass would then recompute probabilities of 1 instead of 1/S.
  """
  t = q_TxKxGxH.shape[0]
  outs, maxes, sums = [], [], []
  for start in range(0, t, block):
    end = min(start + block, t)
    scores_KxGxBxS = _block_scores(q_TxKxGxH[start:end], k_TxKxH[:end], mask_TxT[start:end, :end])
    max_KxGxBx1 = jnp.max(scores_KxGxBxS, axis=-1, keepdims=True)
    unnorm_KxGxBxS = jnp.exp(scores_KxGxBxS - max_KxGxBx1)
    sum_KxGxBx1 = jnp.sum(unnorm_KxGxBxS, axis=-1, keepdims=True)
    probs_KxGxBxS = (unnorm_KxGxBxS / sum_KxGxBx1).astype(dtype)
    outs.append(jnp.einsum("kgts,skh->tkgh", probs_KxGxBxS, v_TxKxH[:end].astype(dtype)))
    maxes.append(max_KxGxBx1[..., 0])
    sums.append(sum_KxGxBx1[..., 0])
  return jnp.concatenate(outs, axis=0), (jnp.concatenate(maxes, axis=-1), jnp.concatenate(sums, axis=-1))


def _row_backward(q_TxKxGxH, k_TxKxH, v_TxKxH, mask_TxT, out_TxKxGxH, normaliser, dout_TxKxGxH, block, dtype):
  """One row's (dq, dk, dv), recomputing each block's probabilities from the saved max and denominator."""
  max_KxGxT, sum_KxGxT = normaliser
  t = q_TxKxGxH.shape[0]
  scale = 1.0 / math.sqrt(q_TxKxGxH.shape[-1])
  # d(softmax) needs sum_s p * dp per query, which equals dout . out.
  delta_KxGxT = jnp.einsum("tkgh,tkgh->kgt", dout_TxKxGxH, out_TxKxGxH, preferred_element_type=jnp.float32)
  dqs = []
  dk_TxKxH = jnp.zeros(k_TxKxH.shape, jnp.float32)
  dv_TxKxH = jnp.zeros(v_TxKxH.shape, jnp.float32)
  for start in range(0, t, block):
    end = min(start + block, t)
    mask_BxS = mask_TxT[start:end, :end]
    q_BxKxGxH, dout_BxKxGxH = q_TxKxGxH[start:end], dout_TxKxGxH[start:end].astype(dtype)
    scores_KxGxBxS = _block_scores(q_BxKxGxH, k_TxKxH[:end], mask_BxS)
    probs_KxGxBxS = (jnp.exp(scores_KxGxBxS - max_KxGxT[:, :, start:end, None])
                     / sum_KxGxT[:, :, start:end, None])
    dv_TxKxH = dv_TxKxH.at[:end].add(jnp.einsum("kgts,tkgh->skh", probs_KxGxBxS.astype(dtype), dout_BxKxGxH,
                                                preferred_element_type=jnp.float32))
    dprobs_KxGxBxS = jnp.einsum("tkgh,skh->kgts", dout_BxKxGxH, v_TxKxH[:end].astype(dtype),
                                preferred_element_type=jnp.float32)
    # Masked scores were constants (jnp.where), so they pass no gradient.
    dscores_KxGxBxS = jnp.where(mask_BxS, probs_KxGxBxS * (dprobs_KxGxBxS - delta_KxGxT[:, :, start:end, None]),
                                0.0) * scale
    dscores_KxGxBxS = dscores_KxGxBxS.astype(dtype)
    dqs.append(jnp.einsum("kgts,skh->tkgh", dscores_KxGxBxS, k_TxKxH[:end], preferred_element_type=jnp.float32))
    dk_TxKxH = dk_TxKxH.at[:end].add(jnp.einsum("kgts,tkgh->skh", dscores_KxGxBxS, q_BxKxGxH,
                                                preferred_element_type=jnp.float32))
  return jnp.concatenate(dqs, axis=0), dk_TxKxH, dv_TxKxH


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def rowwise_causal_attention(q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                             mask_BxTxT: jax.Array, block: int, dtype) -> jax.Array:
  """Same values as `dense_causal_attention`; rows one at a time, flash-style recomputing backward."""
  return _rowwise_forward(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxT, block, dtype)[0]


def _rowwise_forward(q, k, v, mask, block, dtype):
  row = functools.partial(_row_forward, block=block, dtype=dtype)
  out_BxTxKxGxH, normaliser = jax.lax.map(lambda args: row(*args), (q, k, v, mask))
  return out_BxTxKxGxH, (q, k, v, mask, out_BxTxKxGxH, normaliser)


def _rowwise_backward(block, dtype, residuals, dout_BxTxKxGxH):
  q, k, v, mask, out, normaliser = residuals
  row = functools.partial(_row_backward, block=block, dtype=dtype)
  dq, dk, dv = jax.lax.map(lambda args: row(*args), (q, k, v, mask, out, normaliser, dout_BxTxKxGxH))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


rowwise_causal_attention.defvjp(_rowwise_forward, _rowwise_backward)


def causal_attention(impl: str, q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                     mask_BxTxT: jax.Array, block: int, dtype) -> jax.Array:
  """Attention of T queries over the same T positions (no cache) with implementation `impl`."""
  if impl == "dense":
    return dense_causal_attention(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxT, block, dtype)
  if impl == "rowwise":
    return rowwise_causal_attention(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxT, block, dtype)
  raise ValueError(f"attention implementation {impl!r} is not one of {IMPLEMENTATIONS}")
