"""Orbax checkpoints of the TrainState plus the data position, and the final HF export.

Layout under <stage_dir>/checkpoints/<step>/: `state` (the TrainState, sharded arrays) and `data` (JSON: the
data position; orbax writes it from the primary host only, so state that differs between processes must be
gathered into it first, as the train stage does with every process's iterator position). Saves are
asynchronous (training continues while arrays are written) and atomic (orbax finalises a step directory only
when complete), so a killed run resumes from the last finished step.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

# Files of a model directory that are not tokenizer files: never copied from the tokenizer dir into the export.
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_MODEL_FILE_NAMES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


class Checkpointer:
  """Keeps the last `keep` checkpoints; the caller decides when to save (every N steps and at the end)."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> bool:
    """Starts saving (async; arrays are copied first, so the caller may donate `state` right after)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
    saved = self._manager.save(step, args=args, force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) at `step` (default latest) with the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return restored["state"], dict(restored["data"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings, the restore target for `Checkpointer.restore`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_params(directory: str, abstract_params: Any) -> Any:
  """Params only, from the latest checkpoint of a train stage's checkpoint directory (init "orbax")."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"init orbax: no checkpoint under {directory!r}")
  # partial_restore (the optimizer state is not wanted) also skips params the target lacks and leaves the target's
  # params the checkpoint lacks as ShapeDtypeStructs: compare the trees first, so another config is named.
  saved = ocp.PyTreeCheckpointer().metadata(os.path.join(manager.directory, str(step), "state")).item_metadata
  try:
    _check_same_params(saved.tree["params"], abstract_params, f"{directory}/{step}")
  except ValueError:
    manager.close()
    raise
  target = {"params": abstract_params}
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
  state_args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  restored = manager.restore(step, args=ocp.args.Composite(state=state_args))
  manager.close()
  return restored["state"]["params"]


def _check_same_params(saved: Any, wanted: Any, where: str) -> None:
  """Raises ValueError naming the params that `saved` (checkpoint metadata) and `wanted` do not share, or whose
  shapes differ."""
  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

  have, want = shapes(saved), shapes(wanted)
  problems = [f"not in the checkpoint {k}" for k in sorted(want.keys() - have.keys())]
  problems += [f"not in this model {k}" for k in sorted(have.keys() - want.keys())]
  problems += [f"{k} is {have[k]}, this model has {want[k]}" for k in sorted(have.keys() & want.keys())
               if have[k] != want[k]]
  if problems:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    raise ValueError(f"init orbax: checkpoint {where} holds the params of another model config ({shown}); "
                     "set the model section to the source run's")


def copy_tokenizer_files(tokenizer_dir: str, out_dir: str) -> list[str]:
  """Copies every tokenizer file of `tokenizer_dir` (not weights, not config.json) into `out_dir`."""
  copied = []
  for name in sorted(os.listdir(tokenizer_dir)):
    src = os.path.join(tokenizer_dir, name)
    if not os.path.isfile(src) or name in _MODEL_FILE_NAMES or name.endswith(_MODEL_FILE_SUFFIXES):
      continue
    shutil.copy2(src, os.path.join(out_dir, name))
    copied.append(name)
  if not copied:
    raise FileNotFoundError(f"tokenizer dir {tokenizer_dir!r} has no tokenizer files to export")
  return copied


def export_hf(model: Any, params: Any, tokenizer_dir: str, out_dir: str) -> None:
  """Writes a complete HF directory (config, safetensors, tokenizer) atomically: `out_dir` appears when done.

  Multi-process: every process takes part in gathering each parameter in turn (no host holds the whole model);
  process 0 writes.
  """
  from jax.experimental import multihost_utils

  from leafe_jax import models

  primary = jax.process_index() == 0
  fetch = None
  if jax.process_count() > 1:
    fetch = lambda leaf: np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
  tmp_dir = out_dir + ".tmp"
  if primary:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
  models.to_hf(model, params, tmp_dir, fetch=fetch, write=primary)
  if primary:
    copy_tokenizer_files(tokenizer_dir, tmp_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    logging.info("exported HF model to %s", out_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("export_hf")
