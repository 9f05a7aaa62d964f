"""The trainer's batch feed: one or more records folders, mixed by record count, with a resumable position.

Each folder is a `data.pipeline.DataIterator` (deterministic, infinite, resumable by batch count). With several
folders, batch n comes from the folder whose share of batches so far lags its share of records the most: a
deterministic interleave, so the state is just each folder's iterator state.
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
    self._iterators = [
        pipeline.DataIterator(folder, seed=seed + i, num_epochs=None, **self._kwargs)
        for i, folder in enumerate(self._folders)
    ]
    # Scans (validates) every folder now: bad records fail before any device work.
    counts = np.array([it.host.num_records for it in self._iterators], np.float64)
    self._share = counts / counts.sum()
    self._taken = np.zeros(len(self._iterators), np.int64)

  def next(self) -> dict[str, np.ndarray]:
    n = self._taken.sum() + 1
    source = int(np.argmax(n * self._share - self._taken))
    self._taken[source] += 1
    return next(self._iterators[source])

  def batches_per_epoch(self) -> int:
    """Full batches in one pass over every folder's records (reads the data once)."""
    total = 0
    for iterator in self._iterators:
      kwargs = dict(self._kwargs)
      kwargs.pop("expected_tokenizer")
      kwargs.pop("process_index")
      kwargs.pop("process_count")
      dataset = pipeline.build_dataset(iterator.host, seed=0, num_epochs=1, **kwargs)
      total += sum(1 for _ in dataset.as_numpy_iterator())
    return total

  def state(self) -> dict[str, Any]:
    return {"folders": list(self._folders), "iterators": [it.state() for it in self._iterators]}

  def restore(self, state: dict[str, Any]) -> None:
    if list(state.get("folders", ())) != list(self._folders):
      raise ValueError(f"checkpoint data state is for records folders {state.get('folders')}; the config now "
                       f"names {list(self._folders)}")
    for iterator, sub_state in zip(self._iterators, state["iterators"], strict=True):
      iterator.restore(sub_state)
    self._taken = np.array([s["batches"] for s in state["iterators"]], np.int64)
