"""Weighted, masked next-token NLL over target tokens (the LEAFE distillation loss, L = L_cf + β·L_reh).

The logits at position t-1 predict input_ids[t]. A target t counts only if loss_mask[t] = 1 and
segment_ids[t-1] == segment_ids[t] != 0 (the first token of a packed segment is never predicted from the
previous segment, and padding never counts). Each target is scaled by weight[t], the owning example's weight
(β for rehearsal records, 1 for counterfactual ones).

Normalisation, a config choice:
  "token":   Σ w·nll / Σ w·mask over the global batch (the HF / verl default).
  "example": (1/N) Σ_e w_e · mean_{t∈e} nll_t over the N examples with at least one target in the global
             batch: every example counts once whatever its action length, so β is a per-example weight.

Both are written as `numerator(params) / denominator(batch)`: the denominator does not depend on the params, so
it is computed once over the global batch and gradient accumulation over micro-batches sums numerators only;
k micro-batches of b rows give the same gradient as one batch of k·b rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

NORMALIZATIONS = ("token", "example")
# Per-kind metric sums returned by the loss (each f32 [num_kinds]).
KIND_SUM_KEYS = ("nll_sum_K", "targets_K", "correct_K")
# Optional batch key: int32 [B, N] positions at which to compute logits (train/targets.py).
TARGET_INDEX = "target_index_BxN"

Batch = Mapping[str, jax.Array]


def target_mask(batch: Batch) -> jax.Array:
  """f32 [B, T-1]: 1 where input_ids[:, 1:] is a counted target (see module docstring)."""
  seg_BxT = batch["segment_ids_BxT"]
  same_segment = (seg_BxT[:, :-1] == seg_BxT[:, 1:]) & (seg_BxT[:, 1:] != 0)
  return batch["loss_mask_BxT"][:, 1:].astype(jnp.float32) * same_segment.astype(jnp.float32)


def _example_token_counts(seg_BxT: jax.Array, valid_BxTm1: jax.Array) -> jax.Array:
  """f32 [B, T-1]: for each target position, the number of counted targets in its example (segment)."""
  batch_size, length = seg_BxT.shape
  # One id per (row, segment): a row has at most T segments, so row * (T + 1) + segment is unique.
  ids_BxTm1 = jnp.arange(batch_size, dtype=jnp.int32)[:, None] * (length + 1) + seg_BxT[:, 1:]
  counts = jax.ops.segment_sum(
      valid_BxTm1.reshape(-1), ids_BxTm1.reshape(-1), num_segments=batch_size * (length + 1)
  )
  return counts[ids_BxTm1]


def token_scale(batch: Batch, normalization: str) -> jax.Array:
  """f32 [B, T-1]: per-target factor s_t so that loss = Σ s_t·nll_t / denominator(batch)."""
  valid_BxTm1 = target_mask(batch)
  weight_BxTm1 = batch["weight_BxT"][:, 1:].astype(jnp.float32) * valid_BxTm1
  if normalization == "token":
    return weight_BxTm1
  if normalization == "example":
    counts_BxTm1 = _example_token_counts(batch["segment_ids_BxT"], valid_BxTm1)
    return weight_BxTm1 / jnp.maximum(counts_BxTm1, 1.0)
  raise ValueError(f"loss_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def denominator(batch: Batch, normalization: str) -> jax.Array:
  """Scalar f32: Σ w·mask ("token") or the number of examples with a target ("example"); batch-only."""
  valid_BxTm1 = target_mask(batch)
  if normalization == "token":
    return jnp.sum(batch["weight_BxT"][:, 1:].astype(jnp.float32) * valid_BxTm1)
  if normalization == "example":
    counts_BxTm1 = _example_token_counts(batch["segment_ids_BxT"], valid_BxTm1)
    # Each example's targets contribute 1/count each: the sum counts examples.
    return jnp.sum(valid_BxTm1 / jnp.maximum(counts_BxTm1, 1.0))
  raise ValueError(f"loss_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def token_nll(logits_BxNxV: jax.Array, targets_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """NLL of each target under its logits and its correctness, both f32 [B, N]; in f32 whatever the logits dtype.

  A target counts as correct when no logit beats it (ties with the maximum count too, where argmax would pick
  the first). Comparing with the row maximum reuses the log-normaliser's max pass; a separate argmax was one
  more pass over the logits, about 5% of the SFT benchmark step.
  """
  logits_BxNxV = logits_BxNxV.astype(jnp.float32)
  max_BxN = jax.lax.stop_gradient(jnp.max(logits_BxNxV, axis=-1))
  log_z_BxN = max_BxN + jnp.log(jnp.sum(jnp.exp(logits_BxNxV - max_BxN[..., None]), axis=-1))
  target_logit_BxN = jnp.take_along_axis(logits_BxNxV, targets_BxN[..., None], axis=-1)[..., 0]
  correct_BxN = (target_logit_BxN >= max_BxN).astype(jnp.float32)
  return log_z_BxN - target_logit_BxN, correct_BxN


def next_tokens(x_BxT: jax.Array) -> jax.Array:
  """[B, T]: at position t the value of position t+1 (the last position repeats itself; it predicts nothing)."""
  return jnp.concatenate([x_BxT[:, 1:], x_BxT[:, -1:]], axis=1)


def next_token_view(batch: Batch, normalization: str) -> dict[str, jax.Array]:
  """Per position t of [B, T]: the token it predicts (t+1), whether that counts, its loss factor, its kind.

  The last position predicts nothing (valid 0). Keeping the full length T (rather than slicing logits to
  [:, :-1]) lets the full-logits path score every position without copying the logits.
  """
  pad = lambda x_BxTm1: jnp.concatenate([x_BxTm1, jnp.zeros_like(x_BxTm1[:, :1])], axis=1)
  return {
      "targets": next_tokens(batch["input_ids_BxT"]),
      "valid": pad(target_mask(batch)),
      "scale": pad(token_scale(batch, normalization)),
      "kind": next_tokens(batch["kind_BxT"]),
  }


def kind_sums(nll_BxN: jax.Array, correct_BxN: jax.Array, valid_BxN: jax.Array, kind_BxN: jax.Array,
              num_kinds: int) -> dict[str, jax.Array]:
  """Per record kind (index in records.KINDS): unweighted NLL sum, target count, correct count; each f32 [K]."""
  kind_onehot_BxNxK = jax.nn.one_hot(kind_BxN, num_kinds, dtype=jnp.float32) * valid_BxN[..., None]
  return {
      "nll_sum_K": jnp.einsum("bn,bnk->k", jax.lax.stop_gradient(nll_BxN), kind_onehot_BxNxK),
      "targets_K": jnp.sum(kind_onehot_BxNxK, axis=(0, 1)),
      "correct_K": jnp.einsum("bn,bnk->k", correct_BxN, kind_onehot_BxNxK),
  }


def make_loss_fn(
    apply_fn: Callable[..., Any], normalization: str, num_kinds: int
) -> Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
  """Returns loss_fn(params, batch, denom) -> (loss, metric sums), for `jax.value_and_grad(has_aux=True)`.

  `apply_fn(params, input_ids, positions=..., segment_ids=..., logits_positions=...)` returns logits [B, N, V].
  With `batch[TARGET_INDEX]` (int32 [B, N], train/targets.py) the logits are computed only at those positions
  (the ones that predict a target, padded with positions that predict nothing); without it, at all T. `denom`
  is `denominator(global_batch, normalization)`; passing it in lets micro-batches share the global normaliser.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"loss_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")

  def loss_fn(params: Any, batch: Batch, denom: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    view = next_token_view(batch, normalization)
    index_BxN = batch.get(TARGET_INDEX)
    extra = {} if index_BxN is None else {"logits_positions": index_BxN}
    logits_BxNxV = apply_fn(params, batch["input_ids_BxT"], positions=batch["positions_BxT"],
                            segment_ids=batch["segment_ids_BxT"], **extra)
    if index_BxN is not None:
      view = {key: jnp.take_along_axis(value, index_BxN, axis=1) for key, value in view.items()}
    nll_BxN, correct_BxN = token_nll(logits_BxNxV, view["targets"])
    numerator = jnp.sum(view["scale"] * nll_BxN)
    # A batch without targets (all padding) contributes 0, not NaN.
    loss = numerator / jnp.where(denom > 0, denom, 1.0)
    return loss, kind_sums(nll_BxN, correct_BxN, view["valid"], view["kind"], num_kinds)

  return loss_fn
