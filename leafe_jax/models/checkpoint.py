"""HF checkpoint import (`from_hf`) and export (`to_hf`) for every registered family.

Which tensors exist and how they map onto our tree comes from the family module (`tensor_maps(config)`).

Import validates every tensor name and shape from the safetensors headers before reading any data, then builds
each parameter directly in its target sharding with `jax.make_array_from_callback`: every device reads only its
own slice (the files are memory-mapped), so no host or device ever holds the whole model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.models import registry, safetensors_io
from leafe_jax.models.config import ModelConfig
from leafe_jax.models.decoder import Decoder


class CheckpointError(ValueError):
  """A checkpoint directory does not match the model: missing or mis-shaped tensor, unreadable config."""


def config_from_hf(path: str) -> ModelConfig:
  """ModelConfig of the HF directory `path` (its config.json), via the family registry."""
  config_path = os.path.join(path, "config.json")
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path}: cannot read the HF config: {e}") from e
  model_type = hf.get("model_type")
  try:
    return registry.family(model_type).config_from_hf(hf)
  except KeyError as e:
    raise CheckpointError(f"{config_path}: field {e} missing") from e
  except ValueError as e:  # unsupported model_type or feature: the message names it, we add the file
    raise CheckpointError(f"{config_path}: {e}") from e


def _tensor_index(path: str) -> dict[str, safetensors_io.TensorInfo]:
  """Tensor name -> where its bytes are, from the safetensors headers alone (no tensor data is read)."""
  index_path = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index_path}: cannot read the shard index ({e!r})") from e
    files = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    weight_map, files = None, ["model.safetensors"]
  else:
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
  index: dict[str, safetensors_io.TensorInfo] = {}
  for name in files:
    file = os.path.join(path, name)
    try:
      header = safetensors_io.read_header(file)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{file}: cannot read the safetensors header: {e}") from e
    if weight_map is not None:  # trust the index, but check it against the files it names
      for tensor, owner in weight_map.items():
        if owner == name and tensor not in header:
          raise CheckpointError(f"{index_path}: tensor {tensor!r} is mapped to {name}, which does not contain it")
    index.update(header)
  return index


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _scanned_path(path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
  """("layers_3", ...) -> (("layers", ...), 3) for the nn.scan layout; other paths unchanged."""
  if path[0].startswith("layers_"):
    return ("layers", *path[1:]), int(path[0].split("_")[1])
  return path, None


def _ignorable(name: str, config) -> bool:
  """Tensors some checkpoints carry that the model does not need: RoPE buffers (recomputed from the config) and
  an LM head saved beside tied embeddings."""
  return name.endswith("rotary_emb.inv_freq") or (config.tie_embeddings and name == "lm_head.weight")


def from_hf(path: str, dtype=jnp.float32, mesh=None, param_dtype=None, scan_layers: bool = False):
  """(Decoder, params) from a local HF directory; params placed in their shardings on `mesh` when given.

  `dtype` is the parameter dtype of the returned params (and the compute dtype unless the caller rebuilds the
  Decoder with another config); `param_dtype` overrides the former.
  """
  from leafe_jax import parallel

  dtype = jnp.dtype(dtype)
  param_dtype = jnp.dtype(param_dtype or dtype)
  config = config_from_hf(path)
  config = dataclasses.replace(config, dtype=dtype.name, param_dtype=param_dtype.name, scan_layers=scan_layers)
  model = Decoder(config)
  index = _tensor_index(path)
  entries = registry.family(config.family).tensor_maps(config)
  for hf_name, _, _, _, shape in entries:  # everything is checked before anything is read
    if hf_name not in index:
      raise CheckpointError(f"{path}: tensor {hf_name!r} is missing from the checkpoint")
    if index[hf_name].shape != shape:
      raise CheckpointError(f"{path}: tensor {hf_name!r} has shape {index[hf_name].shape}, expected {shape}")
  # A tensor the layout does not read means a variant this code does not implement (e.g. a bias it would drop):
  # refused rather than silently giving other outputs than the checkpoint's model.
  unused = sorted(name for name in set(index) - {e.hf_name for e in entries} if not _ignorable(name, config))
  if unused:
    raise CheckpointError(f"{path}: {len(unused)} tensors of the checkpoint have no place in a {config.family} model "
                          f"with this config (unsupported variant?): {unused[:5]}")
  shardings = None if mesh is None else parallel.param_shardings(model, mesh)

  def build(read, shape: tuple[int, ...], spath: tuple[str, ...]):
    """`read(index)` returns the numpy slice `index` of the parameter in our layout."""
    if shardings is None:
      return jnp.asarray(read(tuple(slice(None) for _ in shape)), dtype=param_dtype)
    return jax.make_array_from_callback(shape, _get(shardings, spath),
                                        lambda idx: np.asarray(read(idx), dtype=param_dtype))

  params: dict = {}
  stacked: dict[tuple[str, ...], list] = {}
  for hf_name, ours, to_ours, _, _ in entries:
    spath, layer = _scanned_path(ours) if scan_layers else (ours, None)
    if layer is None:
      # A numpy view of the memory-mapped file in our layout: each device callback reads only its slice.
      view = to_ours(safetensors_io.load(index[hf_name]))
      _set(params, spath, build(view.__getitem__, view.shape, spath))
    else:
      stacked.setdefault(spath, []).append((layer, hf_name, to_ours))
  for spath, layers in stacked.items():
    layers.sort()
    views = [to_ours(safetensors_io.load(index[name])) for _, name, to_ours in layers]

    def read_layers(idx, views=views):  # [layers, ...]: stack only the requested slice of each layer
      return np.stack([views[i][idx[1:]] for i in range(len(views))[idx[0]]])

    _set(params, spath, build(read_layers, (len(views), *views[0].shape), spath))
  return model, params


# Largest safetensors file `to_hf` writes: bigger models are split into `model-0000i-of-0000n.safetensors` files
# plus `model.safetensors.index.json`, which transformers and `from_hf` both read.
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# The ModelConfig fields a checkpoint carries (the others say how to run it, not what it computes).
_ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff",
                        "rope_theta", "rope_scaling", "norm_eps", "qkv_bias", "o_bias", "qk_norm", "tie_embeddings")


def check_expressible(config: ModelConfig, hf_config: dict | None = None) -> None:
  """Refuses a model its family's checkpoint would not reproduce: transformers and `from_hf` read `hf_config` as
  the family defines it (e.g. every qwen3 has q/k norms, no llama has them), whatever tensors are written.
  `hf_config`: the family's HF config of `config`, if already built."""
  if hf_config is None:
    hf_config = registry.family(config.family).hf_config(config)
  reread = registry.family(config.family).config_from_hf(hf_config)
  differ = [f"{name}={getattr(config, name)!r} (the {config.family} checkpoint reads back "
            f"{getattr(reread, name)!r})" for name in _ARCHITECTURE_FIELDS
            if getattr(config, name) != getattr(reread, name)]
  if differ:
    raise CheckpointError(f"to_hf: a {config.family} checkpoint cannot express this model: {'; '.join(differ)}")


def to_hf(model: Decoder, params: dict, path: str, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
          fetch: Callable[[Any], np.ndarray] | None = None, write: bool = True) -> None:
  """Writes `params` as safetensors + `config.json` (+ `generation_config.json`) that transformers loads.

  Tensors keep the dtype of `params`; unrolled and scanned (`layers`-stacked) params both work. Parameters are
  fetched to the host one at a time (`fetch`, default `jax.device_get`) and written file by file, so the host
  holds at most one file's tensors (plus, for scanned params, one stacked parameter). A multi-process export
  passes a cross-process gather as `fetch` on every process and `write=False` on all but one.
  """
  config = model.config
  hf_config = registry.family(config.family).hf_config(config)
  check_expressible(config, hf_config)
  fetch = fetch or (lambda leaf: np.asarray(jax.device_get(leaf)))
  planned = []
  for hf_name, ours, _, to_hf_fn, shape in registry.family(config.family).tensor_maps(config):
    spath, layer = _scanned_path(ours) if config.scan_layers else (ours, None)
    try:
      leaf = _get(params, spath)
    except (KeyError, TypeError) as e:
      raise CheckpointError(f"to_hf: parameter {'/'.join(spath)} (for {hf_name!r}) is missing from params") from e
    planned.append((spath, layer if layer is not None else -1, hf_name, to_hf_fn, shape,
                    math.prod(shape) * np.dtype(leaf.dtype).itemsize))
  planned.sort(key=lambda entry: (entry[0], entry[1]))  # a stacked parameter's layers one after another
  files, size = [[]], 0
  for entry in planned:
    if files[-1] and size + entry[-1] > max_shard_bytes:
      files.append([])
      size = 0
    files[-1].append(entry)
    size += entry[-1]
  names = (["model.safetensors"] if len(files) == 1 else
           [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))])
  if write:
    os.makedirs(path, exist_ok=True)
  fetched_path, fetched = None, None
  for name, entries in zip(names, files):
    tensors = {}
    for spath, layer, hf_name, to_hf_fn, shape, _ in entries:
      if spath != fetched_path:
        fetched_path, fetched = spath, fetch(_get(params, spath))  # a collective when multi-process
      value = fetched if layer < 0 else fetched[layer]
      array = np.ascontiguousarray(to_hf_fn(value))
      if array.shape != shape:
        raise CheckpointError(f"to_hf: tensor {hf_name!r} has shape {array.shape}, expected {shape}")
      tensors[hf_name] = array
    if write:
      safetensors_io.save(tensors, os.path.join(path, name))
  if not write:
    return
  if len(files) > 1:
    weight_map = {entry[2]: name for name, entries in zip(names, files) for entry in entries}
    total = sum(entry[-1] for entry in planned)
    _write_json({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                os.path.join(path, "model.safetensors.index.json"))
  _write_json(hf_config, os.path.join(path, "config.json"))
  generation = {key: hf_config[key] for key in ("bos_token_id", "eos_token_id") if key in hf_config}
  if generation:  # what `generate` stops on; transformers reads it next to config.json
    _write_json(generation, os.path.join(path, "generation_config.json"))


def _write_json(obj: dict, file: str) -> None:
  tmp = file + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, file)
