"""The SFT train step: one jitted function, state donated, micro-batches scanned inside the jit.

`make_train_step` returns a pure function (state, batch) -> (state, metric sums); `jit_train_step` wraps it in
ONE `jax.jit` with explicit shardings: the state by logical rules, the batch by `batch_sharding(mesh)`.
Metric sums stay on device; the host reads them only at log time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from leafe_jax.train import loss as loss_lib
from leafe_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def split_micro_batches(batch: Batch, micro_batches: int) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, i+2k, ...

  Strided (not contiguous) rows, so that with the batch dimension sharded in contiguous blocks over devices
  every micro-batch keeps the same spread over all devices and no data moves.
  """

  def split(x: jax.Array) -> jax.Array:
    if x.shape[0] % micro_batches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by micro_batches={micro_batches}")
    x = x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return {key: split(value) for key, value in batch.items()}


def make_train_step(
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    *,
    normalization: str,
    num_kinds: int,
    micro_batches: int = 1,
    batch_spec: PartitionSpec | None = None,
    mesh: Mesh | None = None,
    schedule: optax.Schedule | None = None,
    params_sharding: Any = None,
) -> StepFn:
  """Builds train_step(state, batch) -> (state, metrics).

  The loss is normalised over the whole (global) batch; with `micro_batches` = k the gradient of each
  micro-batch's numerator is accumulated in a `lax.scan` and one optimizer update is applied, so k
  micro-batches of b rows equal one batch of k·b rows. `batch_spec`/`mesh` keep each micro-batch sharded like
  the batch.
  """
  loss_fn = loss_lib.make_loss_fn(apply_fn, normalization, num_kinds)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def constrain(tree: Any, spec: PartitionSpec) -> Any:
    if mesh is None or batch_spec is None:
      return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))

  def constrain_grads(grads: Any) -> Any:
    if params_sharding is None:
      return grads
    return jax.lax.with_sharding_constraint(grads, params_sharding)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    denom = loss_lib.denominator(batch, normalization)
    if micro_batches == 1:
      (loss, sums), grads = grad_fn(state.params, batch, denom)
    else:
      stacked = split_micro_batches(batch, micro_batches)
      if batch_spec is not None:
        stacked = constrain(stacked, PartitionSpec(None, *batch_spec))

      def accumulate(carry, micro_batch):
        micro_batch = constrain(micro_batch, batch_spec)
        (loss_i, sums_i), grads_i = grad_fn(state.params, micro_batch, denom)
        grads_i = constrain_grads(grads_i)
        return jax.tree.map(jnp.add, carry, (loss_i, sums_i, grads_i)), None

      zero_sums = {key: jnp.zeros((num_kinds,), jnp.float32) for key in loss_lib.KIND_SUM_KEYS}
      init = (jnp.zeros((), jnp.float32), zero_sums, constrain_grads(jax.tree.map(jnp.zeros_like, state.params)))
      (loss, sums, grads), _ = jax.lax.scan(accumulate, init, stacked)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Real (non-padding) tokens of the global batch: exact tokens/s on every process without a host gather.
    real_tokens = jnp.sum(batch["segment_ids_BxT"] > 0, dtype=jnp.int32)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "denominator": denom,
               "real_tokens": real_tokens, **sums}
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def batch_shardings(batch_sharding: NamedSharding, keys: tuple[str, ...]) -> dict[str, NamedSharding]:
  return dict.fromkeys(keys, batch_sharding)


def jit_train_step(
    train_step: StepFn, state_sharding: TrainState, batch_sharding: Mapping[str, NamedSharding], mesh: Mesh
) -> StepFn:
  """ONE jax.jit: explicit in/out shardings, the input state donated (its buffers are reused for the output)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(
      train_step,
      in_shardings=(state_sharding, dict(batch_sharding)),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,),
  )
