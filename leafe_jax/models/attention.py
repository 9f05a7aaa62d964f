"""Masked softmax attention of grouped queries (GQA), in two implementations of the same function.

Both take queries grouped by the key/value head they share, q [B, T, K, G, H] (K kv-heads, G queries per kv-head),
and a `Mask` of which key slots each query may see; scores and softmax are float32. The mask is held factored, as
vectors of O(B·(T+S)) (slots, key validity, segment ids), and each block of queries builds only its own [B, C, S]
tile: a whole bool [B, T, S] is B·T·S bytes, 4 GiB for 16 prompts of 16k tokens prefilled into a 16k cache.

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

import flax.struct
import jax
import jax.numpy as jnp

# Additive mask value: finite, so fully masked rows (left padding) give finite garbage instead of NaN.
MASKED = -1e30

IMPLEMENTATIONS = ("dense", "rowwise")


@flax.struct.dataclass
class Mask:
  """Query i of row b sees key slot j iff key_slot_S[j] <= query_slot_T[i] (causal), key_ok_BxS[b, j] (a real,
  written token) and, with segments, query_segment_BxT[b, i] == key_segment_BxS[b, j] (one packed example)."""

  query_slot_T: jax.Array  # int32: the slot each query occupies (-1: a padded query, which sees nothing)
  key_slot_S: jax.Array  # int32: the slot of each key
  key_ok_BxS: jax.Array  # bool
  query_segment_BxT: jax.Array | None = None  # int32 segment ids; None: one segment per row
  key_segment_BxS: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.key_ok_BxS.shape[0], self.query_slot_T.shape[0], self.key_slot_S.shape[0]

  def dense(self) -> jax.Array:
    """bool [B, T, S]; built inside one attention block only, where it is one block's tile."""
    sees_BxTxS = (self.key_slot_S[None, :] <= self.query_slot_T[:, None])[None] & self.key_ok_BxS[:, None, :]
    if self.query_segment_BxT is not None:
      sees_BxTxS &= self.query_segment_BxT[:, :, None] == self.key_segment_BxS[:, None, :]
    return sees_BxTxS

  def slice(self, start: int, end: int, keys: int) -> Mask:
    """Queries [start, end) against the first `keys` key slots (static bounds)."""
    segments = (None, None) if self.query_segment_BxT is None else (self.query_segment_BxT[:, start:end],
                                                                    self.key_segment_BxS[:, :keys])
    return Mask(self.query_slot_T[start:end], self.key_slot_S[:keys], self.key_ok_BxS[:, :keys], *segments)

  def query_blocks(self, block: int) -> tuple[jax.Array, jax.Array | None]:
    """The query slots [N, block] and segments [N, B, block] in blocks along a leading axis, to `lax.map` over
    with `with_queries` (the key leaves are shared, not copied per block); padded queries see nothing."""
    t = self.query_slot_T.shape[0]
    blocks, pad = -(-t // block), -t % block
    q_slot_NxC = jnp.pad(self.query_slot_T, (0, pad), constant_values=-1).reshape(blocks, block)
    if self.query_segment_BxT is None:
      return q_slot_NxC, None
    b = self.query_segment_BxT.shape[0]
    return q_slot_NxC, jnp.pad(self.query_segment_BxT, ((0, 0), (0, pad))).reshape(b, blocks, block).swapaxes(0, 1)

  def with_queries(self, query_slot_C: jax.Array, query_segment_BxC: jax.Array | None) -> Mask:
    return self.replace(query_slot_T=query_slot_C, query_segment_BxT=query_segment_BxC)

  def rows(self) -> Mask:
    """Batch-major leaves (slots repeated per row): `lax.map` over them gives each row's Mask, with B = 1."""
    b = self.key_ok_BxS.shape[0]
    per_row = lambda x: None if x is None else x[:, None]
    return Mask(jnp.broadcast_to(self.query_slot_T, (b, *self.query_slot_T.shape)),
                jnp.broadcast_to(self.key_slot_S, (b, *self.key_slot_S.shape)), per_row(self.key_ok_BxS),
                per_row(self.query_segment_BxT), per_row(self.key_segment_BxS))


def causal_mask(key_ok_BxT: jax.Array, segment_ids_BxT: jax.Array | None = None) -> Mask:
  """The mask of T tokens attending to themselves (no cache): causal, real keys only, within segments (segment
  0 is padding: no query sees it)."""
  slots_T = jnp.arange(key_ok_BxT.shape[1], dtype=jnp.int32)
  key_ok_BxT = key_ok_BxT.astype(bool)
  if segment_ids_BxT is not None:
    key_ok_BxT &= segment_ids_BxT != 0
  return Mask(slots_T, slots_T, key_ok_BxT, segment_ids_BxT, segment_ids_BxT)


def dense_attention(q_BxTxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array, mask: Mask,
                    dtype) -> jax.Array:
  """Softmax(q k^T / sqrt(H), masked) v, returned as [B, T, K, G, H] in `dtype`."""
  mask_BxTxS = mask.dense()
  scores_BxKxGxTxS = jnp.einsum("btkgh,bksh->bkgts", q_BxTxKxGxH, k_BxKxSxH,
                                preferred_element_type=jnp.float32) / math.sqrt(q_BxTxKxGxH.shape[-1])
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dtype)
  # Output head-major, then transposed: XLA:CPU has no fast kernel for the dot straight into [B, T, K, G, H].
  out_BxKxGxTxH = jnp.einsum("bkgts,bksh->bkgth", probs_BxKxGxTxS, v_BxKxSxH.astype(dtype),
                             preferred_element_type=jnp.float32)  # bf16 dots accumulate in f32 (layers.py)
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).astype(dtype)


def blocked_dense_attention(q_BxTxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array, mask: Mask,
                            block: int, dtype) -> jax.Array:
  """`dense_attention` with the queries in blocks of `block`, one block at a time (`lax.map`): a prefill holds the
  scores of one block, [B, K, G, block, S], not of the whole prompt against the whole cache (a 32k-token prompt's
  [T, S] float32 scores are 4 GiB per head). One block (plain `dense_attention`) when T <= block or block is 0."""
  b, t, k, g, h = q_BxTxKxGxH.shape
  if not block or t <= block:
    return dense_attention(q_BxTxKxGxH, k_BxKxSxH, v_BxKxSxH, mask, dtype)
  blocks, pad = -(-t // block), -t % block
  # Padded queries see no key (finite garbage, see MASKED) and are sliced off.
  q_NxBxCxKxGxH = jnp.pad(q_BxTxKxGxH, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0))).reshape(
      b, blocks, block, k, g, h).swapaxes(0, 1)
  out_NxBxCxKxGxH = jax.lax.map(
      lambda qm: dense_attention(qm[0], k_BxKxSxH, v_BxKxSxH, mask.with_queries(*qm[1]), dtype),
      (q_NxBxCxKxGxH, mask.query_blocks(block)))
  return out_NxBxCxKxGxH.swapaxes(0, 1).reshape(b, blocks * block, k, g, h)[:, :t]


def dense_causal_attention(q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask: Mask,
                           block: int, dtype) -> jax.Array:
  """`dense_attention` of T queries over the same T positions, in query blocks that skip the keys after them."""
  t = q_BxTxKxGxH.shape[1]
  k_BxKxTxH, v_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    outs.append(dense_attention(q_BxTxKxGxH[:, start:end], k_BxKxTxH[:, :, :end], v_BxKxTxH[:, :, :end],
                                mask.slice(start, end, end), dtype))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


# Inside the row loop every tensor is kv-head-major with the (query, group) pairs merged into one axis U:
# q [K, T·G, H], k/v [K, S, H], scores [K, U, S]. Each einsum is then a plain batched matmul contracting one axis;
# XLA:CPU runs dots with two contracting axes (e.g. over g and t for dk) several times slower.


def _block_scores(q_KxUxH, k_KxSxH, mask_UxS):
  scores_KxUxS = jnp.einsum("kuh,ksh->kus", q_KxUxH, k_KxSxH,
                            preferred_element_type=jnp.float32) / math.sqrt(q_KxUxH.shape[-1])
  return jnp.where(mask_UxS, scores_KxUxS, MASKED)


def _blocks(t: int, block: int):
  return [(start, min(start + block, t)) for start in range(0, t, block)]


def _row_block_mask(mask: Mask, start: int, end: int, g: int) -> jax.Array:
  """One row's queries [start, end) against keys [0, end), each query's row repeated for its g group heads:
  bool [(end - start)·G, end], the U axis of the row loop."""
  return jnp.repeat(mask.slice(start, end, end).dense()[0], g, axis=0)


def _row_forward(q_KxUxH, k_KxTxH, v_KxTxH, mask: Mask, block, dtype):
  """One row: output [K, T·G, H] and each query's score maximum and softmax denominator, [K, T·G] each.

  The two are kept apart, not as one log-normaliser: for a query that sees no key, max + log(sum) rounds to the
  mask value itself in float32, and the backward pass would then recompute probabilities of 1 instead of 1/S.
  """
  t = mask.shape[1]
  g = q_KxUxH.shape[1] // t
  outs, maxes, sums = [], [], []
  for start, end in _blocks(t, block):
    mask_UxS = _row_block_mask(mask, start, end, g)
    scores_KxUxS = _block_scores(q_KxUxH[:, start * g:end * g], k_KxTxH[:, :end], mask_UxS)
    max_KxUx1 = jnp.max(scores_KxUxS, axis=-1, keepdims=True)
    unnorm_KxUxS = jnp.exp(scores_KxUxS - max_KxUx1)
    sum_KxUx1 = jnp.sum(unnorm_KxUxS, axis=-1, keepdims=True)
    probs_KxUxS = (unnorm_KxUxS / sum_KxUx1).astype(dtype)
    outs.append(jnp.einsum("kus,ksh->kuh", probs_KxUxS, v_KxTxH[:, :end].astype(dtype),
                           preferred_element_type=jnp.float32).astype(dtype))
    maxes.append(max_KxUx1[..., 0])
    sums.append(sum_KxUx1[..., 0])
  return jnp.concatenate(outs, axis=1), (jnp.concatenate(maxes, axis=1), jnp.concatenate(sums, axis=1))


def _row_backward(q_KxUxH, k_KxTxH, v_KxTxH, mask: Mask, out_KxUxH, normaliser, dout_KxUxH, block, dtype):
  """One row's (dq, dk, dv), recomputing each block's probabilities from the saved max and denominator."""
  max_KxU, sum_KxU = normaliser
  t = mask.shape[1]
  g = q_KxUxH.shape[1] // t
  scale = 1.0 / math.sqrt(q_KxUxH.shape[-1])
  # d(softmax) needs sum_s p * dp per query, which equals dout . out.
  delta_KxU = jnp.einsum("kuh,kuh->ku", dout_KxUxH, out_KxUxH, preferred_element_type=jnp.float32)
  dqs = []
  dk_KxTxH = jnp.zeros(k_KxTxH.shape, jnp.float32)
  dv_KxTxH = jnp.zeros(v_KxTxH.shape, jnp.float32)
  for start, end in _blocks(t, block):
    u0, u1 = start * g, end * g
    mask_UxS = _row_block_mask(mask, start, end, g)
    q_blk, dout_blk = q_KxUxH[:, u0:u1], dout_KxUxH[:, u0:u1].astype(dtype)
    scores_KxUxS = _block_scores(q_blk, k_KxTxH[:, :end], mask_UxS)
    probs_KxUxS = jnp.exp(scores_KxUxS - max_KxU[:, u0:u1, None]) / sum_KxU[:, u0:u1, None]
    dv_KxTxH = dv_KxTxH.at[:, :end].add(jnp.einsum("kus,kuh->ksh", probs_KxUxS.astype(dtype), dout_blk,
                                                   preferred_element_type=jnp.float32))
    dprobs_KxUxS = jnp.einsum("kuh,ksh->kus", dout_blk, v_KxTxH[:, :end].astype(dtype),
                              preferred_element_type=jnp.float32)
    # Masked scores were constants (jnp.where), so they pass no gradient.
    dscores_KxUxS = jnp.where(mask_UxS, probs_KxUxS * (dprobs_KxUxS - delta_KxU[:, u0:u1, None]), 0.0) * scale
    dscores_KxUxS = dscores_KxUxS.astype(dtype)
    dqs.append(jnp.einsum("kus,ksh->kuh", dscores_KxUxS, k_KxTxH[:, :end], preferred_element_type=jnp.float32))
    dk_KxTxH = dk_KxTxH.at[:, :end].add(jnp.einsum("kus,kuh->ksh", dscores_KxUxS, q_blk,
                                                   preferred_element_type=jnp.float32))
  return jnp.concatenate(dqs, axis=1), dk_KxTxH, dv_KxTxH


def _queries_to_rows(x_BxTxKxGxH):
  b, t, k, g, h = x_BxTxKxGxH.shape
  return x_BxTxKxGxH.transpose(0, 2, 1, 3, 4).reshape(b, k, t * g, h)


def _from_rows(x_BxKxUxH, g: int):
  b, k, u, h = x_BxKxUxH.shape
  return x_BxKxUxH.reshape(b, k, u // g, g, h).transpose(0, 2, 1, 3, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def rowwise_causal_attention(q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask: Mask,
                             block: int, dtype) -> jax.Array:
  """Same values as `dense_causal_attention`; rows one at a time, flash-style recomputing backward."""
  return _rowwise_forward(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask, block, dtype)[0]


def _rowwise_forward(q, k, v, mask, block, dtype):
  row = functools.partial(_row_forward, block=block, dtype=dtype)
  rows = (_queries_to_rows(q), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
  mask_rows = mask.rows()
  out_BxKxUxH, normaliser = jax.lax.map(lambda args: row(*args), (*rows, mask_rows))
  return _from_rows(out_BxKxUxH, q.shape[3]), (*rows, mask_rows, out_BxKxUxH, normaliser)


def _rowwise_backward(block, dtype, residuals, dout_BxTxKxGxH):
  q_rows, k_rows, v_rows, mask, out, normaliser = residuals
  g = dout_BxTxKxGxH.shape[3]
  dout_rows = _queries_to_rows(dout_BxTxKxGxH)
  row = functools.partial(_row_backward, block=block, dtype=dtype)
  dq, dk, dv = jax.lax.map(lambda args: row(*args), (q_rows, k_rows, v_rows, mask, out, normaliser, dout_rows))
  return (_from_rows(dq, g).astype(q_rows.dtype), dk.transpose(0, 2, 1, 3).astype(k_rows.dtype),
          dv.transpose(0, 2, 1, 3).astype(v_rows.dtype), None)


rowwise_causal_attention.defvjp(_rowwise_forward, _rowwise_backward)


def causal_attention(impl: str, q_BxTxKxGxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask: Mask,
                     block: int, dtype) -> jax.Array:
  """Attention of T queries over the same T positions (no cache) with implementation `impl`."""
  if impl == "dense":
    return dense_causal_attention(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask, block, dtype)
  if impl == "rowwise":
    return rowwise_causal_attention(q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, mask, block, dtype)
  raise ValueError(f"attention implementation {impl!r} is not one of {IMPLEMENTATIONS}")
