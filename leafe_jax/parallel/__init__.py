"""Mesh, logical-axis rules and shardings; multi-host init and global batches live in `distributed`."""

from leafe_jax.parallel.mesh import (
    batch_sharding,
    batch_shards,
    logical_sharding,
    logical_to_spec,
    make_mesh,
    param_shardings,
    resolve_mesh_shape,
)
from leafe_jax.parallel.rules import LOGICAL_RULES, MESH_AXES

__all__ = [
    "LOGICAL_RULES", "MESH_AXES", "batch_shards", "batch_sharding", "logical_sharding", "logical_to_spec", "make_mesh",
    "param_shardings", "resolve_mesh_shape",
]
