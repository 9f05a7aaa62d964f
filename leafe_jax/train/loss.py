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


def token_nll(logits_BxTxV: jax.Array, input_ids_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Next-token NLL and correctness, both f32 [B, T-1]; computed in f32 whatever the logits dtype.

  A target counts as correct when no logit beats it (ties with the maximum count too, where argmax would pick
  the first). Comparing with the row maximum reuses the log-normaliser's max pass; a separate argmax was one
  more pass over the [B, T, V] logits, about 5% of the SFT benchmark step.
  """
  # Every position is scored against the next token (the last against itself, then dropped): slicing the
  # logits to [:, :-1] first would copy all of them.
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  targets_BxT = jnp.concatenate([input_ids_BxT[:, 1:], input_ids_BxT[:, -1:]], axis=1)
  max_BxT = jax.lax.stop_gradient(jnp.max(logits_BxTxV, axis=-1))
  log_z_BxT = max_BxT + jnp.log(jnp.sum(jnp.exp(logits_BxTxV - max_BxT[..., None]), axis=-1))
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  correct_BxT = (target_logit_BxT >= max_BxT).astype(jnp.float32)
  return (log_z_BxT - target_logit_BxT)[:, :-1], correct_BxT[:, :-1]


def kind_sums(
    nll_BxTm1: jax.Array, correct_BxTm1: jax.Array, batch: Batch, num_kinds: int
) -> dict[str, jax.Array]:
  """Per record kind (index in records.KINDS): unweighted NLL sum, target count, correct count; each f32 [K]."""
  valid_BxTm1 = target_mask(batch)
  kind_onehot_BxTm1xK = jax.nn.one_hot(batch["kind_BxT"][:, 1:], num_kinds, dtype=jnp.float32)
  kind_onehot_BxTm1xK = kind_onehot_BxTm1xK * valid_BxTm1[..., None]
  return {
      "nll_sum_K": jnp.einsum("bt,btk->k", jax.lax.stop_gradient(nll_BxTm1), kind_onehot_BxTm1xK),
      "targets_K": jnp.sum(kind_onehot_BxTm1xK, axis=(0, 1)),
      "correct_K": jnp.einsum("bt,btk->k", correct_BxTm1, kind_onehot_BxTm1xK),
  }


def make_loss_fn(
    apply_fn: Callable[..., Any], normalization: str, num_kinds: int
) -> Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
  """Returns loss_fn(params, batch, denom) -> (loss, metric sums), for `jax.value_and_grad(has_aux=True)`.

  `apply_fn(params, input_ids, positions=..., segment_ids=...)` returns logits [B, T, V]. `denom` is
  `denominator(global_batch, normalization)`; passing it in lets micro-batches share the global normaliser.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"loss_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")

  def loss_fn(params: Any, batch: Batch, denom: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits_BxTxV = apply_fn(
        params, batch["input_ids_BxT"], positions=batch["positions_BxT"], segment_ids=batch["segment_ids_BxT"]
    )
    nll_BxTm1, correct_BxTm1 = token_nll(logits_BxTxV, batch["input_ids_BxT"])
    numerator = jnp.sum(token_scale(batch, normalization) * nll_BxTm1)
    # A batch without targets (all padding) contributes 0, not NaN.
    loss = numerator / jnp.where(denom > 0, denom, 1.0)
    return loss, kind_sums(nll_BxTm1, correct_BxTm1, batch, num_kinds)

  return loss_fn
