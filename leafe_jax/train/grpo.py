"""GRPO (the paper's RLVR baseline and LEAFE's initialisation): advantages, training rows, the clipped loss.

One iteration (train/grpo_stage.py): play `group_size` episodes of each of a few tasks with the current policy;
an episode's reward is its success minus a penalty per invalid action; each episode's advantage is its reward
normalised within its task's group, Â = (r − mean) / (std + ε); every agent turn of the episode is a training
row whose response tokens all carry Â. The loss is PPO's clipped surrogate against the log-probs of the policy
that played (recomputed by the training forward before the first update), plus a KL penalty to the initial
policy, token-mean over the minibatch (verl's `token-mean`):

  L = Σ_t [ −min(ρ_t Â, clip(ρ_t, 1−ε, 1+ε) Â) + β · KL_t ] / Σ_t 1,   ρ_t = π(a_t) / π_old(a_t)

with KL_t the low-variance estimator exp(ref − logp) − (ref − logp) − 1 (verl `low_var_kl`). With one minibatch
per iteration ρ = 1 and the update is exactly the policy gradient −Â ∇log π.

Token arrays live at the positions that predict a response token (train/targets.py): [B, N], not [B, T].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.train import loss as loss_lib
from leafe_jax.train import targets

# Batch keys of a GRPO minibatch, besides the SFT row keys (input_ids, segment_ids, positions) and TARGET_INDEX.
TOKEN_KEYS = ("valid_BxN", "advantage_BxN", "old_logprob_BxN", "ref_logprob_BxN")
KL_CLAMP = 10.0  # the low-variance KL estimate is clamped to [-10, 10] per token, as verl does
LOG_RATIO_CLAMP = 20.0  # log(ref / policy) is clamped to [-20, 20] before its exp, as verl does
STD_EPS = 1e-6  # Â = (r - mean) / (std + STD_EPS), verl's epsilon
# The policy loss's metrics (make_policy_loss_fn): each sums over the micro-batches of a minibatch to its value.
LOSS_METRICS = ("pg_loss", "kl", "clip_fraction", "tokens")


def group_advantages(rewards: Sequence[float]) -> np.ndarray:
  """Â of each episode of one task's group: (r − mean) / (std + ε), std with Bessel's correction (as verl).

  A group of one has no baseline: Â = r (verl's convention). A group whose rewards are all equal gives 0.
  """
  r = np.asarray(rewards, np.float64)
  if r.size == 1:
    return r.astype(np.float32)
  if r.max() == r.min():  # exactly 0: r - r.mean() need not be (e.g. three rewards of -0.1), and 0 is skipped
    return np.zeros(r.shape, np.float32)
  return ((r - r.mean()) / (r.std(ddof=1) + STD_EPS)).astype(np.float32)


def minibatch_rows(num_real: int, num_rows: int, minibatches: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Row indices of each minibatch: the `num_real` rows shuffled and dealt round-robin, so every minibatch gets
  its share, each then filled up to num_rows / minibatches with the padding rows num_real..num_rows-1.

  With fewer real rows than minibatches the minibatches left without one are dropped: an optimizer step on a zero
  gradient would still move the params (AdamW's momentum and weight decay).
  """
  per = num_rows // minibatches
  real = rng.permutation(num_real)
  shares = [real[m::minibatches] for m in range(minibatches)]
  fill = np.cumsum([num_real] + [per - len(share) for share in shares])  # each minibatch's padding rows
  return [np.concatenate([share, np.arange(fill[m], fill[m + 1])]).astype(np.int64)
          for m, share in enumerate(shares) if len(share)]


@dataclasses.dataclass(frozen=True)
class Turn:
  """One agent turn to train on: the prompt as the policy saw it, the sampled response ids, its advantage."""

  prompt_ids: tuple[int, ...]
  response_ids: tuple[int, ...]  # as sampled, plus the eos id when the sample ended with it
  advantage: float


def build_rows(turns: Sequence[Turn], seq_len: int, pad_id: int, pack: bool = True
               ) -> tuple[dict[str, np.ndarray], int]:
  """Rows [R, seq_len] holding the turns, prompts left-truncated to fit; returns (rows, truncated count).

  With `pack`, consecutive turns share a row as separate segments (segment ids keep attention and positions
  per turn) while they fit: agent prompts are short next to a row, and the loss is a mean over tokens, so
  packing changes the cost, not the loss. Keys: the SFT row keys (input_ids, loss_mask = response tokens,
  weight, segment_ids, positions, kind) and `advantage_BxT` (Â on each response token).
  """
  pieces, truncated = [], 0
  for turn in turns:
    if len(turn.response_ids) >= seq_len:
      raise ValueError(f"grpo: a response of {len(turn.response_ids)} tokens does not fit seq_len={seq_len} "
                       "with its prompt; raise grpo.seq_len or lower grpo.max_new_tokens")
    prompt = turn.prompt_ids[-(seq_len - len(turn.response_ids)):]
    truncated += len(prompt) < len(turn.prompt_ids)
    pieces.append((prompt, turn.response_ids, turn.advantage))
  layout: list[list[int]] = []  # turn indices per row
  used = seq_len
  for i, (prompt, response, _) in enumerate(pieces):
    size = len(prompt) + len(response)
    if not pack or used + size > seq_len:
      layout.append([])
      used = 0
    layout[-1].append(i)
    used += size
  n = len(layout)
  ids = np.full((n, seq_len), pad_id, np.int32)
  loss_mask = np.zeros((n, seq_len), np.float32)
  advantage = np.zeros((n, seq_len), np.float32)
  segment = np.zeros((n, seq_len), np.int32)
  positions = np.zeros((n, seq_len), np.int32)
  for row, members in enumerate(layout):
    at = 0
    for seg, i in enumerate(members, start=1):
      prompt, response, adv = pieces[i]
      end = at + len(prompt) + len(response)
      ids[row, at:end] = (*prompt, *response)
      loss_mask[row, at + len(prompt):end] = 1.0
      advantage[row, at + len(prompt):end] = adv
      segment[row, at:end] = seg
      positions[row, at:end] = np.arange(end - at)
      at = end
  rows = {
      "input_ids_BxT": ids, "loss_mask_BxT": loss_mask, "weight_BxT": (loss_mask > 0).astype(np.float32),
      "segment_ids_BxT": segment, "positions_BxT": positions, "kind_BxT": np.zeros((n, seq_len), np.int32),
      "advantage_BxT": advantage,
  }
  return rows, truncated


def pad_rows(rows: dict[str, np.ndarray], num_rows: int) -> dict[str, np.ndarray]:
  """`rows` followed by empty rows (no tokens, no targets) up to `num_rows`."""
  extra = num_rows - len(rows["input_ids_BxT"])
  return {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}


def rows_per_minibatch(num_real: int, minibatches: int, micro_batch_rows: int, shards: int) -> tuple[int, int]:
  """(rows of each minibatch, rows of each forward/backward pass) for `num_real` rows dealt to `minibatches`.

  With `micro_batch_rows` a minibatch is a whole number of micro-batches of that many rows: one compiled shape
  whatever the iteration's row count, and memory bounded by the micro-batch. Without (0), a minibatch is one
  pass of a bucketed row count (`bucket_rows`, a multiple of `shards`).
  """
  if micro_batch_rows:
    passes = -(-num_real // (minibatches * micro_batch_rows))  # ceil: every minibatch's share of the real rows fits
    return passes * micro_batch_rows, micro_batch_rows
  per = bucket_rows(num_real, shards * minibatches) // minibatches
  return per, per


def bucket_rows(n: int, multiple: int) -> int:
  """The smallest m·2^k ≥ n, m in 4..7, that `multiple` divides: at most ~25% padding, few compiled shapes."""
  size = multiple
  while size < n:
    size *= 2
  candidates = [size * m // 8 for m in (4, 5, 6, 7)] + [size]
  return min(c for c in candidates if c >= n and c % multiple == 0)


def gather_targets(rows: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
  """The model inputs, TARGET_INDEX at `width`, and `valid_BxN` / `advantage_BxN` at those positions."""
  index_BxN = targets.target_index(rows, width)
  valid_BxT = targets.target_positions_mask(rows).astype(np.float32)
  # Position t predicts token t+1: the advantage of the target is read one position on.
  next_advantage_BxT = np.concatenate([rows["advantage_BxT"][:, 1:], np.zeros_like(rows["advantage_BxT"][:, :1])],
                                      axis=1)
  take = lambda x: np.take_along_axis(x, index_BxN, axis=1)
  return {
      "input_ids_BxT": rows["input_ids_BxT"], "segment_ids_BxT": rows["segment_ids_BxT"],
      "positions_BxT": rows["positions_BxT"], loss_lib.TARGET_INDEX: index_BxN,
      "valid_BxN": take(valid_BxT), "advantage_BxN": take(next_advantage_BxT) * take(valid_BxT),
  }


def token_logprobs(apply_fn: Callable[..., jax.Array], params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  """f32 [B, N]: log π(next token) at each position of batch[TARGET_INDEX], temperature 1."""
  index_BxN = batch[loss_lib.TARGET_INDEX]
  logits_BxNxV = apply_fn(params, batch["input_ids_BxT"], positions=batch["positions_BxT"],
                          segment_ids=batch["segment_ids_BxT"], logits_positions=index_BxN)
  targets_BxN = jnp.take_along_axis(loss_lib.next_tokens(batch["input_ids_BxT"]), index_BxN, axis=1)
  nll_BxN, _ = loss_lib.token_nll(logits_BxNxV, targets_BxN)
  return -nll_BxN


def make_policy_loss_fn(apply_fn: Callable[..., jax.Array], clip_eps: float, kl_coef: float):
  """Returns loss_fn(params, batch, count=None) -> (loss, metrics) of the module docstring, for jax.value_and_grad.

  `count`: the token-mean's denominator, the minibatch's response tokens; None = this batch's own. A minibatch
  run as micro-batches passes its total to each, so their losses, metrics and gradients sum to the minibatch's.
  """

  def loss_fn(params: Any, batch: dict[str, jax.Array], count: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    valid_BxN = batch["valid_BxN"]
    count = jnp.maximum(jnp.sum(valid_BxN) if count is None else count, 1.0)
    logp_BxN = token_logprobs(apply_fn, params, batch)
    ratio_BxN = jnp.exp(logp_BxN - batch["old_logprob_BxN"])
    advantage_BxN = batch["advantage_BxN"]
    surrogate_BxN = jnp.minimum(ratio_BxN * advantage_BxN,
                                jnp.clip(ratio_BxN, 1.0 - clip_eps, 1.0 + clip_eps) * advantage_BxN)
    # Clamped before the exp (as verl): exp of a log-ratio above ~88 is inf, and 0 * inf a NaN gradient even where
    # the KL term is clipped or masked.
    log_ref_ratio_BxN = jnp.clip(batch["ref_logprob_BxN"] - logp_BxN, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    kl_BxN = jnp.clip(jnp.exp(log_ref_ratio_BxN) - log_ref_ratio_BxN - 1.0, -KL_CLAMP, KL_CLAMP)
    pg_loss = -jnp.sum(surrogate_BxN * valid_BxN) / count
    kl = jnp.sum(kl_BxN * valid_BxN) / count
    clipped = (jnp.abs(ratio_BxN - 1.0) > clip_eps).astype(jnp.float32)
    metrics = dict(zip(LOSS_METRICS, (pg_loss, kl, jnp.sum(clipped * valid_BxN) / count, jnp.sum(valid_BxN)),
                       strict=True))
    return pg_loss + kl_coef * kl, metrics

  return loss_fn
