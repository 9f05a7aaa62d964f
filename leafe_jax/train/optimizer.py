"""Optimizer for the SFT stage: AdamW with warmup + constant/cosine schedule and global-norm clipping.

Gradient accumulation is not an optax wrapper here: the jitted step scans over micro-batches and applies one
update with the summed gradient (see train/step.py), so the optimizer sees exactly one update per global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

SCHEDULES = ("constant", "cosine")


def make_schedule(lr: float, warmup_steps: int, total_steps: int, schedule: str) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then constant or cosine decay to 0 at `total_steps`."""
  if schedule not in SCHEDULES:
    raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {schedule!r}")
  if warmup_steps > 0:
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  if schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def _is_schedule_state(node: Any) -> bool:
  return isinstance(node, optax.ScaleByScheduleState)


def schedule_count(opt_state: Any) -> jax.Array:
  """The step the learning-rate schedule of a `make_optimizer` state reads next."""
  (state,) = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state) if _is_schedule_state(n)]
  return state.count


def advance_schedule(opt_state: Any, steps: int | jax.Array) -> Any:
  """`opt_state` with its learning-rate schedule `steps` further on. The count Adam's bias correction reads stays:
  for a loop whose schedule counts a fixed number of updates per iteration but skips some (GRPO's iterations
  without a signal)."""
  return jax.tree.map(lambda n: n._replace(count=n.count + steps) if _is_schedule_state(n) else n, opt_state,
                      is_leaf=_is_schedule_state)


# Parameter leaf names that are never decayed: norm scales and biases (also when nn.scan stacks them to [L, d]).
NO_DECAY_LEAVES = ("scale", "bias")


def _decay_mask(params: Any) -> Any:
  """Weight decay on the weight matrices and embeddings only, chosen by leaf name, not rank (under nn.scan a
  stack of norm scales is 2-D)."""
  def decayed(path, _):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) not in NO_DECAY_LEAVES
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW from the train config (lr, warmup_steps, schedule, weight_decay, clip_norm, adam_b1/b2/eps)."""
  schedule = make_schedule(config.lr, config.warmup_steps, total_steps, config.schedule)
  parts = []
  if config.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts.append(
      optax.adamw(
          schedule,
          b1=config.adam_b1,
          b2=config.adam_b2,
          eps=config.adam_eps,
          weight_decay=config.weight_decay,
          mask=_decay_mask,
      )
  )
  return optax.chain(*parts)
