"""The trainer's batch feed: one or more records folders, mixed so that an epoch is one pass over each, with a
resumable position.

Each folder is a `data.pipeline.DataIterator` (deterministic, infinite, resumable by batch count). With several
folders, batch n comes from the folder whose share of batches so far lags its share of an epoch's batches the
most (a deterministic interleave, so the state is just each folder's iterator state). The shares are batches,
not records: packed rows hold many short records or few long ones, so record shares would read a folder of short
records several times per epoch and leave one of long records unfinished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from leafe_jax.data import pipeline


class TrainFeed:
  """Per-process batches (numpy dicts of pipeline.BATCH_KEYS) from `folders`."""

  def __init__(
      self,
      folders: Sequence[str],
      *,
      seq_len: int,
      batch_size: int,
      pack: bool,
      seed: int,
      kinds: Sequence[str] | None,
      process_index: int,
      process_count: int,
      expected_tokenizer: str,
  ):
    if not folders:
      raise ValueError("train.records names no records folder")
    self._kwargs = dict(seq_len=seq_len, batch_size=batch_size, pack=pack, kinds=kinds,
                        process_index=process_index, process_count=process_count,
                        expected_tokenizer=expected_tokenizer)
    self._folders = tuple(folders)
    # A different seed per folder: folders written by one explorer must not shuffle in lockstep.
    self._seeds = [seed + i for i in range(len(self._folders))]
    self._iterators = [
        pipeline.DataIterator(folder, seed=folder_seed, num_epochs=None, **self._kwargs)
        for folder, folder_seed in zip(self._folders, self._seeds)
    ]
    # Scans (validates) every folder now: bad records fail before any device work.
    self.num_records = sum(iterator.host.num_records for iterator in self._iterators)
    self._epoch_batches: list[int] | None = None  # per folder, counted on first use (reads the data once)
    self._share = np.ones(1) if len(self._iterators) == 1 else None
    self._taken = np.zeros(len(self._iterators), np.int64)

  def next(self) -> dict[str, np.ndarray]:
    if self._share is None:
      counts = np.array(self.folder_batches_per_epoch(), np.float64)
      self._share = counts / counts.sum()
    n = self._taken.sum() + 1
    source = int(np.argmax(n * self._share - self._taken))
    self._taken[source] += 1
    return next(self._iterators[source])

  def folder_batches_per_epoch(self) -> list[int]:
    """Full batches of one pass over each folder's records, in its first epoch's order (reads the data once)."""
    if self._epoch_batches is None:
      kwargs = {k: v for k, v in self._kwargs.items()
                if k not in ("expected_tokenizer", "process_index", "process_count")}
      self._epoch_batches = [
          sum(1 for _ in pipeline.build_dataset(it.host, seed=seed, num_epochs=1, **kwargs).as_numpy_iterator())
          for it, seed in zip(self._iterators, self._seeds)]
      empty = [f for f, n in zip(self._folders, self._epoch_batches) if n == 0]
      if empty and len(self._folders) > 1:
        raise ValueError(f"train: records folders {empty} give no full batch per epoch; lower train.batch_size "
                         "or add records")
    return self._epoch_batches

  def batches_per_epoch(self) -> int:
    """Full batches in one pass over every folder's records (reads the data once)."""
    return sum(self.folder_batches_per_epoch())

  def state(self) -> dict[str, Any]:
    return {"folders": list(self._folders), "iterators": [it.state() for it in self._iterators]}

  def restore(self, state: dict[str, Any]) -> None:
    # Folders are matched by position and by content (each iterator's restore checks its data fingerprint), not
    # by path: the same workdir given relative or absolute, or moved, resolves to another path string.
    if len(state.get("iterators", ())) != len(self._folders):
      raise ValueError(f"checkpoint data state is for records folders {state.get('folders')}; the config now "
                       f"names {list(self._folders)}")
    for iterator, sub_state in zip(self._iterators, state["iterators"], strict=True):
      iterator.restore(sub_state)
    self._taken = np.array([s["batches"] for s in state["iterators"]], np.int64)
