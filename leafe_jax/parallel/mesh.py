"""Device mesh and shardings of parameters and batches."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from leafe_jax.parallel.rules import LOGICAL_RULES, MESH_AXES


def resolve_mesh_shape(shape: tuple[int, ...], num_devices: int, field: str = "mesh") -> tuple[int, int, int]:
  """Replaces one -1 by the remaining device count; the product must equal `num_devices`.

  `field` names the config field in errors (e.g. 'train.mesh').
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config field '{field}' must be 3 positive sizes (data, fsdp, tensor), one may be -1; "
                     f"got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"{field} {shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"{field} {shape} needs {math.prod(shape)} devices, have {num_devices}")
  return shape  # type: ignore[return-value]


def make_mesh(shape: tuple[int, int, int], devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh of `shape` over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
  try:  # topology-aware order on TPU/GPU slices
    grid = mesh_utils.create_device_mesh(tuple(shape), devices)
  except (ValueError, NotImplementedError, AssertionError):  # unusual topologies: plain row-major order
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def _mesh_axes_of(logical: str | None) -> tuple[str, ...]:
  for name, axes in LOGICAL_RULES:
    if name == logical:
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  if logical is None:
    return ()
  raise KeyError(f"logical axis {logical!r} has no rule in parallel.rules.LOGICAL_RULES")


# A parameter at least this large that its rules shard but the mesh does not divide is logged: it is then
# replicated on every device (e.g. Qwen2.5-7B's 28 query heads on a tensor axis of 8), which may not fit.
REPLICATION_WARNING_ELEMENTS = 1 << 20


def replicated_dims(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> list[tuple[int, str, int]]:
  """(dim, logical name, mesh size) of each dimension the rules shard but the mesh axes do not divide."""
  spec = logical_to_spec(logical, shape, mesh)
  out = []
  for dim, (size, name, placed) in enumerate(zip(shape, tuple(logical) + (None,) * len(shape), spec)):
    axes = tuple(a for a in _mesh_axes_of(name) if mesh.shape[a] > 1)
    if axes and placed is None and size % math.prod(mesh.shape[a] for a in axes):
      out.append((dim, name, math.prod(mesh.shape[a] for a in axes)))
  return out


def logical_to_spec(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Mesh PartitionSpec for one array; a dimension the mesh axes do not divide stays replicated."""
  out, used = [], set()
  for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
    axes = tuple(a for a in _mesh_axes_of(name) if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if axes and dim % size == 0:
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    else:
      out.append(None)
  return PartitionSpec(*out)


def logical_sharding(logical_tree, mesh: Mesh, shapes_tree=None):
  """NamedShardings for a tree of logical PartitionSpecs.

  With `shapes_tree` (arrays or shape structs shaped like `logical_tree`) a dimension the mesh axes do not divide
  stays replicated, so tiny models shard on any mesh; without it the rules are applied as they are.
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)
  if shapes_tree is None:
    return jax.tree.map(lambda spec: nn.logical_to_mesh_sharding(spec, mesh, LOGICAL_RULES), logical_tree,
                        is_leaf=is_spec)
  return jax.tree.map(lambda spec, array: NamedSharding(mesh, logical_to_spec(spec, tuple(array.shape), mesh)),
                      logical_tree, shapes_tree, is_leaf=is_spec)


def param_shardings(model, mesh: Mesh):
  """NamedShardings of `model`'s parameters (plain tree, as init_params returns) from their logical axes."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 1), jax.numpy.int32)))
  params = boxed["params"]
  logical, shapes = nn.get_partition_spec(params), nn.meta.unbox(params)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  for (path, spec), array in zip(jax.tree_util.tree_flatten_with_path(logical, is_leaf=is_spec)[0],
                                 jax.tree.leaves(shapes)):
    if math.prod(array.shape) >= REPLICATION_WARNING_ELEMENTS:
      for dim, name, size in replicated_dims(spec, tuple(array.shape), mesh):
        logging.warning("param %s %s: dim %d (%s) is not divisible by its mesh axes' %d devices; replicated "
                        "there", jax.tree_util.keystr(path), tuple(array.shape), dim, name, size)
  return logical_sharding(logical, mesh, shapes)


def batch_shards(mesh: Mesh) -> int:
  """How many pieces `batch_sharding` cuts the rows into: a batch's row count must be a multiple of it."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a batch split over ("data", "fsdp"); the sequence axis replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
