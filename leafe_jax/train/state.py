"""TrainState: everything a resumed run needs, as one pytree (params, optimizer state, step, RNG)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2] raw PRNG key, folded with the step for anything stochastic


def create(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def shardings(
    tx: optax.GradientTransformation, params_shape: Any, params_sharding: Any, mesh: Mesh
) -> TrainState:
  """The TrainState of NamedShardings: optimizer moments follow their parameter, scalars are replicated.

  An optimizer-state leaf whose key path ends with a parameter's key path (and has its shape) is a copy of that
  parameter (Adam's mu, nu) and takes its sharding; anything else (counts, masked-out placeholders) is replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  by_path = {}
  for (path, shape), sharding in zip(
      jax.tree_util.tree_flatten_with_path(params_shape)[0], jax.tree.leaves(params_sharding), strict=True
  ):
    by_path[tuple(path)] = (shape.shape, sharding)

  def leaf_sharding(path: tuple, leaf: Any) -> NamedSharding:
    for start in range(len(path)):
      shape, sharding = by_path.get(tuple(path[start:]), (None, None))
      if sharding is not None and shape == getattr(leaf, "shape", None):
        return sharding
    return replicated

  opt_shape = jax.eval_shape(tx.init, params_shape)
  opt_sharding = jax.tree_util.tree_map_with_path(leaf_sharding, opt_shape)
  return TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding, rng=replicated)
